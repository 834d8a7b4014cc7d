"""Tests for the bounded-time math verifier and the accuracy reward (they start worker processes)."""

from __future__ import annotations

import threading
import time

import pytest

from rewards import accuracy as accuracy_module
from rewards.accuracy import accuracy_reward
from rewards.verify import MathVerifier, Outcome, get_verifier

# Power towers: sympy evaluates them for a very long time.
TOWERS = [r"9^{9^{9^{9}}}", r"8^{8^{8^{8}}}", r"2^{2^{2^{2^{2^{2}}}}}"]


@pytest.fixture(scope="module")
def quick_verifier():
    """A verifier with short deadlines, so pathological inputs cost about a second each."""
    verifier = MathVerifier(timeout_s=3.0, inner_timeout_s=1)
    verifier.check("1", "1.0")  # start the worker outside the timed parts
    yield verifier
    verifier.close()


def accuracy(completions, solutions, **kwargs):
    return accuracy_reward(["prompt"] * len(completions), completions, solution=solutions, **kwargs)


# ----------------------------------------------------------------------------- verifier


@pytest.mark.parametrize(
    ("pred", "gold", "expected"),
    [
        (r"\frac{3}{4}", "0.75", True),
        ("0.5", r"\frac12", True),
        (r"\dfrac{3}{4}", r"\frac{3}{4}", True),
        (r"\sqrt{18}", r"3\sqrt{2}", True),
        ("3", r"3\sqrt{2}", False),  # a bare "3\sqrt{2}" must not be read as 3
        ("1,234", "1234", True),
        ("18 dollars", "18", True),
        ("(1, 2)", "(1,2)", True),
        ("0.333", r"\frac{1}{3}", False),
        ("17", "18", False),
        ("", "18", False),
        ("5", "", None),
        ("5", "the answer depends on the reader", None),  # unparseable gold
    ],
)
def test_check_known_pairs(quick_verifier, pred, gold, expected):
    assert quick_verifier.check(pred, gold) is expected


def test_check_many_keeps_order(quick_verifier):
    assert quick_verifier.check_many([("1/2", "0.5"), ("2", "3"), ("x", "")]) == [True, False, None]


def test_pathological_answers_are_bounded(quick_verifier):
    before = quick_verifier.stats["timeouts"]
    start = time.perf_counter()
    results = [quick_verifier.check(tower, "3") for tower in TOWERS]
    elapsed = time.perf_counter() - start
    assert results == [None, None, None]
    assert quick_verifier.stats["timeouts"] - before == 3
    assert elapsed < 12.0
    # the worker is still usable afterwards
    assert quick_verifier.check(r"\frac{1}{4}", "0.25") is True


def test_hard_deadline_kills_and_restarts_the_worker():
    # math-verify's own timeout set far beyond the deadline: only killing the worker can stop it
    with MathVerifier(timeout_s=1.0, inner_timeout_s=60) as verifier:
        assert verifier.check("2", "2.0") is True
        start = time.perf_counter()
        assert verifier.judge(r"7^{7^{7^{7}}}", "3") is Outcome.TIMEOUT
        assert time.perf_counter() - start < 3.0
        assert verifier.stats["worker_restarts"] == 1
        assert verifier.stats["timeouts"] == 1
        assert verifier.check(r"\frac12", "0.5") is True  # a fresh worker took over
        # the timeout is remembered, so a GRPO group repeating the answer costs one deadline
        start = time.perf_counter()
        assert verifier.judge(r"7^{7^{7^{7}}}", "3") is Outcome.TIMEOUT
        assert time.perf_counter() - start < 0.1
        assert verifier.stats["cache_hits"] == 1


def test_huge_answers_are_rejected_fast(quick_verifier):
    before = quick_verifier.stats
    huge = r"\frac{1}{2}" + "+x" * 50_000
    start = time.perf_counter()
    assert quick_verifier.check(huge, "3") is False
    assert quick_verifier.check("{" * 30 + "1" + "}" * 30, "1") is False
    assert quick_verifier.check("3", huge) is None  # an unusable gold
    assert time.perf_counter() - start < 0.5
    after = quick_verifier.stats
    assert after["too_long"] - before["too_long"] == 1
    assert after["too_deep"] - before["too_deep"] == 1


def test_verifier_works_from_other_threads():
    results = {}

    def work(name, verifier):
        results[name] = verifier.check(r"\frac{1}{4}", "0.25")

    fresh = MathVerifier()  # first used (worker started) off the main thread
    try:
        threads = [
            threading.Thread(target=work, args=("shared", get_verifier())),
            threading.Thread(target=work, args=("fresh", fresh)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        fresh.close()
    assert results == {"shared": True, "fresh": True}


# ----------------------------------------------------------------------------- accuracy


def test_accuracy_boxed_latex_fractions():
    completions = [
        r"<think>3 of 4 parts</think> So the answer is $\boxed{\frac{3}{4}}$.",
        r"The fraction is \boxed{\dfrac{3}{4}}",
        r"\boxed{0.75}",
        r"\boxed{\frac{4}{3}}",
    ]
    assert accuracy(completions, [r"\frac{3}{4}"] * 4) == [1.0, 1.0, 1.0, 0.0]
    assert accuracy(completions[:1], ["0.75"]) == [1.0]
    # a MATH worked solution as gold: its last \boxed{} is the answer
    assert accuracy(completions[:1], [r"We get $\frac{6}{8} = \boxed{\frac34}$."]) == [1.0]


def test_accuracy_gsm8k_gold_with_commas_and_hashes():
    gold = "Each box has 617 apples, so 2 boxes hold 617*2 = <<617*2=1234>>1,234 apples.\n#### 1,234"
    completions = [
        "617 * 2 = 1234\n#### 1234",
        r"The total is \boxed{1,234}.",
        "<think>617*2</think><answer>1234</answer>",
        "<answer>$1,234</answer>",
        "<answer>1235</answer>",
        "I think it is 1234 but I won't commit.",  # no extractable answer
    ]
    assert accuracy(completions, [gold] * len(completions)) == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]


def test_accuracy_answer_tags_and_plain_text_answers():
    completions = [
        "<think>r</think><answer>18</answer>",
        "<think>r</think><answer>$18</answer>",
        "<think>r</think><answer>18 dollars</answer>",
        r"<think>r</think><answer>\boxed{18}</answer>",
        "<think>r</think><answer>The answer is 18.</answer>",
        "<think>r</think><answer>16</answer>",
        "<think>r</think><answer></answer>",
    ]
    assert accuracy(completions, ["18"] * len(completions)) == [1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]


def test_accuracy_math_style_plain_latex_gold():
    completions = [r"\boxed{3\sqrt{2}}", r"\boxed{\sqrt{18}}", r"\boxed{3}", r"\boxed{4.2426}"]
    assert accuracy(completions, [r"3\sqrt{2}"] * 4) == [1.0, 1.0, 0.0, 0.0]


def test_accuracy_bad_gold_gives_none():
    completions = [r"\boxed{5}"] * 4
    assert accuracy(completions, ["", None, "   ", "depends on the weather"]) == [None, None, None, None]


def test_accuracy_chat_messages_and_chinese():
    completions = [
        [{"role": "assistant", "content": r"<think>计算</think><answer>答案是 \boxed{18}</answer>"}],
        [{"role": "assistant", "content": [{"type": "text", "text": r"所以答案是 \boxed{18}。"}]}],
        [{"role": "assistant", "content": "<answer>18元</answer>"}],
        [{"role": "assistant", "content": "我不知道"}],
    ]
    assert accuracy(completions, ["18"] * 4) == [1.0, 1.0, 1.0, 0.0]


def test_accuracy_gold_column_and_missing_column():
    assert accuracy_reward(["p"], [r"\boxed{2}"], answer=["#### 2"], gold_column="answer") == [1.0]
    with pytest.raises(ValueError, match="needs the gold answers in a dataset column 'solution'"):
        accuracy_reward(["p"], [r"\boxed{2}"], answer=["2"])


def test_accuracy_timeout_is_undecided_and_counted(monkeypatch, quick_verifier):
    monkeypatch.setattr(accuracy_module, "get_verifier", lambda: quick_verifier)
    before = quick_verifier.stats["timeouts"]
    logged = {}
    got = accuracy(
        [r"\boxed{5^{5^{5^{5}}}}", r"\boxed{3}", "no answer"],
        ["3", "3", "3"],
        log_metric=lambda name, value: logged.__setitem__(name, value),
    )
    assert got == [None, 1.0, 0.0]  # a timeout is not a wrong answer
    assert quick_verifier.stats["timeouts"] - before == 1
    assert logged == {
        "accuracy/verify_timeouts": pytest.approx(1 / 3),
        "accuracy/verify_crashes": 0.0,
        "accuracy/hedges": 0.0,
        "accuracy/no_answer": pytest.approx(1 / 3),
    }


def test_accuracy_worker_crash_is_undecided_and_counted(monkeypatch):
    """A math-verify worker that dies on an item (segfault, OOM kill) gives None, not 0.0."""
    import os
    import signal

    verifier = MathVerifier(timeout_s=10.0)
    monkeypatch.setattr(accuracy_module, "get_verifier", lambda: verifier)
    real_judge = verifier._judge_in_worker

    def crash_on_seven(pred, *rest):
        if pred == r"\frac{7}{2}":  # the worker dies while it judges this item
            worker = verifier._ensure_worker()
            send = worker.writer.send

            def send_then_die(message):
                send(message)
                os.kill(worker.process.pid, signal.SIGKILL)
                worker.process.wait()

            worker.writer.send = send_then_die
        return real_judge(pred, *rest)

    monkeypatch.setattr(verifier, "_judge_in_worker", crash_on_seven)
    logged = {}
    try:
        got = accuracy([r"\boxed{\frac{7}{2}}", r"\boxed{\frac{5}{2}}"], ["3.5", "2.5"], log_metric=logged.__setitem__)
        stats = verifier.stats
    finally:
        verifier.close()
    assert got == [None, 1.0]  # the next item gets a fresh worker
    assert stats["worker_died"] == 1 and stats["worker_restarts"] == 1
    assert logged["accuracy/verify_crashes"] == pytest.approx(1 / 2)


def test_accuracy_on_a_huge_completion_is_fast():
    completion = "<think>" + "word " * 20_000 + "</think><answer>" + "9" * 100_000 + "</answer>"
    start = time.perf_counter()
    assert accuracy([completion], ["9"]) == [0.0]
    assert time.perf_counter() - start < 1.0
