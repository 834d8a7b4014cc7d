"""Code reward: run the completion's final code block against the row's test cases, in a sandbox.

DeepSeek-R1's rule-based rewards include code: "a compiler can be used to generate feedback based
on predefined test cases". Here every program runs in :mod:`rewards.sandbox` (its own Linux
namespaces, resource limits, nothing left running afterwards), programs of a batch in parallel.
"""

from __future__ import annotations

import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .registry import register_reward
from .sandbox import ISOLATIONS, RunResult, Sandbox, SandboxLimits
from .text import completion_text

__all__ = ["code_reward", "extract_code", "parse_tests", "CodeTests", "score_programs", "get_sandbox"]

_OPENING_FENCE = re.compile(r"[ \t]*```[ \t]*([A-Za-z0-9_+#.-]*)[^`]*")
_CLOSING_FENCE = re.compile(r"[ \t]*```[ \t\r]*")
_PYTHON = frozenset({"python", "py", "python3", "py3"})
_CPP = frozenset({"cpp", "c++", "cc", "cxx", "hpp"})
_CHECK_DEFINED = re.compile(r"^def check\s*\(", re.MULTILINE)
_CHECK_CALLED = re.compile(r"^check\s*\(", re.MULTILINE)


def extract_code(text: str, cpp: bool = True) -> tuple[str, str] | None:
    """The final fenced code block as ``(language, code)``, or None when there is none.

    Language-aware: the last ```` ```python ```` block (or ```` ```py ````) wins; without one, the
    last C++ block (```` ```cpp ````, ```` ```c++ ````) when ``cpp`` (a compiler is on the
    machine); without either, the last block with no language tag, taken as Python. Blocks inside
    the final ``<answer>`` tag are preferred to those in the reasoning. An unclosed fence is not a
    block.
    """
    if not text:
        return None
    region = text
    start = text.rfind("<answer>")
    if start >= 0:
        end = text.find("</answer>", start)
        inner = text[start + 8 : end if end >= 0 else len(text)]
        if "```" in inner:
            region = inner
    blocks = _fenced_blocks(region)
    for wanted, language in ((_PYTHON, "python"), (_CPP if cpp else frozenset(), "cpp"), (frozenset({""}), "python")):
        for tag, code in reversed(blocks):
            if tag in wanted and code.strip():
                return language, code
    return None


def _fenced_blocks(text: str) -> list[tuple[str, str]]:
    """``(language tag, code)`` of each closed fenced block, in one pass over the lines (a regex
    that looks for each opener's closer re-scans the rest of the text per unclosed opener)."""
    blocks, tag, body = [], None, []
    for line in text.split("\n"):
        if tag is None:
            opening = _OPENING_FENCE.fullmatch(line)
            if opening:
                tag, body = opening.group(1).lower(), []
        elif _CLOSING_FENCE.fullmatch(line):
            blocks.append((tag, "".join(f"{b}\n" for b in body)))
            tag = None
        else:
            body.append(line)
    return blocks


@dataclass(frozen=True)
class CodeTests:
    """One row's tests: ``script`` (Python snippets run after the solution, one case each) or
    ``io`` (stdin inputs and the expected stdout of each case)."""

    kind: str
    snippets: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()

    @property
    def n_cases(self) -> int:
        return len(self.snippets) if self.kind == "script" else len(self.inputs)


def parse_tests(value, entry_point: str | None = None, where: str = "tests") -> CodeTests:
    """A row's ``tests`` value as :class:`CodeTests`; ValueError naming ``where`` if it is neither style.

    Accepted: a string of test code (HumanEval/MBPP: asserts, or ``def check(candidate)``, which is
    then called with the row's ``entry_point``); a list of such strings (one case each); a list of
    ``{"input": ..., "output": ...}`` cases (stdin/stdout); a mapping ``{"inputs": [...],
    "outputs": [...]}`` (APPS/CodeContests); any of these JSON-encoded in a string.
    """
    if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
        try:
            value = json.loads(value)
        except ValueError:
            pass  # test code that starts with a bracket
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"{where}: empty test code")
        code = value
        if _CHECK_DEFINED.search(code) and not _CHECK_CALLED.search(code):
            if not entry_point:
                raise ValueError(f"{where}: the test code defines check(candidate) but the row has no entry_point to call it with")
            code = f"{code.rstrip()}\n\n\ncheck({entry_point})\n"
        return CodeTests("script", snippets=(code,))
    if isinstance(value, dict) and "inputs" in value and "outputs" in value:
        inputs, outputs = list(value["inputs"]), list(value["outputs"])
        if len(inputs) != len(outputs):
            raise ValueError(f"{where}: {len(inputs)} inputs but {len(outputs)} outputs")
        value = [{"input": i, "output": o} for i, o in zip(inputs, outputs)]
    if isinstance(value, (list, tuple)) and value:
        if all(isinstance(v, str) for v in value):
            return CodeTests("script", snippets=tuple(value))
        if all(isinstance(v, dict) and "input" in v and "output" in v for v in value):
            inputs = tuple(_as_text(v["input"]) for v in value)
            outputs = tuple(_as_text(v["output"]) for v in value)
            return CodeTests("io", inputs=inputs, outputs=outputs)
    raise ValueError(
        f"{where}: expected test code (a string), a list of test snippets, or a list of "
        f'{{"input": ..., "output": ...}} cases; got {type(value).__name__} {str(value)[:60]!r}'
    )


def _as_text(value) -> str:
    if isinstance(value, (list, tuple)):
        return "\n".join(str(v) for v in value)
    return str(value)


def outputs_match(got: str, expected: str) -> bool:
    """stdout equals the expected output once trailing whitespace is stripped (per line and at the end)."""
    def clean(text: str) -> list[str]:
        return [line.rstrip() for line in text.rstrip().splitlines()]

    return clean(got) == clean(expected)


# --------------------------------------------------------------------------------------------
# sandboxes, one per configuration

_SANDBOXES: dict[tuple, Sandbox] = {}
_SANDBOXES_LOCK = threading.Lock()


def get_sandbox(limits: SandboxLimits, isolation: str = "namespaces", python: str | None = None) -> Sandbox:
    """The shared, checked :class:`Sandbox` for this configuration (SandboxUnavailable if it cannot run)."""
    key = (limits, isolation, python)
    with _SANDBOXES_LOCK:
        sandbox = _SANDBOXES.get(key)
        if sandbox is None:
            sandbox = _SANDBOXES[key] = Sandbox(limits, isolation, python)
    sandbox.check()
    return sandbox


@dataclass
class ProgramScore:
    """How one completion fared: ``reward`` (None when it could not be judged) and why."""

    reward: float | None
    passed: int
    cases: int
    status: str  # passed, failed, no_code, timeout, crashed, output_limit, sandbox_error, skipped
    wall_s: float = 0.0
    run: RunResult | None = None  # the sandbox's account (stdout, stderr, per-case results)


def score_programs(
    items: list[tuple[tuple[str, str] | None, CodeTests, str]],
    sandbox: Sandbox,
    *,
    workers: int,
    total_time_s: float,
    binary: bool = False,
) -> list[ProgramScore]:
    """Run each ``(code, tests, starter_code)`` in ``sandbox`` with ``workers`` in parallel.

    reward = passed cases / all cases (1.0 or 0.0 with ``binary``). No code scores 0.0; a program
    the batch had no time left for, or whose sandbox failed to start, gets None. The batch takes
    at most ``total_time_s`` (each run's deadline is cut to what is left).
    """
    batch_deadline = time.monotonic() + total_time_s

    def one(item) -> ProgramScore:
        code, tests, starter = item
        if code is None:
            return ProgramScore(0.0, 0, tests.n_cases, "no_code")
        language, source = code
        remaining = batch_deadline - time.monotonic()
        if remaining < 1.0:
            return ProgramScore(None, 0, tests.n_cases, "skipped")
        if tests.kind == "script":
            if language != "python":
                return ProgramScore(0.0, 0, tests.n_cases, "failed")  # Python tests cannot call C++
            program = f"{starter}\n{source}" if starter else source
            run = sandbox.run_script(program, list(tests.snippets), deadline_s=remaining)
            passed = [case.passed is True for case in run.cases]
        else:
            program = source if language == "cpp" or not starter else f"{starter}\n{source}"
            run = sandbox.run_io(program, list(tests.inputs), language=language, deadline_s=remaining)
            passed = [
                case.status == "ran" and case.output is not None and outputs_match(case.output, expected)
                for case, expected in zip(run.cases, tests.outputs)
            ]
        return _score(run, passed, binary)

    if not items:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(items)))) as pool:
        return list(pool.map(one, items))


def _score(run: RunResult, passed: list[bool], binary: bool) -> ProgramScore:
    if run.status == "sandbox_error":
        return ProgramScore(None, 0, len(passed), "sandbox_error", run.wall_s, run)
    n_passed = sum(passed)
    if run.status in ("timeout", "output_limit", "crashed"):
        status = run.status
    elif any(case.status == "timeout" for case in run.cases):
        status = "timeout"
    elif any(case.status in ("crashed", "killed") for case in run.cases):
        status = "crashed"
    elif any(case.status == "output_limit" for case in run.cases):
        status = "output_limit"
    else:
        status = "passed" if n_passed == len(passed) else "failed"
    fraction = n_passed / len(passed) if passed else 0.0
    reward = (1.0 if n_passed == len(passed) else 0.0) if binary else fraction
    return ProgramScore(reward, n_passed, len(passed), status, run.wall_s, run)


# --------------------------------------------------------------------------------------------
# the reward


@register_reward("code")
def code_reward(
    prompts: list,
    completions: list,
    *,
    tests_column: str = "tests",
    binary: bool = False,
    workers: int = 2,
    total_time_s: float = 300.0,
    wall_time_s: float = 10.0,
    cpu_time_s: float = 10.0,
    memory_mb: int = 1024,
    processes: int = 64,
    output_bytes: int = 1 << 20,
    file_size_mb: int = 16,
    isolation: str = "namespaces",
    python: str | None = None,
    **kwargs,
) -> list[float | None]:
    """Fraction of the row's test cases the completion's final code block passes, in a sandbox.

    reward = passed cases / all cases (``binary: true``: 1.0 only when all pass, else 0.0)

    The program is the final fenced code block (```` ```python ```` first; ```` ```cpp ```` when
    ``g++`` is installed), prefixed with the row's ``starter_code`` when there is one (HumanEval's
    imports and signature). The tests come from the ``tests_column`` column: test code run after
    the solution (asserts, or ``check(candidate)`` called with the row's ``entry_point``), a list of
    snippets, or stdin/stdout cases ``[{"input": ..., "output": ...}]`` compared after stripping
    trailing whitespace. Each program runs in its own sandbox (:mod:`rewards.sandbox`: network,
    mount, PID and user namespaces; limits on wall time, CPU, memory, processes, output and file
    size), ``workers`` at a time, the batch within ``total_time_s``. A completion without a code
    block scores 0.0; a program that could not be run (no time left, sandbox failure) gets None.
    When the trainer passes ``log_metric``, the batch's shares of timeouts, crashes, output-limit
    kills, sandbox errors, skipped programs and completions without code are logged as
    ``code/timeouts``, ``code/crashes``, ``code/output_limit``, ``code/sandbox_errors``,
    ``code/skipped`` and ``code/no_code``.

    ``isolation: rlimits`` runs programs with the limits but without namespaces (no network or
    filesystem isolation): only for machines where bubblewrap cannot run, and only when asked.
    """
    if tests_column not in kwargs:
        available = ", ".join(sorted(k for k, v in kwargs.items() if isinstance(v, list))) or "(none)"
        raise ValueError(f"code reward needs the test cases in a dataset column '{tests_column}'; columns passed: {available}")
    tests_values = kwargs[tests_column]
    if len(tests_values) != len(completions):
        raise ValueError(f"got {len(completions)} completions but {len(tests_values)} values in column '{tests_column}'")
    sandbox = get_sandbox(*_configuration(wall_time_s, cpu_time_s, memory_mb, processes, output_bytes, file_size_mb, isolation, python))
    entry_points = kwargs.get("entry_point") or [None] * len(completions)
    starters = kwargs.get("starter_code") or [""] * len(completions)
    cpp = sandbox.cpp_compiler is not None
    items = []
    for i, (completion, tests, entry_point, starter) in enumerate(zip(completions, tests_values, entry_points, starters)):
        parsed = parse_tests(tests, entry_point, where=f"{tests_column} (row {i})")
        items.append((extract_code(completion_text(completion), cpp=cpp), parsed, starter or ""))
    scores = score_programs(items, sandbox, workers=workers, total_time_s=total_time_s, binary=binary)

    log_metric = kwargs.get("log_metric")
    if callable(log_metric) and scores:
        n = len(scores)
        for status, name in (
            ("timeout", "timeouts"), ("crashed", "crashes"), ("output_limit", "output_limit"),
            ("sandbox_error", "sandbox_errors"), ("skipped", "skipped"), ("no_code", "no_code"),
        ):
            log_metric(f"code/{name}", sum(s.status == status for s in scores) / n)
    return [s.reward for s in scores]


def _configuration(wall_time_s, cpu_time_s, memory_mb, processes, output_bytes, file_size_mb, isolation, python):
    if isolation not in ISOLATIONS:
        raise ValueError(f"code reward: isolation must be one of {', '.join(ISOLATIONS)}, got {isolation!r}")
    limits = SandboxLimits(
        wall_time_s=wall_time_s, cpu_time_s=cpu_time_s, memory_mb=memory_mb, processes=processes,
        output_bytes=output_bytes, file_size_mb=file_size_mb,
    )
    return limits, isolation, python


def check_setup(
    *, wall_time_s: float = 10.0, cpu_time_s: float = 10.0, memory_mb: int = 1024, processes: int = 64,
    output_bytes: int = 1 << 20, file_size_mb: int = 16, isolation: str = "namespaces", python: str | None = None,
    workers: int = 2, total_time_s: float = 300.0, **_,
) -> None:
    """Called when a recipe is loaded: the parameters are valid and the sandbox starts here
    (ValueError / :class:`~rewards.sandbox.SandboxUnavailable`, one line each)."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers: expected a positive integer, got {workers!r}")
    if isinstance(total_time_s, bool) or not isinstance(total_time_s, (int, float)) or total_time_s <= 0:
        raise ValueError(f"total_time_s: expected a positive number, got {total_time_s!r}")
    get_sandbox(*_configuration(wall_time_s, cpu_time_s, memory_mb, processes, output_bytes, file_size_mb, isolation, python))


code_reward.check_setup = check_setup
