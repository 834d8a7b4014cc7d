"""Stage kinds that sample from a checkpoint: ``generate``, ``rejection_sampling`` and ``eval``.

All three render the stage's prompts, draw ``samples_per_prompt`` completions per prompt from
the ``init`` model and (except ``generate``) score them with the reward functions; they differ
in what they keep and write.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from grpo.data import DataSpec
from grpo.io import atomic_write_json, atomic_write_text
from grpo.templates import TemplateSpec
from pipelines.stages.base import Stage, StageContext, StageResult, register_stage
from pipelines.stages.common import SamplingSettings, data_spec, template_of


def _jsonl(rows: list[dict]) -> str:
    # Token ids are for reward functions during scoring; the files keep text.
    return "".join(json.dumps({k: v for k, v in r.items() if k != "completion_ids"}, ensure_ascii=False) + "\n" for r in rows)


def _sample(ctx: StageContext, data: DataSpec, template, sampling: SamplingSettings, n: int, max_prompts: int | None, model: str | None = None,
            *, score: bool = False, rewards=None) -> list[dict]:
    """Rendered prompts of the stage's data, n samples each, from the init model (or ``model``),
    scored with ``rewards`` (default the recipe's) when ``score``. With several processes each
    samples and scores its share of the prompt batches (``sample_completions(shard=...)``) and
    every rank gets the whole list, in the one-process order."""
    from grpo.data import load_rows
    from grpo.models import load_model_and_tokenizer

    rows = load_rows(data)
    if max_prompts is not None:
        rows = rows[:max_prompts]
    policy, tokenizer = load_model_and_tokenizer(model or ctx.init_model, dtype=ctx.recipe.dtype, device=ctx.recipe.device)
    dist = ctx.dist
    samples = sample_rows(
        policy, tokenizer, rows, template, sampling.resolved(ctx.recipe.grpo), n, seed=ctx.seed, batch_prompts=sampling.batch_prompts,
        max_prompt_length=ctx.recipe.grpo.max_prompt_length, progress=ctx.progress and ctx.is_main, label=ctx.name,
        shard=(dist.rank, dist.world_size) if dist is not None else (0, 1),
    )
    if score:
        samples, _ = _scored(ctx, samples, rewards)
    if dist is not None and dist.active:
        samples = sorted(dist.gather(samples), key=lambda r: (r["row"], r["sample"]))  # whole: every rank's share
    return samples


def sample_rows(model, tokenizer, rows: list[dict], template, params: dict, n: int, *, seed: int, batch_prompts: int = 8,
                max_prompt_length: int | None = None, progress: bool = True, label: str = "sampling",
                shard: tuple[int, int] = (0, 1)) -> list[dict]:
    """``rows`` rendered with ``template`` (too-long prompts dropped, with a count), n samples each.

    ``params``: max_new_tokens, temperature, top_p, top_k. Used by the sampling stages and `grpo eval`.
    ``shard=(rank, world)``: only this rank's prompt batches (``sample_completions``).
    """
    from grpo.evaluation import sample_completions
    from pipelines.train import model_max_positions, prepare_rows

    prepared = prepare_rows(rows, template, tokenizer, max_prompt_length,
                            max_new_tokens=params["max_new_tokens"], max_positions=model_max_positions(model))
    if prepared.report() and shard[0] == 0:
        print(f"[{label}] {prepared.report()}")
    return sample_completions(model, tokenizer, prepared.rows, n, seed=seed, batch_prompts=batch_prompts, progress=progress,
                              shard=shard, **params)


def _scored(ctx, samples, rewards):
    from grpo.evaluation import score_samples
    from pipelines.recipe import reward_terms

    terms = reward_terms(rewards or ctx.recipe.rewards)
    return score_samples(samples, terms), terms


def write_evaluation(out_dir, scored: list[dict], terms, title: str, model: str, accuracy: str = "accuracy", majority: bool = True) -> dict:
    """The figures of scored samples into ``out_dir``: eval.json, eval.md, samples.jsonl; returns the summary."""
    from grpo.evaluation import evaluation_summary, summary_markdown

    summary = evaluation_summary(scored, terms, accuracy=accuracy, majority=majority)
    summary["model"] = model
    atomic_write_text(out_dir / "samples.jsonl", _jsonl(scored))
    atomic_write_json(out_dir / "eval.json", summary)
    atomic_write_text(out_dir / "eval.md", summary_markdown(summary, title=title))
    return summary


@dataclass
class GenerateConfig:
    data: DataSpec | str | None = None  # prompts; default data.train
    template: TemplateSpec | str | None = None
    samples_per_prompt: int = 4
    max_prompts: int | None = None
    sampling: SamplingSettings = field(default_factory=SamplingSettings)


@register_stage("generate")
class GenerateStage(Stage):
    """Sample completions into a dataset (data.jsonl), unfiltered and unscored."""

    Config = GenerateConfig
    produces = ("data",)

    def run(self, ctx: StageContext) -> StageResult:
        cfg = ctx.config
        data = data_spec(cfg.data, ctx.recipe.data.train, ctx.data_path, f"stages.{ctx.name}.data")
        samples = _sample(ctx, data, template_of(cfg.template, ctx.recipe.template), cfg.sampling, cfg.samples_per_prompt, cfg.max_prompts)
        if not ctx.is_main:
            return StageResult()
        atomic_write_text(ctx.work_dir / "data.jsonl", _jsonl(samples))
        return StageResult(outputs={"data": "data.jsonl"}, metrics={"samples": len(samples)})


@dataclass
class MixSpec:
    data: DataSpec | str  # general (non-reasoning) SFT rows: messages or prompt/completion
    ratio: float = 0.25  # general rows ≈ ratio × kept reasoning rows


@dataclass
class RejectionSamplingConfig:
    data: DataSpec | str | None = None  # prompts; default data.train
    template: TemplateSpec | str | None = None
    rewards: dict[str, float | dict[str, Any]] | None = None  # default: the recipe's rewards
    samples_per_prompt: int = 8
    max_prompts: int | None = None
    keep: dict[str, float] = field(default_factory=lambda: {"accuracy": 1.0})  # reward -> minimum value
    min_length: int | None = None  # tokens
    max_length: int | None = None
    drop_truncated: bool = True
    dedupe: bool = True
    max_per_prompt: int | None = 1
    mix: MixSpec | None = None
    sampling: SamplingSettings = field(default_factory=SamplingSettings)


@register_stage("rejection_sampling")
class RejectionSamplingStage(Stage):
    """Sample, score, keep what passes the filters: a new SFT dataset (data.jsonl + stats.json)."""

    Config = RejectionSamplingConfig
    produces = ("data",)

    def validate(self, config: RejectionSamplingConfig, recipe, path: str) -> None:
        from grpo.schema import ConfigError

        names = {name.rsplit(":", 1)[-1] for name in (config.rewards or recipe.rewards)}
        for name in config.keep:
            if name not in names:
                raise ConfigError(f"{path}.keep.{name}: not one of this stage's rewards ({', '.join(sorted(names))})")

    def run(self, ctx: StageContext) -> StageResult:
        rows, stats, scored = rejection_sample(ctx, ctx.config)
        if not ctx.is_main:
            return StageResult()
        write_rejection_sampling(ctx.work_dir, rows, stats, scored)
        return StageResult(
            outputs={"data": "data.jsonl"},
            metrics={"sampled": stats["total"], "kept": stats["kept"], "rows": len(rows), "keep_rate": stats["kept"] / max(1, stats["total"])},
        )


def rejection_sample(ctx: StageContext, cfg: RejectionSamplingConfig, model: str | None = None) -> tuple[list[dict], dict, list[dict]]:
    """Sample ``cfg``'s prompts from ``model`` (default: the stage's init model), score, keep what
    passes: (SFT rows, filtering statistics, every scored sample). Also the distill stage's teacher sampling."""
    from grpo.data import DataError, load_sft_rows
    from grpo.evaluation import KeepRules, mix_with, select_samples, to_sft_rows

    data = data_spec(cfg.data, ctx.recipe.data.train, ctx.data_path, f"stages.{ctx.name}.data")
    scored = _sample(ctx, data, template_of(cfg.template, ctx.recipe.template), cfg.sampling, cfg.samples_per_prompt, cfg.max_prompts, model,
                     score=True, rewards=cfg.rewards)
    rules = KeepRules(
        min_rewards=dict(cfg.keep), min_length=cfg.min_length, max_length=cfg.max_length,
        drop_truncated=cfg.drop_truncated, dedupe=cfg.dedupe, max_per_prompt=cfg.max_per_prompt,
    )
    kept, stats = select_samples(scored, rules)
    rows = to_sft_rows(kept)
    if cfg.mix is not None:
        general = load_sft_rows(data_spec(cfg.mix.data, None, None, f"stages.{ctx.name}.mix.data"))
        rows = mix_with(rows, general, cfg.mix.ratio, seed=ctx.seed)
        stats["mixed_general_rows"] = len(rows) - len(kept)
    if not rows:
        raise DataError(
            f"stage {ctx.name}: no sample passed the filters ({stats['total']} sampled; rejected: {stats['rejected']}); "
            "loosen keep: or sample more"
        )
    return rows, stats, scored


def write_rejection_sampling(work_dir, rows: list[dict], stats: dict, scored: list[dict]) -> None:
    """samples.jsonl, stats.json, then data.jsonl (last: a stage whose data.jsonl exists is complete)."""
    atomic_write_text(work_dir / "samples.jsonl", _jsonl(scored))
    atomic_write_json(work_dir / "stats.json", stats)
    # pause_point: a test hook, inert unless GRPO_TEST_PAUSE_IN=rejection_sampling_write (tests/test_kill.py)
    atomic_write_text(work_dir / "data.jsonl", _jsonl(rows), pause_point="rejection_sampling_write")


@dataclass
class EvalConfig:
    data: DataSpec | str | None = None  # held-out prompts; default data.eval
    template: TemplateSpec | str | None = None
    rewards: dict[str, float | dict[str, Any]] | None = None
    samples_per_prompt: int = 4  # k, for pass@1 (mean over k) and maj@k
    max_prompts: int | None = None
    sampling: SamplingSettings = field(default_factory=SamplingSettings)


@register_stage("eval")
class EvalStage(Stage):
    """pass@1, maj@k, format and language-consistency rates, lengths: eval.json and eval.md."""

    Config = EvalConfig
    produces = ("data",)

    def run(self, ctx: StageContext) -> StageResult:
        from pipelines.recipe import reward_terms

        cfg = ctx.config
        data = data_spec(cfg.data, ctx.recipe.data.eval, ctx.data_path, f"stages.{ctx.name}.data")
        scored = _sample(ctx, data, template_of(cfg.template, ctx.recipe.template), cfg.sampling, cfg.samples_per_prompt, cfg.max_prompts,
                         score=True, rewards=cfg.rewards)
        if not ctx.is_main:
            return StageResult()
        terms = reward_terms(cfg.rewards or ctx.recipe.rewards)
        # A code recipe (no accuracy, a code reward) is judged by its tests; programs have no majority vote.
        names = {t.name for t in terms}
        correctness = "code" if "code" in names and "accuracy" not in names else "accuracy"
        summary = write_evaluation(ctx.work_dir, scored, terms, f"{ctx.name}: {ctx.init_model}", ctx.init_model,
                                   accuracy=correctness, majority=correctness != "code")
        return StageResult(outputs={"data": "samples.jsonl"}, metrics=summary)
