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

from .answers import normalize_answer

__all__ = ["MathVerifier", "Outcome", "get_verifier"]

logger = logging.getLogger(__name__)


class Outcome(str, enum.Enum):
    """How one (prediction, gold) comparison ended."""

    EQUAL = "equal"
    NOT_EQUAL = "not_equal"  # includes a prediction with nothing parseable in it
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
    Outcome.TOO_LONG: False,
    Outcome.TIMEOUT: None,
    Outcome.WORKER_DIED: None,
    Outcome.BAD_GOLD: None,
}

_INTEGER = re.compile(r"[-+]?\d+")
_OPENERS, _CLOSERS = "({[", ")}]"


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
            ("checked", "cache_hits", "timeouts", "too_long", "too_deep", "bad_gold", "worker_restarts"), 0
        )

    # ----------------------------------------------------------------- public API

    def check(self, pred: str, gold: str) -> bool | None:
        """True if ``pred`` equals ``gold`` mathematically, False if not, None if undecidable
        (timeout, worker crash, or a gold that cannot be parsed). Both are final-answer strings."""
        return self.judge(pred, gold).decision

    def check_many(self, pairs: Iterable[tuple[str, str]]) -> list[bool | None]:
        """:meth:`check` for each ``(pred, gold)`` pair, in order."""
        return [outcome.decision for outcome in self.judge_many(pairs)]

    def judge(self, pred: str, gold: str) -> Outcome:
        """Like :meth:`check` but says why, e.g. to tell a bad gold from a timeout."""
        with self._lock:
            self._stats["checked"] += 1
            outcome = self._precheck(pred, gold)
            if outcome is not None:
                return outcome
            key = (normalize_answer(pred), normalize_answer(gold))
            outcome = self._fast_path(*key)
            if outcome is not None:
                return outcome
            if key in self._cache:
                self._cache.move_to_end(key)
                self._stats["cache_hits"] += 1
                return self._cache[key]
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
        """Counters since creation: checked, cache_hits, timeouts, too_long, too_deep, bad_gold,
        worker_restarts (a copy)."""
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

    @staticmethod
    def _fast_path(pred: str, gold: str) -> Outcome | None:
        """Two plain integers (the bulk of GSM8K-style answers) compare exactly, without IPC."""
        # (int() refuses strings over 4300 digits; such answers go to the worker)
        if len(pred) < 4000 and len(gold) < 4000 and _INTEGER.fullmatch(pred) and _INTEGER.fullmatch(gold):
            return Outcome.EQUAL if int(pred) == int(gold) else Outcome.NOT_EQUAL
        return None

    # ----------------------------------------------------------------- worker management

    def _judge_in_worker(self, pred: str, gold: str) -> Outcome:
        worker = self._ensure_worker()
        try:
            worker.writer.send((pred, gold))
            if not worker.reader.poll(self.timeout_s):
                self._stats["timeouts"] += 1
                self._stats["worker_restarts"] += 1
                logger.warning("math verification exceeded %.1fs; restarting the worker", self.timeout_s)
                self._stop_worker(graceful=False)
                return Outcome.TIMEOUT
            outcome = Outcome(worker.reader.recv())
        except (EOFError, OSError) as exc:  # the worker died (segfault, OOM kill...)
            self._stats["worker_restarts"] += 1
            logger.warning("math-verify worker died (%s); restarting it", exc)
            self._stop_worker(graceful=False)
            return Outcome.WORKER_DIED
        if outcome is Outcome.TIMEOUT:
            self._stats["timeouts"] += 1
        elif outcome is Outcome.BAD_GOLD:
            self._stats["bad_gold"] += 1
        return outcome

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
    "max min det inf infty".split()
)
_TEXT_GROUP = re.compile(r"\\(?:text\w*|math(?:rm|bf|it|sf|tt)|mbox|operatorname\*?|begin|end)\s*\{[^{}]*\}")
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")
_GREEK = re.compile(r"[\u0370-\u03ff]")  # π, θ... are math symbols, not words
_ASCII_WORD = re.compile(r"[A-Za-z]{3,}")
_OTHER_LETTER = re.compile(r"[^\W\d_A-Za-z]")


def _looks_like_prose(answer: str) -> bool:
    """True for natural-language answers ("18 dollars", "The answer is 18", "18元").

    math-verify's LaTeX parser reads such text as a product of one-letter symbols, so prose is
    parsed as free text (where math-verify looks for the number) instead of as a ``$...$`` formula.
    """
    bare = _GREEK.sub(" ", _LATEX_COMMAND.sub(" ", _TEXT_GROUP.sub(" ", answer)))
    if _OTHER_LETTER.search(bare):
        return True
    return any(word.lower() not in _MATH_WORDS for word in _ASCII_WORD.findall(bare))


class _WorkerJudge:
    """Runs inside the worker: parses both answers with math-verify and compares them."""

    def __init__(self, inner_timeout_s: int) -> None:
        from math_verify import parse, verify
        from math_verify.errors import TimeoutException
        from sympy import Basic
        from sympy.matrices import MatrixBase

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

    def __call__(self, pred: str, gold: str) -> Outcome:
        try:
            gold_parsed = self._parse_gold(gold)
        except self._timeout_exc:
            return Outcome.TIMEOUT
        except Exception:
            return Outcome.BAD_GOLD
        # A gold that only survives as a raw string (math-verify's fallback) is not usable.
        if not any(isinstance(item, self._sympy_types) for item in gold_parsed):
            return Outcome.BAD_GOLD
        try:
            pred_parsed = self._parse(pred)
        except self._timeout_exc:
            return Outcome.TIMEOUT
        except Exception:
            return Outcome.NOT_EQUAL
        # verify() is not symmetric: gold first. Pairs are tried one by one so that an error in
        # one pair does not hide a match in another.
        for gold_item, pred_item in itertools.product(gold_parsed, pred_parsed):
            try:
                if self._verify_fn(gold_item, pred_item, timeout_seconds=self._inner, raise_on_error=True):
                    return Outcome.EQUAL
            except self._timeout_exc:
                return Outcome.TIMEOUT
            except Exception:
                continue
        return Outcome.NOT_EQUAL


def _worker_main(read_fd: int, write_fd: int, inner_timeout_s: int) -> None:
    """Worker loop: receive (pred, gold), send back an Outcome value; ``None`` or EOF ends it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    inbox, outbox = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # we report timeouts ourselves
    try:
        judge = _WorkerJudge(inner_timeout_s)
        judge("1/2", "0.5")  # warm up the parser so the first real item is not charged for it
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
        pred, gold = message
        try:
            outcome = judge(pred, gold)
        except Exception:  # never let one odd input end the worker
            outcome = Outcome.NOT_EQUAL
        outbox.send(outcome.value)
