"""Bad models: missing paths, not a causal LM, broken files, no tokenizer or chat template.

Each is one line on stderr (exit 2) naming the model, raised before training starts. The cases
are the table MODEL_CASES in tests/bad_inputs.py.
"""

import pytest

from bad_inputs import MODEL_CASES, Ctx, base_recipe, check_message, cli_error
from test_errors_recipe import write_recipe


@pytest.fixture
def ctx(tmp_path, tiny_model_dir) -> Ctx:
    return Ctx(tmp_path, tiny_model_dir)


@pytest.mark.parametrize("case", MODEL_CASES, ids=repr)
def test_model_error(case, ctx, capsys):
    recipe = base_recipe(ctx)
    recipe["model"] = case.make(ctx)
    message = cli_error([*case.command, str(write_recipe(ctx, recipe)), *case.argv], capsys)
    check_message(message, case, ctx.tmp)
    assert not (ctx.tmp / "run" / "metrics.jsonl").exists()


def test_plain_templates_need_no_chat_template(ctx):
    """The fix the no-chat-template message suggests works: template: r1 (or plain) on the same model."""
    from bad_inputs import _model_copy, _no_chat_template
    from grpo.models import load_tokenizer
    from grpo.templates import TemplateSpec, render_prompts

    tokenizer = load_tokenizer(_model_copy(name="no-template", edit=_no_chat_template)(ctx))
    assert not tokenizer.chat_template
    rows = [{"prompt": "What is 2+2?"}]
    assert render_prompts(rows, TemplateSpec(kind="r1"), tokenizer)[0].endswith("User: What is 2+2?. Assistant:")
    assert render_prompts(rows, TemplateSpec(kind="plain"), tokenizer) == ["What is 2+2?"]
