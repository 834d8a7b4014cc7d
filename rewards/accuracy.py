"""Accuracy reward: is the completion's final answer mathematically equal to the gold answer?"""

from __future__ import annotations

from .answers import EXTRACTION_MODES, FinalAnswer, extract_gold_answer, final_answer, last_number
from .registry import register_reward
from .text import completion_text
from .verify import Outcome, get_verifier


@register_reward("accuracy")
def accuracy_reward(
    prompts: list,
    completions: list,
    *,
    gold_column: str = "solution",
    answer_extraction: str = "strict",
    fallback: str | None = None,
    **kwargs,
) -> list[float | None]:
    """1.0 if the completion's final answer equals the gold answer (math-verify), else 0.0.

    reward = 1.0 if verify(answer(completion), gold(row[gold_column])) else 0.0

    ``answer_extraction: strict`` (default, R1's rule) reads the last ``<answer>`` tag (all its
    ``\\boxed{}`` if it has any), else the final group of ``\\boxed{}`` answers, else a final
    ``#### n``; no answer scores 0.0. ``any`` also reads, when none of these is there, the last
    line with math in it, like plain math-verify. The gold comes from the ``gold_column`` dataset
    column (default ``solution``): a GSM8K solution ending in ``#### n``, a MATH solution with
    ``\\boxed{}``, or a bare answer (a set, tuple, interval, equation or ``\\text{}`` answer too).
    Equality is math-verify's (``\\frac{3}{4}`` = ``0.75``, ``1,234`` = ``1 234`` = ``1234``).

    No credit for hedging: when the gold is one value and the answer offers several different
    candidates ("17 or 18", ``\\boxed{17}\\boxed{18}``, ``17 \\lor 18``, two answer tags that
    disagree, ``\\pm 17``, a set or interval holding the gold), the reward is 0.0.

    A row whose gold is missing or unparseable gets None (no reward is ever derived from a bad
    gold), and so does a comparison that timed out or crashed the math-verify worker (undecided,
    not wrong). When the trainer passes ``log_metric``, the batch's shares of those and of hedges
    and answerless completions are logged as ``accuracy/verify_timeouts``,
    ``accuracy/verify_crashes``, ``accuracy/hedges`` and ``accuracy/no_answer``.

    ``fallback="last_number"`` takes the last number in the text when no delimited answer is
    found (lenient scoring for small models that answer in prose).
    """
    if fallback not in (None, "last_number"):
        raise ValueError(f"accuracy: fallback must be null or 'last_number', got {fallback!r}")
    if answer_extraction not in EXTRACTION_MODES:
        raise ValueError(
            f"accuracy: answer_extraction must be one of {', '.join(EXTRACTION_MODES)}, got {answer_extraction!r}"
        )
    if gold_column not in kwargs:
        available = ", ".join(sorted(k for k, v in kwargs.items() if isinstance(v, list))) or "(none)"
        raise ValueError(
            f"accuracy reward needs the gold answers in a dataset column '{gold_column}'; "
            f"columns passed: {available} (bind gold_column=... to use another)"
        )
    golds = kwargs[gold_column]
    if len(golds) != len(completions):
        raise ValueError(f"got {len(completions)} completions but {len(golds)} values in column '{gold_column}'")

    texts = [completion_text(c) for c in completions]
    answers = [final_answer(t, answer_extraction) for t in texts]
    if fallback == "last_number":
        for i, text in enumerate(texts):
            number = last_number(text) if answers[i] is None else None
            if number is not None:
                answers[i] = FinalAnswer(number, (number,), False, "last_number")
    gold_answers = [extract_gold_answer(g) for g in golds]
    to_verify = [i for i, (a, g) in enumerate(zip(answers, gold_answers)) if a is not None and g is not None]
    outcomes = dict(zip(to_verify, get_verifier().judge_many((answers[i], gold_answers[i]) for i in to_verify)))

    rewards: list[float | None] = []
    for i, (answer, gold) in enumerate(zip(answers, gold_answers)):
        if gold is None:
            rewards.append(None)
        elif answer is None:
            rewards.append(0.0)
        else:
            decision = outcomes[i].decision  # None: bad gold, timeout or crashed worker
            rewards.append(None if decision is None else 1.0 if decision else 0.0)

    log_metric = kwargs.get("log_metric")
    if callable(log_metric) and completions:
        n = len(completions)
        log_metric("accuracy/verify_timeouts", sum(o is Outcome.TIMEOUT for o in outcomes.values()) / n)
        log_metric("accuracy/verify_crashes", sum(o is Outcome.WORKER_DIED for o in outcomes.values()) / n)
        log_metric("accuracy/hedges", sum(o is Outcome.HEDGE for o in outcomes.values()) / n)
        log_metric("accuracy/no_answer", sum(a is None for a in answers) / n)
    return rewards
