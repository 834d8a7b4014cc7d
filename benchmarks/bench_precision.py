"""Precision on this machine: is bf16 faster, does each precision learn, do sampler and trainer agree.

    python -m benchmarks.bench_precision [--model smollm2-135m-instruct] [--out ...]

1. Speed probes, bf16 against float32, alternating: a 2048² GEMM, a decode-sized linear
   (16 × 576 → 1536, SmolLM2's MLP) plain and through prepacked oneDNN weights, and the quick
   probe `precision: auto` runs (grpo/precision.py) with the decision it leads to here.
2. Weights changed after 10 optimiser steps at learning rate 1e-6 (the GPU recipes' rate) with
   the GRPO trainer: bf16-mixed (float32 master weights) against pure bf16.
3. Sampler–trainer agreement: `mismatch/kl` and `mismatch/max_abs_logp` over 3 GRPO steps of the
   benchmark workload, for float32 rollouts with a float32 trainer, bf16 rollouts with a float32
   trainer, and bf16-mixed (bf16 rollouts, bf16-autocast trainer).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time

import torch

from benchmarks.workload import Workload, load, machine, report, reward


def _best_time(fn, seconds: float = 1.0) -> float:
    fn()
    best, t_end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _pair(fp32_fn, bf16_fn, rounds: int = 3) -> tuple[float, float]:
    a, b = [], []
    for _ in range(rounds):
        a.append(_best_time(fp32_fn))
        b.append(_best_time(bf16_fn))
    return min(a), min(b)


def speed_probes() -> list[str]:
    F = torch.nn.functional
    lines = ["| probe | fp32 | bf16 | bf16 speed-up |", "|---|---|---|---|"]
    n = 2048
    A, B = torch.randn(n, n), torch.randn(n, n)
    Ab, Bb = A.bfloat16(), B.bfloat16()
    t32, t16 = _pair(lambda: A @ B, lambda: Ab @ Bb)
    lines.append(f"| GEMM 2048² | {2 * n**3 / t32 / 1e9:.0f} GFLOP/s | {2 * n**3 / t16 / 1e9:.0f} GFLOP/s | {t32 / t16:.2f}× |")
    x, w = torch.randn(16, 576), torch.randn(1536, 576) * 0.02
    xb, wb = x.bfloat16(), w.bfloat16()
    t32, t16 = _pair(lambda: F.linear(x, w), lambda: F.linear(xb, wb))
    lines.append(f"| linear 16×576→1536, F.linear | {t32 * 1e6:.0f} µs | {t16 * 1e6:.0f} µs | {t32 / t16:.2f}× |")
    pack = torch.ops.mkldnn._reorder_linear_weight
    p32, p16 = pack(w, None), pack(wb, None)
    t32, t16 = _pair(lambda: torch.ops.mkldnn._linear_pointwise(x, p32, None, "none", [], ""),
                     lambda: torch.ops.mkldnn._linear_pointwise(x.bfloat16(), p16, None, "none", [], "").float())
    lines.append(f"| linear 16×576→1536, prepacked oneDNN (rollouts) | {t32 * 1e6:.0f} µs | {t16 * 1e6:.0f} µs | {t32 / t16:.2f}× |")
    return lines


def weights_changed(model_name: str, precision: str, steps: int = 10) -> float:
    from grpo.config import GRPOConfig
    from grpo.models import load_model_and_tokenizer
    from grpo.precision import resolve_precision
    from grpo.scoring import RewardTerm
    from grpo.trainer import GRPOTrainer

    resolved = resolve_precision(precision, "cpu", why="benchmark")
    _, _, rows = load(Workload(model=model_name))
    model, tok = load_model_and_tokenizer(model_name, dtype=resolved.param_dtype)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = GRPOConfig(steps=steps, prompts_per_step=2, group_size=4, max_new_tokens=16, learning_rate=1e-6, beta=0.04, progress=False,
                     save_every=1000)
    with tempfile.TemporaryDirectory() as out:
        trainer = GRPOTrainer(model, tok, [RewardTerm("bench", reward)], rows, cfg, out, seed=0, precision=resolved)
        for step in range(1, steps + 1):
            trainer.step(step)
    changed = sum(int((p.detach() != before[n]).sum()) for n, p in trainer.model.named_parameters())
    total = sum(p.numel() for p in trainer.model.parameters())
    return changed / total


def agreement(model_name: str, precision: str, rollout_dtype: torch.dtype, steps: int = 3) -> tuple[float, float, float]:
    from grpo.config import GRPOConfig
    from grpo.precision import resolve_precision
    from grpo.rollout import get_rollout_engine
    from grpo.scoring import RewardTerm
    from grpo.trainer import GRPOTrainer

    w = Workload(model=model_name)
    model, tok, rows = load(w)
    cfg = GRPOConfig(steps=steps, prompts_per_step=w.prompts_per_step, group_size=w.group_size, max_new_tokens=w.max_new_tokens,
                     temperature=w.temperature, beta=w.beta, learning_rate=w.learning_rate, progress=False, save_every=1000,
                     rollout_correction="tis")
    with tempfile.TemporaryDirectory() as out:
        trainer = GRPOTrainer(model, tok, [RewardTerm("bench", reward)], rows, cfg, out, seed=0,
                              precision=resolve_precision(precision, "cpu", why="benchmark"))
        trainer.engine = get_rollout_engine("shared_prefix", trainer.model, tok, compute_dtype=rollout_dtype)
        metrics = [trainer.step(s)[0] for s in range(1, steps + 1)]
    return (statistics.mean(m["mismatch/kl"] for m in metrics), max(m["mismatch/max_abs_logp"] for m in metrics),
            statistics.mean(m.get("rollout_correction/weight_mean", 1.0) for m in metrics))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=Workload.model)
    parser.add_argument("--out", help="also write the tables (markdown) here")
    args = parser.parse_args(argv)
    from grpo.precision import probe_cpu_bf16, resolve_precision

    print(f"# Precision on this machine\n\n{machine()}; load average {os.getloadavg()[0]:.2f} at start\n", flush=True)
    parts = ["## Speed, bf16 against float32", "\n".join(speed_probes())]
    probe = probe_cpu_bf16()
    decision = resolve_precision("auto", "cpu", probe=lambda: probe)
    parts.append(f"`precision: auto` probe: decode {probe['decode']:.2f}×, train {probe['train']:.2f}× → **{decision.name}** "
                 f"({decision.reason})")
    print("\n\n".join(parts), flush=True)

    lines = ["| precision | weights changed after 10 AdamW steps at lr 1e-6 |", "|---|---|"]
    for name in ("bf16-mixed", "bf16"):
        share = weights_changed(args.model, name)
        lines.append(f"| {name} | {share:.1%} |")
        print(lines[-1], flush=True)
        gc.collect()
    parts += ["## Do the weights move?", "\n".join(lines)]

    lines = ["| trainer | rollouts | mismatch/kl (mean of 3 steps) | mismatch/max_abs_logp (max) | TIS weight mean |", "|---|---|---|---|---|"]
    for precision, dtype in (("fp32", torch.float32), ("fp32", torch.bfloat16), ("bf16-mixed", torch.bfloat16)):
        kl, max_abs, weight = agreement(args.model, precision, dtype)
        trainer_text = "fp32" if precision == "fp32" else "bf16-mixed (bf16 autocast)"
        lines.append(f"| {trainer_text} | {str(dtype).removeprefix('torch.')} | {kl:.2e} | {max_abs:.3f} | {weight:.4f} |")
        print(lines[-1], flush=True)
        gc.collect()
    parts += ["## Sampler–trainer agreement (B=2, G=8, ≤64 tokens, 3 steps)", "\n".join(lines)]
    report("\n\n".join(parts) + "\n", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
