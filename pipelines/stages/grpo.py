"""``kind: grpo`` — reasoning RL and final RL: the GRPO trainer on the stage's prompts and rewards."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from grpo.config import GRPOConfig
from grpo.data import DataSpec
from grpo.schema import from_dict, to_dict
from grpo.templates import TemplateSpec
from pipelines.stages.base import Stage, StageContext, StageResult, register_stage
from pipelines.stages.common import data_spec, template_of


@dataclass
class GRPOStageConfig:
    data: DataSpec | str | None = None  # prompts; default data.train; or stages.<name> (a dataset)
    template: TemplateSpec | str | None = None  # default: the recipe's template
    rewards: dict[str, float | dict[str, Any]] | None = None  # default: the recipe's rewards
    grpo: dict[str, Any] = field(default_factory=dict)  # overrides of the recipe's grpo section


def stage_grpo_config(recipe, overrides: dict, path: str) -> GRPOConfig:
    """The recipe's grpo section with this stage's overrides on top (validated, errors name ``path``)."""
    overrides = GRPOConfig.prepare_dict(dict(overrides), path)  # TRL's names, before they meet ours
    return from_dict(GRPOConfig, {**to_dict(recipe.grpo), **overrides}, path)


@register_stage("grpo")
class GRPOStage(Stage):
    Config = GRPOStageConfig
    produces = ("model",)
    resumable = True

    def validate(self, config: GRPOStageConfig, recipe, path: str) -> None:
        stage_grpo_config(recipe, config.grpo, f"{path}.grpo")

    def run(self, ctx: StageContext) -> StageResult:
        from pipelines.train import run_grpo, summarize

        cfg, recipe = ctx.config, ctx.recipe
        grpo_cfg = stage_grpo_config(recipe, cfg.grpo, f"stages.{ctx.name}.grpo")
        grpo_cfg.progress = grpo_cfg.progress and ctx.progress
        result = run_grpo(
            model=ctx.init_model,
            data=data_spec(cfg.data, recipe.data.train, ctx.data_path, f"stages.{ctx.name}.data"),
            template=template_of(cfg.template, recipe.template),
            rewards=cfg.rewards or recipe.rewards,
            config=grpo_cfg,
            out_dir=ctx.work_dir,
            seed=ctx.seed,
            dtype=recipe.dtype,
            device=recipe.device,
            resume=ctx.resume,
            precision=recipe.precision,
            on_step=ctx.tracker.on_step if ctx.tracker else None,
            distributed=recipe.distributed,
        )
        summary = summarize(result.metrics)
        metrics = {"steps": result.steps_done}
        for key in summary["first"]:
            metrics[f"{key} (first)"] = summary["first"][key]
            metrics[f"{key} (last)"] = summary["last"][key]
        return StageResult(outputs={"model": "final"}, metrics=metrics)
