"""`grpo train` end to end on a tiny model, recipe validation, and one-line user errors."""

import json
import textwrap
from pathlib import Path

import pytest
import yaml

from grpo.io import read_jsonl
from grpo.schema import ConfigError
from pipelines.cli import main
from pipelines.recipe import load_recipe, reward_terms

RECIPE = """
name: tiny
model: {model}
seed: 0
output_dir: {out}
data:
  train: {{source: "synthetic:arithmetic", size: 40, options: {{max_value: 9, ops: "+"}}}}
template: {{kind: chat, system: "Be brief."}}
rewards:
  accuracy: {{weight: 1.0, fallback: last_number}}
  format: 0.5
  length: {{weight: 0.1, target_tokens: 8}}
grpo: {{steps: 3, prompts_per_step: 2, group_size: 4, max_new_tokens: 10, learning_rate: 1.0e-3, save_every: 2, progress: false}}
"""


def write_recipe(tmp_path, model_dir, text=RECIPE, name="r.yaml", **fmt) -> Path:
    path = tmp_path / name
    path.write_text(text.format(model=model_dir, out=tmp_path / "run", **fmt))
    return path


def test_grpo_train_end_to_end(tiny_model_dir, tmp_path, capsys):
    recipe = write_recipe(tmp_path, tiny_model_dir)
    assert main(["train", str(recipe), "--set", "grpo.steps=4", "--summary-json", str(tmp_path / "s.json")]) == 0
    run = tmp_path / "run"
    resolved = yaml.safe_load((run / "recipe.resolved.yaml").read_text())
    assert resolved["grpo"]["steps"] == 4 and resolved["grpo"]["group_size"] == 4  # --set applied, defaults filled
    metrics = read_jsonl(run / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert {"rewards/accuracy/mean", "rewards/format/mean", "rewards/length/mean", "accuracy/no_answer"} <= set(metrics[0])
    sample = read_jsonl(run / "completions.jsonl")[0]
    assert set(sample["rewards"]) == {"accuracy", "format", "length"} and sample["prompt"].startswith("<|system|>")
    assert (run / "final" / "config.json").exists() and (run / "curves.png").exists()
    out = capsys.readouterr().out
    assert "first 2 steps" in out and "completions/mean_length" in out
    # the precision and why, printed at start and kept in the run directory
    assert "precision: fp32 (weights float32, compute float32) — dtype: float32 in the recipe (no precision key)" in out
    assert json.loads((run / "precision.json").read_text())["precision"] == "fp32"
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["first"]["reward"] == pytest.approx(sum(m["reward"] for m in metrics[:2]) / 2)

    # Running again into the same directory refuses; --resume with nothing left to do is a no-op.
    assert main(["train", str(recipe), "--set", "grpo.steps=4"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", str(recipe), "--set", "grpo.steps=4", "--resume"]) == 0
    assert len(read_jsonl(run / "metrics.jsonl")) == 4


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.replace("group_size: 4", "group_sise: 4"), "grpo.group_sise: unknown key; did you mean 'group_size'?"),
        (lambda t: t.replace("group_size: 4", "group_size: 1"), "grpo.group_size: must be ≥ 2"),
        (lambda t: t.replace("group_size: 4", "group_size: 3"), "grpo.gradient_accumulation_steps"),  # 2×3 rows fine; checked below
        (lambda t: t.replace("steps: 3,", "steps: three,"), "grpo.steps: expected an integer, got 'three'"),
        (lambda t: t.replace("format: 0.5", "fromat: 0.5"), "rewards.fromat: unknown reward 'fromat'; did you mean 'format'?"),
        (lambda t: t.replace("format: 0.5", "no_such_module.x:fn: 0.5"), "rewards.no_such_module.x:fn"),
        (lambda t: t.replace("format: 0.5", "format: lots"), "rewards.format: expected a number or a mapping"),
        (lambda t: t.replace("name: tiny\n", ""), "name: required key is missing"),
        (lambda t: t.replace("kind: chat", "kind: chatt"), "template.kind: unknown template 'chatt'"),
        (lambda t: t + "\nextra: 1\n", "extra: unknown key"),
        (lambda t: t.replace("seed: 0", "seed: [0"), "not valid YAML (line"),
    ],
)
def test_recipe_errors_name_the_key(tiny_model_dir, tmp_path, edit, message):
    path = write_recipe(tmp_path, tiny_model_dir, text=edit(RECIPE))
    if "gradient_accumulation" in message:
        # Not an error: 2 prompts × 3 = 6 rows with one micro-batch. Dividing 6 rows into 4 is.
        load_recipe(path)
        with pytest.raises(ConfigError, match="must divide prompts_per_step × group_size = 6"):
            load_recipe(path, ["grpo.gradient_accumulation_steps=4"])
        return
    with pytest.raises(ConfigError) as info:
        recipe = load_recipe(path)
        reward_terms(recipe.rewards)
    text = str(info.value)
    assert message in text and "\n" not in text
    assert text.startswith(str(path)) or text.startswith("rewards.")


def test_cli_prints_one_line_errors(tiny_model_dir, tmp_path, capsys):
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: recipe file '{tmp_path / 'missing.yaml'}' does not exist"

    no_file = RECIPE.replace('{{source: "synthetic:arithmetic", size: 40, options: {{max_value: 9, ops: "+"}}}}', str(tmp_path / "nope.jsonl"))
    bad_data = write_recipe(tmp_path, tiny_model_dir, text=no_file)
    assert main(["train", str(bad_data)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "nope.jsonl" in err and "does not exist" in err and "\n" not in err

    bad_model = write_recipe(tmp_path, tmp_path / "no-model-here")
    assert main(["train", str(bad_model)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_rewards_list(capsys):
    assert main(["rewards", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("accuracy", "format", "language_consistency", "overlong", "length", "countdown"):
        assert any(line.split()[0] == name for line in out.splitlines()), name


def test_user_reward_by_module_path(tiny_model_dir, tmp_path, monkeypatch):
    (tmp_path / "cli_user_rewards.py").write_text(textwrap.dedent('''
        def short(prompts, completions, *, limit=5, **kwargs):
            return [1.0 if len(c) <= limit else 0.0 for c in completions]
    '''))
    # Found beside the recipe (no PYTHONPATH); the term is named by its recipe key.
    text = RECIPE.replace("format: 0.5", "cli_user_rewards:short: {{weight: 2.0, limit: 3}}")
    recipe = load_recipe(write_recipe(tmp_path, tiny_model_dir, text=text))
    terms = {t.name: t for t in reward_terms(recipe.rewards)}
    assert terms["cli_user_rewards:short"].weight == 2.0 and terms["cli_user_rewards:short"].params == {"limit": 3}
    assert main(["train", str(write_recipe(tmp_path, tiny_model_dir, text=text, name="u.yaml")), "--set", "grpo.steps=1"]) == 0
    assert "rewards/cli_user_rewards:short/mean" in read_jsonl(tmp_path / "run" / "metrics.jsonl")[0]
