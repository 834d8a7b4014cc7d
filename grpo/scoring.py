"""Apply a weighted set of reward functions to a batch of completions.

Reward functions follow TRL's convention, ``fn(prompts, completions, **columns) -> list[float | None]``
(see ``rewards/``). ``None`` means "not applicable to this row": it is kept as NaN in the per-function
table, left out of that function's mean, and contributes nothing to the weighted total
(``total_i = Σ_k w_k · r_ik`` over the functions that scored row i).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class RewardTerm:
    name: str  # as logged: rewards/<name>/mean
    fn: Callable  # fn(prompts, completions, **columns) -> list[float | None]
    weight: float = 1.0
    params: dict = field(default_factory=dict)  # keyword arguments bound from the recipe


class RewardError(RuntimeError):
    """A reward function failed or broke its contract; the message names the reward and the row."""


@dataclass
class Scores:
    per_reward: dict[str, list[float]]  # name -> value per row (NaN where the function returned None)
    total: list[float]  # weighted sum per row
    extra_metrics: dict[str, float] = field(default_factory=dict)  # what rewards logged via log_metric

    def mean(self, name: str) -> float | None:
        vals = [v for v in self.per_reward[name] if not math.isnan(v)]
        return sum(vals) / len(vals) if vals else None

    def std(self, name: str) -> float | None:
        vals = [v for v in self.per_reward[name] if not math.isnan(v)]
        if len(vals) < 2:
            return None
        m = sum(vals) / len(vals)
        return math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def _as_float(value, name: str, row: int) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RewardError(f"reward {name!r} returned {type(value).__name__} for row {row}; expected a float or None")
    value = float(value)
    if math.isnan(value) or math.isinf(value):
        raise RewardError(f"reward {name!r} returned {value} for row {row}; expected a finite float or None")
    return value


def score_completions(
    terms: list[RewardTerm], prompts: list, completions: list, columns: dict[str, list]
) -> Scores:
    """Run every reward term over the rows; errors name the reward and the row."""
    n = len(completions)
    per_reward: dict[str, list[float]] = {}
    extra: dict[str, float] = {}
    # Rewards may report their own figures (e.g. accuracy's verifier timeouts) through log_metric.
    log_metric = lambda key, value: extra.__setitem__(key, float(value))  # noqa: E731
    for term in terms:
        try:
            values = term.fn(prompts=prompts, completions=completions, log_metric=log_metric, **{**columns, **term.params})
        except RewardError:
            raise
        except Exception as exc:
            raise RewardError(f"reward {term.name!r} raised {type(exc).__name__}: {exc}") from exc
        if not isinstance(values, (list, tuple)) or len(values) != n:
            got = len(values) if isinstance(values, (list, tuple)) else type(values).__name__
            raise RewardError(f"reward {term.name!r} returned {got} values for {n} completions; expected a list of {n}")
        per_reward[term.name] = [_as_float(v, term.name, i) for i, v in enumerate(values)]
    total = []
    for i in range(n):
        parts = [t.weight * per_reward[t.name][i] for t in terms if not math.isnan(per_reward[t.name][i])]
        total.append(sum(parts))
    return Scores(per_reward=per_reward, total=total, extra_metrics=extra)
