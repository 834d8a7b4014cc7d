"""Our GRPO trainer against TRL's GRPOTrainer on the same workload, side by side in one run.

    python -m benchmarks.bench_trainer [--rounds 2] [--steps 3] [--model smollm2-135m-instruct]

Each measurement is a fresh process (so peak memory is that trainer's alone), and the two
trainers alternate (ours, TRL, ours, TRL, …) so a change in machine load hits both. Same model,
prompt distribution, B, G, max new tokens, temperature, β, μ, learning rate, loss definition
(`grpo`: per-sequence token means, averaged; TRL `loss_type="grpo"`) and reward function; the
same passes per step (rollout, reference forward, one policy forward + backward, one optimiser
step). Printed: seconds per step, generated tokens/s, trained tokens/s, peak memory, the TRL/ours
ratio, and the share of the measured matmul peak each achieves (MFU, see workload.model_gflop).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.workload import Workload, load, machine, matmul_gflops, model_gflop, num_params, peak_rss_mib, report, reward


def _distinct_prompt_tokens(tokenizer, prompts: list[str]) -> int:
    return sum(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts)


def run_ours(workload: Workload) -> dict:
    from grpo.config import GRPOConfig
    from grpo.scoring import RewardTerm
    from grpo.trainer import GRPOTrainer

    model, tokenizer, rows = load(workload)
    config = GRPOConfig(
        steps=workload.warmup_steps + workload.steps, prompts_per_step=workload.prompts_per_step,
        group_size=workload.group_size, max_new_tokens=workload.max_new_tokens, temperature=workload.temperature,
        beta=workload.beta, num_iterations=workload.num_iterations, learning_rate=workload.learning_rate,
        loss_aggregation=workload.loss, progress=False,
    )
    with tempfile.TemporaryDirectory() as out:
        trainer = GRPOTrainer(model, tokenizer, [RewardTerm("bench", reward)], rows, config, out, seed=workload.seed)
        steps = []
        for step in range(1, config.steps + 1):
            prompts = [rows[i]["prompt"] for i in trainer.sampler.batch(step)]
            t0 = time.perf_counter()
            metrics, _ = trainer.step(step)
            seconds = time.perf_counter() - t0
            n = workload.prompts_per_step * workload.group_size
            steps.append({
                "seconds": seconds,
                "completion_tokens": metrics["completions/mean_length"] * n,
                "prompt_tokens": _distinct_prompt_tokens(tokenizer, prompts),
                "rollout_seconds": metrics["timing/rollout"],
            })
    return {"steps": steps[workload.warmup_steps :], "peak_rss_mib": peak_rss_mib(), "params": num_params(model)}


def run_trl(workload: Workload) -> dict:
    import datasets
    import transformers
    from trl import GRPOConfig, GRPOTrainer

    model, tokenizer, rows = load(workload)
    n = workload.prompts_per_step * workload.group_size
    steps: list[dict] = []

    class Timer(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            steps.append({"seconds": time.perf_counter() - self.t0})

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "completions/mean_length" in logs and steps:
                steps[-1]["completion_tokens"] = logs["completions/mean_length"] * n

    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(
            output_dir=out, per_device_train_batch_size=n, gradient_accumulation_steps=1, num_generations=workload.group_size,
            max_completion_length=workload.max_new_tokens, temperature=workload.temperature, top_p=1.0, top_k=0,
            beta=workload.beta, num_iterations=workload.num_iterations, learning_rate=workload.learning_rate,
            loss_type=workload.loss, max_steps=workload.warmup_steps + workload.steps, logging_steps=1,
            save_strategy="no", report_to=[], bf16=False, use_cpu=True, seed=workload.seed, disable_tqdm=True,
            lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0, adam_beta2=0.999,
            # TRL turns gradient checkpointing on by default: one more forward per step. Off by
            # default here (the same passes as ours); `--trl-checkpointing` measures TRL's default.
            gradient_checkpointing=workload.trl_gradient_checkpointing,
        )
        dataset = datasets.Dataset.from_list([{"prompt": r["prompt"]} for r in rows])
        trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=args, train_dataset=dataset, processing_class=tokenizer,
                              callbacks=[Timer()])
        trainer.train()
    mean_prompt = statistics.mean(len(tokenizer(r["prompt"], add_special_tokens=False)["input_ids"]) for r in rows)
    for s in steps:
        s["prompt_tokens"] = mean_prompt * workload.prompts_per_step
    return {"steps": steps[workload.warmup_steps :], "peak_rss_mib": peak_rss_mib(), "params": num_params(model)}


WORKERS = {"ours": run_ours, "trl": run_trl}


def measure(side: str, workload: Workload) -> dict:
    """Run one side in a fresh process; its JSON result."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_trainer", "--worker", side, "--workload", workload.to_json()],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{side} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarize(results: list[dict], workload: Workload, peak_gflops: float) -> dict:
    steps = [s for r in results for s in r["steps"]]
    seconds = statistics.median(s["seconds"] for s in steps)
    total_s = sum(s["seconds"] for s in steps)
    completion = sum(s["completion_tokens"] for s in steps)
    prompt = sum(s["prompt_tokens"] for s in steps)
    gflop = model_gflop(results[0]["params"], completion, prompt, workload.beta, workload.num_iterations)
    return {
        "s/step": seconds,
        "gen tok/s": completion / total_s,
        "trained tok/s": completion / total_s,  # every generated token is trained on once (μ = 1)
        "peak MiB": max(r["peak_rss_mib"] for r in results),
        "MFU": gflop / total_s / peak_gflops,
        "mean completion": completion / len(steps) / (workload.prompts_per_step * workload.group_size),
        "steps": len(steps),
    }


def table(rows: dict[str, dict], ratio_of: tuple[str, str] | None = None) -> str:
    keys = ["s/step", "gen tok/s", "trained tok/s", "peak MiB", "MFU", "mean completion", "steps"]
    fmt = {"s/step": "{:.2f}", "gen tok/s": "{:.1f}", "trained tok/s": "{:.1f}", "peak MiB": "{:.0f}", "MFU": "{:.1%}",
           "mean completion": "{:.1f}", "steps": "{:d}"}
    lines = ["| | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(fmt[k].format(r[k]) for k in keys) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--workload", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=2, help="alternations of ours/TRL (default 2)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per process (default 3, after 1 warm-up step)")
    parser.add_argument("--model", default=Workload.model)
    parser.add_argument("--out", help="also write the table (markdown) here")
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(WORKERS[args.worker](Workload.from_json(args.workload))))
        return 0

    workload = Workload(model=args.model, steps=args.steps)
    peak = matmul_gflops()
    print(f"# GRPO step: ours vs TRL GRPOTrainer\n\n{machine()}; fp32 matmul peak measured {peak:.0f} GFLOP/s")
    print(f"workload: {workload.to_json()}\n")
    results: dict[str, list[dict]] = {"ours": [], "trl": []}
    for round_ in range(args.rounds):
        for side in ("ours", "trl"):
            t0 = time.perf_counter()
            results[side].append(measure(side, workload))
            print(f"  round {round_ + 1} {side}: {[round(s['seconds'], 2) for s in results[side][-1]['steps']]} s/step "
                  f"({time.perf_counter() - t0:.0f} s with loading)", flush=True)
    rows = {"TRL GRPOTrainer": summarize(results["trl"], workload, peak), "ours": summarize(results["ours"], workload, peak)}
    speedup = rows["TRL GRPOTrainer"]["s/step"] / rows["ours"]["s/step"]
    memory = rows["ours"]["peak MiB"] / rows["TRL GRPOTrainer"]["peak MiB"]
    text = table(rows) + f"\n\nsteps/s ratio ours/TRL: **{speedup:.2f}×**; peak memory ours/TRL: **{memory:.2f}**\n"
    report(text, args.out, header=f"{machine()}; matmul peak {peak:.0f} GFLOP/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
