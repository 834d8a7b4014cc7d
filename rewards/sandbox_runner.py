"""The program runner that runs *inside* the sandbox (see :mod:`rewards.sandbox`): standard library only.

It is handed to the sandbox's interpreter as data (never imported by the toolkit) and:

1. reads its job (JSON) from the file descriptor given as its first argument and closes it: the program, its test cases, the limits and a
   random token that marks its reports;
2. makes itself undumpable (so the programs it starts cannot read its memory through
   ``/proc/<pid>/mem``) and sets the resource limits (address space, CPU time, processes, file
   size, open files, no core dumps) that everything it starts inherits;
3. runs the cases in the working directory (third argument) and writes one JSON line per case
   to the report descriptor (second argument), each carrying the token:

   - ``script`` jobs (Python, test code run after the solution): the program runs in this
     process, then each test snippet in the solution's namespace; a case passes when its snippet
     runs to the end (an ``os._exit(0)`` or ``sys.exit()`` before that is a failure);
   - ``io`` jobs (Python or C++, stdin/stdout cases): a C++ program is compiled once, then every
     case runs in a fresh child process with the case's input on stdin; its output (capped) is
     reported and compared by the caller, outside the sandbox.
"""

import ctypes
import json
import os
import resource
import runpy
import selectors
import signal
import subprocess
import sys
import time
import traceback

WORK = "/box"  # set from the third argument


def main() -> None:
    global WORK
    job_fd, report_fd, WORK = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    with os.fdopen(job_fd, "rb") as inbox:
        job = json.loads(inbox.read().decode("utf-8"))
    reports = os.fdopen(report_fd, "w", buffering=1, encoding="utf-8")
    token = job.pop("token")
    os.set_inheritable(report_fd, False)  # the programs this runner starts never get the report channel
    _undumpable()
    limits = job["limits"]

    def report(case, passed, status, detail="", output=None):
        line = {"token": token, "case": case, "passed": passed, "status": status, "detail": detail[-2000:]}
        if output is not None:
            line["output"] = output
        reports.write(json.dumps(line) + "\n")

    report(-1, None, "started")  # the caller tells a sandbox that never started from a program that ended it
    os.chdir(WORK)
    _set_limits(limits)
    if job["kind"] == "script":
        _run_script(job, limits, report)
    else:
        _run_io(job, limits, report)
    reports.close()


def _undumpable() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4
    except (OSError, AttributeError):
        pass


def _set_limits(limits: dict) -> None:
    """Limits for this process and everything it starts (inherited across fork and exec)."""
    mib = 1 << 20
    for name, value in (
        ("RLIMIT_FSIZE", limits["file_size_mb"] * mib),
        ("RLIMIT_NPROC", limits["processes"]),
        ("RLIMIT_NOFILE", limits["open_files"]),
        ("RLIMIT_CORE", 0),
    ):
        resource.setrlimit(getattr(resource, name), (value, value))


def _set_program_limits(memory_mb: int, cpu_s: float) -> None:
    """Address space and CPU time of a program (this process in a script job, a child in io jobs)."""
    memory = memory_mb << 20
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    seconds = max(1, int(cpu_s + 0.999))
    resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds + 1))


# --------------------------------------------------------------------------------------------
# script jobs: Python solution + test code, in this process


def _run_script(job: dict, limits: dict, report) -> None:
    solution_path = os.path.join(WORK, "solution.py")
    with open(solution_path, "w", encoding="utf-8") as f:
        f.write(job["program"])
    tests = []
    for i, code in enumerate(job["tests"]):
        path = os.path.join(WORK, f"test_{i}.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(code)
        tests.append(path)
    # The deadline is the caller's (it kills the sandbox); an alarm here only makes a sleeping
    # program fail with a readable reason a little earlier.
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, limits["wall_time_s"])
    _set_program_limits(limits["memory_mb"], limits["cpu_time_s"])
    sys.argv = [solution_path]
    sys.stdin = open(os.devnull)
    try:
        namespace = runpy.run_path(solution_path, run_name="__main__")
    except BaseException as exc:  # SystemExit too: the tests did not run to the end
        for i in range(len(tests)):
            report(i, False, _status(exc), _describe(exc))
        return
    for i, path in enumerate(tests):
        try:
            runpy.run_path(path, init_globals=namespace, run_name="__main__")
        except BaseException as exc:
            report(i, False, _status(exc), _describe(exc))
        else:
            report(i, True, "passed")
        sys.stdout.flush()


class _WallTime(BaseException):
    pass


def _alarm(signum, frame):
    raise _WallTime("wall time limit exceeded")


def _status(exc: BaseException) -> str:
    return "failed" if isinstance(exc, AssertionError) else "timeout" if isinstance(exc, _WallTime) else "error"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"SystemExit({exc.code!r}) before the tests finished"
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


# --------------------------------------------------------------------------------------------
# io jobs: stdin/stdout cases, a fresh child process each


def _run_io(job: dict, limits: dict, report) -> None:
    if job["language"] == "cpp":
        source = os.path.join(WORK, "main.cpp")
        with open(source, "w", encoding="utf-8") as f:
            f.write(job["program"])
        compiled = _run_child(
            [job["compiler"], "-std=c++17", "-O2", "-pipe", "-o", os.path.join(WORK, "main"), source],
            b"", limits["compile_time_s"], limits["output_bytes"], limits["compile_time_s"], limits["compile_memory_mb"],
        )
        if compiled["status"] != "exited" or compiled["returncode"] != 0:
            detail = "compilation failed: " + compiled["stderr"]
            for i in range(len(job["cases"])):
                report(i, False, "compile_error", detail)
            return
        command = [os.path.join(WORK, "main")]
    else:
        path = os.path.join(WORK, "main.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(job["program"])
        command = [sys.executable, "-I", path]
    for i, stdin_text in enumerate(job["cases"]):
        run = _run_child(
            command, stdin_text.encode("utf-8"), limits["wall_time_s"], limits["output_bytes"], limits["cpu_time_s"], limits["memory_mb"]
        )
        status = {"exited": "ran" if run["returncode"] == 0 else "error"}.get(run["status"], run["status"])
        if run["status"] == "exited" and run["returncode"] < 0:
            status = "crashed"
        report(i, None, status, run["stderr"], run["stdout"] if status == "ran" else None)


def _run_child(command: list, stdin: bytes, wall_s: float, cap: int, cpu_s: float, memory_mb: int) -> dict:
    """Run one child with its input from a file, its output read up to ``cap`` bytes."""
    stdin_path = os.path.join(WORK, ".stdin")
    with open(stdin_path, "wb") as f:
        f.write(stdin)

    def child_limits():  # this runner is single-threaded, so a preexec_fn is safe here
        _set_program_limits(memory_mb, cpu_s)

    with open(stdin_path, "rb") as stdin_file:
        try:
            process = subprocess.Popen(
                command, stdin=stdin_file, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                preexec_fn=child_limits, start_new_session=True, cwd=WORK,
            )
        except OSError as exc:
            return {"status": "error", "returncode": None, "stdout": "", "stderr": str(exc)}
    out, err, status = bytearray(), bytearray(), None
    deadline = time.monotonic() + wall_s
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ, out)
    selector.register(process.stderr, selectors.EVENT_READ, err)
    while selector.get_map():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            status = "timeout"
            break
        for key, _ in selector.select(remaining):
            chunk = os.read(key.fd, 65536)
            if not chunk:
                selector.unregister(key.fileobj)
                continue
            key.data.extend(chunk)
            if len(out) > cap:
                status = "output_limit"
                break
            del err[cap:]
        if status:
            break
    if status:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()
    selector.close()
    process.stdout.close()
    process.stderr.close()
    if status is None:
        status = "exited"
        if process.returncode == -signal.SIGXCPU or process.returncode == -signal.SIGKILL:
            status = "timeout" if process.returncode == -signal.SIGXCPU else "killed"
    return {
        "status": status,
        "returncode": process.returncode,
        "stdout": bytes(out[:cap]).decode("utf-8", "replace"),
        "stderr": bytes(err[-2000:]).decode("utf-8", "replace"),
    }


if __name__ == "__main__":
    main()
