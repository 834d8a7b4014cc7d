"""``kind: distill`` — a teacher's reasoning into a student (``init``), off-policy or on-policy.

``mode: off_policy`` is DeepSeek-R1's distillation: sample the teacher on the prompts, keep the
verified answers (the rejection-sampling stage's own sampling, scoring and filters: ``keep``,
``max_per_prompt``, ...), then fine-tune the student on them with TRL's SFTTrainer. The data is
text, so the student may be of any size, family or tokenizer. Writes what a rejection-sampling
stage writes (``data.jsonl``, ``stats.json``, ``samples.jsonl``) and what an sft stage writes.

``mode: on_policy``: the GRPO trainer with the teacher beside (β > 0) or instead of (β = 0) the
reference: the student samples, the teacher scores every sampled token, and the per-token
advantage is −kl_weight · (log π_student − log π_teacher − its batch mean) + reward_weight · A (the
rule rewards' group advantage); see grpo/distill.py. The teacher must share the student's vocabulary.

    - {name: distill, kind: distill, init: student-model, teacher: stages.reasoning_rl, mode: on_policy,
       kl_weight: 1.0, reward_weight: 0.0, grpo: {steps: 30}}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from grpo.data import DataSpec
from grpo.schema import ConfigError
from grpo.templates import TemplateSpec
from pipelines.stages.base import Stage, StageContext, StageResult, register_stage
from pipelines.stages.common import SamplingSettings, data_spec, template_of

OFF_POLICY_KEYS = ("samples_per_prompt", "max_prompts", "keep", "max_per_prompt", "drop_truncated", "sampling", "sft")
ON_POLICY_KEYS = ("grpo", "kl_weight", "reward_weight", "kl_baseline")


@dataclass
class DistillConfig:
    teacher: str  # the teacher: stages.<name> (an earlier stage's model) or any model name
    mode: Literal["off_policy", "on_policy"] = "off_policy"
    data: DataSpec | str | None = None  # prompts; default data.train
    template: TemplateSpec | str | None = None  # default: the recipe's template
    rewards: dict[str, float | dict[str, Any]] | None = None  # off-policy: verify the teacher; on-policy: logged / mixed in
    # --- off_policy: teacher samples kept as in rejection sampling, then SFT of the student
    samples_per_prompt: int = 4
    max_prompts: int | None = None
    keep: dict[str, float] = field(default_factory=lambda: {"accuracy": 1.0})  # reward -> minimum value
    max_per_prompt: int | None = 1
    drop_truncated: bool = True
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    sft: dict = field(default_factory=dict)  # grpo/sft.py SFTSettings
    # --- on_policy: the GRPO trainer with a teacher
    grpo: dict[str, Any] = field(default_factory=dict)  # overrides of the recipe's grpo section
    kl_weight: float = 1.0  # λ_KL of the per-token reverse-KL advantage
    reward_weight: float = 0.0  # λ_R of the rule rewards' advantage (0: pure distillation)
    kl_baseline: bool = True  # subtract the batch's mean reverse KL (variance reduction, grpo/distill.py)


@register_stage("distill")
class DistillStage(Stage):
    Config = DistillConfig
    produces = ("model",)
    model_refs = ("teacher",)
    resumable = True

    def validate(self, config: DistillConfig, recipe, path: str) -> None:
        from pipelines.stages.grpo import stage_grpo_config
        from pipelines.stages.sft import SFTStage

        defaults = DistillConfig(teacher=config.teacher)
        unused = OFF_POLICY_KEYS if config.mode == "on_policy" else ON_POLICY_KEYS
        for key in unused:
            if getattr(config, key) != getattr(defaults, key):
                raise ConfigError(f"{path}.{key}: only used with mode: {'off_policy' if config.mode == 'on_policy' else 'on_policy'}")
        if config.mode == "off_policy":
            from pipelines.recipe import reward_names

            names = set(reward_names(config.rewards or recipe.rewards))
            for name in config.keep:
                if name not in names:
                    raise ConfigError(f"{path}.keep.{name}: not one of this stage's rewards ({', '.join(sorted(names))})")
            SFTStage().settings(SFTStage.Config(data="x", sft=config.sft), f"{path}.sft")
        else:
            if config.kl_weight < 0 or config.reward_weight < 0 or config.kl_weight == config.reward_weight == 0:
                raise ConfigError(f"{path}.kl_weight: kl_weight and reward_weight must be ≥ 0, not both 0")
            stage_grpo_config(recipe, config.grpo, f"{path}.grpo")

    def run(self, ctx: StageContext) -> StageResult:
        return self._off_policy(ctx) if ctx.config.mode == "off_policy" else self._on_policy(ctx)

    def _off_policy(self, ctx: StageContext) -> StageResult:
        from grpo.io import read_jsonl
        from grpo.sft import train_sft
        from pipelines.stages.sampling import RejectionSamplingConfig, rejection_sample, write_rejection_sampling
        from pipelines.stages.sft import SFTStage

        cfg, recipe = ctx.config, ctx.recipe
        data_file = ctx.work_dir / "data.jsonl"
        if ctx.resume and data_file.exists():  # the teacher's samples of the interrupted attempt (written last, atomically)
            rows, stats = read_jsonl(data_file), json.loads((ctx.work_dir / "stats.json").read_text())
        else:
            shared = {f.name: getattr(cfg, f.name) for f in fields(RejectionSamplingConfig) if hasattr(cfg, f.name)}
            rows, stats, scored = rejection_sample(ctx, RejectionSamplingConfig(**shared), model=ctx.inputs["teacher"])
            if ctx.is_main:  # (with several processes every rank holds the rows; rank 0 writes them)
                write_rejection_sampling(ctx.work_dir, rows, stats, scored)
        settings = SFTStage().settings(SFTStage.Config(data="x", sft=cfg.sft), f"stages.{ctx.name}.sft")
        settings.progress = settings.progress and ctx.progress
        callbacks = []
        if ctx.tracker is not None:
            from grpo.tracking import trainer_callback

            callbacks.append(trainer_callback(ctx.tracker))
        train_sft(ctx.init_model, rows, template_of(cfg.template, recipe.template), settings, ctx.work_dir,
                  seed=ctx.seed, resume=ctx.resume, dtype=recipe.dtype, callbacks=callbacks, precision=recipe.precision,
                  distributed=recipe.distributed)
        if not ctx.is_main:
            return StageResult()
        losses = [r["loss"] for r in read_jsonl(ctx.work_dir / "metrics.jsonl") if isinstance(r.get("loss"), (int, float))]
        metrics = {"teacher_samples": stats["total"], "kept": stats["kept"], "keep_rate": stats["kept"] / max(1, stats["total"])}
        if losses:
            metrics.update({"loss (first)": losses[0], "loss (last)": losses[-1]})
        return StageResult(outputs={"model": "final", "data": "data.jsonl"}, metrics=metrics)

    def _on_policy(self, ctx: StageContext) -> StageResult:
        from pipelines.stages.grpo import stage_grpo_config
        from pipelines.train import run_grpo, summarize

        cfg, recipe = ctx.config, ctx.recipe
        grpo_cfg = stage_grpo_config(recipe, cfg.grpo, f"stages.{ctx.name}.grpo")
        grpo_cfg.progress = grpo_cfg.progress and ctx.progress
        result = run_grpo(
            model=ctx.init_model, data=data_spec(cfg.data, recipe.data.train, ctx.data_path, f"stages.{ctx.name}.data"),
            template=template_of(cfg.template, recipe.template), rewards=cfg.rewards or recipe.rewards, config=grpo_cfg,
            out_dir=ctx.work_dir, seed=ctx.seed, dtype=recipe.dtype, device=recipe.device, resume=ctx.resume,
            on_step=ctx.tracker.on_step if ctx.tracker else None, precision=recipe.precision,
            teacher={"model": ctx.inputs["teacher"], "kl_weight": cfg.kl_weight, "reward_weight": cfg.reward_weight, "baseline": cfg.kl_baseline},
            distributed=recipe.distributed,
        )
        summary = summarize(result.metrics)
        metrics = {"steps": result.steps_done}
        kl = [m["distill/reverse_kl"] for m in result.metrics if isinstance(m.get("distill/reverse_kl"), (int, float))]
        if kl:
            metrics.update({"reverse_kl (first)": kl[0], "reverse_kl (last)": kl[-1]})
        for key in summary["first"]:
            metrics[f"{key} (first)"] = summary["first"][key]
            metrics[f"{key} (last)"] = summary["last"][key]
        return StageResult(outputs={"model": "final"}, metrics=metrics)
