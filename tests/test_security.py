"""Nothing in the toolkit runs code or unpickles data it was not asked to.

YAML is read with ``safe_load`` only, checkpoints are safetensors plus ``torch.load(...,
weights_only=True)``, nothing is unpickled, evaluated or exec'd, no remote model code is trusted
by default, and user code runs only when a recipe names it (``module:function`` rewards).
"""

import re
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for d in ("grpo", "rewards", "pipelines") for p in (ROOT / d).rglob("*.py"))

FORBIDDEN = {
    "yaml.load without SafeLoader": re.compile(r"\byaml\.(?:load|load_all|unsafe_load|full_load|full_load_all)\s*\("),
    "yaml Loader / UnsafeLoader": re.compile(r"\b(?:Unsafe|Full)?Loader\s*=\s*yaml\.(?:Unsafe|Full)?Loader\b"),
    "pickle": re.compile(r"\b(?:c?[pP]ickle|dill|cloudpickle|joblib)\.loads?\s*\(|\bimport\s+(?:c?pickle|dill|cloudpickle)\b"),
    "eval()": re.compile(r"(?<![\w.])eval\s*\("),
    "exec()": re.compile(r"(?<![\w.])exec\s*\("),
    "trust_remote_code=True": re.compile(r"trust_remote_code\s*=\s*True"),
    "shell=True": re.compile(r"shell\s*=\s*True"),
}


def _torch_load_calls(text: str):
    """Each ``torch.load(...)`` call with its full argument text (balanced parentheses)."""
    for match in re.finditer(r"\btorch\.load\s*\(", text):
        depth, i = 1, match.end()
        while depth and i < len(text):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        yield text[match.start() : i]


def test_the_scan_sees_the_source_tree():
    assert len(SOURCES) > 30 and any(p.name == "trainer.py" for p in SOURCES)
    # and it would catch what it looks for
    assert FORBIDDEN["eval()"].search("x = eval(s)") and not FORBIDDEN["eval()"].search("model.eval()")
    assert FORBIDDEN["yaml.load without SafeLoader"].search("yaml.load(f)") and not FORBIDDEN["yaml.load without SafeLoader"].search("yaml.safe_load(f)")
    assert list(_torch_load_calls("torch.load(p, map_location=f(x))")) == ["torch.load(p, map_location=f(x))"]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_unsafe_loading_or_evaluation(path):
    text = path.read_text(encoding="utf-8")  # comments included: a mention there fails too (be conservative)
    found = [f"{what}: line {text[: m.start()].count(chr(10)) + 1}" for what, rx in FORBIDDEN.items() for m in rx.finditer(text)]
    found += [f"torch.load without weights_only=True: {call!r}" for call in _torch_load_calls(text) if "weights_only=True" not in call]
    assert not found, f"{path.relative_to(ROOT)}: {found}"


def test_user_code_runs_only_when_a_recipe_names_it(tmp_path, monkeypatch):
    """A module next to the recipe is imported when the recipe names it as a reward, never otherwise."""
    import yaml

    from pipelines.recipe import load_recipe

    marker = tmp_path / "imported"
    (tmp_path / "side_effects.py").write_text(textwrap.dedent(f"""
        open({str(marker)!r}, "w").close()
        def reward(prompts, completions, **kwargs):
            return [0.0] * len(completions)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    recipe = {"name": "s", "data": {"train": "synthetic:arithmetic"}, "rewards": {"accuracy": 1.0}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    load_recipe(tmp_path / "r.yaml")
    assert not marker.exists() and "side_effects" not in sys.modules
    recipe["rewards"]["side_effects:reward"] = 1.0
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    load_recipe(tmp_path / "r.yaml")
    assert marker.exists()
    monkeypatch.delitem(sys.modules, "side_effects")


def test_yaml_tags_that_construct_objects_are_refused(tmp_path):
    """safe_load: a recipe cannot make Python objects (or run code) with !!python tags."""
    from grpo.schema import ConfigError
    from pipelines.recipe import load_recipe

    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['touch pwned']\ndata: {train: synthetic:arithmetic}\n")
    with pytest.raises(ConfigError, match="not valid YAML .*could not determine a constructor for the tag"):
        load_recipe(path)
    assert not (tmp_path / "pwned").exists()
