"""Recipes: YAML files that say what to run, loaded into typed, validated dataclasses.

A recipe names a model, data, a prompt template, a weighted set of reward functions and the GRPO
settings. ``grpo train`` runs exactly that; staged recipes (``stages:``) reuse these sections as
defaults for every stage. Loading checks every key and type and names the offending path:
``recipes/demo.yaml: grpo.group_sise: unknown key; did you mean 'group_size'?``
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from grpo.config import GRPOConfig
from grpo.data import DataSpec
from grpo.schema import ConfigError, from_dict, set_dotted, to_dict
from grpo.scoring import RewardTerm
from grpo.templates import TemplateSpec


@dataclass
class DataSection:
    train: DataSpec | str  # a DataSpec mapping, or just its source
    eval: DataSpec | str | None = None

    def __post_init__(self):
        if isinstance(self.train, str):
            self.train = DataSpec(source=self.train)
        if isinstance(self.eval, str):
            self.eval = DataSpec(source=self.eval)


@dataclass
class Recipe:
    name: str
    data: DataSection
    model: str = "smollm2-135m-instruct"  # alias, Hugging Face id or local directory
    seed: int = 0  # fixes data order, sampling and initialisation
    output_dir: str | None = None  # default: runs/<name>
    dtype: str = "float32"  # float32 on CPU; bfloat16 on GPUs that have it
    template: TemplateSpec | str = "chat"  # a TemplateSpec mapping, or just its kind
    # name (registered or "module.path:function") -> weight, or {weight: w, <param>: value, ...}
    rewards: dict[str, float | dict[str, Any]] = field(default_factory=lambda: {"accuracy": 1.0, "format": 0.5})
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    # `grpo run`: the stages, in order; each has name, kind, init and its kind's keys
    # (pipelines/stages/). Validated by pipelines.runner.plan_stages.
    stages: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self):
        if isinstance(self.template, str):
            self.template = TemplateSpec(kind=self.template)
        if not self.rewards:
            raise ValueError("rewards: at least one reward function is needed")
        for name, spec in self.rewards.items():
            if isinstance(spec, dict) and not isinstance(spec.get("weight", 1.0), (int, float)):
                raise ValueError(f"rewards.{name}.weight: expected a number, got {spec['weight']!r}")

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir or f"runs/{self.name}")


def parse_override(text: str) -> tuple[str, Any]:
    """``key.path=value`` with the value read as YAML (so ``3`` is an int and ``[a, b]`` a list)."""
    if "=" not in text:
        raise ConfigError(f"--set {text}: expected key=value, e.g. --set grpo.steps=10")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else ""


def read_recipe_dict(path: str | Path, overrides: list[str] = ()) -> dict:
    """The recipe's YAML as a dict with ``--set`` overrides applied (no validation yet)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"recipe file '{path}' does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of recipe keys at the top level, got {type(data).__name__}")
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(data, key, value)
    return data


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Read, override and validate a recipe; every error names the file and the key path."""
    data = read_recipe_dict(path, overrides)
    try:
        return from_dict(Recipe, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def recipe_to_dict(recipe: Recipe) -> dict:
    return to_dict(recipe)


def reward_terms(rewards: dict[str, float | dict[str, Any]]) -> list[RewardTerm]:
    """Resolve each reward name (registered or ``module:function``) and bind its parameters."""
    from rewards import get_reward

    terms = []
    for name, spec in rewards.items():
        params = dict(spec) if isinstance(spec, dict) else {"weight": spec}
        weight = float(params.pop("weight", 1.0))
        try:
            fn = get_reward(name)
        except (ValueError, ImportError, AttributeError, TypeError) as exc:
            raise ConfigError(f"rewards.{name}: {exc}") from None
        label = name.rsplit(":", 1)[-1]
        terms.append(RewardTerm(name=label, fn=fn, weight=weight, params=params))
    return terms
