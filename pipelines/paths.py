"""Relative paths in recipes: read against the folder of the file they are written in.

One rule, everywhere a recipe names a file or folder (``data`` sources, ``model``, a stage's
``init`` and other models (``teacher``), a reward model's ``model``, an ablation's ``base:``, ``imports``, ``code_dirs``, reward
files ``path/to/file.py:function``): a relative path written in a recipe file is relative to
that file's folder; one given with ``--set`` is relative to the current directory. Paths are
made absolute when the recipe is read, so every later message names the absolute path tried,
and a recipe copied elsewhere (``recipe.resolved.yaml``, an ablation's per-run recipes) still
points at the same files.

Values that are not paths stay as they are: model aliases (``smollm2-135m-instruct``), named
data sources (``gsm8k``), ``synthetic:``/``hub:`` sources, ``stages.<name>`` references, and
Hugging Face ids (``org/name``) that are not a local file or folder. ``output_dir`` is not a
path to read: like its default ``runs/<name>``, it is relative to the current directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from grpo.schema import ConfigError

STAGE_REF = "stages."


class PathResolver:
    """Makes the paths of one recipe mapping absolute. ``base`` is the folder of the file the
    mapping was read from; values under the ``overridden`` key paths (``--set``) use the
    current directory instead."""

    def __init__(self, base: Path, overridden: list[str] = ()):
        self.base = Path(os.path.abspath(base))
        self.cwd = Path.cwd()
        self.overridden = list(overridden)

    def folder_for(self, location: str) -> Path:
        for key in self.overridden:
            if location == key or location.startswith(key + ".") or key.startswith(location + "."):
                return self.cwd
        return self.base

    # -- one value --------------------------------------------------------------------------

    def path(self, value: Any, location: str, looks_like_path: bool) -> Any:
        """``value`` made absolute when it is a path: when it exists relative to its folder, or
        when it can only be a path (``looks_like_path``). Anything else is returned unchanged."""
        if not isinstance(value, str) or not value.strip():
            return value
        text = os.path.expanduser(value.strip())
        if os.path.isabs(text):
            return os.path.normpath(text)
        folder = self.folder_for(location)
        candidate = Path(os.path.normpath(folder / text))
        if candidate.exists():
            return str(candidate)
        beside_cwd = Path(os.path.normpath(self.cwd / text))
        if folder != self.cwd and beside_cwd.exists():
            # The rule changed for paths written in files (they used to be read against the
            # current directory): say where it is and how to write it.
            raise ConfigError(
                f"{location}: '{value}' is read relative to the recipe's folder, and '{candidate}' does not exist; "
                f"'{beside_cwd}' does (relative to the current directory): write '{os.path.relpath(beside_cwd, folder)}' "
                "or an absolute path"
            )
        return str(candidate) if looks_like_path else value

    def data_source(self, value: Any, location: str) -> Any:
        from grpo.data import DATA_SOURCES, HUB_PREFIX, SYNTHETIC_PREFIX, looks_like_path

        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith((SYNTHETIC_PREFIX, HUB_PREFIX, STAGE_REF)) or text in DATA_SOURCES:
            return value
        return self.path(value, location, looks_like_path(text))

    def data_spec(self, value: Any, location: str) -> Any:
        """A data spec: a source string or a mapping with ``source``."""
        if isinstance(value, dict) and "source" in value:
            return {**value, "source": self.data_source(value["source"], f"{location}.source")}
        return self.data_source(value, location)

    def model(self, value: Any, location: str) -> Any:
        from grpo.models import ALIASES, BUILT_ALIASES

        if not isinstance(value, str):
            return value
        text = value.strip()
        if text == "base" or text.startswith(STAGE_REF) or text.lower() in ALIASES or text.lower() in BUILT_ALIASES:
            return value
        return self.path(value, location, text.startswith((".", "/", "~")))

    def import_entry(self, value: Any, location: str) -> Any:
        from rewards.user_code import is_file_spec

        if isinstance(value, str) and is_file_spec(value):
            return self.path(value, location, True)
        return value

    # -- sections ---------------------------------------------------------------------------

    def rewards(self, rewards: Any, location: str) -> Any:
        """Reward keys ``file.py:function`` get an absolute file path (the term keeps the key as
        written for its name); a reward model's ``model`` parameter is a model path."""
        from rewards.user_code import is_file_spec

        if not isinstance(rewards, dict):
            return rewards
        out = {}
        for key, spec in rewards.items():
            where = f"{location}.{key}"
            if isinstance(spec, dict) and "model" in spec:
                spec = {**spec, "model": self.model(spec["model"], f"{where}.model")}
            target, sep, attr = str(key).rpartition(":")
            if sep and is_file_spec(target):
                resolved = self.path(target, where, True)
                if resolved != target:
                    spec = {**(spec if isinstance(spec, dict) else {"weight": spec})}
                    spec.setdefault("name", key)
                    key = f"{resolved}:{attr}"
            out[key] = spec
        return out

    def recipe(self, data: dict, prefix: str = "") -> dict:
        """A recipe mapping (or an ablation arm's overlay) with its paths made absolute, in place."""
        if not isinstance(data, dict):
            return data
        if "model" in data:
            data["model"] = self.model(data["model"], f"{prefix}model")
        section = data.get("data")
        if isinstance(section, dict):
            for split in ("train", "eval"):
                if split in section:
                    section[split] = self.data_spec(section[split], f"{prefix}data.{split}")
        elif section is not None:
            data["data"] = self.data_spec(section, f"{prefix}data")
        for key, method in (("imports", self.import_entry), ("code_dirs", lambda v, loc: self.path(v, loc, True))):
            if isinstance(data.get(key), list):
                data[key] = [method(v, f"{prefix}{key}.{i}") for i, v in enumerate(data[key])]
        if "rewards" in data:
            data["rewards"] = self.rewards(data["rewards"], f"{prefix}rewards")
        for i, stage in enumerate(data.get("stages") or []):
            if not isinstance(stage, dict):
                continue
            where = f"{prefix}stages.{i}"
            for key in ("init", *_model_keys(stage.get("kind"))):  # and a kind's other models (distill's teacher)
                if key in stage:
                    stage[key] = self.model(stage[key], f"{where}.{key}")
            if "data" in stage:
                stage["data"] = self.data_spec(stage["data"], f"{where}.data")
            if isinstance(stage.get("mix"), dict) and "data" in stage["mix"]:
                stage["mix"]["data"] = self.data_spec(stage["mix"]["data"], f"{where}.mix.data")
            if "rewards" in stage:
                stage["rewards"] = self.rewards(stage["rewards"], f"{where}.rewards")
        return data


def resolve_recipe_paths(data: dict, base: Path, overridden: list[str] = ()) -> dict:
    """``data`` (a recipe read from a file in folder ``base``) with its paths made absolute, and
    ``base`` first among the folders searched for the recipe's modules (``code_dirs``)."""
    resolver = PathResolver(base, overridden)
    resolver.recipe(data)
    dirs = data.get("code_dirs")
    if dirs is None or isinstance(dirs, list):
        data["code_dirs"] = _unique([str(resolver.base), *(dirs or [])])
    return data


def _model_keys(kind) -> tuple[str, ...]:
    """The keys of a stage kind, besides ``init``, that name a model (``model_refs``)."""
    from pipelines.stages import STAGE_KINDS

    return getattr(STAGE_KINDS.get(kind), "model_refs", ()) if isinstance(kind, str) else ()


def _unique(items: list) -> list:
    return list(dict.fromkeys(items))
