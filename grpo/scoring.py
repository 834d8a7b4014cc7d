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
    when: dict = field(default_factory=dict)  # column -> value: score only matching rows (others get None)

    def applies(self, columns: dict[str, list], n: int) -> list[int]:
        """Indices of the rows this term scores (all rows when ``when`` is empty)."""
        if not self.when:
            return list(range(n))
        for column in self.when:
            if column not in columns:
                raise RewardError(f"reward {self.name!r}: when: needs a dataset column {column!r}; columns: {', '.join(sorted(columns))}")
        return [i for i in range(n) if all(columns[c][i] == v for c, v in self.when.items())]


class RewardError(RuntimeError):
    """A reward function failed or broke its contract; the message names the reward and the row."""


@dataclass
class Scores:
    per_reward: dict[str, list[float]]  # name -> value per row (NaN where the function returned None)
    total: list[float]  # weighted sum per row
    extra_metrics: dict[str, float] = field(default_factory=dict)  # what rewards logged via log_metric

    def select(self, rows: list[int]) -> "Scores":
        return Scores({k: [v[i] for i in rows] for k, v in self.per_reward.items()}, [self.total[i] for i in rows], dict(self.extra_metrics))

    @staticmethod
    def concat(parts: list["Scores"]) -> "Scores":
        names = parts[0].per_reward
        return Scores(
            {k: [v for p in parts for v in p.per_reward[k]] for k in names},
            [t for p in parts for t in p.total],
            parts[0].extra_metrics,
        )

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


def _call(term: RewardTerm, prompts, completions, columns, log_metric) -> list:
    return term.fn(prompts=prompts, completions=completions, log_metric=log_metric, **{**columns, **term.params})


def _failing_row(term: RewardTerm, rows: list[int], prompts, completions, columns, log_metric) -> int | None:
    """After a batch call raised: the first row that raises on its own (the error path only)."""
    n = len(completions)
    for i in rows:
        one = {k: [v[i]] if isinstance(v, list) and len(v) == n else v for k, v in columns.items()}
        try:
            _call(term, [prompts[i]], [completions[i]], one, log_metric)
        except Exception:
            return i
    return None


def _score_term(term: RewardTerm, prompts, completions, columns, log_metric) -> list[float]:
    """One term's values for every row (NaN where not applicable); raises RewardError naming the row."""
    n = len(completions)
    rows = term.applies(columns, n)
    if not rows:
        return [math.nan] * n
    pick = (lambda seq: [seq[i] for i in rows]) if len(rows) < n else (lambda seq: seq)  # noqa: E731
    sub_columns = {k: pick(v) if isinstance(v, list) and len(v) == n else v for k, v in columns.items()}
    try:
        values = _call(term, pick(prompts), pick(completions), sub_columns, log_metric)
    except RewardError:
        raise
    except Exception as exc:
        row = _failing_row(term, rows, prompts, completions, columns, log_metric)
        where = f" on row {row}" if row is not None else f" on a batch of {len(rows)} rows"
        detail = " ".join(str(exc).split())  # one line, whatever the function put in its message
        detail = detail if len(detail) <= 300 else detail[:297] + "..."
        raise RewardError(f"reward {term.name!r} raised {type(exc).__name__}{where}: {detail}") from exc
    if not isinstance(values, (list, tuple)) or len(values) != len(rows):
        got = len(values) if isinstance(values, (list, tuple)) else type(values).__name__
        raise RewardError(f"reward {term.name!r} returned {got} values for {len(rows)} completions; expected a list of {len(rows)}")
    scored = [math.nan] * n
    for i, v in zip(rows, values):
        scored[i] = _as_float(v, term.name, i)
    return scored


def score_completions(
    terms: list[RewardTerm], prompts: list, completions: list, columns: dict[str, list], on_error: str = "fail"
) -> Scores:
    """Run every reward term over the rows.

    A reward that raises, returns the wrong number of values, or a non-finite value raises
    :class:`RewardError` naming the reward and the row (``on_error="fail"``, the default), or,
    with ``on_error="skip"``, scores the affected rows as None and counts them in
    ``reward_errors/<name>`` (rows hit, per batch).
    """
    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
    n = len(completions)
    per_reward: dict[str, list[float]] = {}
    extra: dict[str, float] = {}
    # Rewards may report their own figures (e.g. accuracy's verifier timeouts) through log_metric.
    log_metric = lambda key, value: extra.__setitem__(key, float(value))  # noqa: E731
    for term in terms:
        try:
            per_reward[term.name] = _score_term(term, prompts, completions, columns, log_metric)
        except RewardError:
            if on_error == "fail":
                raise
            per_reward[term.name] = _score_rows_one_by_one(term, prompts, completions, columns, log_metric, extra)
    total = []
    for i in range(n):
        parts = [t.weight * per_reward[t.name][i] for t in terms if not math.isnan(per_reward[t.name][i])]
        total.append(sum(parts))
    return Scores(per_reward=per_reward, total=total, extra_metrics=extra)


def _score_rows_one_by_one(term, prompts, completions, columns, log_metric, extra) -> list[float]:
    """``on_error="skip"``: score row by row so one bad row costs only itself."""
    n = len(completions)
    values, failed = [math.nan] * n, 0
    for i in term.applies(columns, n):
        one = {k: [v[i]] if isinstance(v, list) and len(v) == n else v for k, v in columns.items()}
        try:
            values[i] = _score_term(term, [prompts[i]], [completions[i]], one, log_metric)[0]
        except RewardError:
            failed += 1
    extra[f"reward_errors/{term.name}"] = float(failed)
    return values
