"""The accuracy reward against real answer pairs and MATH-500 (starts a math-verify worker).

- ``tests/data/answer_pairs.jsonl.gz``: real (gold, prediction, verdict) pairs from several sources
  (see tests/data/README.md), each with plain math-verify's verdict as measured when the set was
  built. Wherever plain math-verify is right, our reward (``answer_extraction: any``) must be right
  too, except for the few pairs listed below, where R1's stricter rules decide differently on
  purpose.
- ``tests/data/math500.jsonl.gz``: every MATH-500 gold answer against its own reference solution
  (500/500) and against the next problem's solution where the answers differ (at most 1 judged
  equal: ``5`` vs ``x=5``, which is equal).

``python -m benchmarks.bench_accuracy`` prints the full tables.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from rewards.accuracy import accuracy_reward
from rewards.answers import normalize_answer

DATA = Path(__file__).parent / "data"
with gzip.open(DATA / "answer_pairs.jsonl.gz", "rt", encoding="utf-8") as _f:
    PAIRS = [json.loads(line) for line in _f if line.strip()]

# Pairs where plain math-verify is right and we differ on purpose (the source line identifies each).
DELIBERATE = {
    # a \boxed{255} on an intermediate value, then "The final answer is $10,455$": math-verify
    # prefers its "final answer" anchor; R1's rule (and ours, in both modes) reads the box.
    "tests/test_all.py:810 (": "a box is an answer",
    # gold "\boxed{35 cm} ++++++ \boxed{4}": boxes joined by "++++++" are two answers to us, not one
    "tests/test_boxed.py:8 (": "\"++++++\" does not join two boxes",
}


def deliberate(pair: dict) -> bool:
    return any(key in pair["source"] for key in DELIBERATE)


def ours(pair: dict, mode: str = "any") -> bool:
    return accuracy_reward(["q"], [pair["pred"]], solution=[pair["gold"]], answer_extraction=mode) == [1.0]


def test_the_regression_set_is_real_and_varied():
    sources = {p["source"].split("@")[0] for p in PAIRS}
    assert len(PAIRS) >= 300 and len(sources) >= 4, sources
    assert sum(not p["verdict"] for p in PAIRS) >= 60  # wrong answers too, not only right ones
    assert len([p for p in PAIRS if deliberate(p)]) == len(DELIBERATE)


@pytest.mark.slow
def test_we_agree_wherever_plain_math_verify_is_right():
    where_right = [p for p in PAIRS if p["plain_math_verify"] == p["verdict"]]
    disagree = [(p["source"], p["gold"][:40], p["pred"][:60]) for p in where_right if not deliberate(p) and ours(p) != p["verdict"]]
    assert disagree == []
    # and overall we are right at least as often as plain math-verify
    assert sum(ours(p) == p["verdict"] for p in PAIRS) >= len(where_right)


@pytest.mark.slow
def test_math500_gold_vs_reference_solutions():
    with gzip.open(DATA / "math500.jsonl.gz", "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    golds = [r["answer"] for r in rows]
    assert len(rows) == 500
    assert accuracy_reward(["q"] * 500, [r["solution"] for r in rows], solution=golds) == [1.0] * 500
    mismatched = [i for i in range(500) if normalize_answer(golds[i]) != normalize_answer(golds[(i + 1) % 500])]
    neighbour = accuracy_reward(["q"] * len(mismatched), [rows[(i + 1) % 500]["solution"] for i in mismatched], solution=[golds[i] for i in mismatched])
    judged_equal = [(golds[i], golds[(i + 1) % 500]) for i, r in zip(mismatched, neighbour) if r == 1.0]
    assert len(mismatched) == 498 and judged_equal == [("5", "x=5")]
