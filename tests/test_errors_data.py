"""Bad data: missing or unreadable files, missing columns, unparseable golds, prompts that do not fit.

Errors are one line on stderr (exit 2) naming the file, column or row, raised before training
starts; survivable problems (some golds unparseable, some prompts too long) drop the rows with a
count. The cases are the table DATA_CASES in tests/bad_inputs.py.
"""

import pytest

from bad_inputs import DATA_CASES, Ctx, base_recipe, check_message, cli_error, skip_plots, staged_recipe
from test_errors_recipe import write_recipe

ERRORS = [c for c in DATA_CASES if not c.warn]
WARNINGS = {c.id: c for c in DATA_CASES if c.warn}


@pytest.fixture
def ctx(tmp_path, tiny_model_dir) -> Ctx:
    return Ctx(tmp_path, tiny_model_dir)


@pytest.mark.parametrize("case", ERRORS, ids=repr)
def test_data_error(case, ctx, capsys):
    if case.command == ("train",):
        recipe = base_recipe(ctx)
        recipe["data"]["train"] = case.make(ctx)
    else:  # an SFT stage's data, checked by `grpo run --dry-run`
        recipe = staged_recipe(ctx)
        recipe["stages"][0]["data"] = case.make(ctx)
    path = write_recipe(ctx, recipe)
    message = cli_error([*case.command, str(path), *case.argv], capsys)
    check_message(message, case, ctx.tmp)
    assert not (ctx.tmp / "run" / "metrics.jsonl").exists()  # no step ran


def test_some_golds_unparseable_are_skipped_with_a_count(ctx):
    from grpo.data import DataSpec, load_rows

    case = WARNINGS["some_golds_unparseable"]
    with pytest.warns(UserWarning) as caught:
        rows = load_rows(DataSpec(**case.make(ctx)))
    assert len(rows) == 2 and all(r["solution"] == "4" for r in rows)
    (warning,) = [w for w in caught if "gold answer" in str(w.message)]
    check_message(str(warning.message), case, ctx.tmp)


def test_some_prompts_over_max_prompt_length_are_dropped_with_a_count(ctx, capsys, monkeypatch):
    """Through `grpo train`: the count is printed and training goes on with the rest."""
    from grpo.io import read_jsonl
    from pipelines.cli import main

    skip_plots(monkeypatch)
    case = WARNINGS["some_prompts_over_max_prompt_length"]
    recipe = base_recipe(ctx)
    recipe["data"]["train"] = case.make(ctx)
    assert main(["train", str(write_recipe(ctx, recipe)), *case.argv]) == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if "dropped" in line]
    check_message(line, case, ctx.tmp)
    samples = read_jsonl(ctx.tmp / "run" / "completions.jsonl")
    assert samples and all("1 + 1" not in s["prompt"] for s in samples)  # the long prompt never ran


def test_some_prompts_over_the_model_limit_are_dropped_with_a_count(ctx):
    """No max_prompt_length: max_position_embeddings − max_new_tokens is the limit."""
    from grpo.data import DataSpec, load_rows
    from grpo.models import load_model_and_tokenizer
    from grpo.templates import TemplateSpec
    from pipelines.train import model_max_positions, prepare_rows

    case = WARNINGS["some_prompts_over_model_limit"]
    model, tokenizer = load_model_and_tokenizer(ctx.model)
    rows = load_rows(DataSpec(**case.make(ctx)))
    prepared = prepare_rows(rows, TemplateSpec(), tokenizer, None, max_new_tokens=200, max_positions=model_max_positions(model))
    assert len(prepared.rows) == 2 and prepared.dropped_too_long == 1
    check_message(prepared.report(), case, ctx.tmp)
    # With room to spare nothing is dropped, and an explicit max_prompt_length wins over the model's limit.
    assert prepare_rows(rows, TemplateSpec(), tokenizer, None, max_new_tokens=4, max_positions=2048).dropped_too_long == 0
    assert prepare_rows(rows, TemplateSpec(), tokenizer, 4000, max_new_tokens=200, max_positions=512).dropped_too_long == 0
