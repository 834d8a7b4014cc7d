"""Bounded-time math equivalence: math-verify in a persistent, killable worker process.

Why a process and not a call: math-verify's own timeouts use ``signal.alarm``, which only works on
the main thread, and some inputs (power towers such as ``9^{9^{9^{9}}}``, deep nesting, huge
strings) run for minutes, partly inside C calls (big-integer arithmetic, the ANTLR parser) where a
signal is only handled once the call returns, if ever. So every comparison runs in a persistent worker interpreter, on that worker's main
thread (where math-verify's signal timeouts do work and settle most slow cases cheaply), while the
parent waits on a pipe with a hard wall-clock deadline; past it the worker is killed, the item is
recorded as a timeout, and a fresh worker is started on the next request.

The worker is a fresh interpreter like multiprocessing's ``spawn`` start method gives, but started
with :mod:`subprocess`: ``spawn`` re-runs the parent's ``__main__`` module in the child, which
crashes any training script without an ``if __name__ == "__main__":`` guard.

The parent never imports sympy or math-verify; it only does cheap string checks (length and
nesting caps, integer fast path, a result cache) before sending one item at a time.
"""

from __future__ import annotations

import atexit
import enum
import functools
import itertools
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterable
from multiprocessing.connection import Connection
from pathlib import Path

from .answers import FinalAnswer, normalize_answer, normalize_text_answer, offers_alternatives, text_answer

__all__ = ["MathVerifier", "Outcome", "get_verifier"]

logger = logging.getLogger(__name__)


class Outcome(str, enum.Enum):
    """How one (prediction, gold) comparison ended."""

    EQUAL = "equal"
    NOT_EQUAL = "not_equal"  # includes a prediction with nothing parseable in it
    HEDGE = "hedge"  # offers several different candidates where the gold is one value: not equal
    TOO_LONG = "too_long"  # prediction over the length or nesting cap: judged not equal, unparsed
    TIMEOUT = "timeout"  # undecided within the deadline
    WORKER_DIED = "worker_died"  # the worker crashed on this item: undecided
    BAD_GOLD = "bad_gold"  # the gold is empty, unparseable or over the caps: nothing to judge against

    @property
    def decision(self) -> bool | None:
        """True/False when equivalence was decided, None when it could not be."""
        return _DECISIONS[self]


_DECISIONS = {
    Outcome.EQUAL: True,
    Outcome.NOT_EQUAL: False,
    Outcome.HEDGE: False,
    Outcome.TOO_LONG: False,
    Outcome.TIMEOUT: None,
    Outcome.WORKER_DIED: None,
    Outcome.BAD_GOLD: None,
}

_INTEGER = re.compile(r"[-+]?\d+")
_OPENERS, _CLOSERS = "({[", ")}]"
# Candidates compared with each other for the hedge rule; an answer offering more is a hedge
# whenever they are not all equal (checked on the first ones), and costs a bounded time.
MAX_ALTERNATIVES = 16
_DECIMAL_COMMA = re.compile(r"[-+]?\d+,\d+")
# "The answer is (C)" for a text gold: what follows the lead-in is the answer.
_TEXT_LEAD_IN = re.compile(r"^.*\b(?:answer|choice|option)\b\s*(?:is\b|:)?\s*", re.IGNORECASE)


class MathVerifier:
    """Decides whether a predicted final answer equals a gold answer, with a hard time bound.

    Args:
        timeout_s: wall-clock deadline per comparison, enforced by killing the worker.
        inner_timeout_s: math-verify's own (signal) timeout per parse/compare step inside the
            worker, whole seconds; it ends most slow cases without a restart. Default: half of
            ``timeout_s``, at least 1.
        max_answer_chars: answers longer than this (as extracted) are not parsed: a longer
            prediction is judged not equal, a longer gold is unusable.
        max_nesting_depth: same for bracket nesting deeper than this (the LaTeX parser is
            super-linear in nesting: 20 nested braces already take seconds).
        startup_timeout_s: how long to wait for a new worker to import math-verify.
        cache_size: decided results kept per (prediction, gold) pair; GRPO groups repeat answers.
    """

    def __init__(
        self,
        timeout_s: float = 5.0,
        *,
        inner_timeout_s: int | None = None,
        max_answer_chars: int = 2000,
        max_nesting_depth: int = 20,
        startup_timeout_s: float = 120.0,
        cache_size: int = 4096,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.timeout_s = float(timeout_s)
        self.inner_timeout_s = max(1, int(inner_timeout_s if inner_timeout_s is not None else timeout_s // 2))
        self.max_answer_chars = max_answer_chars
        self.max_nesting_depth = max_nesting_depth
        self.startup_timeout_s = startup_timeout_s
        self.cache_size = cache_size
        self._lock = threading.Lock()
        self._worker: _WorkerHandle | None = None
        self._owner_pid = os.getpid()
        self._cache: OrderedDict[tuple[str, str], Outcome] = OrderedDict()
        self._stats = dict.fromkeys(
            ("checked", "cache_hits", "timeouts", "worker_died", "hedges", "too_long", "too_deep", "bad_gold", "worker_restarts"),
            0,
        )

    # ----------------------------------------------------------------- public API

    def check(self, pred: str, gold: str) -> bool | None:
        """True if ``pred`` equals ``gold`` mathematically, False if not, None if undecidable
        (timeout, worker crash, or a gold that cannot be parsed). Both are final-answer strings."""
        return self.judge(pred, gold).decision

    def check_many(self, pairs: Iterable[tuple[str, str]]) -> list[bool | None]:
        """:meth:`check` for each ``(pred, gold)`` pair, in order."""
        return [outcome.decision for outcome in self.judge_many(pairs)]

    def judge(self, pred: str | FinalAnswer, gold: str) -> Outcome:
        """Like :meth:`check` but says why, e.g. to tell a bad gold from a timeout or a hedge.

        ``pred`` is a final-answer string or a :class:`~rewards.answers.FinalAnswer`. When the gold
        is one value (or one tuple or interval) and the answer offers several candidates that are
        not all equal ("17 or 18", ``\\boxed{17}\\boxed{18}``, ``17 \\lor 18``), the outcome is
        :attr:`Outcome.HEDGE`, judged not equal. A gold that is a set or list is compared as one.
        """
        with self._lock:
            self._stats["checked"] += 1
            answer = pred if isinstance(pred, FinalAnswer) else FinalAnswer.from_text(pred) if isinstance(pred, str) else None
            outcome = self._precheck(answer.text if answer is not None else pred, gold)
            if outcome is not None:
                return outcome
            alternatives = tuple(dict.fromkeys(normalize_answer(a) for a in answer.alternatives[: MAX_ALTERNATIVES + 1]))
            key = (normalize_answer(answer.text), alternatives, answer.disjunctive, normalize_answer(gold))
            outcome = self._text_path(answer, gold) or self._fast_path(key[0], key[3], alternatives)
            if outcome is not None:
                return self._count(outcome)
            if key in self._cache:
                self._cache.move_to_end(key)
                self._stats["cache_hits"] += 1
                return self._count(self._cache[key])
            outcome = self._judge_in_worker(*key)
            if outcome is not Outcome.WORKER_DIED:
                # Timeouts are cached too: a group of 16 identical pathological answers must cost
                # one deadline, not sixteen.
                self._cache[key] = outcome
                if len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
            return outcome

    def judge_many(self, pairs: Iterable[tuple[str, str]]) -> list[Outcome]:
        """:meth:`judge` for each ``(pred, gold)`` pair, in order (one item at a time)."""
        return [self.judge(pred, gold) for pred, gold in pairs]

    @property
    def stats(self) -> dict[str, int]:
        """Counters since creation: checked, cache_hits, timeouts, worker_died, hedges, too_long,
        too_deep, bad_gold, worker_restarts (a copy)."""
        with self._lock:
            return dict(self._stats)

    def close(self) -> None:
        """Stop the worker. The verifier stays usable: the next check starts a new one."""
        with self._lock:
            self._stop_worker(graceful=True)

    def __enter__(self) -> MathVerifier:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # ----------------------------------------------------------------- parent-side checks

    def _precheck(self, pred: str, gold: str) -> Outcome | None:
        """Cheap verdicts that never need sympy. Lengths are capped before any other work so a
        100k-character answer costs microseconds."""
        if not isinstance(gold, str) or not gold.strip():
            self._stats["bad_gold"] += 1
            return Outcome.BAD_GOLD
        if len(gold) > self.max_answer_chars or _nesting_depth(gold) > self.max_nesting_depth:
            self._stats["bad_gold"] += 1
            return Outcome.BAD_GOLD
        if not isinstance(pred, str) or not pred.strip():
            return Outcome.NOT_EQUAL
        if len(pred) > self.max_answer_chars:
            self._stats["too_long"] += 1
            return Outcome.TOO_LONG
        if _nesting_depth(pred) > self.max_nesting_depth:
            self._stats["too_deep"] += 1
            return Outcome.TOO_LONG
        return None

    def _count(self, outcome: Outcome) -> Outcome:
        if outcome is Outcome.HEDGE:
            self._stats["hedges"] += 1
        return outcome

    @staticmethod
    def _text_path(answer: FinalAnswer, gold: str) -> Outcome | None:
        """A gold that is words (``\\text{odd}``, ``\\text{(C)}``, ``Evelyn``) is compared as words:
        math-verify would read ``\\text{E}`` as Euler's number and ``odd`` as a product."""
        words = text_answer(gold)
        if words is None:
            return None
        said = {normalize_text_answer(answer.text), *(normalize_text_answer(a) for a in answer.alternatives[-1:])}
        said |= {_TEXT_LEAD_IN.sub("", s) for s in said}
        return Outcome.EQUAL if words in said else Outcome.NOT_EQUAL

    @staticmethod
    def _fast_path(pred: str, gold: str, alternatives: tuple[str, ...]) -> Outcome | None:
        """Two plain integers (the bulk of GSM8K-style answers) compare exactly, without IPC."""
        # (int() refuses strings over 4300 digits; such answers go to the worker)
        if len(alternatives) > 1 or len(pred) >= 4000 or len(gold) >= 4000:
            return None
        if _INTEGER.fullmatch(pred) and _INTEGER.fullmatch(gold):
            return Outcome.EQUAL if int(pred) == int(gold) else Outcome.NOT_EQUAL
        return None

    # ----------------------------------------------------------------- worker management

    def _judge_in_worker(self, pred: str, alternatives: tuple[str, ...], disjunctive: bool, gold: str) -> Outcome:
        worker = self._ensure_worker()
        try:
            worker.writer.send((pred, alternatives, disjunctive, gold))
            if not worker.reader.poll(self.timeout_s):
                self._stats["timeouts"] += 1
                self._stats["worker_restarts"] += 1
                logger.warning("math verification exceeded %.1fs; restarting the worker", self.timeout_s)
                self._stop_worker(graceful=False)
                return Outcome.TIMEOUT
            outcome = Outcome(worker.reader.recv())
        except (EOFError, OSError) as exc:  # the worker died (segfault, OOM kill...)
            self._stats["worker_restarts"] += 1
            self._stats["worker_died"] += 1
            logger.warning("math-verify worker died (%s); restarting it", exc)
            self._stop_worker(graceful=False)
            return Outcome.WORKER_DIED
        if outcome is Outcome.TIMEOUT:
            self._stats["timeouts"] += 1
        elif outcome is Outcome.BAD_GOLD:
            self._stats["bad_gold"] += 1
        return self._count(outcome)

    def _ensure_worker(self) -> _WorkerHandle:
        if self._owner_pid != os.getpid():
            # We are a forked copy: the pipes belong to the parent's worker (whose handle's
            # finalizer is a no-op here); leave it alone and start our own.
            self._worker, self._owner_pid = None, os.getpid()
        if self._worker is not None and self._worker.is_alive():
            return self._worker
        self._stop_worker(graceful=False)
        worker = _WorkerHandle.start(self.inner_timeout_s)
        self._worker = worker
        try:
            if worker.reader.poll(self.startup_timeout_s):
                status, detail = worker.reader.recv()
            else:
                status, detail = "timeout", f"no reply in {self.startup_timeout_s:.0f}s"
        except (EOFError, OSError) as exc:
            status, detail = "died", f"exit code {worker.process.poll()} ({exc!r}); see its stderr above"
        if status != "ready":
            self._stop_worker(graceful=False)
            raise RuntimeError(f"math-verify worker failed to start ({status}): {detail}")
        return worker

    def _stop_worker(self, *, graceful: bool) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop(graceful=graceful)


class _WorkerHandle:
    """A worker interpreter and the two pipe ends we talk to it through.

    The worker is a fresh ``python -c`` interpreter (what multiprocessing's ``spawn`` gives, minus
    spawn's re-import of the parent's ``__main__``, which breaks training scripts that lack an
    ``if __name__ == "__main__":`` guard). Messages are pickled by
    :class:`multiprocessing.connection.Connection`, so the worker reads them with ``recv()``.
    """

    def __init__(self, process: subprocess.Popen, reader: Connection, writer: Connection) -> None:
        self.process, self.reader, self.writer = process, reader, writer
        # Kill the worker if this handle is dropped or the interpreter exits; if we die without
        # running this (SIGKILL), the worker sees EOF on its pipe and exits by itself.
        self._finalizer = weakref.finalize(self, _kill_process, process, os.getpid())

    @classmethod
    def start(cls, inner_timeout_s: int) -> _WorkerHandle:
        to_worker_r, to_worker_w = os.pipe()
        from_worker_r, from_worker_w = os.pipe()
        env = dict(os.environ)
        # The worker must import this package even when it is not installed (a source checkout).
        package_root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        command = [
            sys.executable,
            "-c",
            "import sys; from rewards.verify import _worker_main; _worker_main(*map(int, sys.argv[1:]))",
            str(to_worker_r),
            str(from_worker_w),
            str(inner_timeout_s),
        ]
        try:
            process = subprocess.Popen(
                command, pass_fds=(to_worker_r, from_worker_w), stdin=subprocess.DEVNULL, env=env
            )
        finally:
            os.close(to_worker_r)  # the worker holds its own copies now; closing ours lets a
            os.close(from_worker_w)  # dead worker show up as EOF
        return cls(process, Connection(from_worker_r, writable=False), Connection(to_worker_w, readable=False))

    def is_alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, *, graceful: bool) -> None:
        if graceful and self.is_alive():
            try:
                self.writer.send(None)  # asks the worker loop to return
                self.process.wait(timeout=2)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass
        self._finalizer()  # kills if still alive, and reaps
        self.reader.close()
        self.writer.close()


def _kill_process(process: subprocess.Popen, owner_pid: int) -> None:
    if os.getpid() != owner_pid:  # a forked copy of the handle: the worker is not ours to kill
        return
    if process.poll() is None:
        process.kill()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _nesting_depth(text: str) -> int:
    depth = deepest = 0
    for char in text:
        if char in _OPENERS:
            depth += 1
            deepest = max(deepest, depth)
        elif char in _CLOSERS and depth:
            depth -= 1
    return deepest


# --------------------------------------------------------------------- shared instance

_shared: MathVerifier | None = None
_shared_lock = threading.Lock()


def get_verifier() -> MathVerifier:
    """The process-wide verifier used by the built-in rewards (worker started lazily, closed atexit)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = MathVerifier()
            atexit.register(_shared.close)
        return _shared


# --------------------------------------------------------------------- worker process side

# Words that are function names, not prose, in a plain-text answer such as "sqrt(2)".
_MATH_WORDS = frozenset(
    "sqrt sin cos tan cot sec csc arcsin arccos arctan sinh cosh tanh log ln exp pi mod gcd lcm "
    "max min det inf infty and".split()  # "and" joins the items of a list: "19, 46, and 82"
)
_TEXT_GROUP = re.compile(r"\\(?:text\w*|math(?:rm|bf|it|sf|tt)|mbox|operatorname\*?|begin|end)\s*\{[^{}]*\}")
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")
_GREEK = re.compile(r"[\u0370-\u03ff]")  # π, θ... are math symbols, not words
_ASCII_WORD = re.compile(r"[A-Za-z]{3,}")
_SUBSCRIPT = re.compile(r"_\{[^{}]*\}|_\w")  # a_{max}, x_1: names, not words
_OTHER_LETTER = re.compile(r"[^\W\d_A-Za-z]")


def _looks_like_prose(answer: str) -> bool:
    """True for natural-language answers ("18 dollars", "The answer is 18", "18元").

    math-verify's LaTeX parser reads such text as a product of one-letter symbols, so prose is
    parsed as free text (where math-verify looks for the number) instead of as a ``$...$`` formula.
    """
    bare = _GREEK.sub(" ", _LATEX_COMMAND.sub(" ", _TEXT_GROUP.sub(" ", _SUBSCRIPT.sub(" ", answer))))
    if _OTHER_LETTER.search(bare):
        return True
    # Capitals only ("ABC", "MBCN") name points and figures: math, not words.
    return any(word.lower() not in _MATH_WORDS and not word.isupper() for word in _ASCII_WORD.findall(bare))


class _WorkerJudge:
    """Runs inside the worker: parses both answers with math-verify and compares them."""

    def __init__(self, inner_timeout_s: int) -> None:
        from math_verify import parse, verify
        from math_verify.errors import TimeoutException
        import sympy
        from sympy import Basic
        from sympy.matrices import MatrixBase

        self._sympy, self._matrix_type = sympy, MatrixBase
        self._parse_fn, self._verify_fn = parse, verify
        self._timeout_exc = TimeoutException
        self._sympy_types = (Basic, MatrixBase)
        self._inner = inner_timeout_s
        # A gold is compared with every completion of its group: parse it once.
        self._parse_gold = functools.lru_cache(maxsize=1024)(self._parse)

    def _parse(self, answer: str) -> tuple:
        # A bare answer has no "$" for math-verify's LaTeX extractor to anchor on, and its plain
        # expression extractor misreads LaTeX ("3\sqrt{2}" -> 3), so formulas are wrapped in $...$.
        if _looks_like_prose(answer):
            candidates = [answer]
        else:
            candidates = [f"${answer}$", answer]
        for text in candidates:
            try:  # raise_on_error lets math-verify's TimeoutException (a BaseException) reach us
                parsed = self._parse_fn(text, parsing_timeout=self._inner, raise_on_error=True)
            except Exception:  # this reading of the text failed; try the next one
                continue
            if parsed:
                return tuple(parsed)
        return ()

    def __call__(self, pred: str, alternatives: tuple[str, ...], disjunctive: bool, gold: str) -> Outcome:
        try:
            gold_parsed = self._parse_gold(gold)
        except self._timeout_exc:
            return Outcome.TIMEOUT
        except Exception:
            return Outcome.BAD_GOLD
        try:
            if _DECIMAL_COMMA.fullmatch(gold) and not _DECIMAL_COMMA.fullmatch(pred):
                # "1,22" is a pair as LaTeX but 1.22 as a number; a prediction in decimals decides.
                if not self._matches(gold_parsed, self._parse(pred)):
                    gold_parsed = self._parse_gold(gold.replace(",", "."))
            # A gold that only survives as a raw string (math-verify's fallback) is not usable,
            # except that a prediction written exactly like it equals it.
            gold_values = [item for item in gold_parsed if isinstance(item, self._sympy_types)]
            if not gold_values:
                return Outcome.EQUAL if "".join(pred.split()) == "".join(gold.split()) else Outcome.BAD_GOLD
            kind = self._kind(gold_values[0])
            first_value = None
            hedge_rule = kind == "value" or (kind == "object" and disjunctive and not offers_alternatives(gold))
            if hedge_rule and len(alternatives) > 1:
                # Several candidates for one value: a hedge unless they all say the same thing.
                values = self._distinct_values(alternatives)
                if values is None:
                    return Outcome.HEDGE
                first_value = values[0] if values else None
            if self._matches(gold_parsed, self._parse(pred)):
                return Outcome.EQUAL
            if first_value is not None and self._matches(gold_parsed, first_value):
                return Outcome.EQUAL  # "17, 17", "\\frac12 or 0.5": the candidates agree
            if kind == "value" and _DECIMAL_COMMA.fullmatch(pred) and self._matches(gold_parsed, self._parse(pred.replace(",", "."))):
                return Outcome.EQUAL  # "1,22" for a gold of 1.22: a decimal comma
        except self._timeout_exc:
            return Outcome.TIMEOUT
        return Outcome.NOT_EQUAL

    def _matches(self, gold_parsed: tuple, pred_parsed: tuple) -> bool:
        # verify() is not symmetric: gold first. Pairs are tried one by one so that an error in
        # one pair does not hide a match in another.
        for gold_item, pred_item in itertools.product(gold_parsed, pred_parsed):
            try:
                if self._verify_fn(gold_item, pred_item, timeout_seconds=self._inner, raise_on_error=True):
                    return True
            except self._timeout_exc:
                raise
            except Exception:
                continue
        return False

    def _distinct_values(self, alternatives: tuple[str, ...]) -> list[tuple] | None:
        """The parsed candidates when they are all equal to the first one (those that parse at
        all); None when two differ or there are too many to compare (a hedge)."""
        if len(alternatives) > MAX_ALTERNATIVES:
            return None
        values = []
        for text in alternatives:
            try:
                parsed = self._parse(text)
            except self._timeout_exc:
                raise
            except Exception:
                continue
            if any(isinstance(item, self._sympy_types) for item in parsed):
                values.append(parsed)
        for other in values[1:]:
            if not (self._matches(values[0], other) or self._matches(other, values[0])):
                return None
        return values

    def _kind(self, value) -> str:
        """``value`` (a number or expression, ``x = 5`` too), ``set`` (several values: ``{1, 2}``,
        ``\\pm 3``, ``x = 1 or x = 2``) or ``object`` (one tuple, interval, matrix or relation)."""
        if isinstance(value, self._sympy.Eq):
            sides = [self._kind(side) for side in (value.lhs, value.rhs)]
            return "object" if "object" in sides else "set" if "set" in sides else "value"
        if isinstance(value, self._sympy.FiniteSet):
            return "set" if len(value) > 1 else self._kind(next(iter(value))) if len(value) else "object"
        if isinstance(value, self._sympy.Or):
            return "set"
        if isinstance(value, (tuple, list, self._sympy.Tuple)):
            return "object" if len(value) > 1 else self._kind(value[0]) if len(value) else "object"
        if isinstance(value, (self._sympy.Set, self._sympy.And, self._sympy.Rel, self._matrix_type)):
            return "object"
        return "value"


def _worker_main(read_fd: int, write_fd: int, inner_timeout_s: int) -> None:
    """Worker loop: receive (pred, alternatives, disjunctive, gold), send back an Outcome value; ``None`` or EOF ends it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    inbox, outbox = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # we report timeouts ourselves
    try:
        judge = _WorkerJudge(inner_timeout_s)
        judge("1/2", ("1/2",), False, "0.5")  # warm up the parser so the first real item is not charged for it
    except BaseException as exc:
        outbox.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    outbox.send(("ready", None))
    while True:
        try:
            message = inbox.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if message is None:
            return
        try:
            outcome = judge(*message)
        except Exception:  # never let one odd input end the worker
            outcome = Outcome.NOT_EQUAL
        outbox.send(outcome.value)
