"""Pieces several stage kinds share: where data comes from, how prompts are rendered, sampling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from grpo.data import DataSpec
from grpo.schema import ConfigError
from grpo.templates import TemplateSpec

STAGE_REF = "stages."


def is_stage_ref(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(STAGE_REF)


def ref_name(value: str) -> str:
    return value[len(STAGE_REF) :]


def data_spec(value: DataSpec | str | None, default: DataSpec | None, data_path: str | None, what: str) -> DataSpec:
    """The DataSpec a stage reads: its own, an earlier stage's dataset, or the recipe default."""
    if is_stage_ref(value):
        return DataSpec(source=data_path, extract_gold=False)
    if isinstance(value, str):
        return DataSpec(source=value)
    if value is not None:
        return value
    if default is None:
        raise ConfigError(f"{what}: no data given and the recipe has no default for it")
    return default


def template_of(value: TemplateSpec | str | None, default: TemplateSpec) -> TemplateSpec:
    if value is None:
        return default
    return TemplateSpec(kind=value) if isinstance(value, str) else value


@dataclass
class SamplingSettings:
    """Sampling for generate / eval / rejection sampling; unset values come from the recipe's grpo section."""

    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    batch_prompts: int = 8  # prompts generated together (each with all its samples)

    def resolved(self, grpo) -> dict:
        return {
            "max_new_tokens": self.max_new_tokens or grpo.max_new_tokens,
            "temperature": self.temperature if self.temperature is not None else grpo.temperature,
            "top_p": self.top_p if self.top_p is not None else grpo.top_p,
            "top_k": self.top_k if self.top_k is not None else grpo.top_k,
        }
