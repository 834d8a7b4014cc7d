"""Accuracy reward: is the completion's final answer mathematically equal to the gold answer?"""

from __future__ import annotations

from .answers import extract_completion_answer, extract_gold_answer, last_number
from .registry import register_reward
from .text import completion_text
from .verify import Outcome, get_verifier


@register_reward("accuracy")
def accuracy_reward(
    prompts: list, completions: list, *, gold_column: str = "solution", fallback: str | None = None, **kwargs
) -> list[float | None]:
    """1.0 if the completion's final answer equals the gold answer (math-verify), else 0.0.

    reward = 1.0 if verify(answer(completion), gold(row[gold_column])) else 0.0

    The answer is the last ``<answer>`` tag (its ``\\boxed{}`` if any), else the last ``\\boxed{}``,
    else a final ``#### n``; no answer scores 0.0. The gold comes from the ``gold_column`` dataset
    column (default ``solution``): a GSM8K solution ending in ``#### n``, a MATH solution with a
    ``\\boxed{}``, or a bare answer. Equality is math-verify's (``\\frac{3}{4}`` = ``0.75``,
    ``1,234`` = ``1234``). A row whose gold is missing or unparseable gets None (no reward is ever
    derived from a bad gold); a comparison that times out scores 0.0 and is counted in the
    verifier's stats. When the trainer passes ``log_metric``, the batch's share of timeouts and of
    completions with no answer are logged as ``accuracy/verify_timeouts`` and ``accuracy/no_answer``.

    ``fallback="last_number"`` takes the last number in the text when no delimited answer is
    found (lenient scoring for small models that answer in prose); the default is strict.
    """
    if fallback not in (None, "last_number"):
        raise ValueError(f"accuracy: fallback must be null or 'last_number', got {fallback!r}")
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
    answers = [extract_completion_answer(t) for t in texts]
    if fallback == "last_number":
        answers = [a if a is not None else last_number(t) for a, t in zip(answers, texts)]
    gold_answers = [extract_gold_answer(g) for g in golds]
    to_verify = [i for i, (a, g) in enumerate(zip(answers, gold_answers)) if a is not None and g is not None]
    outcomes = dict(zip(to_verify, get_verifier().judge_many((answers[i], gold_answers[i]) for i in to_verify)))

    rewards: list[float | None] = []
    for i, (answer, gold) in enumerate(zip(answers, gold_answers)):
        if gold is None or outcomes.get(i) is Outcome.BAD_GOLD:
            rewards.append(None)
        elif answer is None:
            rewards.append(0.0)
        else:
            rewards.append(1.0 if outcomes[i] is Outcome.EQUAL else 0.0)

    log_metric = kwargs.get("log_metric")
    if callable(log_metric) and completions:
        timeouts = sum(outcome is Outcome.TIMEOUT for outcome in outcomes.values())
        log_metric("accuracy/verify_timeouts", timeouts / len(completions))
        log_metric("accuracy/no_answer", sum(a is None for a in answers) / len(completions))
    return rewards
