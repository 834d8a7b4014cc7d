"""GRPO over processes: one process, and 2 processes × {ddp, fsdp}, side by side on this machine.

    python -m benchmarks.bench_distributed [--steps 2] [--model smollm2-135m-instruct] [--out FILE]

Every setting trains the same batch (B prompts × G completions; with 2 processes each rank takes
half of it) in fresh processes (torchrun for 2), one warm-up step then ``--steps`` timed ones.
Per setting: seconds per step and steps/s, the rollout's share, and per rank the peak resident
memory of the process (all of it: Python, torch, the model as loaded before sharding, the
reference) and the bytes of policy parameters + gradients + AdamW state the rank holds (what the
strategies divide), next to the memory model of docs/distributed.md (16 bytes per parameter in
float32, divided by N under fsdp).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.workload import Workload, load, machine, num_params, peak_rss_mib, report, reward

SETTINGS = [("1 process", 1, "ddp"), ("2 × ddp", 2, "ddp"), ("2 × fsdp", 2, "fsdp")]
STATE_BYTES_PER_PARAM = 16  # float32 weights 4 + gradients 4 + AdamW moments 8 (docs/distributed.md)


def worker(workload: Workload, strategy: str, out: str) -> None:
    """One rank of a setting: train, then rank 0 writes every rank's figures to ``out``."""
    import torch

    from grpo.config import GRPOConfig
    from grpo.launch import DistributedSettings
    from grpo.parallel import state_memory
    from grpo.scoring import RewardTerm
    from grpo.trainer import GRPOTrainer

    torch.set_num_threads(1 if int(os.environ.get("WORLD_SIZE", "1")) > 1 else torch.get_num_threads())
    model, tokenizer, rows = load(workload)
    params = num_params(model)
    config = GRPOConfig(
        steps=workload.warmup_steps + workload.steps, prompts_per_step=workload.prompts_per_step,
        group_size=workload.group_size, max_new_tokens=workload.max_new_tokens, temperature=workload.temperature,
        beta=workload.beta, learning_rate=workload.learning_rate, loss_aggregation=workload.loss, progress=False,
    )
    with tempfile.TemporaryDirectory() as tmp:
        trainer = GRPOTrainer(model, tokenizer, [RewardTerm("bench", reward)], rows, config, tmp, seed=workload.seed,
                              distributed=DistributedSettings(strategy=strategy))
        steps = []
        for step in range(1, config.steps + 1):
            trainer.dist.barrier()
            t0 = time.perf_counter()
            metrics, _ = trainer.step(step)
            steps.append({"seconds": time.perf_counter() - t0, "rollout_seconds": metrics["timing/rollout"],
                          "completion_tokens": metrics["completions/mean_length"] * config.rows_per_step})
        mine = {"peak_rss_mib": peak_rss_mib(), **state_memory(trainer.model, trainer.optimizer)}
        ranks = trainer.dist.gather([mine])
    if trainer.dist.is_main:
        Path(out).write_text(json.dumps({"steps": steps[workload.warmup_steps :], "ranks": ranks, "params": params,
                                         "strategy": trainer.parallel.strategy}))


def measure(workload: Workload, processes: int, strategy: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        args = ["-m", "benchmarks.bench_distributed", "--worker", strategy, "--workload", workload.to_json(), "--result", str(out)]
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"] if processes > 1 else []
        done = subprocess.run([sys.executable, *launcher, *args], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if done.returncode != 0:
            raise RuntimeError(f"{processes} × {strategy} failed:\n{done.stderr[-3000:]}")
        return json.loads(out.read_text())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2, help="timed steps per setting (after 1 warm-up step)")
    parser.add_argument("--model", default=Workload.model)
    parser.add_argument("--prompts", type=int, default=2, help="B, prompts per step (divisible by 2)")
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--out", help="also write the table (markdown) here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--workload", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(Workload.from_json(args.workload), args.worker, args.result)
        return 0
    workload = Workload(model=args.model, steps=args.steps, prompts_per_step=args.prompts, group_size=args.group_size,
                        max_new_tokens=args.max_new_tokens)
    load_avg = os.getloadavg()[0]
    print(f"# GRPO over processes\n\n{machine()}; load average {load_avg:.2f} at start\n")
    lines = [
        f"B = {workload.prompts_per_step} prompts × G = {workload.group_size}, ≤ {workload.max_new_tokens} new tokens, "
        f"{workload.model}, float32, {workload.steps} timed steps",
        "",
        "| setting | s/step | steps/s | rollout share | per-rank peak RSS MiB | per-rank params+grads+AdamW MiB | memory model MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    results = {}
    for name, processes, strategy in SETTINGS:
        r = results[name] = measure(workload, processes, strategy)
        seconds = statistics.mean(s["seconds"] for s in r["steps"])
        rollout = statistics.mean(s["rollout_seconds"] for s in r["steps"])
        state = max(k["memory/params_mib"] + k["memory/grads_mib"] + k["memory/optimizer_mib"] for k in r["ranks"])
        model = STATE_BYTES_PER_PARAM * r["params"] / (processes if strategy == "fsdp" else 1) / 2**20
        rss = max(k["peak_rss_mib"] for k in r["ranks"])
        lines.append(f"| {name} | {seconds:.2f} | {1 / seconds:.3f} | {rollout / seconds:.0%} | {rss:.0f} | {state:.0f} | {model:.0f} |")
        print(lines[-1], flush=True)
    one = statistics.mean(s["seconds"] for s in results["1 process"]["steps"])
    ratios = ", ".join(
        f"{name}: {one / statistics.mean(s['seconds'] for s in results[name]['steps']):.2f}×" for name, _, _ in SETTINGS[1:]
    )
    text = "\n".join(lines) + f"\n\nsteps/s relative to 1 process — {ratios}\n"
    print()
    report(text, args.out, header=f"{machine()}; load average {load_avg:.2f} at start")
    return 0


if __name__ == "__main__":
    sys.exit(main())
