"""Our GRPO trainer against TRL's GRPOTrainer on the same workload, side by side in one run.

    python -m benchmarks.bench_trainer [--rounds 2] [--steps 3] [--precisions fp32,bf16-mixed] [--model ...]

Each measurement is a fresh process (so peak memory is that trainer's alone), and the trainers
alternate (ours, TRL, ours, TRL, …, for each precision) so a change in machine load hits both.
Same model, prompt distribution, B, G, max new tokens, temperature, β, μ, learning rate, loss
definition (`grpo`: per-sequence token means, averaged; TRL `loss_type="grpo"`) and reward
function; the same passes per step (rollout, reference forward, one policy forward + backward,
one optimiser step). Precisions: ``fp32`` on both sides, and ``bf16-mixed`` (ours:
``precision: bf16-mixed``; TRL: ``bf16=True``, its autocast over float32 weights).

Printed per precision: seconds per step, generated tokens/s, peak memory, the ratio, and the
utilisation: the FLOPs each trainer actually executes per step (workload.executed_gflop: body
and LM head counted separately, padding included, attention left out) over the measured GEMM
peak of the same dtype, plus the FLOPs our prompt sharing avoids.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks.workload import (
    ModelShape,
    Workload,
    executed_gflop,
    load,
    machine,
    matmul_gflops,
    num_params,
    peak_rss_mib,
    report,
    reward,
)


def _distinct_prompt_tokens(tokenizer, prompts: list[str]) -> int:
    return sum(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts)


def run_ours(workload: Workload) -> dict:
    from grpo.config import GRPOConfig
    from grpo.precision import resolve_precision
    from grpo.scoring import RewardTerm
    from grpo.trainer import GRPOTrainer

    model, tokenizer, rows = load(workload)
    precision = resolve_precision(workload.precision, "cpu", why="the benchmark's precision")
    config = GRPOConfig(
        steps=workload.warmup_steps + workload.steps, prompts_per_step=workload.prompts_per_step,
        group_size=workload.group_size, max_new_tokens=workload.max_new_tokens, temperature=workload.temperature,
        beta=workload.beta, num_iterations=workload.num_iterations, learning_rate=workload.learning_rate,
        loss_aggregation=workload.loss, progress=False,
    )
    with tempfile.TemporaryDirectory() as out:
        trainer = GRPOTrainer(model, tokenizer, [RewardTerm("bench", reward)], rows, config, out, seed=workload.seed,
                              precision=precision)
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
                "max_completion": metrics["completions/max_length"],
                "prompt_tokens": _distinct_prompt_tokens(tokenizer, prompts),
                "rollout_seconds": metrics["timing/rollout"],
            })
    return {"steps": steps[workload.warmup_steps :], "peak_rss_mib": peak_rss_mib(), "params": num_params(model),
            "shape": ModelShape.of(model).__dict__}


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
                steps[-1]["max_completion"] = logs["completions/max_length"]

    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(
            output_dir=out, per_device_train_batch_size=n, gradient_accumulation_steps=1, num_generations=workload.group_size,
            max_completion_length=workload.max_new_tokens, temperature=workload.temperature, top_p=1.0, top_k=0,
            beta=workload.beta, num_iterations=workload.num_iterations, learning_rate=workload.learning_rate,
            loss_type=workload.loss, max_steps=workload.warmup_steps + workload.steps, logging_steps=1,
            save_strategy="no", report_to=[], bf16=workload.precision == "bf16-mixed", use_cpu=True, seed=workload.seed, disable_tqdm=True,
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
    return {"steps": steps[workload.warmup_steps :], "peak_rss_mib": peak_rss_mib(), "params": num_params(model),
            "shape": ModelShape.of(model).__dict__}


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


def summarize(results: list[dict], side: str, workload: Workload, peak_gflops: float) -> dict:
    steps = [s for r in results for s in r["steps"]]
    seconds = statistics.median(s["seconds"] for s in steps)
    total_s = sum(s["seconds"] for s in steps)
    completion = sum(s["completion_tokens"] for s in steps)
    shape = ModelShape(**results[0]["shape"])
    rows = workload.prompts_per_step * workload.group_size
    flops = [
        executed_gflop(shape, side, rows=rows, group_size=workload.group_size,
                       prompt_len=s["prompt_tokens"] / workload.prompts_per_step, completion_tokens=s["completion_tokens"],
                       max_completion=s["max_completion"], beta=workload.beta, mu=workload.num_iterations)
        for s in steps
    ]
    executed = sum(f["total"] for f in flops)
    return {
        "s/step": seconds,
        "gen tok/s": completion / total_s,
        "peak MiB": max(r["peak_rss_mib"] for r in results),
        "GFLOP/step": executed / len(steps),
        "LM head": sum(f["head"] for f in flops) / executed,
        "avoided GFLOP/step": sum(f["avoided"] for f in flops) / len(steps),
        "utilisation": executed / total_s / peak_gflops,
        "mean completion": completion / len(steps) / rows,
        "steps": len(steps),
    }


def table(rows: dict[str, dict]) -> str:
    keys = ["s/step", "gen tok/s", "peak MiB", "GFLOP/step", "LM head", "avoided GFLOP/step", "utilisation", "mean completion", "steps"]
    fmt = {"s/step": "{:.2f}", "gen tok/s": "{:.1f}", "peak MiB": "{:.0f}", "GFLOP/step": "{:.0f}", "LM head": "{:.0%}",
           "avoided GFLOP/step": "{:.0f}", "utilisation": "{:.1%}", "mean completion": "{:.1f}", "steps": "{:d}"}
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
    parser.add_argument("--precisions", default="fp32,bf16-mixed", help="comma-separated: fp32, bf16-mixed (default both)")
    parser.add_argument("--model", default=Workload.model)
    parser.add_argument("--out", help="also write the table (markdown) here")
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(WORKERS[args.worker](Workload.from_json(args.workload))))
        return 0

    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    for p in precisions:
        if p not in ("fp32", "bf16-mixed"):
            parser.error(f"--precisions: expected fp32 or bf16-mixed, got {p!r}")
    peaks = {p: matmul_gflops(n=2048, dtype="float32" if p == "fp32" else "bfloat16") for p in precisions}
    peak_text = ", ".join(f"{'fp32' if p == 'fp32' else 'bf16'} {peaks[p]:.0f}" for p in precisions)
    print(f"# GRPO step: ours vs TRL GRPOTrainer\n\n{machine()}; GEMM peak measured (GFLOP/s, 2048²): {peak_text}")
    base = Workload(model=args.model, steps=args.steps)
    print(f"workload: {base.to_json()}\n")
    results = {(p, side): [] for p in precisions for side in ("ours", "trl")}
    for round_ in range(args.rounds):
        for p in precisions:
            for side in ("ours", "trl"):
                t0 = time.perf_counter()
                results[p, side].append(measure(side, base.with_(precision=p)))
                print(f"  round {round_ + 1} {p} {side}: {[round(s['seconds'], 2) for s in results[p, side][-1]['steps']]} s/step "
                      f"({time.perf_counter() - t0:.0f} s with loading)", flush=True)
    rows, lines = {}, []
    for p in precisions:
        trl_name = f"TRL GRPOTrainer, {p}" + (" (bf16=True)" if p == "bf16-mixed" else "")
        rows[trl_name] = summarize(results[p, "trl"], "trl", base.with_(precision=p), peaks[p])
        rows[f"ours, {p}"] = summarize(results[p, "ours"], "ours", base.with_(precision=p), peaks[p])
        speedup = rows[trl_name]["s/step"] / rows[f"ours, {p}"]["s/step"]
        memory = rows[f"ours, {p}"]["peak MiB"] / rows[trl_name]["peak MiB"]
        lines.append(f"{p}: steps/s ratio ours/TRL **{speedup:.2f}×**; peak memory ours/TRL **{memory:.2f}**")
    if {"fp32", "bf16-mixed"} <= set(precisions):
        for who, name in (("ours", "ours, {}"), ("TRL", "TRL GRPOTrainer, {}")):
            fp32 = rows[name.format("fp32")]["s/step"]
            bf16 = next(r for k, r in rows.items() if k.startswith(name.format("bf16-mixed")))["s/step"]
            lines.append(f"{who}: bf16-mixed step **{fp32 / bf16:.2f}×** the speed of fp32")
    text = table(rows) + "\n\n" + "\n".join(f"- {line}" for line in lines) + "\n"
    report(text, args.out, header=f"{machine()}; GEMM peak (GFLOP/s): {peak_text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
