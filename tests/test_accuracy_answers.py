"""The accuracy reward's answer handling: hedges score 0, answers that are lists by nature do not,
and the final-answer extraction keeps what math-verify needs (starts a math-verify worker).

The hedge table is ``tests/data/hedges.jsonl`` (73 rows: 43 hedges, 30 controls);
``python -m benchmarks.bench_accuracy`` prints it beside plain math-verify's verdicts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rewards.accuracy import accuracy_reward
from rewards.answers import FinalAnswer, extract_gold_answer, final_answer, split_alternatives, text_answer

HEDGES = [json.loads(line) for line in (Path(__file__).parent / "data" / "hedges.jsonl").read_text().splitlines()]


def test_the_hedge_table_has_both_kinds():
    kinds = [row["kind"] for row in HEDGES]
    assert kinds.count("hedge") >= 30 and kinds.count("control") >= 25
    assert {row["expected"] for row in HEDGES if row["kind"] == "hedge"} == {0.0}


@pytest.mark.parametrize("row", HEDGES, ids=lambda r: f"{r['kind']}:{r['gold']}:{r['completion'][:40]}")
def test_hedges_score_zero_and_controls_keep_their_verdict(row):
    got = accuracy_reward(["q"], [row["completion"]], solution=[row["gold"]], answer_extraction=row["answer_extraction"])
    assert got == [row["expected"]]


def test_hedges_are_counted_in_metrics():
    logged = {}
    completions = [r"\boxed{17} or \boxed{18}", r"\boxed{17}", "<answer>17 and 18</answer>", "nothing"]
    got = accuracy_reward(["q"] * 4, completions, solution=["17"] * 4, log_metric=logged.__setitem__)
    assert got == [0.0, 1.0, 0.0, 0.0]
    assert logged["accuracy/hedges"] == pytest.approx(2 / 4) and logged["accuracy/no_answer"] == pytest.approx(1 / 4)


# ----------------------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    ("completion", "text", "alternatives", "disjunctive"),
    [
        (r"\boxed{1}, \boxed{2}, \boxed{3}", "1, 2, 3", ("1", "2", "3"), False),
        (r"so $\boxed{1}$ and $\boxed{-2}$", "1, -2", ("1", "-2"), False),
        (r"\boxed{17} or \boxed{18}", "17, 18", ("17", "18"), True),
        (r"$$\boxed{(2, 2)} \quad \text{and} \quad \boxed{(6, 2)}$$", "(2, 2), (6, 2)", ("(2, 2)", "(6, 2)"), False),
        (r"\boxed{1} papers and \boxed{2} bins", "1, 2", ("1", "2"), False),
        (r"\boxed{18}. That overcounts the corner, so we subtract it once more: \boxed{17}", "17", ("17",), False),
        (r"\boxed{(1, 2)}", "(1, 2)", ("(1, 2)",), False),  # brackets protect their commas
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}", (r"\{1, 2\}",), False),
        (r"\boxed{x = \frac{1}{2}, y = 3}", r"x = \frac{1}{2}, y = 3", (r"x = \frac{1}{2}", "y = 3"), False),
        (r"\boxed{32,\! 349}", r"32,\! 349", ("32349",), False),  # LaTeX thousands are one number
        ("<answer>17</answer> then <answer>18</answer>", "18", ("17", "18"), True),  # tags that disagree
        ("<answer>12</answer><answer>12.</answer>", "12.", ("12",), False),  # tags that agree
        ("#### 1,234", "1234", ("1234",), False),
    ],
)
def test_final_answer_keeps_the_final_region(completion, text, alternatives, disjunctive):
    answer = final_answer(completion)
    assert (answer.text, answer.alternatives, answer.disjunctive) == (text, alternatives, disjunctive)


def test_final_answer_modes():
    prose = "We add them up, so the final answer is $42$. I hope it is correct."
    assert final_answer(prose) is None  # strict: no delimiter, no answer
    answer = final_answer(prose, "any")
    assert answer.source == "text" and answer.alternatives == ("$42$",)
    assert final_answer(r"<answer>7</answer> \boxed{9}", "any").text == "7"  # delimiters first in both modes
    with pytest.raises(ValueError, match="answer_extraction must be one of strict, any, got 'loose'"):
        final_answer("x", "loose")
    with pytest.raises(ValueError, match="accuracy: answer_extraction must be one of strict, any, got 'loose'"):
        accuracy_reward(["q"], ["x"], solution=["1"], answer_extraction="loose")


@pytest.mark.parametrize(
    ("text", "pieces", "disjunctive"),
    [
        ("17 and 18", ["17", "18"], False),
        (r"17 \lor 18", ["17", "18"], True),
        (r"x = 3 \text{ or } x = -3", ["x = 3", "x = -3"], True),
        ("17\n18", ["17", "18"], False),
        ("1,234", ["1,234"], False),  # a number, not a list
        ("1,22", ["1,22"], False),  # a decimal comma, not a list
        ("18 dollars", ["18 dollars"], False),
        # prose: commas join clauses, only "or" offers alternatives; the final clause is what counts
        ("Jean has 28 lollipops, eats 2, and so she has 26 left over for the bags she fills", ["Jean has 28 lollipops, eats 2, and so she has 26 left over for the bags she fills"], False),
        ("After adding 3 and 4 we get 7, so the answer is 7 or 8. I hope that helps.", ["7", "8"], True),
    ],
)
def test_split_alternatives(text, pieces, disjunctive):
    assert split_alternatives(text) == (pieces, disjunctive)


@pytest.mark.parametrize(
    ("answer", "words"),
    [(r"\text{odd}", "odd"), ("odd", "odd"), (r"\text{(C)}", "c"), (r"\text{Evelyn}", "evelyn"), (r"\textbf{E}", "e"),
     ("x", None), ("E", None), ("pi", None), (r"5\text{ cm}", None), (r"\text{June 20}", None), ("the answer depends on the reader", None)],
)
def test_text_answers(answer, words):
    assert text_answer(answer) == words


def test_text_golds_compare_as_words():
    completions = [r"\boxed{odd}", r"\boxed{\text{odd}}", "<answer>Odd.</answer>", r"\boxed{even}", r"\boxed{e}"]
    assert accuracy_reward(["q"] * 5, completions, solution=[r"\text{odd}"] * 4 + [r"\text{E}"]) == [1.0, 1.0, 1.0, 0.0, 1.0]
    # \text{E} is a choice letter, not Euler's number
    assert accuracy_reward(["q"], [r"\boxed{2.71828}"], solution=[r"\text{E}"]) == [0.0]


@pytest.mark.parametrize(
    ("gold", "completion"),
    [
        (r"(p,q)=(3,2)", r"\boxed{(3,2)}"),  # named tuple
        (r"p=5,q=2;p=7,q=2", r"\boxed{(5,2),(7,2)}"),
        (r"S_{MBCN}:S=7:32", r"\boxed{7:32}"),  # ratio with a name
        (r"0<f(x)<1", r"\boxed{(0,1)}"),  # inequality vs interval
        ("1000", r"\boxed{1 000}"),  # number formats math-verify accepts
        ("1.22", r"\boxed{1,22}"),
        ("1,22", r"\boxed{1.22}"),
        ("1000.99", r"\boxed{1000,99}"),
        (r"\boxed{1} and \boxed{-2}", r"\boxed{-2,1}"),  # several boxes in the gold
        (r"\{1,2,3\}", r"\boxed{1}, \boxed{2}, \boxed{3}"),
        ("x = 5", r"\boxed{5}"),
    ],
)
def test_answers_math_verify_accepts_are_kept(gold, completion):
    assert accuracy_reward(["q"], [completion], solution=[gold]) == [1.0]


def test_gold_extraction_keeps_every_box_of_the_final_group():
    assert extract_gold_answer(r"So $a = \boxed{2}$ and $b = \boxed{3}$.") == "2, 3"
    assert extract_gold_answer(r"First \boxed{1}. Much later, after more work, the answer is \boxed{5}.") == "5"
    assert isinstance(FinalAnswer.from_text("17 or 18"), FinalAnswer)
