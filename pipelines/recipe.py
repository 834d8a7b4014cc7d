"""Recipes: YAML files that say what to run, loaded into typed, validated dataclasses.

A recipe names a model, data, a prompt template, a weighted set of reward functions and the GRPO
settings. ``grpo train`` runs exactly that; staged recipes (``stages:``) reuse these sections as
defaults for every stage. Loading checks every key and type and names the offending path:
``recipes/demo.yaml: grpo.group_sise: unknown key; did you mean 'group_size'?``
"""

from __future__ import annotations

import inspect
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from grpo.config import GRPOConfig
from grpo.data import DataSpec
from grpo.launch import DistributedSettings
from grpo.models import DTYPE_NAMES
from grpo.schema import ConfigError, from_dict, nearest, set_dotted, to_dict
from grpo.scoring import RewardTerm
from grpo.templates import TemplateSpec
from grpo.tracking import TrackingSettings


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
    dtype: str = "float32"  # weights of the sampling stages (generate, eval, rejection_sampling); for grpo/sft when precision is unset
    # grpo and sft stages: auto | fp32 | bf16-mixed | bf16 (grpo/precision.py); unset: from dtype (float32 → fp32, bfloat16 → bf16)
    precision: Literal["auto", "fp32", "bf16-mixed", "bf16"] | None = None
    device: str = "auto"  # where GRPO and sampling run: auto (a GPU if there is one, else the CPU), cpu, cuda, cuda:1, mps
    template: TemplateSpec | str = "chat"  # a TemplateSpec mapping, or just its kind
    # name (registered or "module.path:function") -> weight, or {weight: w, <param>: value, ...}
    rewards: dict[str, float | dict[str, Any]] = field(default_factory=lambda: {"accuracy": 1.0, "format": 0.5})
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    distributed: DistributedSettings = field(default_factory=DistributedSettings)  # several processes: ddp | fsdp (docs/distributed.md)
    # `grpo run`: the stages, in order; each has name, kind, init and its kind's keys
    # (pipelines/stages/). Validated by pipelines.runner.plan_stages.
    stages: list[dict[str, Any]] = field(default_factory=list)
    # `grpo run`: evaluate the model after these stages (`base`: the recipe's model) on the eval
    # set, with the settings of the recipe's last eval stage; report.md opens with the table.
    # null (default): the base and every stage that produces a model, when there is an eval set.
    eval_after: list[str] | None = None
    # Experiment trackers (TRL's name): tensorboard, trackio, wandb, mlflow (grpo/tracking.py);
    # a stage may set its own report_to. Offline by default; settings in `tracking:`.
    report_to: list[str] = field(default_factory=list)
    tracking: TrackingSettings = field(default_factory=TrackingSettings)
    # Modules imported before the rest of the recipe is read, so that their decorators register
    # rewards, templates, tasks or stage kinds: module names or .py files.
    imports: list[str] = field(default_factory=list)
    # Folders searched for your modules (module:function rewards, imports), after the installed
    # packages: the recipe file's folder (added when it is read), these, the current directory.
    code_dirs: list[str] = field(default_factory=list)

    @classmethod
    def prepare_dict(cls, data: dict, path: str) -> dict:
        """Before the keys are checked: TRL's ``grpo.reward_weights`` applied to the rewards, the
        ``code_dirs`` registered and the ``imports`` run (they may register what later keys name)."""
        from rewards.user_code import UserCodeError, add_user_dirs, load_module

        data = _apply_reward_weights(data)
        dirs = data.get("code_dirs")
        if isinstance(dirs, list) and all(isinstance(d, str) for d in dirs):
            add_user_dirs(dirs)
        imports = data.get("imports")
        if isinstance(imports, list):
            for i, entry in enumerate(imports):
                if not isinstance(entry, str):
                    raise ConfigError(f"imports[{i}]: expected a module name or a .py file, got {entry!r}")
                try:
                    load_module(entry)
                except UserCodeError as exc:
                    raise ConfigError(f"imports[{i}]: {exc}") from None
        return data

    @classmethod
    def unknown_key_hint(cls, key: str) -> str | None:
        from grpo.trl_compat import top_level_hint

        return top_level_hint(key)

    def __post_init__(self):
        if isinstance(self.template, str):
            self.template = TemplateSpec(kind=self.template)
        if not self.rewards:
            raise ValueError("rewards: at least one reward function is needed")
        for name, spec in self.rewards.items():
            reward_weight(name, spec)
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device.strip()):
            raise ValueError(f"device: expected auto, cpu, cuda, cuda:<index> or mps, got {self.device!r}")
        if self.dtype.strip().lower().removeprefix("torch.") not in DTYPE_NAMES:
            raise ValueError(f"dtype: expected one of float32, bfloat16, float16, auto, got {self.dtype!r}")
        from grpo.tracking import check_trackers

        check_trackers(self.report_to)

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
    """The recipe's YAML as a dict with ``--set`` overrides applied and relative paths made
    absolute (pipelines/paths.py: against the file's folder, ``--set`` values against the current
    directory); no validation yet."""
    from pipelines.paths import resolve_recipe_paths

    data, overridden = read_mapping(path, overrides)
    try:
        return resolve_recipe_paths(data, Path(path).parent, overridden)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def read_mapping(path: str | Path, overrides: list[str] = ()) -> tuple[dict, list[str]]:
    """A YAML file's top-level mapping with ``--set`` overrides applied, and the overridden keys."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"recipe file '{path.absolute()}' does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    if data is None:
        raise ConfigError(f"{path}: the recipe is empty; expected a mapping with at least name and data")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of recipe keys at the top level, got {type(data).__name__}")
    overridden = []
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(data, key, value)
        overridden.append(key)
    return data, overridden


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Read, override and validate a recipe; every error names the file and the key path.

    Validation covers the keys and types, the reward functions (names resolve, ``module:function``
    paths import and are callable, parameters exist) and, for staged recipes, the stage plan
    (references, kinds, each stage's keys): nothing is loaded or trained before all of it passes.
    """
    data = read_recipe_dict(path, overrides)
    try:
        recipe = from_dict(Recipe, data)
        reward_terms(recipe.rewards)
        if recipe.stages:
            from pipelines.runner import plan_stages  # (runner imports this module)

            plan_stages(recipe)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return recipe


def recipe_to_dict(recipe: Recipe) -> dict:
    return to_dict(recipe)


#: Keys of a reward's mapping that are not parameters of its function.
REWARD_KEYS = ("weight", "when", "name")


def reward_names(rewards: dict[str, float | dict[str, Any]]) -> list[str]:
    """Each reward term's name, in order: its ``name:`` if it has one, else its recipe key."""
    return [spec.get("name", key) if isinstance(spec, dict) else key for key, spec in rewards.items()]


def reward_terms(rewards: dict[str, float | dict[str, Any]]) -> list[RewardTerm]:
    """Resolve each reward (registered, ``module:function`` or ``file.py:function``) and bind its
    parameters. A term is named by its recipe key, or by its ``name:``; names must differ (they
    are the metrics' ``rewards/<name>/mean`` and the completions' reward keys)."""
    import grpo.reward_model  # noqa: F401  (registers `reward_model`, which needs torch)
    from rewards import get_reward

    terms, named = [], {}
    for key, spec in rewards.items():
        try:
            weight = reward_weight(key, spec)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        params = dict(spec) if isinstance(spec, dict) else {}
        params.pop("weight", None)
        when = params.pop("when", None) or {}
        if not isinstance(when, dict):
            raise ConfigError(f"rewards.{key}.when: expected a mapping of column: value, got {when!r}")
        name = params.pop("name", key)
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"rewards.{key}.name: expected a non-empty string, got {name!r}")
        if name in named:
            raise ConfigError(
                f"rewards.{key}: the name {name!r} is already rewards.{named[name]}'s; give each reward its own name "
                "(name: in its mapping)"
            )
        named[name] = key
        try:
            fn = get_reward(key)
        except (ValueError, ImportError, AttributeError, TypeError) as exc:
            raise ConfigError(f"rewards.{key}: {exc}") from None
        _check_parameters(key, fn, params)
        check_setup = getattr(fn, "check_setup", None)  # e.g. the code reward: its sandbox starts here
        if callable(check_setup):
            try:
                check_setup(**params)
            except (ValueError, RuntimeError) as exc:
                raise ConfigError(f"rewards.{key}: {exc}") from None
        terms.append(RewardTerm(name=name, fn=fn, weight=weight, params=params, when=when))
    return terms


def _apply_reward_weights(data: dict) -> dict:
    """TRL's ``reward_weights`` (one weight per reward, in order) in a ``grpo:`` section, the
    recipe's or a stage's, become the weights of that section's rewards."""
    from grpo.trl_compat import note

    def apply(holder: dict, default_rewards, where: str) -> None:
        grpo = holder.get("grpo")
        if not isinstance(grpo, dict) or "reward_weights" not in grpo:
            return
        weights = grpo["reward_weights"]
        if weights is None:
            return  # TRL's default (every weight 1.0); the table drops it with a note
        rewards = holder.get("rewards") or default_rewards
        if not isinstance(rewards, dict):
            return
        if not isinstance(weights, list) or len(weights) != len(rewards):
            raise ConfigError(
                f"{where}grpo.reward_weights: expected a list of {len(rewards)} weights, one per reward in order "
                f"({', '.join(rewards)}), got {weights!r}"
            )
        holder["grpo"] = {k: v for k, v in grpo.items() if k != "reward_weights"}
        holder["rewards"] = {
            name: ({**spec, "weight": w} if isinstance(spec, dict) else w) for (name, spec), w in zip(rewards.items(), weights)
        }
        pairs = ", ".join(f"{name}: {w}" for name, w in zip(rewards, weights))
        note(f"{where}grpo.reward_weights is TRL's: read as the weights of {where}rewards ({pairs})")

    data = dict(data)
    recipe_rewards = data.get("rewards") or Recipe.__dataclass_fields__["rewards"].default_factory()
    apply(data, recipe_rewards, "")
    if isinstance(data.get("stages"), list):
        data["stages"] = [dict(s) if isinstance(s, dict) else s for s in data["stages"]]
        for i, stage in enumerate(data["stages"]):
            if isinstance(stage, dict):
                apply(stage, data.get("rewards") or recipe_rewards, f"stages[{i}].")
    return data


def reward_weight(name: str, spec: float | dict[str, Any]) -> float:
    """The weight of reward ``name`` (1.0 when a mapping gives none); ValueError unless a finite number."""
    weight = spec.get("weight", 1.0) if isinstance(spec, dict) else spec
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
        if isinstance(spec, dict):
            raise ValueError(f"rewards.{name}.weight: expected a finite number, got {weight!r}")
        raise ValueError(f"rewards.{name}: expected a finite number (the weight) or a mapping, got {weight!r}")
    return float(weight)


def _check_parameters(name: str, fn, params: dict[str, Any]) -> None:
    """Recipe parameters must be named in the function's signature: a misspelt one is an error
    here, not a keyword silently swallowed by ``**kwargs``; a required keyword-only one must be given."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a callable whose signature cannot be read: nothing to check
        return
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    named = [p for p in signature.parameters.values() if p.kind in kinds and p.name not in ("prompts", "completions")]
    names = [p.name for p in named]
    for param in params:
        if param not in names:
            hint = nearest(param, names)
            extra = f"did you mean {hint!r}? " if hint else ""
            raise ConfigError(f"rewards.{name}.{param}: unknown parameter; {extra}parameters: {', '.join(names) or '(none)'}")
    for p in named:
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty and p.name not in params:
            raise ConfigError(f"rewards.{name}.{p.name}: required parameter is missing")
