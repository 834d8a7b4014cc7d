"""Synthetic tasks (grpo/tasks.py) and the countdown reward (rewards/countdown.py)."""

from __future__ import annotations

import ast
import operator
import re

import pytest

from grpo.tasks import get_task, list_tasks, register_task

CJK = re.compile(r"[\u4e00-\u9fff]")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _calc(expression: str):
    """Independent re-computation of a generated expression (integers and + - * / only)."""

    def walk(node):
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):  # negative terms: "5 - -3"
            return -walk(node.operand)
        return _OPS[type(node.op)](walk(node.left), walk(node.right))

    return walk(ast.parse(expression, mode="eval"))


def test_registry_lists_builtins_and_accepts_new_tasks():
    assert {"arithmetic", "countdown"} <= set(list_tasks())

    @register_task("_echo_test", description="repeat")
    def echo(n, seed, language="en", **options):
        return [{"prompt": "x", "solution": "x", "language": language, "task": "_echo_test"}] * n

    assert get_task("_echo_test")(2, 0)[0]["solution"] == "x"
    assert get_task("_echo_test").description == "repeat"
    with pytest.raises(KeyError, match="unknown task 'nope'; known tasks: .*arithmetic"):
        get_task("nope")


@pytest.mark.parametrize("name", ["arithmetic", "countdown"])
def test_tasks_are_deterministic_per_seed(name):
    task = get_task(name)
    first, again, other = task(20, 1), task(20, 1), task(20, 2)
    assert first == again
    assert first != other
    assert all(set(r) >= {"prompt", "solution", "language", "task"} and r["task"] == name for r in first)


@pytest.mark.parametrize("name", ["arithmetic", "countdown"])
def test_chinese_and_mixed_prompts(name):
    task = get_task(name)
    zh = task(10, 0, "zh")
    assert all(r["language"] == "zh" and CJK.search(r["prompt"]) for r in zh)
    assert not any(CJK.search(r["prompt"]) for r in task(10, 0, "en"))
    mixed = task(6, 0, "mixed")
    assert [r["language"] for r in mixed] == ["en", "zh"] * 3
    assert all(bool(CJK.search(r["prompt"])) == (r["language"] == "zh") for r in mixed)
    with pytest.raises(ValueError, match="language: expected one of en, zh, mixed"):
        task(1, 0, "fr")


def test_arithmetic_prompts_and_solutions():
    rows = get_task("arithmetic")(50, 3, ops="+-*", num_terms=3, min_value=1, max_value=30)
    for r in rows:
        assert int(r["solution"]) == _calc(r["expression"])
        assert r["prompt"] == f"What is {r['expression']}?"
    two = get_task("arithmetic")(30, 0, language="zh", allow_negative=False)
    for r in two:
        a, op, b = r["expression"].split()
        assert r["prompt"] == f"{a} {'加' if op == '+' else '减'} {b} 等于多少？"
        assert int(r["solution"]) == _calc(r["expression"]) >= 0
    with pytest.raises(ValueError, match="unknown option\\(s\\) max; valid options: min_value, max_value"):
        get_task("arithmetic")(1, 0, max=3)
    with pytest.raises(ValueError, match="ops must be made of"):
        get_task("arithmetic")(1, 0, ops="^")


def test_countdown_instances_are_solvable():
    from rewards.countdown import countdown_score

    rows = get_task("countdown")(40, 7)
    for r in rows:
        assert 3 <= len(r["numbers"]) <= 4
        assert str(r["numbers"][0]) in r["prompt"] and r["solution"] in r["prompt"]
        assert _calc(r["expression"]) == int(r["solution"])
        assert sorted(int(x) for x in re.findall(r"\d+", r["expression"])) == sorted(r["numbers"])
        assert countdown_score(f"<answer>{r['expression']}</answer>", r["numbers"], r["solution"]) == 1.0


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("<think>25 - 7 = 18, 18 * 10 = 180, + 2</think> <answer>(25 - 7) * 10 + 2</answer>", 1.0),
        ("so the answer is\n(25 − 7) × 10 + 2 = 182", 1.0),  # last line, unicode operators, "= target"
        ("<answer>10 * 10 + 25 + 25 + 7</answer>", 0.0),  # reuses 10 and 25
        ("<answer>(25 - 7) * 10</answer>", 0.0),  # wrong value
        ("<answer>(25 - 7) * 10 + 2 = 183</answer>", 0.0),  # states the wrong target
        ("<answer>(25 - 3) * 10 + 2 - 40</answer>", 0.0),  # 3 and 40 are not given
        ("<answer>__import__('os').system('echo hi')</answer>", 0.0),
        ("<answer>182</answer>", 0.0),  # 182 is not one of the numbers
        ("<answer>(25 - 7) * 10 + 2 ** 1</answer>", 0.0),  # power is not allowed
        ("<answer>(25 - 7) / (2 - 2) </answer>", 0.0),  # division by zero
        ("", 0.0),
    ],
)
def test_countdown_reward(completion, expected):
    from rewards.countdown import countdown

    numbers = [25, 7, 10, 2]
    assert countdown(prompts=["p"], completions=[completion], numbers=[numbers], solution=["182"]) == [expected]


def test_countdown_reward_not_applicable_and_chat_completions():
    from rewards.countdown import countdown

    chat = [{"role": "assistant", "content": "<answer>6 / (1 - 3 / 4)</answer>"}]
    out = countdown(prompts=["p", "q"], completions=[chat, "72"], numbers=[[1, 3, 4, 6], None], solution=["24", "72"])
    assert out == [1.0, None]
    assert countdown(prompts=["p"], completions=["1+2"], solution=["3"]) == [None]


def test_countdown_reward_is_registered():
    import rewards.countdown
    from rewards.registry import get_reward

    assert get_reward("countdown") is rewards.countdown.countdown


# --- worked solutions (cold-start SFT data) -------------------------------------------------

_EN_STEP = re.compile(r"(-?\d+) ([-+*/]) (-?\d+) = (-?\d+)\.")
_ZH_STEP = re.compile(r"(-?\d+) (加|减|乘以|除以) (-?\d+) 等于 (-?\d+)。")
_ZH_SYMBOL = {"加": "+", "减": "-", "乘以": "*", "除以": "/"}
_APPLY = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}


def _steps(completion: str, language: str) -> list[tuple[int, str, int, int]]:
    thought = completion.split("</think>")[0]
    if language == "en":
        return [(int(a), op, int(b), int(c)) for a, op, b, c in _EN_STEP.findall(thought)]
    return [(int(a), _ZH_SYMBOL[op], int(b), int(c)) for a, op, b, c in _ZH_STEP.findall(thought)]


def _score_worked(rows, correctness: str):
    from rewards.registry import get_reward

    prompts = [r["prompt"] for r in rows]
    completions = [r["completion"] for r in rows]
    columns = {k: [r[k] for r in rows] for k in ("solution", "language", "numbers") if k in rows[0]}
    return {
        name: get_reward(name)(prompts=prompts, completions=completions, **columns)
        for name in ("format", "language_consistency", correctness)
    }


@pytest.mark.parametrize(
    "options",
    [{}, {"ops": "+-*", "num_terms": 3, "min_value": 1, "max_value": 99}, {"ops": "*", "max_value": 60}, {"ops": "-", "min_value": -30, "max_value": 30}],
)
def test_worked_arithmetic_steps_are_correct_and_single_language(options):
    rows = get_task("arithmetic")(40, 5, "mixed", worked=True, **options)
    for r in rows:
        text = r["completion"]
        assert text.startswith("<think>") and text.endswith(f"</think><answer>{r['solution']}</answer>")
        steps = _steps(text, r["language"])
        assert steps, text
        for a, op, b, c in steps:  # every written step is true arithmetic
            assert _APPLY[op](a, b) == c, text
        assert steps[-1][3] == int(r["solution"]) == _calc(r["expression"])  # the last step is the answer
        if r["language"] == "zh":
            assert not re.search(r"[A-Za-z]", text.split("</think>")[0].replace("<think>", "")), text
        else:
            assert not CJK.search(text), text
    scores = _score_worked(rows, "accuracy")
    assert all(v == [1.0] * len(rows) for v in scores.values()), scores
    # the registered language reward agrees with an explicit target language, and tells them apart
    from rewards.language import language_consistency_reward

    zh = [r["completion"] for r in rows if r["language"] == "zh"]
    en = [r["completion"] for r in rows if r["language"] == "en"]
    assert language_consistency_reward(["p"] * len(zh), zh, target_language="zh") == [1.0] * len(zh)
    assert language_consistency_reward(["p"] * len(en), en, target_language="en") == [1.0] * len(en)
    assert language_consistency_reward(["p"] * len(zh), zh, target_language="en") == [0.0] * len(zh)


def test_worked_arithmetic_decomposes_by_place_value():
    from grpo.tasks import _worked_arithmetic

    rng = __import__("random").Random(0)
    en = _worked_arithmetic([23, 48], ["+"], "23 + 48", 71, "en", rng)
    assert _steps(en, "en") == [(20, "+", 40, 60), (3, "+", 8, 11), (60, "+", 11, 71)]
    zh = _worked_arithmetic([23, 48], ["+"], "23 + 48", 71, "zh", rng)
    assert "20 加 40 等于 60。" in zh and "3 加 8 等于 11。" in zh and zh.endswith("<answer>71</answer>")
    assert _steps(_worked_arithmetic([71, 48], ["-"], "71 - 48", 23, "en", rng), "en") == [(71, "-", 40, 31), (31, "-", 8, 23)]
    assert _steps(_worked_arithmetic([23, 48], ["*"], "23 * 48", 1104, "en", rng), "en") == [
        (23, "*", 40, 920), (23, "*", 8, 184), (920, "+", 184, 1104)
    ]
    # * before +: the product is worked out first, and the thought says so
    mixed = _worked_arithmetic([5, 3, 4], ["+", "*"], "5 + 3 * 4", 17, "zh", rng)
    assert "要先算乘" in mixed and _steps(mixed, "zh") == [(3, "*", 4, 12), (5, "+", 12, 17)]


def test_worked_rows_equal_plain_rows_and_wording_varies():
    for name in ("arithmetic", "countdown"):
        plain = get_task(name)(30, 2, "mixed")
        worked = get_task(name)(30, 2, "mixed", worked=True)
        assert [{k: v for k, v in r.items() if k != "completion"} for r in worked] == plain
        assert "completion" not in plain[0]
        assert worked == get_task(name)(30, 2, "mixed", worked=True)  # deterministic
        for lang in ("en", "zh"):
            openings = {r["completion"].split("。" if lang == "zh" else ".")[0].split(" ")[0] for r in worked if r["language"] == lang}
            assert len(openings) >= 2, (name, lang, openings)


def test_worked_countdown_solutions_score_full_marks():
    rows = get_task("countdown")(30, 4, "mixed", worked=True)
    for r in rows:
        steps = _steps(r["completion"], r["language"])
        assert len(steps) == len(r["numbers"]) - 1
        assert all(_APPLY[op](a, b) == c for a, op, b, c in steps)
        assert steps[-1][3] == int(r["solution"])
        assert r["completion"].endswith(f"<answer>{r['expression']}</answer>")
    scores = _score_worked(rows, "countdown")
    assert all(v == [1.0] * len(rows) for v in scores.values()), scores
