"""The code reward's sandbox: the attack table, HumanEval canonical solutions, and throughput.

    python -m benchmarks.bench_code [--out benchmarks/results/code.md] [--workers 2]

1. Each hostile program of tests/test_sandbox_security.py, run alone: outcome and wall time.
2. HumanEval: the 164 canonical solutions through the ``code`` reward (must all score 1.0) and
   each problem given the next problem's solution (must all fail).
3. Throughput: programs per second of the ``code`` reward on the canonical solutions with
   1 and ``--workers`` workers, measured side by side (run it on an otherwise idle machine).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def attack_table() -> str:
    import socket

    from rewards.code import CodeTests, score_programs
    from rewards.sandbox import Sandbox
    from test_sandbox_security import LIMITS, hostile_programs, marked_processes

    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"grpo-bench-{uuid.uuid4().hex}"
    tmp.mkdir()
    home_secret = Path.home() / f".grpo-sandbox-secret-{uuid.uuid4().hex}"
    home_secret.write_text("TOP-SECRET")
    (tmp / "secret.txt").write_text("TOP-SECRET")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    marker = f"grpo-sandbox-sleeper-{uuid.uuid4().hex}"
    programs = hostile_programs(str(home_secret), str(tmp / "secret.txt"), str(tmp / "escaped.txt"), server.getsockname()[1], marker)
    sandbox = Sandbox(LIMITS)
    sandbox.check()
    tests = CodeTests("script", snippets=("assert x == 42",))
    lines = [
        f"limits: wall {LIMITS.wall_time_s:g} s, CPU {LIMITS.cpu_time_s:g} s, memory {LIMITS.memory_mb} MB, "
        f"{LIMITS.processes} processes, output {LIMITS.output_bytes >> 20} MB",
        "",
        "| attack | outcome | reward | wall s | detail |",
        "|---|---|---|---|---|",
    ]
    try:
        for name, program in programs.items():
            [score] = score_programs([(("python", program), tests, "")], sandbox, workers=1, total_time_s=60)
            detail = score.run.cases[0].detail or score.run.stdout[:60]
            returncode = score.run.extra.get("returncode") or 0
            if not score.run.cases[0].detail and returncode > 128:
                detail = f"killed by {signal.Signals(returncode - 128).name}" + (" (the CPU limit)" if returncode - 128 == signal.SIGXCPU else "")
            detail = detail.replace("\n", " ").replace("|", "\\|")[:90]
            if name == "write outside its directory":
                detail = f"{score.run.stdout.count('refused')} of 3 writes refused: " + "; ".join(
                    line.split(" [")[0] for line in score.run.stdout.splitlines() if line.startswith("refused")
                )[:80]
            if name == "200 forked sleepers":
                detail = f"processes left afterwards: {len(marked_processes(marker))}"
            if name == "connect to 127.0.0.1":
                try:
                    server.accept()
                    detail = "CONNECTION ARRIVED"
                except BlockingIOError:
                    detail = f"no connection arrived; {detail}"
            lines.append(f"| {name} | {score.status} | {score.reward:g} | {score.wall_s:.2f} | {detail} |")
        escaped = [p for p in (tmp / "escaped.txt", Path("/usr/grpo-escape")) if p.exists()]
        lines.append(f"\nfiles written outside the sandbox: {len(escaped)}")
    finally:
        home_secret.unlink()
        server.close()
    return "\n".join(lines)


def humaneval_figures(workers: int) -> str:
    from grpo.data import DataSpec, load_rows
    from rewards.code import code_reward

    rows = load_rows(DataSpec(source="humaneval"))
    columns = {k: [r[k] for r in rows] for k in ("tests", "entry_point", "starter_code")}
    prompts = [r["prompt"] for r in rows]
    canonical = [f"```python\n{r['solution']}\n```" for r in rows]
    neighbours = [f"```python\n{rows[(i + 1) % len(rows)]['solution']}\n```" for i in range(len(rows))]
    lines = []
    timings = {}
    for n_workers in sorted({1, workers}):
        start = time.perf_counter()
        scores = code_reward(prompts, canonical, workers=n_workers, **columns)
        timings[n_workers] = time.perf_counter() - start
        lines.append(
            f"HumanEval canonical solutions, {n_workers} worker(s): {sum(s == 1.0 for s in scores)}/{len(rows)} score 1.0; "
            f"{timings[n_workers]:.1f} s = {len(rows) / timings[n_workers]:.1f} programs/s"
        )
    if len(timings) > 1:
        lines.append(f"speed-up with {workers} workers: {timings[1] / timings[workers]:.2f}x")
    scores = code_reward(prompts, neighbours, workers=workers, **columns)
    lines.append(f"HumanEval, each problem given the next problem's solution: {sum(s == 1.0 for s in scores)}/{len(rows)} score 1.0")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    from benchmarks.workload import report

    load = os.getloadavg()
    text = (
        f"## Attacks, each alone\n\n{attack_table()}\n\n## HumanEval and throughput\n\n{humaneval_figures(args.workers)}\n\n"
        f"load average before: {load[0]:.2f}; after: {os.getloadavg()[0]:.2f}\n"
    )
    report(text, args.out, header=f"code reward sandbox, {os.cpu_count()} CPU cores")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
