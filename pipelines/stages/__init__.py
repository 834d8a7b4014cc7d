"""Stage kinds of the R1 pipeline, registered by name (``kind:`` in a recipe's stages)."""

from pipelines.stages import distill, grpo, sampling, sft  # noqa: F401  (imported to register the kinds)
from pipelines.stages.base import STAGE_KINDS, Stage, StageContext, StageResult, register_stage

__all__ = ["STAGE_KINDS", "Stage", "StageContext", "StageResult", "register_stage"]
