"""Bad recipes and stage plans: each is one line on stderr, exit 2, naming the file and key, before anything runs.

The cases are the tables RECIPE_CASES and STAGE_CASES in tests/bad_inputs.py.
"""

import sys
from pathlib import Path

import pytest
import yaml

from bad_inputs import RECIPE_CASES, STAGE_CASES, Ctx, base_recipe, check_message, cli_error, staged_recipe

# Messages that come before the recipe file is read, or that are about a --set argument.
NOT_FILE_PREFIXED = {"missing_file", "set_without_value"}


@pytest.fixture
def ctx(tmp_path, tiny_model_dir, monkeypatch) -> Ctx:
    monkeypatch.syspath_prepend(str(tmp_path))  # user reward modules are written here
    # Each case writes its own my_rewards.py: never reuse a module imported by an earlier case.
    monkeypatch.delitem(sys.modules, "my_rewards", raising=False)
    return Ctx(tmp_path, tiny_model_dir)


def write_recipe(ctx: Ctx, recipe: dict | str) -> Path:
    path = ctx.tmp / "r.yaml"
    path.write_text(recipe if isinstance(recipe, str) else yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True))
    return path


@pytest.mark.parametrize("case", RECIPE_CASES, ids=repr)
def test_recipe_error(case, ctx, capsys):
    recipe = base_recipe(ctx)
    if case.make:
        recipe = case.make(recipe, ctx)
    path = ctx.tmp / "nowhere.yaml" if case.id == "missing_file" else write_recipe(ctx, recipe)
    message = cli_error([*case.command, str(path), *case.argv], capsys)
    check_message(message, case, ctx.tmp)
    if case.id not in NOT_FILE_PREFIXED:
        assert message.startswith(f"{path}: "), message
    assert not (ctx.tmp / "run").exists()  # rejected on load: nothing was written


@pytest.mark.parametrize("case", STAGE_CASES, ids=repr)
def test_stage_plan_error(case, ctx, capsys):
    recipe = staged_recipe(ctx)
    if case.make:
        recipe = case.make(recipe, ctx)
    path = write_recipe(ctx, recipe)
    message = cli_error([*case.command, str(path), *case.argv], capsys)
    check_message(message, case, ctx.tmp)
    if message.startswith("stages["):
        pytest.fail(f"a plan error without its file: {message}")
    if case.id != "only_before_inputs":
        assert not (ctx.tmp / "run").exists()
    else:  # the run directory exists, but no stage started
        assert not list((ctx.tmp / "run").glob(".*.partial"))


def test_valid_recipes_pass(ctx, capsys):
    """The base recipes of the tables are valid: each case fails for its own edit only."""
    from pipelines.recipe import load_recipe

    load_recipe(write_recipe(ctx, base_recipe(ctx)))
    path = write_recipe(ctx, staged_recipe(ctx))
    load_recipe(path)
    from pipelines.cli import main

    assert main(["run", str(path), "--dry-run"]) == 0
    assert "checks:" in capsys.readouterr().out
