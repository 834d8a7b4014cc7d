"""``grpo train``: one GRPO run from a recipe, into a run directory.

Recipe → model + tokenizer → rows → rendered prompts → reward terms → GRPOTrainer. The run
directory gets ``recipe.resolved.yaml`` (the recipe after overrides and defaults), and the
trainer's ``metrics.jsonl``, ``completions.jsonl``, ``checkpoints/``, ``final/`` and ``curves.png``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from grpo.config import GRPOConfig
from grpo.data import DataError, DataSpec, load_rows
from grpo.launch import DistributedSettings, is_main_process
from grpo.io import atomic_write_text, check_writable
from grpo.schema import ConfigError, to_dict
from grpo.templates import TemplateSpec, render_prompts
from pipelines.recipe import Recipe, reward_terms


@dataclass
class PreparedRows:
    rows: list[dict]
    dropped_too_long: int
    limit: int | None = None  # prompt tokens allowed (None: no limit)
    limit_reason: str = ""  # where the limit comes from, for messages

    def report(self) -> str | None:
        """The line to print when prompts were dropped."""
        if not self.dropped_too_long:
            return None
        total = self.dropped_too_long + len(self.rows)
        return f"data: dropped {self.dropped_too_long} of {total} prompts longer than {self.limit} tokens ({self.limit_reason})"


def model_max_positions(model) -> int | None:
    """The longest sequence (prompt + completion) the model's position embeddings cover, if it says."""
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def prepare_rows(rows: list[dict], template: TemplateSpec, tokenizer, max_prompt_length: int | None, *,
                 max_new_tokens: int | None = None, max_positions: int | None = None) -> PreparedRows:
    """Render each row's prompt to model input text; drop (and count) prompts that are too long.

    Too long is over ``max_prompt_length`` tokens when that is set, else over what the model
    takes with room left for the completion: ``max_positions - max_new_tokens``. A ``DataError``
    when no prompt is left.
    """
    limit, reason = max_prompt_length, f"grpo.max_prompt_length={max_prompt_length}"
    if limit is None and max_positions is not None and max_new_tokens is not None:
        limit = max_positions - max_new_tokens
        reason = f"the model's max_position_embeddings={max_positions} minus grpo.max_new_tokens={max_new_tokens}"
        if limit < 1:
            raise ConfigError(
                f"grpo.max_new_tokens: must leave room for a prompt within the model's max_position_embeddings={max_positions}, got {max_new_tokens}"
            )
    texts = render_prompts(rows, template, tokenizer)
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if limit is not None else [0] * len(texts)
    out, dropped = [], 0
    for row, text, length in zip(rows, texts, lengths):
        if limit is not None and length > limit:
            dropped += 1
            continue
        out.append({**row, "raw_prompt": row["prompt"], "prompt": text})
    if not out:
        raise DataError(
            f"data: all {len(rows)} prompts are longer than {limit} tokens ({reason}); the shortest has {min(lengths)}; "
            "shorten the prompts or raise the limit"
        )
    return PreparedRows(out, dropped, limit, reason)


def summarize(metrics: list[dict], window: int = 10) -> dict:
    """Mean reward, KL and completion length over the first and the last ``window`` steps, and
    the rows each reward failed on over the whole run (``reward_errors``: name -> [rows, steps])."""
    window = max(1, min(window, len(metrics) // 2 or 1))
    first, last = metrics[:window], metrics[-window:]

    def mean(rows, key):
        vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
        return sum(vals) / len(vals) if vals else None

    keys = ["reward", "kl", "completions/mean_length"] + sorted(k for k in metrics[0] if k.startswith("rewards/") and k.endswith("/mean"))
    errors: dict[str, list[int]] = {}
    for row in metrics:
        for key, value in row.items():
            if key.startswith("reward_errors/") and value:
                totals = errors.setdefault(key[len("reward_errors/") :], [0, 0])
                totals[0] += int(value)
                totals[1] += 1
    return {"window": window, "first": {k: mean(first, k) for k in keys}, "last": {k: mean(last, k) for k in keys}, "reward_errors": errors}


def format_summary(summary: dict) -> str:
    w = summary["window"]
    steps = "step" if w == 1 else f"{w} steps"
    width = max([32, *(len(k) + 1 for k in summary["first"])])
    lines = [f"{'metric':<{width}} {'first ' + steps:>16} {'last ' + steps:>16}"]
    for key, first in summary["first"].items():
        last = summary["last"][key]
        fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        lines.append(f"{key:<{width}} {fmt(first):>16} {fmt(last):>16}")
    for name, (rows, in_steps) in summary.get("reward_errors", {}).items():
        lines.append(f"reward {name!r} failed on {rows} rows in {in_steps} step{'s' if in_steps != 1 else ''} "
                     f"(scored as None: on_reward_error: skip; reward_errors/{name} in metrics.jsonl)")
    return "\n".join(lines)


def load_for_training(model: str, precision: str | None, dtype: str, device: str, run_dir: Path | None = None, resume: bool = False,
                      load_device: str | None = None):
    """(model, tokenizer, Precision) for a grpo stage: the precision resolved for the device
    (``auto`` probes it, grpo/precision.py; a resumed run keeps the one it started with), the
    weights loaded in its parameter dtype onto ``load_device`` (default: ``device``)."""
    from grpo.models import load_model_and_tokenizer, resolve_device
    from grpo.precision import precision_of_dtype, recorded_precision, requested_precision, resolve_precision

    requested, why = requested_precision(precision, dtype)
    if requested == "checkpoint":  # dtype: auto, the checkpoint's own dtype, trained as it is
        policy, tokenizer = load_model_and_tokenizer(model, dtype="auto", device=load_device or device)
        return policy, tokenizer, precision_of_dtype(next(policy.parameters()).dtype, why)
    resolved = recorded_precision(run_dir) if resume and requested == "auto" and run_dir is not None else None
    resolved = resolved or resolve_precision(requested, resolve_device(device), why=why)
    policy, tokenizer = load_model_and_tokenizer(model, dtype=resolved.param_dtype, device=load_device or device)
    return policy, tokenizer, resolved


def run_grpo(*, model: str, data: DataSpec, template: TemplateSpec, rewards: dict, config: GRPOConfig, out_dir: Path,
             seed: int, dtype: str = "float32", device: str = "auto", resume: bool = False, on_step=None,
             teacher: dict | None = None, precision: str | None = None, distributed: DistributedSettings | None = None):
    """Load everything a GRPO run needs and train into ``out_dir``; returns the TrainResult.
    ``on_step``: the trainer's per-step hook (experiment trackers). ``teacher``: on-policy
    distillation, ``{"model": name, "kl_weight": λ_KL, "reward_weight": λ_R, "baseline": bool}`` (grpo/distill.py).
    ``precision``: the recipe's (grpo/precision.py; unset: from ``dtype``).
    ``distributed``: how several processes share the policy (grpo/launch.py)."""
    from grpo.launch import launched_world_size
    from grpo.models import load_model_and_tokenizer, resolve_device
    from grpo.trainer import GRPOTrainer

    distributed = distributed or DistributedSettings()
    terms = reward_terms(rewards)  # fail on a bad reward name before loading anything big
    rows = load_rows(data)  # data errors surface before the model is loaded
    check_rewards_on_data(terms, rows, config)  # and a reward's signature/column errors
    target = resolve_device(device)
    # FSDP moves each rank's shards to its device: the whole model never has to fit on one GPU.
    sharded = launched_world_size() > 1 and distributed.resolved_strategy() == "fsdp"
    policy, tokenizer, resolved = load_for_training(model, precision, dtype, str(target), out_dir, resume,
                                                    load_device="cpu" if sharded else None)
    prepared = prepare_rows(rows, template, tokenizer, config.max_prompt_length,
                            max_new_tokens=config.max_new_tokens, max_positions=model_max_positions(policy))
    if prepared.report() and is_main_process():
        print(prepared.report())
    distill = None
    if teacher is not None:
        from grpo.distill import Teacher

        teacher_model, teacher_tokenizer = load_model_and_tokenizer(teacher["model"], dtype=dtype, device="cpu" if sharded else target)
        distill = Teacher(teacher_model, teacher_tokenizer, teacher.get("kl_weight", 1.0), teacher.get("reward_weight", 0.0),
                          teacher.get("baseline", True))
    trainer = GRPOTrainer(policy, tokenizer, terms, prepared.rows, config, out_dir, seed=seed, on_step=on_step, teacher=distill,
                          precision=resolved, distributed=distributed, device=target)
    if is_main_process():
        print(trainer.describe_precision(), flush=True)  # also in <run dir>/precision.json
    return trainer.train(resume=resume)


def check_rewards_on_data(terms, rows: list[dict], config: GRPOConfig) -> None:
    """Each reward called once on a sample of the rows (grpo.scoring.probe_rewards): an error
    under ``on_reward_error: fail``, a warning under ``skip``."""
    import sys

    from grpo.scoring import probe_rewards

    for problem in probe_rewards(terms, rows, config.on_reward_error, max_steps=config.steps):
        if is_main_process():
            print(f"warning: {problem}", file=sys.stderr)


def dry_run_train(recipe: Recipe, resume: bool = False) -> str:
    """``grpo train --dry-run``: everything a run checks before it trains, without loading the
    model or writing anything: rewards (and one call of each on a sample of the data), data,
    model, run directory. Returns the report; raises on the first problem."""
    import os

    from grpo.models import resolve_model_path

    cfg = recipe.grpo
    terms = reward_terms(recipe.rewards)
    rows = load_rows(recipe.data.train)
    check_rewards_on_data(terms, rows, cfg)
    resolved = resolve_model_path(recipe.model)
    run_dir = Path(recipe.run_dir)
    check_run_dir(run_dir, resume)
    existing = next(p for p in (run_dir.absolute(), *run_dir.absolute().parents) if p.exists())
    if not (existing.is_dir() and os.access(existing, os.W_OK)):
        raise ConfigError(f"output_dir: '{run_dir.absolute()}' cannot be created ('{existing}' is not a writable folder)")
    names = ", ".join(f"{t.name} ({t.weight:g})" for t in terms)
    checks = [
        f"rewards: {names}; each called once on {min(2, len(rows))} rows of the data",
        f"data.train: {recipe.data.train.source} ({len(rows)} rows)",
        f"model {recipe.model}: found ({resolved})",
        f"run directory: {run_dir.absolute()} ({'resume' if resume else 'new run'})",
    ]
    plan = (f"{cfg.steps} steps × {cfg.prompts_per_step} prompts × {cfg.group_size} completions (≤ {cfg.max_new_tokens} tokens), "
            f"loss_aggregation {cfg.loss_aggregation}, beta {cfg.beta:g}, learning_rate {cfg.learning_rate:g}")
    return f"grpo train {recipe.name}: {plan}\n\nchecks:\n" + "\n".join(f"  ok  {c}" for c in checks)


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """A run directory holding checkpoints is continued with --resume, never overwritten."""
    if run_dir.exists() and not resume and (run_dir / "checkpoints").exists():
        raise FileExistsError(f"run directory '{run_dir}' already holds a run; pass --resume to continue it or set output_dir")


def open_recipe_trackers(recipe: Recipe, run_dir: Path, names: list[str] | None = None):
    """One run of each tracker ``names`` (default: the recipe's ``report_to``), the resolved
    recipe as its config; None when there are none."""
    from grpo.tracking import open_trackers

    names = recipe.report_to if names is None else names
    if not names:
        return None
    return open_trackers(names, run_dir, recipe.name, to_dict(recipe), recipe.tracking)


def train_from_recipe(recipe: Recipe, resume: bool = False, run_dir: str | Path | None = None):
    """``grpo train``: the recipe's GRPO run in its run directory; returns (TrainResult, summary)."""
    run_dir = Path(run_dir or recipe.run_dir)
    reward_terms(recipe.rewards)
    check_run_dir(run_dir, resume)
    check_writable(run_dir)  # before anything is loaded; the free space is checked once the model is
    if is_main_process():  # with several processes (grpo/distributed.py) rank 0 writes the files
        atomic_write_text(run_dir / "recipe.resolved.yaml", yaml.safe_dump(to_dict(recipe), sort_keys=False, allow_unicode=True))
    started = time.perf_counter()
    trackers = open_recipe_trackers(recipe, run_dir) if is_main_process() else None
    try:
        result = run_grpo(model=recipe.model, data=recipe.data.train, template=recipe.template, rewards=recipe.rewards,
                          config=recipe.grpo, out_dir=run_dir, seed=recipe.seed, dtype=recipe.dtype, device=recipe.device, resume=resume,
                          on_step=trackers.on_step if trackers else None, precision=recipe.precision, distributed=recipe.distributed)
    finally:
        if trackers:
            trackers.finish()
    summary = summarize(result.metrics)
    summary["wall_time_s"] = time.perf_counter() - started
    return result, summary
