"""``kind: sft`` — supervised fine-tuning (cold start; SFT on rejection-sampled data) with TRL's SFTTrainer."""

from __future__ import annotations

from dataclasses import dataclass, field

from grpo.data import DataSpec
from grpo.templates import TemplateSpec
from pipelines.stages.base import Stage, StageContext, StageResult, register_stage
from pipelines.stages.common import data_spec, template_of


def _sft_settings_type():
    from grpo.sft import SFTSettings

    return SFTSettings


@dataclass
class SFTStageConfig:
    data: DataSpec | str  # messages or prompt/completion rows; or stages.<name> (e.g. rejection sampling)
    template: TemplateSpec | str | None = None  # how prompts are rendered; default: the recipe's
    sft: dict = field(default_factory=dict)  # grpo/sft.py SFTSettings: epochs, learning_rate, batch_size, ...


@register_stage("sft")
class SFTStage(Stage):
    Config = SFTStageConfig
    produces = ("model",)
    resumable = True

    def settings(self, config: SFTStageConfig, path: str):
        from grpo.schema import from_dict

        return from_dict(_sft_settings_type(), config.sft, path)

    def validate(self, config: SFTStageConfig, recipe, path: str) -> None:
        self.settings(config, f"{path}.sft")

    def run(self, ctx: StageContext) -> StageResult:
        from grpo.data import load_sft_rows
        from grpo.io import read_jsonl
        from grpo.sft import train_sft

        cfg, recipe = ctx.config, ctx.recipe
        settings = self.settings(cfg, f"stages.{ctx.name}.sft")
        settings.progress = settings.progress and ctx.progress
        rows = load_sft_rows(data_spec(cfg.data, None, ctx.data_path, f"stages.{ctx.name}.data"))
        callbacks = []
        if ctx.tracker is not None:
            from grpo.tracking import trainer_callback

            callbacks.append(trainer_callback(ctx.tracker))
        train_sft(
            ctx.init_model, rows, template_of(cfg.template, recipe.template), settings, ctx.work_dir,
            seed=ctx.seed, resume=ctx.resume, dtype=recipe.dtype, callbacks=callbacks, precision=recipe.precision,
            distributed=recipe.distributed,
        )
        if not ctx.is_main:
            return StageResult()
        losses = [r["loss"] for r in read_jsonl(ctx.work_dir / "metrics.jsonl") if isinstance(r.get("loss"), (int, float))]
        metrics = {"rows": len(rows)}
        if losses:
            metrics.update({"loss (first)": losses[0], "loss (last)": losses[-1]})
        return StageResult(outputs={"model": "final"}, metrics=metrics)
