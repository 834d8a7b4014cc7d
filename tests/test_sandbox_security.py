"""Hostile programs against the code sandbox: each must fail, harm nothing, and end within its limit.

Every case is harmless even if the sandbox failed: the sleepers are found by a marker and killed
afterwards, the allocation is lazily zeroed, the files and the TCP server are the test's own, the
server listens on 127.0.0.1 only, and the program that kills its parent spares this process.
All cases run in one parallel batch (``score_programs``, one worker each); ``python -m
benchmarks.bench_code`` prints the same table with times.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import threading
import time
import uuid

import pytest

from rewards.code import CodeTests, ProgramScore, score_programs
from rewards.sandbox import Sandbox, SandboxLimits

pytestmark = pytest.mark.skipif(
    shutil.which("bwrap") is None and os.environ.get("GRPO_REQUIRE_SANDBOX") != "1",
    reason="bubblewrap is not installed (apt-get install bubblewrap); GRPO_REQUIRE_SANDBOX=1 makes this a failure",
)
LIMITS = SandboxLimits(wall_time_s=2.0, cpu_time_s=2.0, memory_mb=512, processes=32, output_bytes=1 << 20)
# The caller's bound on one run: the wall time plus interpreter start-up (rewards/sandbox.py).
BOUND_S = LIMITS.wall_time_s + 5.0


def hostile_programs(home_secret: str, cwd_secret: str, outside: str, port: int, marker: str) -> dict[str, str]:
    """Case name -> program. Each prints "ESCAPED" only if it achieved what it tried."""
    return {
        "infinite loop": "while True:\n    pass\n",
        "time.sleep(100)": "import time\ntime.sleep(100)\n",
        "200 forked sleepers": (
            "import os, time\n"
            "for _ in range(200):\n"
            "    try:\n"
            "        pid = os.fork()\n"
            "    except OSError:\n"
            "        break\n"
            "    if pid == 0:\n"
            f"        os.execv('/bin/sleep', ['sleep', '100', {marker!r}])\n"
            "time.sleep(100)\n"
        ),
        "4 GB allocation": "block = bytearray(4 << 30)\nprint('ESCAPED', len(block))\n",
        "read a file in the home": f"print('ESCAPED', open({home_secret!r}).read())\n",
        "read a file in the caller's directory": f"print('ESCAPED', open({cwd_secret!r}).read())\n",
        "write outside its directory": (
            "import os\n"
            f"for path in ({outside!r}, os.path.expanduser('~/../grpo-escape'), '/usr/grpo-escape'):\n"
            "    try:\n"
            "        open(path, 'w').write('x')\n"
            "        print('wrote', path)\n"
            "    except OSError as exc:\n"
            "        print('refused', path, exc)\n"
            "raise SystemExit(1)\n"
        ),
        "connect to 127.0.0.1": (
            "import socket\n"
            f"socket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'hello')\n"
            "print('ESCAPED')\n"
        ),
        "kill its parent": (
            "import os, signal\n"
            f"caller = {os.getpid()}\n"
            "parent = os.getppid()\n"
            "if parent != caller:  # never the test process, even without a sandbox\n"
            "    os.kill(parent, signal.SIGKILL)\n"
            "try:\n"
            "    os.kill(caller, 0)\n"
            "    print('ESCAPED caller visible')\n"
            "except OSError:\n"
            "    pass\n"
            "os.kill(-1, signal.SIGKILL)\n"
        ),
        "print 1 GB": "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(1024):\n    sys.stdout.write(chunk)\n",
    }


def marked_processes(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


@pytest.fixture(scope="module")
def attack(tmp_path_factory):
    """Run every hostile program at once (plus one honest program) and record what happened."""
    tmp = tmp_path_factory.mktemp("sandbox")
    home_secret = os.path.join(os.path.expanduser("~"), f".grpo-sandbox-secret-{uuid.uuid4().hex}")
    cwd_secret = str(tmp / "secret.txt")
    outside = str(tmp / "escaped.txt")
    marker = f"grpo-sandbox-sleeper-{uuid.uuid4().hex}"
    for path in (home_secret, cwd_secret):
        with open(path, "w") as f:
            f.write("TOP-SECRET")
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    connections = []

    def accept():
        while not stop.is_set():
            try:
                connections.append(server.accept()[0])
            except OSError:
                continue

    stop = threading.Event()
    listener = threading.Thread(target=accept, daemon=True)
    listener.start()
    programs = hostile_programs(home_secret, cwd_secret, outside, server.getsockname()[1], marker)
    programs["honest program (same batch)"] = "x = 41 + 1\n"
    names = list(programs)
    sandbox = Sandbox(LIMITS)
    sandbox.check()
    tests = CodeTests("script", snippets=("assert x == 42",))
    old_cwd = os.getcwd()
    os.chdir(tmp)  # the caller's working directory holds a secret too
    try:
        start = time.perf_counter()
        scores = score_programs([(("python", programs[n]), tests, "") for n in names], sandbox, workers=len(names), total_time_s=60)
        batch_s = time.perf_counter() - start
        left = marked_processes(marker)
    finally:
        os.chdir(old_cwd)
        stop.set()
        listener.join()
        server.close()
        for pid in marked_processes(marker):  # only if the sandbox failed
            os.kill(pid, signal.SIGKILL)
        os.unlink(home_secret)
    yield {
        "scores": dict(zip(names, scores)), "batch_s": batch_s, "left": left, "connections": connections,
        "outside": outside,
    }


def result(attack, name) -> ProgramScore:
    return attack["scores"][name]


@pytest.mark.parametrize("name", list(hostile_programs("h", "c", "o", 1, "m")))
def test_each_attack_fails_within_its_limit(attack, name):
    score = result(attack, name)
    assert score.reward == 0.0 and score.status != "passed", (name, score.status)
    assert score.wall_s <= BOUND_S, (name, score.wall_s)
    assert "ESCAPED" not in score.run.stdout and "TOP-SECRET" not in score.run.stdout, (name, score.run.stdout[:200])


def test_the_honest_program_in_the_same_batch_passes(attack):
    assert result(attack, "honest program (same batch)").reward == 1.0


def test_runaway_programs_are_stopped_by_their_limits(attack):
    for name in ("infinite loop", "time.sleep(100)", "200 forked sleepers"):
        assert result(attack, name).status == "timeout", name
        assert result(attack, name).wall_s >= LIMITS.wall_time_s - 0.5  # it ran until the limit, not less
    assert result(attack, "print 1 GB").status == "output_limit"
    assert len(result(attack, "print 1 GB").run.stdout) <= LIMITS.output_bytes
    assert "MemoryError" in result(attack, "4 GB allocation").run.cases[0].detail


def test_no_sleeper_outlives_the_reward(attack):
    assert attack["left"] == []


def test_files_outside_the_sandbox_are_neither_read_nor_written(attack):
    for name in ("read a file in the home", "read a file in the caller's directory"):
        assert "No such file or directory" in result(attack, name).run.cases[0].detail, name
    assert not os.path.exists(attack["outside"])
    assert not os.path.exists(os.path.join(os.path.dirname(os.path.expanduser("~")), "grpo-escape"))
    assert not os.path.exists("/usr/grpo-escape")
    assert result(attack, "write outside its directory").run.stdout.count("refused") >= 2


def test_the_loopback_connection_never_arrives(attack):
    assert attack["connections"] == []
    assert "ConnectionRefusedError" in result(attack, "connect to 127.0.0.1").run.cases[0].detail or "OSError" in result(attack, "connect to 127.0.0.1").run.cases[0].detail


def test_killing_its_parent_harms_no_one(attack):
    score = result(attack, "kill its parent")
    assert score.reward == 0.0 and "caller visible" not in score.run.stdout
    assert attack["batch_s"] < BOUND_S + 5.0  # the batch ran in parallel and none of it hung
