"""Tests for the pure-Python parts of rewards/: registry, text, answer extraction, format,
language consistency and length rewards. The math verifier and accuracy reward are in
test_rewards_verify.py."""

from __future__ import annotations

import functools
import sys

import pytest

import rewards
from rewards import registry
from rewards.answers import extract_completion_answer, extract_gold_answer, normalize_answer, strip_thousands
from rewards.format import format_reward
from rewards.language import (
    chain_of_thought,
    language_consistency_reward,
    language_shares,
    script_word_counts,
    scripts_for_language,
)
from rewards.length import length_reward, overlong_reward
from rewards.text import completion_text, prompt_text

# ----------------------------------------------------------------------------- registry


@pytest.fixture
def scratch_registry(monkeypatch):
    """A copy of the registry, so tests can register names without leaking them."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    return registry


def test_builtins_are_registered_with_one_line_summaries():
    listed = rewards.list_rewards()
    assert {"accuracy", "format", "language_consistency", "length", "overlong"} <= set(listed)
    assert list(listed) == sorted(listed)
    assert all(summary and "\n" not in summary for summary in listed.values())
    assert rewards.get_reward("accuracy").reward_name == "accuracy"


def test_unknown_reward_suggests_the_closest_name():
    with pytest.raises(ValueError) as info:
        rewards.get_reward("accurcy")
    message = str(info.value)
    assert message.startswith("unknown reward 'accurcy'; did you mean 'accuracy'? registered: accuracy, ")
    assert ", format, language_consistency, length, overlong" in message
    assert "\n" not in message


def test_unknown_reward_without_close_match_lists_registered():
    with pytest.raises(ValueError, match=r"unknown reward 'zzz'; registered: accuracy, .*format, "):
        rewards.get_reward("zzz")


def test_user_reward_loaded_from_module_path(tmp_path, monkeypatch):
    (tmp_path / "my_rewards_mod.py").write_text(
        "def brevity(prompts, completions, **kwargs):\n"
        "    return [1.0 / (1 + len(c)) for c in completions]\n"
        "NOT_A_FUNCTION = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = rewards.get_reward("my_rewards_mod:brevity")
    assert fn(["p", "p"], ["", "abc"]) == [1.0, 0.25]
    with pytest.raises(ValueError, match=r"'my_rewards_mod:NOT_A_FUNCTION' is not callable \(it is a int\)"):
        rewards.get_reward("my_rewards_mod:NOT_A_FUNCTION")
    with pytest.raises(ValueError, match=r"module 'my_rewards_mod' has no attribute 'missing'"):
        rewards.get_reward("my_rewards_mod:missing")
    monkeypatch.delitem(sys.modules, "my_rewards_mod")


def test_bad_module_path_names_module_and_import_error(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"cannot import module 'no_such_module_xyz'.*ModuleNotFoundError"):
        rewards.get_reward("no_such_module_xyz:fn")
    (tmp_path / "broken_rewards_mod.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match=r"cannot import module 'broken_rewards_mod'.*RuntimeError: boom at import"):
        rewards.get_reward("broken_rewards_mod:fn")
    with pytest.raises(ValueError, match="must look like 'module.path:function'"):
        rewards.get_reward("some.module:")


def test_duplicate_registration(scratch_registry):
    @scratch_registry.register_reward()
    def my_reward(prompts, completions, **kwargs):
        """Constant one."""
        return [1.0] * len(completions)

    assert scratch_registry.get_reward("my_reward") is my_reward
    assert scratch_registry.list_rewards()["my_reward"] == "Constant one."
    with pytest.raises(ValueError, match="a reward named 'my_reward' is already registered"):
        scratch_registry.register_reward("my_reward")(lambda prompts, completions, **kw: [])

    @scratch_registry.register_reward("my_reward", overwrite=True)
    def replacement(prompts, completions, **kwargs):
        return [0.0] * len(completions)

    assert scratch_registry.get_reward("my_reward") is replacement

    @scratch_registry.register_reward  # bare decorator form
    def bare(prompts, completions, **kwargs):
        return []

    assert scratch_registry.get_reward("bare") is bare


def test_bind_reward_checks_parameter_names():
    bound = rewards.bind_reward("overlong", max_tokens=20, buffer=5)
    assert isinstance(bound, functools.partial)
    assert bound(["p"], ["c"], completion_ids=[[0] * 18]) == [pytest.approx(-0.6)]
    with pytest.raises(ValueError, match=r"no parameter 'target_langauge'; did you mean 'target_language'\?"):
        rewards.bind_reward("language_consistency", target_langauge="zh")


# ----------------------------------------------------------------------------- text


def test_completion_and_prompt_text():
    assert completion_text("plain") == "plain"
    assert completion_text([{"role": "assistant", "content": "hi"}]) == "hi"
    content = [{"type": "text", "text": "a"}, {"type": "image"}, {"type": "text", "text": "b"}]
    parts = [{"role": "assistant", "content": content}]
    assert completion_text(parts) == "ab"
    assert completion_text([{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}]) == "x"
    assert completion_text(None) == ""
    assert prompt_text("p <think>") == "p <think>"
    assert prompt_text([{"role": "system", "content": "s"}, {"role": "user", "content": "question"}]) == "question"
    assert prompt_text([]) == ""


# ----------------------------------------------------------------------------- answers


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        (r"so \boxed{\frac{3}{4}}.", r"\frac{3}{4}"),
        (r"\boxed{1} is wrong, so we redo it: \boxed{\frac{1}{\sqrt{2}}}", r"\frac{1}{\sqrt{2}}"),  # last, nested braces
        (r"\boxed{1} then \boxed{2}", "1, 2"),  # boxes that only short words separate: one answer
        (r"<answer>7</answer> later \boxed{9}", "7"),  # the answer tag wins
        (r"<answer>so \boxed{12}</answer>", "12"),  # boxed inside the answer tag
        ("<answer>1</answer><answer> 2 </answer>", "2"),  # last tag
        ("<answer> </answer> \\boxed{5}", "5"),  # empty tag falls through
        ("Natalia sold 48 clips.\n#### 72\n", "72"),
        ("#### 72\nand then a new line", None),  # the #### line must end the text
        (r"unclosed \boxed{3", None),
        (r"\boxed{a\}b}", r"a\}b"),  # escaped braces do not count
        ("no answer at all", None),
        ("", None),
    ],
)
def test_extract_completion_answer(completion, expected):
    assert extract_completion_answer(completion) == expected


@pytest.mark.parametrize(
    ("gold", "expected"),
    [
        ("She has 1000 + 234 = <<1000+234=1234>>1,234 apples.\n#### 1,234", "1234"),
        ("#### 72", "72"),
        (r"Thus the answer is $\boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),
        ("1,234,567", "1234567"),
        ("1,2", "1,2"),  # not a thousands-grouped number
        (r"  \frac{1}{2} ", r"\frac{1}{2}"),
        (r"3\sqrt{2}", r"3\sqrt{2}"),
        (42, "42"),
        ("   ", None),
        ("", None),
        (None, None),
    ],
)
def test_extract_gold_answer(gold, expected):
    assert extract_gold_answer(gold) == expected


def test_strip_thousands_and_normalize():
    assert strip_thousands("1,234") == "1234"
    assert strip_thousands("-12,345.5") == "-12345.5"
    assert strip_thousands("1{,}234") == "1234"
    assert strip_thousands("12,34") == "12,34"
    assert strip_thousands("(1,234)") == "(1,234)"
    assert normalize_answer(r"$\frac{1}{2}$") == r"\frac{1}{2}"
    assert normalize_answer(r"\(x+1\)") == "x+1"
    assert normalize_answer("$18") == "18"
    assert normalize_answer(r"\$1,000.") == "1000"


def test_extraction_is_fast_on_huge_text():
    import time

    text = "{" * 50_000 + r"\boxed{" * 20_000 + "x" * 100_000
    start = time.perf_counter()
    assert extract_completion_answer(text) is None
    assert extract_completion_answer(text + r" \boxed{5}") == "5"
    assert time.perf_counter() - start < 2.0


# ----------------------------------------------------------------------------- format


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<think>reasoning</think><answer>5</answer>", 1.0),
        ("\n <think>\nreasoning\n</think>\n\n<answer>\n5\n</answer>\n", 1.0),
        ("<think>reasoning</think><answer>5</answer> trailing", 0.0),
        ("preamble <think>r</think><answer>5</answer>", 0.0),
        ("<think>a</think><think>b</think><answer>5</answer>", 0.0),
        ("<think>r</think><answer>5</answer><answer>6</answer>", 0.0),
        ("<answer>5</answer><think>r</think>", 0.0),
        ("<think>r</think>", 0.0),
        ("just text", 0.0),
    ],
)
def test_format_reward(completion, expected):
    assert format_reward(["Solve it."], [completion]) == [expected]


def test_format_reward_with_prompt_opened_think():
    completion = "reasoning</think>\n<answer>5</answer>"
    assert format_reward(["Question?\nAssistant: <think>\n"], [completion]) == [1.0]
    assert format_reward(["Question?\nAssistant:"], [completion]) == [0.0]
    # the model re-opening <think> after the template did gives two <think> tags
    assert format_reward(["Q <think>"], ["<think>r</think><answer>5</answer>"]) == [0.0]
    chat_prompt = [{"role": "user", "content": "Question?"}]
    chat_completion = [{"role": "assistant", "content": completion}]
    assert format_reward([chat_prompt], [chat_completion]) == [0.0]
    assert format_reward([chat_prompt], [chat_completion], think_in_prompt=True) == [1.0]


# ----------------------------------------------------------------------------- language


def test_language_pure_english_and_chinese():
    english = "<think>First add the two numbers, then divide by three.</think><answer>5</answer>"
    chinese = "<think>首先把两个数相加，然后除以三。</think><answer>5</answer>"
    assert language_consistency_reward(["p"], [english]) == [1.0]
    assert language_consistency_reward(["p"], [chinese], target_language="zh") == [1.0]
    assert language_consistency_reward(["p"], [chinese]) == [0.0]


def test_language_mixed_shares_hand_computed():
    # latin words: We, compute, value (3); han characters: 这, 个 (2) -> 3 of 5 are English
    mixed = "<think>We compute 这个 value</think><answer>5</answer>"
    assert language_consistency_reward(["p"], [mixed]) == [pytest.approx(3 / 5)]
    assert language_consistency_reward(["p"], [mixed], target_language="zh") == [pytest.approx(2 / 5)]
    assert language_shares("We compute 这个 value") == {"latin": 0.6, "han": 0.4}


def test_language_ignores_numbers_latex_code_urls_and_tags():
    thought = (
        "Let 我们 compute $\\frac{a}{b} + x^2$ and $$\\sum_i y_i$$ then 12345 \\(zz\\) \\alpha "
        "`code words` ```python\nfor word in words: print(word)\n``` see https://example.com/path <br/> 结果"
    )
    # latin: Let, compute, and, then, see (5); han: 我, 们, 结, 果 (4)
    assert script_word_counts(thought) == {"latin": 5, "han": 4}
    assert language_consistency_reward(["p"], [f"<think>{thought}</think>"]) == [pytest.approx(5 / 9)]


def test_language_column_per_row_and_fallback():
    completions = ["<think>Bonjour le monde</think>", "<think>Привет мир</think>", "<think>hello world</think>"]
    rewards_ = language_consistency_reward(["p"] * 3, completions, language=["fr", "ru", None], target_language="en")
    assert rewards_ == [1.0, 1.0, 1.0]
    assert language_consistency_reward(["p"], ["<think>Привет мир, hello</think>"], language=["ru-RU"]) == [
        pytest.approx(2 / 3)
    ]


def test_language_japanese_korean_and_accents():
    # kana per character (5) + kanji per character (2): all Japanese
    assert language_consistency_reward(["p"], ["<think>こんにちは世界</think>"], target_language="ja") == [1.0]
    # two Hangul words, one English word
    assert language_consistency_reward(["p"], ["<think>안녕하세요 세계 hello</think>"], target_language="ko") == [
        pytest.approx(2 / 3)
    ]
    assert script_word_counts("déjà vu, naïve façade don't") == {"latin": 5}


def test_language_chain_of_thought_selection():
    assert chain_of_thought("<think>inner</think><answer>x</answer>") == "inner"
    assert chain_of_thought("reasoning</think><answer>x</answer>", think_opened=True) == "reasoning"
    assert chain_of_thought("reasoning</think><answer>x</answer>") == "reasoning"
    assert chain_of_thought("<think>truncated reasoning") == "truncated reasoning"
    assert chain_of_thought("plain text <answer>答案</answer>").strip() == "plain text"
    # the prompt opened <think>: the CoT is the text before </think>
    reward = language_consistency_reward(["Q <think>"], ["我们 think</think><answer>answer words</answer>"])
    assert reward == [pytest.approx(1 / 3)]


def test_language_empty_chain_of_thought_scores_zero():
    assert language_consistency_reward(["p"], ["<think>  42 + $x$ </think><answer>42</answer>"]) == [0.0]
    assert language_consistency_reward(["p"], [""]) == [0.0]


def test_language_codes_and_unknown_language():
    assert scripts_for_language("zh-CN") == {"han"}
    assert scripts_for_language("en_US") == {"latin"}
    assert scripts_for_language("Japanese") == {"han", "kana"}
    assert scripts_for_language("cyrillic") == {"cyrillic"}
    with pytest.raises(ValueError, match="unknown language 'klingon'"):
        language_consistency_reward(["p"], ["<think>x</think>"], target_language="klingon")


# ----------------------------------------------------------------------------- length


def test_length_reward():
    ids = [[0] * 100, [0] * 50, [0] * 150, [0] * 250, []]
    assert length_reward(["p"] * 5, ["c"] * 5, target_tokens=100, completion_ids=ids) == [1.0, 0.5, 0.5, 0.0, 0.0]
    # without ids: whitespace words
    assert length_reward(["p"], ["one two three"], target_tokens=4) == [0.75]
    with pytest.raises(ValueError, match="target_tokens must be positive"):
        length_reward(["p"], ["c"], target_tokens=0)


def test_overlong_reward_hand_computed():
    lengths = [0, 10, 15, 16, 18, 20, 21, 500]
    ids = [[1] * n for n in lengths]
    got = overlong_reward(["p"] * len(ids), ["c"] * len(ids), max_tokens=20, buffer=5, completion_ids=ids)
    # L_max - L_cache = 15: 0 up to 15, then (15 - L) / 5, and -1 past 20
    assert got == pytest.approx([0.0, 0.0, 0.0, -0.2, -0.6, -1.0, -1.0, -1.0])


def test_overlong_requires_completion_ids_and_sane_params():
    with pytest.raises(ValueError, match="needs completion_ids"):
        overlong_reward(["p"], ["c"])
    with pytest.raises(ValueError, match="0 < buffer <= max_tokens"):
        overlong_reward(["p"], ["c"], max_tokens=10, buffer=20, completion_ids=[[1]])
