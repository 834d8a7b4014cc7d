"""Run untrusted programs (model-written code) in a sandbox: Linux namespaces plus resource limits.

Each program runs in a fresh process tree inside its own namespaces, made with bubblewrap
(``bwrap``, the sandbox Flatpak uses):

- **network**: a new network namespace with only its own loopback, so nothing on the host or
  beyond is reachable (``127.0.0.1`` there is not the host's);
- **mount**: a new root with read-only system directories (``/usr``, the ``/lib`` links), a
  fresh ``/proc`` and ``/dev``, and empty, size-capped tmpfs for ``/tmp`` and the working
  directory ``/box``: the host's home, the project and its ``/tmp`` do not exist in there;
- **PID**: the program cannot see or signal anything outside; when the sandbox's first process
  ends, the kernel kills whatever is left, so nothing a program started outlives its run;
- **user, IPC, UTS, cgroup**: the program is an unprivileged user (when the toolkit runs as
  root, bubblewrap itself is started as ``nobody``) with no capabilities.

Inside, :mod:`rewards.sandbox_runner` sets the limits everything inherits: address space
(``memory_mb``), CPU seconds, processes (counted per sandbox: each has its own user namespace),
file size, open files, no core dumps; the caller enforces the wall time and the output size and
kills the whole sandbox when either is exceeded.

Where bubblewrap is missing or namespaces are not allowed (some containers), :meth:`Sandbox.check`
raises :class:`SandboxUnavailable` with a one-line message saying what to install, unless the
user explicitly chose ``isolation="rlimits"``: resource limits and a private temporary
directory only, with no network or filesystem isolation.
"""

from __future__ import annotations

import json
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["SandboxLimits", "Sandbox", "SandboxUnavailable", "RunResult", "CaseResult", "ISOLATIONS"]

#: ``isolation`` settings: ``namespaces`` (bubblewrap, the default) or ``rlimits`` (limits only).
ISOLATIONS = ("namespaces", "rlimits")
INSTALL_HINT = "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap)"
_RUNNER = Path(__file__).with_name("sandbox_runner.py")
_WORK = "/box"
_NOBODY = 65534  # the host user sandboxes run as when the toolkit runs as root


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot run here; the message is one line saying why and what to install."""


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one sandboxed run (a ``script`` job as a whole; each case of an ``io`` job)."""

    wall_time_s: float = 10.0  # wall-clock time
    cpu_time_s: float = 10.0  # CPU time (RLIMIT_CPU, rounded up to whole seconds)
    memory_mb: int = 1024  # address space of the program (RLIMIT_AS)
    processes: int = 64  # processes and threads in the sandbox (RLIMIT_NPROC, per sandbox)
    output_bytes: int = 1 << 20  # stdout kept; more fails the run
    file_size_mb: int = 16  # largest file the program may write (RLIMIT_FSIZE)
    open_files: int = 64  # RLIMIT_NOFILE
    workdir_mb: int = 64  # size of the private /box and /tmp (tmpfs)
    compile_time_s: float = 30.0  # C++ compilation (wall and CPU)
    compile_memory_mb: int = 2048  # C++ compilation address space

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name}: must be a positive number, got {value!r}")


@dataclass
class CaseResult:
    """One test case: ``passed`` (None for io cases until the caller compares ``output``),
    ``status`` (passed, failed, error, ran, timeout, crashed, killed, output_limit,
    compile_error, no_report) and the end of its error output."""

    passed: bool | None
    status: str
    detail: str = ""
    output: str | None = None


@dataclass
class RunResult:
    """One sandboxed run: per-case results and how the run as a whole ended.

    ``status``: ``completed`` (the runner finished), ``timeout`` (wall time), ``output_limit``,
    ``crashed`` (the runner was killed from inside, e.g. the program ended its own process),
    or ``sandbox_error`` (the sandbox itself failed to start: not the program's fault).
    """

    cases: list[CaseResult]
    status: str
    wall_s: float
    stdout: str = ""
    stderr: str = ""
    extra: dict = field(default_factory=dict)


class Sandbox:
    """Runs programs with :class:`SandboxLimits` under the chosen ``isolation``.

    Args:
        limits: per-run limits.
        isolation: ``namespaces`` (bubblewrap; default) or ``rlimits`` (explicit opt-in to limits
            without isolation, where namespaces are not available).
        python: the interpreter programs run with (default: a system ``python3`` the sandbox can
            see, e.g. ``/usr/bin/python3``; the toolkit's own when it lives outside any home).

    Thread-safe: one instance can serve a pool of worker threads.
    """

    def __init__(self, limits: SandboxLimits | None = None, isolation: str = "namespaces", python: str | None = None):
        if isolation not in ISOLATIONS:
            raise ValueError(f"isolation: must be one of {', '.join(ISOLATIONS)}, got {isolation!r}")
        self.limits = limits or SandboxLimits()
        self.isolation = isolation
        self._python = python
        self._checked = False
        self._lock = threading.Lock()

    # ----------------------------------------------------------------- setup

    @property
    def python(self) -> str:
        if self._python is None:
            self._python = _sandbox_python()
        return self._python

    @property
    def cpp_compiler(self) -> str | None:
        """``g++`` on this machine (C++ programs are run only when there is one)."""
        found = shutil.which("g++")
        return os.path.realpath(found) if found else None

    def check(self) -> None:
        """Prove the sandbox starts here (once); :class:`SandboxUnavailable` with a one-line reason if not."""
        with self._lock:
            if self._checked:
                return
            if self.isolation == "namespaces" and shutil.which("bwrap") is None:
                raise SandboxUnavailable(
                    f"the code sandbox needs bubblewrap (bwrap), which is not installed: {INSTALL_HINT}; "
                    "or set isolation: rlimits to run programs with resource limits only (no isolation)"
                )
            result = self._run({"kind": "script", "program": "pass", "tests": ["assert True"]}, self.limits, 60.0)
            if result.status != "completed" or not (result.cases and result.cases[0].passed):
                reason = " ".join((result.stderr or result.status).split())[:300]
                hint = INSTALL_HINT if self.isolation == "namespaces" else "check the python: setting"
                raise SandboxUnavailable(
                    f"the code sandbox cannot start here ({reason}); {hint}, or allow limits without "
                    "isolation with isolation: rlimits"
                    if self.isolation == "namespaces"
                    else f"the code sandbox cannot start a program here ({reason}); {hint}"
                )
            self._checked = True

    # ----------------------------------------------------------------- running

    def run_script(self, program: str, tests: list[str], *, deadline_s: float | None = None) -> RunResult:
        """Run a Python ``program``, then each test snippet in its namespace (one case each).

        ``deadline_s`` shortens the run's wall-clock bound (a batch's remaining time)."""
        return self._run({"kind": "script", "program": program, "tests": list(tests)}, self.limits, deadline_s)

    def run_io(self, program: str, inputs: list[str], language: str = "python", *, deadline_s: float | None = None) -> RunResult:
        """Run ``program`` once per input, the input on stdin; each case's ``output`` is its stdout."""
        if language not in ("python", "cpp"):
            raise ValueError(f"language: expected python or cpp, got {language!r}")
        job = {"kind": "io", "program": program, "cases": list(inputs), "language": language}
        if language == "cpp":
            if self.cpp_compiler is None:
                raise SandboxUnavailable("C++ programs need g++, which is not installed here")
            job["compiler"] = self.cpp_compiler
        return self._run(job, self.limits, deadline_s)

    def _run(self, job: dict, limits: SandboxLimits, deadline_s: float | None = None) -> RunResult:
        n_cases = len(job.get("tests", job.get("cases", [])))
        token = secrets.token_hex(16)
        job = {**job, "token": token, "limits": asdict(limits)}
        if job["kind"] == "io":
            # Each case has its own wall time inside; the run as a whole gets them all plus the compilation.
            bound = limits.wall_time_s * max(1, n_cases) + (limits.compile_time_s if job.get("language") == "cpp" else 0) + 5.0
        else:
            bound = limits.wall_time_s + 5.0  # + interpreter start-up
        deadline_s = bound if deadline_s is None else min(bound, deadline_s)
        start = time.monotonic()
        report_r, report_w = os.pipe()
        info_r = info_w = runner_fd = host_dir = None
        handed_over = [report_w]  # our copies of what the sandbox inherits: closed once it runs
        try:
            job_fd = _memfd("grpo-sandbox-job", json.dumps(job).encode("utf-8"))
            handed_over.append(job_fd)
            if self.isolation == "namespaces":
                runner_fd = _memfd("grpo-sandbox-runner", _RUNNER.read_bytes())
                info_r, info_w = os.pipe()
                handed_over += [runner_fd, info_w]
                command = self._bwrap_command(limits, runner_fd, info_w) + [
                    self.python, "-I", "/sandbox/runner.py", str(job_fd), str(report_w), _WORK,
                ]
            else:
                host_dir = tempfile.mkdtemp(prefix="grpo-sandbox-")
                runner = os.path.join(host_dir, ".runner.py")
                shutil.copyfile(_RUNNER, runner)
                command = [self.python, "-I", runner, str(job_fd), str(report_w), host_dir]
            as_user = {}
            if os.geteuid() == 0:
                as_user = {"user": _NOBODY, "group": _NOBODY, "extra_groups": []}
                if host_dir:  # the unprivileged user works in it and reads the runner there
                    os.chown(host_dir, _NOBODY, _NOBODY)
                    os.chown(runner, _NOBODY, _NOBODY)
            try:
                process = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    pass_fds=tuple(handed_over), start_new_session=True, close_fds=True,
                    env=_sandbox_env(host_dir), cwd=host_dir or "/", **as_user,
                )
            except OSError as exc:
                failed = [CaseResult(False, "no_report") for _ in range(n_cases)]
                return RunResult(failed, "sandbox_error", time.monotonic() - start, stderr=str(exc))
            finally:
                for fd in handed_over:
                    os.close(fd)
                handed_over = []
            status, streams = _collect(process, report_r, info_r, deadline_s, limits.output_bytes)
        finally:
            for fd in (*handed_over, report_r, info_r):
                if fd is not None:
                    os.close(fd)
            if host_dir:
                shutil.rmtree(host_dir, ignore_errors=True)
        wall = time.monotonic() - start
        cases, started = _parse_reports(streams["report"], token, n_cases)
        stderr = streams["stderr"].decode("utf-8", "replace")
        if not started and status == "completed":
            status = "sandbox_error"  # bubblewrap or the runner did not start: not the program's doing
        elif status == "completed" and process.returncode != 0 and all(c.status == "no_report" for c in cases):
            status = _ended_by(process.returncode)  # the program ended the runner itself
        for case in cases:
            if case.status == "no_report" and status in ("timeout", "output_limit"):
                case.status = status
        stdout = bytes(streams["stdout"][: limits.output_bytes]).decode("utf-8", "replace")
        return RunResult(cases, status, wall, stdout, stderr[-4000:], {"returncode": process.returncode})

    def _bwrap_command(self, limits: SandboxLimits, runner_fd: int, info_fd: int) -> list[str]:
        size = str(limits.workdir_mb << 20)
        command = [
            "bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--hostname", "sandbox",
            "--info-fd", str(info_fd), "--ro-bind", "/usr", "/usr",
        ]
        for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
            if os.path.islink(top):
                command += ["--symlink", os.readlink(top), top]
            elif os.path.isdir(top):
                command += ["--ro-bind", top, top]
        prefix = os.path.dirname(os.path.dirname(self.python))
        if not self.python.startswith("/usr/"):
            command += ["--ro-bind", prefix, prefix]
        command += [
            "--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache",
            "--ro-bind-try", "/etc/alternatives", "/etc/alternatives",
            "--proc", "/proc", "--dev", "/dev",
            "--size", size, "--tmpfs", "/tmp",
            "--size", size, "--tmpfs", _WORK,
            "--ro-bind-data", str(runner_fd), "/sandbox/runner.py",
            "--chdir", _WORK, "--clearenv",
        ]
        for key, value in _sandbox_env(_WORK).items():
            command += ["--setenv", key, value]
        return command


def _ended_by(returncode: int) -> str:
    """How a runner that reported nothing ended: bubblewrap exits with 128 + the signal that
    killed it (the rlimits mode gives the negative signal number)."""
    signal_number = returncode - 128 if returncode > 128 else -returncode if returncode < 0 else 0
    return "timeout" if signal_number == signal.SIGXCPU else "crashed"


def _sandbox_env(home: str | None) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home or _WORK, "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}


def _sandbox_python() -> str:
    """An interpreter the sandbox can run: the toolkit's own when it is installed outside any home
    directory (a home is not mounted in the sandbox, and root's is closed to ``nobody``), else a
    system ``python3``."""
    own = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    if own.startswith(("/usr/", "/opt/")):
        return own
    for folder in ("/usr/local/bin", "/usr/bin", "/bin"):
        candidate = os.path.join(folder, "python3")
        if os.access(candidate, os.X_OK):
            return os.path.realpath(candidate)
    raise SandboxUnavailable(
        f"the code sandbox needs a python3 outside home directories (this one is {own}); "
        "install python3 system-wide or set the code reward's python: to one"
    )


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, 0)  # not CLOEXEC: the sandbox inherits it
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _collect(process: subprocess.Popen, report_r: int, info_r: int | None, deadline_s: float, cap: int):
    """Read stdout (capped), stderr (its tail), the reports and bubblewrap's info until the run
    ends (stdout, stderr and the report channel all closed), the deadline passes or the output
    exceeds ``cap``; then kill what is left and reap bubblewrap."""
    streams = {"stdout": bytearray(), "stderr": bytearray(), "report": bytearray(), "info": bytearray()}
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ, "stdout")
    selector.register(process.stderr, selectors.EVENT_READ, "stderr")
    selector.register(report_r, selectors.EVENT_READ, "report")
    if info_r is not None:
        selector.register(info_r, selectors.EVENT_READ, "info")
    open_streams = {"stdout", "stderr", "report"}
    deadline = time.monotonic() + deadline_s
    status = None
    try:
        while open_streams and status is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                status = "timeout"
                break
            for key, _ in selector.select(remaining):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    selector.unregister(key.fileobj)
                    open_streams.discard(key.data)
                    continue
                buffer = streams[key.data]
                buffer.extend(chunk)
                if key.data == "stdout" and len(buffer) > cap:
                    status = "output_limit"
                elif key.data == "report" and len(buffer) > 16 * cap + (1 << 20):
                    status = "output_limit"
                elif key.data == "stderr" and len(buffer) > 1 << 16:
                    del buffer[: len(buffer) - (1 << 15)]
        child_pid = _child_pid(streams["info"])
        if status:
            _kill(process, child_pid)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:  # only if the kernel is stuck; do not hang the trainer
            _kill(process, child_pid)
            process.wait()
    finally:
        selector.close()
        process.stdout.close()
        process.stderr.close()
    return status or "completed", streams


def _child_pid(info: bytes) -> int | None:
    try:
        return int(json.loads(info.decode()).get("child-pid"))
    except (ValueError, TypeError, AttributeError):
        return None


def _kill(process: subprocess.Popen, child_pid: int | None) -> None:
    """End a sandbox: killing its first process makes the kernel kill all the rest (PID
    namespace), then bubblewrap exits; the process group covers the rlimits-only mode."""
    if child_pid:
        try:
            os.kill(child_pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _parse_reports(raw: bytes, token: str, n_cases: int) -> tuple[list[CaseResult], bool]:
    """The runner's reports carrying ``token`` (anything else on the channel is ignored), and
    whether the runner said it started (case -1)."""
    cases: list[CaseResult | None] = [None] * n_cases
    started = False
    for line in raw.decode("utf-8", "replace").splitlines():
        try:
            report = json.loads(line)
        except ValueError:
            continue
        if not isinstance(report, dict) or report.get("token") != token:
            continue  # not the runner's: something else wrote to the channel
        case = report.get("case")
        if case == -1:
            started = True
        elif isinstance(case, int) and 0 <= case < n_cases and cases[case] is None:
            cases[case] = CaseResult(report.get("passed"), str(report.get("status")), str(report.get("detail", "")), report.get("output"))
    return [c if c is not None else CaseResult(False, "no_report") for c in cases], started
