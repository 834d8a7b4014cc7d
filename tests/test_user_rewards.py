"""Plugging in your own reward the way a TRL user does (issue 12): each of the nine findings of
the issue as a test, and a reward file in TRL's documented style run unchanged.

User modules are found beside the recipe (or in the current directory) by the recipe loader;
the tests of findings 1 and 2 rely on that alone. The tests of the later findings also put the
module's folder on sys.path (``importable``), as the issue's reporter had to (``PYTHONPATH=.``),
so that each fails on the code before the fix for its own finding, not for finding 1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import yaml

from grpo.io import read_jsonl
from grpo.schema import ConfigError
from grpo.scoring import RewardError, score_completions
from pipelines.cli import main
from pipelines.recipe import load_recipe, read_recipe_dict, reward_terms

ROOT = Path(__file__).resolve().parents[1]


def recipe_dict(model: str, out: Path, **extra) -> dict:
    recipe = {
        "name": "mine",
        "model": model,
        "output_dir": str(out),
        "data": {"train": {"source": "synthetic:arithmetic", "size": 16, "options": {"max_value": 9, "ops": "+"}}},
        "rewards": {"accuracy": 1.0},
        "grpo": {"steps": 1, "prompts_per_step": 2, "group_size": 4, "max_new_tokens": 4, "save_every": 100, "progress": False},
    }
    recipe.update(extra)
    return recipe


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def write_recipe(path: Path, recipe: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """Run from a directory that is neither the recipe's nor the repository."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


@pytest.fixture
def importable(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def run_cli(argv, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


# ---------------------------------------------------------------- 1. a reward file beside the recipe imports


def test_1_reward_module_beside_the_recipe_is_found_without_pythonpath(tiny_model_dir, tmp_path, elsewhere, capsys):
    project = tmp_path / "project"
    write(project / "issue12_words.py", """
        def under_20_words(completions, **kwargs):
            return [1.0 if len(c.split()) < 20 else 0.0 for c in completions]
    """)
    recipe = write_recipe(project / "r.yaml", recipe_dict(tiny_model_dir, tmp_path / "run", rewards={"accuracy": 1.0, "issue12_words:under_20_words": 0.5}))
    code, out, err = run_cli(["train", str(recipe)], capsys)
    assert code == 0, err
    metrics = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert metrics[0]["rewards/issue12_words:under_20_words/mean"] == 1.0  # 4-token completions: under 20 words
    # ... and in the current directory, for a recipe that lives somewhere else.
    write(elsewhere / "issue12_cwd_rewards.py", "def one(completions, **kwargs):\n    return [1.0] * len(completions)\n")
    other = write_recipe(tmp_path / "recipes" / "r.yaml", recipe_dict(tiny_model_dir, tmp_path / "run2", rewards={"issue12_cwd_rewards:one": 1.0}))
    assert [t.name for t in reward_terms(load_recipe(other).rewards)] == ["issue12_cwd_rewards:one"]


def test_1_a_missing_module_says_where_it_looked(tmp_path, elsewhere):
    recipe = write_recipe(tmp_path / "r.yaml", recipe_dict("smollm2-135m-instruct", tmp_path / "run", rewards={"issue12_nowhere:fn": 1.0}))
    with pytest.raises(ConfigError) as info:
        load_recipe(recipe)
    message = str(info.value)
    assert "cannot import module 'issue12_nowhere'" in message and str(tmp_path) in message and str(elsewhere) in message


# ---------------------------------------------------------------- 2. a user file named rewards.py


def test_2_a_user_rewards_py_never_hides_ours(tmp_path, elsewhere, capsys):
    write(tmp_path / "rewards.py", "def short(completions, **kwargs):\n    return [1.0] * len(completions)\n")
    recipe = write_recipe(tmp_path / "r.yaml", recipe_dict("smollm2-135m-instruct", tmp_path / "run", rewards={"rewards:short": 1.0}))
    code, _, err = run_cli(["train", str(recipe)], capsys)
    assert code == 2 and err.count("\n") == 1
    assert f"'{tmp_path / 'rewards.py'}' has the same name as the toolkit's module 'rewards'" in err and "rename it" in err
    # Named by path it loads under a private name, whatever the file is called.
    by_path = write_recipe(tmp_path / "p.yaml", recipe_dict("smollm2-135m-instruct", tmp_path / "run", rewards={"./rewards.py:short": 1.0}))
    (term,) = reward_terms(load_recipe(by_path).rewards)
    assert term.name == "./rewards.py:short" and term.fn(completions=["a"]) == [1.0]
    assert sys.modules["rewards"].__file__ == str(ROOT / "rewards" / "__init__.py")


def test_2_rewards_py_first_on_pythonpath_is_one_line(tmp_path):
    write(tmp_path / "rewards.py", "X = 1\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}  # the user's folder first, then this checkout
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "rewards", "list"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr == (f"error: '{tmp_path / 'rewards.py'}' has the same name as the toolkit's 'rewards' package and comes first on the "
                           "Python path; rename it (e.g. my_rewards.py): recipes find modules beside them without PYTHONPATH\n")


# ---------------------------------------------------------------- 3. two functions called accuracy


def test_3_terms_are_named_by_their_recipe_keys(tmp_path, elsewhere, importable):
    write(tmp_path / "issue12_myacc.py", "def accuracy(completions, **kwargs):\n    return [0.0] * len(completions)\n")
    completions = ["<think>x</think><answer>4</answer>"] * 2
    totals = []
    for rewards in ({"accuracy": 1.0, "issue12_myacc:accuracy": 0.1}, {"issue12_myacc:accuracy": 0.1, "accuracy": 1.0}):
        recipe = load_recipe(write_recipe(tmp_path / "r.yaml", recipe_dict("smollm2-135m-instruct", tmp_path / "run", rewards=rewards)))
        terms = reward_terms(recipe.rewards)
        assert sorted(t.name for t in terms) == ["accuracy", "issue12_myacc:accuracy"]
        scores = score_completions(terms, ["p", "p"], completions, {"solution": ["4", "4"]})
        assert scores.per_reward["accuracy"] == [1.0, 1.0] and scores.per_reward["issue12_myacc:accuracy"] == [0.0, 0.0]
        totals.append(scores.total)
    assert totals == [[1.0, 1.0], [1.0, 1.0]]  # the order of the keys changes nothing
    # A shorter name with name:, and two terms of one name refused at load.
    named = {"accuracy": 1.0, "issue12_myacc:accuracy": {"weight": 0.1, "name": "my_accuracy"}}
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", recipe_dict("smollm2-135m-instruct", tmp_path / "run", rewards=named)))
    assert [t.name for t in reward_terms(recipe.rewards)] == ["accuracy", "my_accuracy"]
    clash = {"accuracy": 1.0, "issue12_myacc:accuracy": {"weight": 0.1, "name": "accuracy"}}
    with pytest.raises(ConfigError, match=r"rewards\.issue12_myacc:accuracy: the name 'accuracy' is already rewards\.accuracy's"):
        load_recipe(write_recipe(tmp_path / "r.yaml", recipe_dict("smollm2-135m-instruct", tmp_path / "run", rewards=clash)))


# ---------------------------------------------------------------- 4. TRL's key names


def test_4_trl_names_are_read_as_ours_or_refused_naming_ours(tmp_path, capsys):
    grpo = {"num_generations": 4, "max_completion_length": 16, "epsilon": 0.1, "loss_type": "dr_grpo", "num_iterations": 2,
            "beta": 0.0, "temperature": 0.9, "reward_weights": [1.0, 0.25], "scale_rewards": "batch"}
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", recipe_dict("smollm2-135m-instruct", tmp_path / "run",
                                                                       rewards={"accuracy": 1.0, "format": 1.0}, grpo=grpo)))
    cfg = recipe.grpo
    assert (cfg.group_size, cfg.max_new_tokens, cfg.epsilon_low, cfg.loss_aggregation, cfg.num_iterations) == (4, 16, 0.1, "dr_grpo", 2)
    assert (cfg.beta, cfg.temperature, cfg.advantage_estimator) == (0.0, 0.9, "batch_std")
    assert recipe.rewards == {"accuracy": 1.0, "format": 0.25}
    notes = capsys.readouterr().err
    assert "note: grpo.num_generations is TRL's name: read as grpo.group_size: 4" in notes
    assert "note: grpo.loss_type is TRL's name: read as grpo.loss_aggregation: 'dr_grpo'" in notes
    for key, value, ours in [
        ("per_device_train_batch_size", 8, "grpo.prompts_per_step"),
        ("bf16", True, "write precision: bf16-mixed"),
        ("loss_type", "luspo", "grpo.loss_aggregation takes grpo, bnpo, dr_grpo or dapo, grpo.policy_loss clip, gspo, cispo or sapo"),
        ("seed", 42, "top-level seed"),
    ]:
        bad = recipe_dict("smollm2-135m-instruct", tmp_path / "run", grpo={key: value})
        with pytest.raises(ConfigError) as info:
            load_recipe(write_recipe(tmp_path / "bad.yaml", bad))
        assert f"grpo.{key}:" in str(info.value) and ours in str(info.value), str(info.value)
    # A TRL name at the top level says where it goes (not a near miss such as num_iterations).
    with pytest.raises(ConfigError, match=r"num_generations: unknown key; TRL's GRPOConfig key; in a recipe it is grpo\.group_size"):
        load_recipe(write_recipe(tmp_path / "top.yaml", {**recipe_dict("smollm2-135m-instruct", tmp_path / "run"), "num_generations": 4}))


# ---------------------------------------------------------------- 5. a reward written for TRL


TRL_STYLE = '''
import numpy as np


def answer_matches(completions, answer, **kwargs):
    """TRL passes the dataset's columns under their own names: GSM8K's answer ends '#### n'."""
    contents = [completion[0]["content"] for completion in completions]
    return [c.strip().endswith(a.split("####")[-1].strip()) for c, a in zip(contents, answer)]


def brevity(completions, **kwargs):
    return [np.float32(1.0 / (1 + len(completion[0]["content"]))) for completion in completions]


def schedule(completions, trainer_state, log_extra, **kwargs):
    """TRL's trainer_state (a curriculum's clock) and log_extra (a column of completions.jsonl)."""
    log_extra("chars", [len(completion[0]["content"]) for completion in completions])
    return [trainer_state.global_step / trainer_state.max_steps] * len(completions)
'''


def _conversational_gsm8k(path: Path) -> Path:
    rows = [{"prompt": [{"role": "user", "content": f"What is {i} + {i}?"}], "answer": f"{i} and {i} make {2 * i}.\n#### {2 * i}"} for i in range(1, 9)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_5_a_trl_reward_gets_columns_messages_and_may_return_bools_and_numpy(tiny_model_dir, tmp_path, elsewhere, importable, capsys):
    write(tmp_path / "issue12_trl_rewards.py", TRL_STYLE)
    data = _conversational_gsm8k(tmp_path / "train.jsonl")
    recipe = recipe_dict(tiny_model_dir, tmp_path / "run", data={"train": str(data)},
                         rewards={"issue12_trl_rewards:answer_matches": 1.0, "issue12_trl_rewards:brevity": 0.1, "issue12_trl_rewards:schedule": 0.0})
    recipe["grpo"]["steps"] = 2
    code, out, err = run_cli(["train", str(write_recipe(tmp_path / "r.yaml", recipe))], capsys)
    assert code == 0, err
    metrics = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert all(m["rewards/issue12_trl_rewards:answer_matches/mean"] == 0.0 for m in metrics)  # the tiny random model does not add up
    assert all(0 < m["rewards/issue12_trl_rewards:brevity/mean"] <= 1 for m in metrics)
    assert [m["rewards/issue12_trl_rewards:schedule/mean"] for m in metrics] == [0.0, 0.5]  # 0 of 2, then 1 of 2 steps done
    samples = read_jsonl(tmp_path / "run" / "completions.jsonl")
    assert all(s["extra"]["chars"] == len(s["completion"]) for s in samples)


def test_5_a_column_the_data_lacks_is_named_at_load_before_the_model_loads(tmp_path, elsewhere, importable, monkeypatch, capsys):
    import grpo.models

    write(tmp_path / "issue12_trl_rewards.py", TRL_STYLE)
    monkeypatch.setattr(grpo.models, "load_model_and_tokenizer", lambda *a, **k: pytest.fail("the model was loaded"))
    recipe = recipe_dict("smollm2-135m-instruct", tmp_path / "run", rewards={"issue12_trl_rewards:answer_matches": 1.0})  # synthetic rows: no answer
    code, _, err = run_cli(["train", str(write_recipe(tmp_path / "r.yaml", recipe))], capsys)
    assert code == 2
    assert err.startswith("error: reward 'issue12_trl_rewards:answer_matches' needs a column 'answer' (a required parameter of its function) "
                          "that the data does not have; columns: ")
    assert "(called at load on 2 rows of the data" in err and err.count("\n") == 1


def test_5_a_call_that_fails_on_every_row_says_so_not_row_0():
    from grpo.scoring import RewardTerm

    def needs_key(prompts, completions, **kwargs):
        return [kwargs["answer"] for _ in completions]

    with pytest.raises(RewardError, match=r"raised KeyError on every row \(8 of 8: the call itself fails\): 'answer'"):
        score_completions([RewardTerm("k", needs_key)], ["p"] * 8, ["c"] * 8, {"solution": ["1"] * 8})


def test_5_a_reward_failing_on_the_models_completions_stops_at_step_1(tiny_model_dir, tmp_path, elsewhere, importable, capsys):
    # The stand-in completions of the load-time call say "The answer is"; 4 tokens of the model cannot.
    write(tmp_path / "issue12_tags.py", """
        def needs_tags(completions, **kwargs):
            if any("The answer is" not in c for c in completions):
                raise ValueError("no answer tag")
            return [1.0] * len(completions)
    """)
    recipe = recipe_dict(tiny_model_dir, tmp_path / "run", rewards={"issue12_tags:needs_tags": 1.0})
    code, _, err = run_cli(["train", str(write_recipe(tmp_path / "r.yaml", recipe))], capsys)
    assert code == 2, err
    assert err.splitlines()[-1] == "error: reward 'issue12_tags:needs_tags' raised ValueError on every row (8 of 8: the call itself fails): no answer tag"


# ---------------------------------------------------------------- 6. on_reward_error: skip is loud


FAILS_ALWAYS = """
    def broken(completions, **kwargs):
        raise KeyError("answer")
"""


def test_6_skip_warns_each_step_shows_counts_and_stops(tiny_model_dir, tmp_path, elsewhere, importable, capsys):
    write(tmp_path / "issue12_broken.py", FAILS_ALWAYS)
    grpo = {"steps": 2, "prompts_per_step": 2, "group_size": 4, "max_new_tokens": 4, "save_every": 100, "progress": False,
            "on_reward_error": "skip"}
    recipe = write_recipe(tmp_path / "r.yaml", recipe_dict(tiny_model_dir, tmp_path / "run", rewards={"accuracy": 1.0, "issue12_broken:broken": 1.0}, grpo=grpo))
    code, out, err = run_cli(["train", str(recipe)], capsys)
    assert code == 0, err
    first = "reward 'issue12_broken:broken' raised KeyError on every row (8 of 8: the call itself fails): 'answer'"
    assert f"warning: step 1: reward 'issue12_broken:broken' failed on all 8 rows it scored" in err and f"first error: {first}" in err
    assert "warning: step 2:" in err
    assert "reward 'issue12_broken:broken' failed on 16 rows in 2 steps (scored as None" in out
    # With the default max_failing_steps (3), the third such step stops the run.
    grpo.update(steps=4, max_failing_steps=3)
    recipe = write_recipe(tmp_path / "r.yaml", recipe_dict(tiny_model_dir, tmp_path / "run3", rewards={"issue12_broken:broken": 1.0}, grpo=grpo))
    code, _, err = run_cli(["train", str(recipe)], capsys)
    assert code == 2
    assert err.splitlines()[-1] == (f"error: step 3: a reward failed on every row in 3 steps (grpo.max_failing_steps=3; on_reward_error: skip): {first}")
    assert len(read_jsonl(tmp_path / "run3" / "metrics.jsonl")) == 2


# ---------------------------------------------------------------- 7. register_reward from the CLI: imports


@pytest.fixture
def registries():
    """The registries as they were before the test (what it registers is dropped afterwards)."""
    import grpo.tasks
    import grpo.templates
    import pipelines.stages.base
    import rewards.registry

    tables = [rewards.registry._REGISTRY, grpo.templates.TEMPLATES, grpo.tasks._TASKS, pipelines.stages.base.STAGE_KINDS]
    saved = [dict(t) for t in tables]
    yield
    for table, before in zip(tables, saved):
        table.clear()
        table.update(before)


def test_7_imports_run_the_modules_that_register(tiny_model_dir, tmp_path, elsewhere, registries, capsys):
    write(tmp_path / "issue12_registering.py", '''
        from grpo.tasks import register_task
        from grpo.templates import register_template
        from pipelines.stages import register_stage
        from pipelines.stages.base import Stage, StageResult
        from dataclasses import dataclass
        from rewards import register_reward


        @register_reward("issue12_brevity")
        def brevity(prompts, completions, *, max_words: int = 50, **kwargs):
            """1 for answers of at most max_words words, else 0."""
            return [1.0 if len(c.split()) <= max_words else 0.0 for c in completions]


        @register_template("issue12_bare")
        def bare(row, spec, tokenizer):
            return row["prompt"] + "\\n"


        @register_task("issue12_echo")
        def echo(n, seed, language="en", **options):
            return [{"prompt": f"Say {i}.", "solution": str(i), "language": language} for i in range(n)]


        @dataclass
        class NoteConfig:
            text: str = "hi"


        @register_stage("issue12_note")
        class NoteStage(Stage):
            Config = NoteConfig

            def run(self, ctx):
                return StageResult()
    ''')
    recipe = recipe_dict(tiny_model_dir, tmp_path / "run", imports=["issue12_registering.py"], template="issue12_bare",
                         data={"train": {"source": "synthetic:issue12_echo", "size": 8}}, rewards={"issue12_brevity": {"weight": 1.0, "max_words": 3}})
    code, out, err = run_cli(["train", str(write_recipe(tmp_path / "r.yaml", recipe))], capsys)
    assert code == 0, err
    (sample, *_) = read_jsonl(tmp_path / "run" / "completions.jsonl")
    assert sample["prompt"].startswith("Say ") and set(sample["rewards"]) == {"issue12_brevity"}
    staged = {**recipe, "stages": [{"name": "n", "kind": "issue12_note"}]}
    assert load_recipe(write_recipe(tmp_path / "s.yaml", staged)).stages[0]["kind"] == "issue12_note"
    with pytest.raises(ConfigError, match=r"imports\[0\]: file '.*issue12_missing\.py' does not exist"):
        load_recipe(write_recipe(tmp_path / "m.yaml", {**recipe, "imports": ["issue12_missing.py"]}))


# ---------------------------------------------------------------- 8. paths


def test_8_paths_in_a_recipe_are_relative_to_its_folder_and_set_to_the_cwd(tiny_model_dir, tmp_path, elsewhere, capsys):
    project = tmp_path / "project"
    (project / "models").mkdir(parents=True)
    os.symlink(tiny_model_dir, project / "models" / "tiny")
    _conversational_gsm8k(project / "data" / "train.jsonl")
    recipe = recipe_dict("models/tiny", tmp_path / "run", data={"train": "data/train.jsonl", "eval": {"source": "data/train.jsonl", "size": 2}})
    path = write_recipe(project / "configs" / "r.yaml", {**recipe, "model": "../models/tiny",
                                                           "data": {"train": "../data/train.jsonl", "eval": {"source": "../data/train.jsonl", "size": 2}}})
    loaded = load_recipe(path)
    assert loaded.model == str(project / "models" / "tiny") and loaded.data.train.source == str(project / "data" / "train.jsonl")
    assert loaded.data.eval.source == str(project / "data" / "train.jsonl")
    # --set values are relative to the current directory.
    _conversational_gsm8k(elsewhere / "mine.jsonl")
    assert load_recipe(path, ["data.train=mine.jsonl"]).data.train.source == str(elsewhere / "mine.jsonl")
    # A missing file's error prints the absolute path it tried.
    code, _, err = run_cli(["train", str(path), "--dry-run", "--set", "data.train=nope.jsonl"], capsys)
    assert code == 2 and err == f"error: data file '{elsewhere / 'nope.jsonl'}' does not exist\n"
    # The old reading (relative to the current directory) gets a message that says how to write it.
    (elsewhere / "data").mkdir()
    _conversational_gsm8k(elsewhere / "data" / "cwd.jsonl")
    with pytest.raises(ConfigError, match=r"data\.train: 'data/cwd\.jsonl' is read relative to the recipe's folder.*write '\.\./\.\./cwd/data/cwd\.jsonl'"):
        load_recipe(write_recipe(project / "configs" / "c.yaml", {**recipe, "data": {"train": "data/cwd.jsonl"}}))
    # An ablation's base: and its arms' paths are relative to the ablation file, as everything else.
    stages = [{"name": "rl", "kind": "grpo", "data": "data/train.jsonl"}, {"name": "ev", "kind": "eval", "init": "stages.rl"}]
    ablation = {"name": "a", "base": "configs/r.yaml", "seeds": [0], "arms": {"one": {"stages": stages}}}
    from pipelines.ablation import load_ablation

    _, runs = load_ablation(write_recipe(project / "ablation.yaml", ablation))
    assert runs[0].recipe.stages[0]["data"] == str(project / "data" / "train.jsonl") and runs[0].recipe.model == str(project / "models" / "tiny")


def test_8_shipped_recipes_point_only_inside_the_repository(monkeypatch):
    monkeypatch.chdir(ROOT)
    found = []
    for path in sorted((ROOT / "recipes").rglob("*.yaml")):
        data = read_recipe_dict(path)

        def walk(value):
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(k)
                    walk(v)
            elif isinstance(value, list):
                for v in value:
                    walk(v)
            elif isinstance(value, str) and os.path.isabs(value):
                found.append((path.name, value))

        walk({k: v for k, v in data.items() if k != "output_dir"})
        if isinstance(data.get("base"), str):
            assert (path.parent / data["base"]).resolve().is_relative_to(ROOT)
    assert found and all(Path(v).resolve().is_relative_to(ROOT) for _, v in found), [f for f in found if not Path(f[1]).resolve().is_relative_to(ROOT)]


# ---------------------------------------------------------------- 9. the small things


def test_9_train_dry_run_checks_without_training(tiny_model_dir, tmp_path, elsewhere, capsys):
    recipe = write_recipe(tmp_path / "r.yaml", recipe_dict(tiny_model_dir, tmp_path / "run"))
    code, out, err = run_cli(["train", str(recipe), "--dry-run"], capsys)
    assert code == 0, err
    assert "ok  data.train: synthetic:arithmetic (16 rows)" in out and "ok  rewards: accuracy (1); each called once on 2 rows" in out
    assert not (tmp_path / "run").exists()  # nothing written


def test_9_file_errors_count_lines_from_1(tmp_path):
    from grpo.data import DataError, DataSpec, load_rows

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "a", "solution": "1"}\n\n{"prompt": "b", "solution": "2"}\n{"prompt": "c", solution: 3}\n')
    with pytest.raises(DataError, match=r"cannot be read as jsonl: line 4: Expecting property name enclosed in double quotes \(column 17\)$"):
        load_rows(DataSpec(source=str(broken)))
    rows = tmp_path / "rows.csv"
    rows.write_text('prompt,solution\n2+2?,4\n1+1?,\n')
    with pytest.warns(UserWarning, match=r"could not be parsed \(first: line 3: None\)"):
        load_rows(DataSpec(source=str(rows)))


def test_9_summary_of_one_step_says_first_step():
    from pipelines.train import format_summary, summarize

    summary = summarize([{"step": 1, "reward": 0.5, "kl": 0.0, "completions/mean_length": 3.0}])
    assert format_summary(summary).splitlines()[0].split() == ["metric", "first", "step", "last", "step"]


def test_9_a_normal_run_shows_no_deprecation_warnings(tiny_model_dir, tmp_path, elsewhere, capsys):
    # Any deprecation fails: transformers' `past_key_values` FutureWarning (gone since the trainer
    # uses the cache API) and peft's use of a property transformers deprecated (in LoRA runs) did.
    recipe = recipe_dict(tiny_model_dir, tmp_path / "run")
    recipe["grpo"]["lora"] = {"r": 2, "alpha": 4, "target_modules": ["q_proj", "v_proj"]}
    recipe = write_recipe(tmp_path / "r.yaml", recipe)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, out, err = run_cli(["train", str(recipe)], capsys)
    assert code == 0, err
    deprecations = [f"{w.category.__name__}: {w.message}" for w in caught if issubclass(w.category, (DeprecationWarning, FutureWarning))]
    assert not deprecations, deprecations


# ---------------------------------------------------------------- a reward file in TRL's documented style, unchanged


TRL_DOCS_STYLE = r'''
import re


def format_reward_func(completions, **kwargs):
    """Reward function that checks if the completion has a specific format."""
    pattern = r"^<think>.*?</think><answer>.*?</answer>$"
    completion_contents = [completion[0]["content"] for completion in completions]
    matches = [re.match(pattern, content) for content in completion_contents]
    return [1.0 if match else 0.0 for match in matches]


def reward_len(completions, **kwargs):
    return [-abs(20 - len(completion[0]["content"])) for completion in completions]
'''


def test_a_trl_documentation_style_reward_file_runs_unchanged(tiny_model_dir, tmp_path, elsewhere, importable, capsys):
    write(tmp_path / "issue12_trl_docs.py", TRL_DOCS_STYLE)
    data = _conversational_gsm8k(tmp_path / "train.jsonl")
    recipe = recipe_dict(tiny_model_dir, tmp_path / "run", data={"train": str(data)},
                         rewards={"issue12_trl_docs:format_reward_func": 1.0, "issue12_trl_docs:reward_len": 0.01})
    code, out, err = run_cli(["train", str(write_recipe(tmp_path / "r.yaml", recipe))], capsys)
    assert code == 0, err
    (metrics,) = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert metrics["rewards/issue12_trl_docs:format_reward_func/mean"] == 0.0  # the tiny random model writes no tags
    samples = read_jsonl(tmp_path / "run" / "completions.jsonl")
    assert [s["rewards"]["issue12_trl_docs:reward_len"] for s in samples] == [-abs(20 - len(s["completion"])) for s in samples]
