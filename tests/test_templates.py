"""Prompt templates (grpo/templates.py); the chat tokenizer is built offline."""

from __future__ import annotations

import pytest

from grpo.templates import TEMPLATES, TemplateSpec, register_template, render_prompt, render_prompts

R1_HEAD = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with "
    "the answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> "
    "tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>. "
)

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _tokenizer(chat_template: str | None = CHAT_TEMPLATE, name: str = "tiny-test"):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({"[UNK]": 0, "hi": 1}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]", name_or_path=name)
    tok.chat_template = chat_template
    return tok


ROW = {"prompt": "What is 2 + 3?", "solution": "5"}


def test_r1_english_exact():
    assert render_prompt(ROW, TemplateSpec(kind="r1")) == R1_HEAD + "User: What is 2 + 3?. Assistant:"


def test_r1_chinese_for_zh_rows():
    text = render_prompt({"prompt": "2 加 3 等于多少？", "language": "zh-CN"}, TemplateSpec(kind="r1"))
    assert text.startswith("这是用户与助手之间的对话。")
    assert text.endswith("<think> 推理过程 </think> <answer> 答案 </answer>。用户：2 加 3 等于多少？。助手：")


def test_r1_options():
    spec = TemplateSpec(kind="r1", instruction="Answer with a number.", open_think=True, system="Solve it.")
    assert render_prompt(ROW, spec) == "Solve it. User: What is 2 + 3?\nAnswer with a number.. Assistant: <think>"


def test_plain():
    assert render_prompt(ROW, TemplateSpec(kind="plain")) == "What is 2 + 3?"
    spec = TemplateSpec(kind="plain", system="Be brief.", instruction="Put your final answer within \\boxed{}.")
    assert render_prompt(ROW, spec) == "Be brief.\n\nWhat is 2 + 3?\nPut your final answer within \\boxed{}."


def test_chat_with_offline_tokenizer():
    tok = _tokenizer()
    assert render_prompt(ROW, TemplateSpec(kind="chat"), tok) == "<|user|>What is 2 + 3?\n<|assistant|>\n"
    spec = TemplateSpec(kind="chat", system="You are careful.", open_think=True)
    expected = "<|system|>You are careful.\n<|user|>What is 2 + 3?\n<|assistant|>\n<think>"
    assert render_prompts([ROW, ROW], spec, tok) == [expected, expected]


def test_open_think_is_not_doubled():
    tok = _tokenizer(CHAT_TEMPLATE.replace("<|assistant|>\n", "<|assistant|>\n<think>\n"))
    assert render_prompt(ROW, TemplateSpec(kind="chat", open_think=True), tok).endswith("<|assistant|>\n<think>\n")


def test_chat_errors_are_one_line():
    with pytest.raises(ValueError, match="^template 'chat' needs a tokenizer with a chat template; none was given"):
        render_prompt(ROW, TemplateSpec(kind="chat"))
    msg = "template 'chat' needs a tokenizer with a chat template; model 'tiny-base' has none — use template: r1 or plain"
    with pytest.raises(ValueError) as info:
        render_prompt(ROW, TemplateSpec(), _tokenizer(None, name="tiny-base"))
    assert str(info.value) == msg


def test_registry_is_open_and_unknown_kinds_fail():
    @register_template("_shout_test")
    def shout(row, spec, tokenizer=None):
        return row["prompt"].upper()

    try:
        assert render_prompt(ROW, TemplateSpec(kind="_shout_test")) == "WHAT IS 2 + 3?"
    finally:
        TEMPLATES.pop("_shout_test")
    with pytest.raises(ValueError, match="unknown template 'nope'; known templates: chat, plain, r1"):
        render_prompt(ROW, TemplateSpec(kind="nope"))
