"""Apply a weighted set of reward functions to a batch of completions.

Reward functions follow TRL's convention, ``fn(prompts, completions, **columns) -> list[float | None]``
(see ``rewards/``). ``None`` means "not applicable to this row": it is kept as NaN in the per-function
table, left out of that function's mean, and contributes nothing to the weighted total
(``total_i = Σ_k w_k · r_ik`` over the functions that scored row i).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable

# A conversational row keeps its prompt messages in this column (grpo/data.py); its completions
# reach the rewards as ``[{"role": "assistant", "content": text}]``, as in TRL.
from grpo.data import MESSAGES_COLUMN  # noqa: E402


@dataclass
class RewardTerm:
    name: str  # as logged: rewards/<name>/mean
    fn: Callable  # fn(prompts, completions, **columns) -> list[float | None]
    weight: float = 1.0
    params: dict = field(default_factory=dict)  # keyword arguments bound from the recipe
    when: dict = field(default_factory=dict)  # column -> value: score only matching rows (others get None)

    def accepted(self) -> set[str] | None:
        """The keyword arguments the function takes, or None when it takes any (``**kwargs``)."""
        if not hasattr(self, "_accepted"):
            try:
                parameters = inspect.signature(self.fn).parameters.values()
            except (TypeError, ValueError):  # no readable signature: pass everything
                parameters = None
            if parameters is None or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
                self._accepted = None
            else:
                kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
                self._accepted = {p.name for p in parameters if p.kind in kinds}
        return self._accepted

    def required(self) -> list[str]:
        """Parameters the function needs that the recipe does not give: columns it reads."""
        try:
            parameters = inspect.signature(self.fn).parameters.values()
        except (TypeError, ValueError):
            return []
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        return [p.name for p in parameters if p.kind in kinds and p.default is inspect.Parameter.empty and p.name not in self.params]

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
class Failures:
    """How one reward fared on a batch: rows it failed on (``on_reward_error: skip``), rows it was
    asked to score, and the first error's message."""

    failed: int = 0
    scored: int = 0
    first_error: str | None = None

    @property
    def all_failed(self) -> bool:
        return self.scored > 0 and self.failed == self.scored

    @staticmethod
    def merge(parts: list["Failures"]) -> "Failures":
        first = next((p.first_error for p in parts if p.first_error), None)
        return Failures(sum(p.failed for p in parts), sum(p.scored for p in parts), first)


@dataclass
class Scores:
    per_reward: dict[str, list[float]]  # name -> value per row (NaN where the function returned None)
    total: list[float]  # weighted sum per row
    extra_metrics: dict[str, float] = field(default_factory=dict)  # what rewards logged via log_metric
    failures: dict[str, Failures] = field(default_factory=dict)  # name -> failed/scored rows of this batch
    extra_columns: dict[str, list] = field(default_factory=dict)  # what rewards logged via log_extra, per row

    def select(self, rows: list[int]) -> "Scores":
        return Scores({k: [v[i] for i in rows] for k, v in self.per_reward.items()}, [self.total[i] for i in rows],
                      dict(self.extra_metrics), dict(self.failures), {k: [v[i] for i in rows] for k, v in self.extra_columns.items()})

    @staticmethod
    def concat(parts: list["Scores"]) -> "Scores":
        names = parts[0].per_reward
        columns = list(dict.fromkeys(k for p in parts for k in p.extra_columns))
        return Scores(
            {k: [v for p in parts for v in p.per_reward[k]] for k in names},
            [t for p in parts for t in p.total],
            parts[0].extra_metrics,
            {k: Failures.merge([p.failures[k] for p in parts if k in p.failures]) for k in {k for p in parts for k in p.failures}},
            {k: [v for p in parts for v in p.extra_columns.get(k, [None] * len(p.total))] for k in columns},
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
    """A reward value as a float: numbers, bools (True = 1.0) and numpy/torch scalars; None is NaN."""
    if value is None:
        return math.nan
    if not isinstance(value, (int, float)) and callable(getattr(value, "item", None)) and getattr(value, "ndim", 0) == 0:
        value = value.item()  # numpy.float32(0.5), numpy.bool_(True), torch.tensor(1.0)
    if not isinstance(value, (int, float)):
        raise RewardError(f"reward {name!r} returned {type(value).__name__} for row {row}; expected a float or None")
    value = float(value)
    if math.isnan(value) or math.isinf(value):
        raise RewardError(f"reward {name!r} returned {value} for row {row}; expected a finite float or None")
    return value


def _as_values(values, name: str, n: int) -> list:
    """The function's return value as a list of n values (a list, tuple, numpy array or tensor)."""
    if isinstance(values, (list, tuple)):
        out = list(values)
    elif not isinstance(values, (str, bytes, dict)) and hasattr(values, "__len__") and hasattr(values, "__iter__") and getattr(values, "ndim", 1) == 1:
        out = list(values)
    else:
        raise RewardError(f"reward {name!r} returned {type(values).__name__} values for {n} completions; expected a list of {n}")
    if len(out) != n:
        raise RewardError(f"reward {name!r} returned {len(out)} values for {n} completions; expected a list of {n}")
    return out


def _call(term: RewardTerm, prompts, completions, columns, hooks) -> Any:
    """TRL's call: prompts, completions, every column as a keyword list, TRL's ``log_metric``,
    ``log_extra`` and ``trainer_state``, and the recipe's parameters. A function without
    ``**kwargs`` gets only the arguments it names."""
    kwargs = {"prompts": prompts, "completions": completions, **hooks, **columns, **term.params}
    accepted = term.accepted()
    if accepted is not None:
        kwargs = {k: v for k, v in kwargs.items() if k in accepted}
    return term.fn(**kwargs)


def _one(columns: dict, i: int, n: int) -> dict:
    return {k: [v[i]] if isinstance(v, list) and len(v) == n else v for k, v in columns.items()}


def _failing_rows(term: RewardTerm, rows: list[int], prompts, completions, columns, hooks) -> list[int]:
    """After a batch call raised: the rows that raise on their own (the error path only)."""
    n, failing = len(completions), []
    for i in rows:
        try:
            _call(term, [prompts[i]], [completions[i]], _one(columns, i, n), {**hooks, "log_extra": _ignore})
        except Exception:
            failing.append(i)
    return failing


def _one_line(exc: BaseException) -> str:
    detail = " ".join(str(exc).split())  # one line, whatever the function put in its message
    return detail if len(detail) <= 300 else detail[:297] + "..."


HOOKS = ("log_metric", "log_extra", "trainer_state")


def _ignore(*args, **kwargs) -> None:
    return None


def missing_columns(term: RewardTerm, columns) -> list[str]:
    """Required parameters of the function that are neither a column nor given by the recipe."""
    return [p for p in term.required() if p not in ("prompts", "completions", *HOOKS) and p not in columns]


def _score_term(term: RewardTerm, prompts, completions, columns, hooks, extra_columns: dict | None = None) -> list[float]:
    """One term's values for every row (NaN where not applicable); raises RewardError naming the row.
    What the function gives ``log_extra(column, values)`` lands in ``extra_columns`` (row-aligned)."""
    n = len(completions)
    rows = term.applies(columns, n)
    if not rows:
        return [math.nan] * n

    def log_extra(column: str, values) -> None:
        values = list(values)
        if len(values) != len(rows):
            raise RewardError(f"reward {term.name!r}: log_extra({column!r}, ...) got {len(values)} values for {len(rows)} completions")
        if extra_columns is not None:
            target = extra_columns.setdefault(column, [None] * n)
            for i, v in zip(rows, values):
                target[i] = v

    hooks = {**hooks, "log_extra": log_extra}
    missing = missing_columns(term, columns)
    if missing:
        raise RewardError(
            f"reward {term.name!r} needs {'a column' if len(missing) == 1 else 'columns'} {', '.join(map(repr, missing))} "
            f"(a required parameter of its function) that the data does not have; columns: {', '.join(sorted(columns))}"
        )
    pick = (lambda seq: [seq[i] for i in rows]) if len(rows) < n else (lambda seq: seq)  # noqa: E731
    sub_columns = {k: pick(v) if isinstance(v, list) and len(v) == n else v for k, v in columns.items()}
    try:
        values = _call(term, pick(prompts), pick(completions), sub_columns, hooks)
    except RewardError:
        raise
    except Exception as exc:
        failing = _failing_rows(term, rows, prompts, completions, columns, hooks)
        if failing and len(failing) == len(rows) and len(rows) > 1:
            where = f" on every row ({len(rows)} of {len(rows)}: the call itself fails)"
        elif len(failing) == 1:
            where = f" on row {failing[0]}"
        elif failing:
            where = f" on {len(failing)} of {len(rows)} rows (the first: row {failing[0]})"
        else:
            where = f" on a batch of {len(rows)} rows (each row alone scores)"
        raise RewardError(f"reward {term.name!r} raised {type(exc).__name__}{where}: {_one_line(exc)}") from exc
    values = _as_values(values, term.name, len(rows))
    scored = [math.nan] * n
    for i, v in zip(rows, values):
        scored[i] = _as_float(v, term.name, i)
    return scored


@dataclass
class TrainerState:
    """What TRL's ``trainer_state`` gives reward functions (for schedules such as a curriculum),
    counted in GRPO steps: ``global_step`` steps are done, of ``max_steps``. Outside training
    (evaluation, rejection sampling) it is the default, 0 of 1."""

    global_step: int = 0
    max_steps: int = 1
    epoch: float = 0.0


def score_completions(
    terms: list[RewardTerm], prompts: list, completions: list, columns: dict[str, list], on_error: str = "fail",
    state: TrainerState | None = None,
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
    hooks = {"log_metric": lambda key, value: extra.__setitem__(key, float(value)), "trainer_state": state or TrainerState()}
    failures: dict[str, Failures] = {}
    extra_columns: dict[str, list] = {}
    for term in terms:
        try:
            per_reward[term.name] = _score_term(term, prompts, completions, columns, hooks, extra_columns)
            failures[term.name] = Failures(0, len(term.applies(columns, n)))
        except RewardError as exc:
            if on_error == "fail":
                raise
            per_reward[term.name], failures[term.name] = _score_rows_one_by_one(term, prompts, completions, columns, hooks, exc)
            extra[f"reward_errors/{term.name}"] = float(failures[term.name].failed)
    total = []
    for i in range(n):
        parts = [t.weight * per_reward[t.name][i] for t in terms if not math.isnan(per_reward[t.name][i])]
        total.append(sum(parts))
    return Scores(per_reward=per_reward, total=total, extra_metrics=extra, failures=failures, extra_columns=extra_columns)


def _score_rows_one_by_one(term, prompts, completions, columns, hooks, batch_error: RewardError) -> tuple[list[float], Failures]:
    """``on_error="skip"``: score row by row so one bad row costs only itself."""
    n = len(completions)
    values, failures = [math.nan] * n, Failures(first_error=str(batch_error))
    for i in term.applies(columns, n):
        failures.scored += 1
        try:
            values[i] = _score_term(term, [prompts[i]], [completions[i]], _one(columns, i, n), hooks)[0]
        except RewardError:
            failures.failed += 1
    return values, failures


def reward_inputs(rows: list[dict], texts: list[str], completion_ids: list | None = None) -> tuple[list, list, dict[str, list]]:
    """What the reward functions receive for completions ``texts`` of ``rows`` (one row per
    completion), in TRL's convention: the prompts, the completions (a message list
    ``[{"role": "assistant", "content": text}]`` for a conversational row, else the text), and
    every other column of the rows as a keyword list, plus ``completion_ids``."""
    prompts = [r["prompt"] for r in rows]
    completions = [[{"role": "assistant", "content": t}] if isinstance(r.get(MESSAGES_COLUMN), list) else t for r, t in zip(rows, texts)]
    names = list(dict.fromkeys(k for r in rows for k in r if k != "prompt"))
    columns = {k: [r.get(k) for r in rows] for k in names}
    if completion_ids is not None:
        columns["completion_ids"] = completion_ids
    return prompts, completions, columns


def probe_completion(row: dict) -> str:
    """A stand-in completion for the load-time call: a well-formed R1 answer of the row's gold."""
    gold = row.get("solution")
    return f"<think>\nThe answer is {gold}.\n</think>\n<answer>{gold}</answer>" if gold is not None else "<think>\n</think>\n<answer></answer>"


def probe_rewards(terms: list[RewardTerm], rows: list[dict], on_error: str = "fail", sample: int = 2, max_steps: int = 1) -> list[str]:
    """Call every reward once on the first ``sample`` rows with stand-in completions, before any
    model is loaded, so that a signature or column error shows at once (naming the reward and the
    column), as at step 1 of ``max_steps``. Raises :class:`RewardError` (``on_error="fail"``); with ``"skip"`` returns the
    problems as warnings instead. Rewards marked ``probe_at_load = False`` (a reward model, which
    would be loaded for it) are left out."""
    rows = rows[:sample]
    if not rows:
        return []
    texts = [probe_completion(r) for r in rows]
    ids = [list(range(len(t.split()))) for t in texts]
    prompts, completions, columns = reward_inputs(rows, texts, ids)
    problems = []
    for term in terms:
        if not getattr(term.fn, "probe_at_load", getattr(getattr(term.fn, "func", None), "probe_at_load", True)):
            continue
        try:
            _score_term(term, prompts, completions, columns, {"log_metric": _ignore, "trainer_state": TrainerState(0, max_steps)})
        except RewardError as exc:
            message = f"{exc} (called at load on {len(rows)} row{'s' if len(rows) > 1 else ''} of the data with stand-in completions)"
            if on_error == "fail":
                raise RewardError(message) from exc
            problems.append(message)
    return problems
