"""How our GRPO step's cost grows with the work: G, completion length and prompts per step.

    python -m benchmarks.bench_scaling [--steps 2]

Starting from the benchmark workload (B = 2 prompts, G = 8, ≤ 64 new tokens), one knob at a
time is halved and doubled; each setting runs in a fresh process (its own peak memory). The
table gives seconds per step, the rollout's share of it, generated tokens per second and peak
memory, plus the step time per completion token, which stays flat when cost grows linearly.
"""

from __future__ import annotations

import argparse
import statistics
import sys

from benchmarks.bench_trainer import measure
from benchmarks.workload import Workload, machine, report

SETTINGS = [
    {},
    {"group_size": 4},
    {"group_size": 16},
    {"max_new_tokens": 32},
    {"max_new_tokens": 128},
    {"prompts_per_step": 1},
    {"prompts_per_step": 4},
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2, help="timed steps per setting (after 1 warm-up step)")
    parser.add_argument("--model", default=Workload.model)
    parser.add_argument("--out", help="also write the table (markdown) here")
    args = parser.parse_args(argv)
    base = Workload(model=args.model, steps=args.steps)
    print(f"# Scaling of our GRPO step\n\n{machine()}\n")
    lines = [
        "| B | G | max new | s/step | rollout share | completion tokens/step | gen tok/s | ms per completion token | peak MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for change in SETTINGS:
        workload = base.with_(**change)
        result = measure("ours", workload)
        steps = result["steps"]
        seconds = statistics.mean(s["seconds"] for s in steps)
        tokens = statistics.mean(s["completion_tokens"] for s in steps)
        rollout = statistics.mean(s["rollout_seconds"] for s in steps)
        line = (
            f"| {workload.prompts_per_step} | {workload.group_size} | {workload.max_new_tokens} | {seconds:.2f} | "
            f"{rollout / seconds:.0%} | {tokens:.0f} | {tokens / seconds:.1f} | {1000 * seconds / tokens:.1f} | "
            f"{result['peak_rss_mib']:.0f} |"
        )
        lines.append(line)
        print(line, flush=True)
    text = "\n".join(lines) + "\n"
    print()
    report(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
