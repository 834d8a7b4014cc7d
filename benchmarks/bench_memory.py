"""Peak memory of one loss micro-batch, before and after chunked log-probs, at growing lengths.

    python -m benchmarks.bench_memory [--lengths 256,1024,4096] [--rows 2] [--model smollm2-135m-instruct]

One micro-batch of the GRPO loss: ``rows`` completions of exactly L tokens (every position a real
token) after a ~60-token prompt, π_θ forward with the log-probs and entropy, the policy loss,
backward; float32, gradient checkpointing on (as the GPU recipes run, so the body's activations
stay small and the logits are what grows). "before": the whole micro-batch's logits at once
(``logits_chunk_mib`` unbounded, the computation as it was before chunking); "after": the default
``logits_chunk_mib`` (512). Each measurement is a fresh process; the figure is its peak resident
memory above what it held once the model was loaded and one small micro-batch had run (weights
and their gradients included in that baseline).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from benchmarks.workload import Workload, load, machine, peak_rss_mib, report

UNBOUNDED = 1e12


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run(length: int, rows: int, chunk_mib: float, model_name: str) -> dict:
    import torch

    from grpo.loss import policy_loss
    from grpo.rollout import Rollout
    from grpo.trainer import completion_logprobs

    model, tokenizer, data = load(Workload(model=model_name))
    model.gradient_checkpointing_enable()
    model.config.use_cache = False
    model.train()
    gen = torch.Generator().manual_seed(0)
    prompt = tokenizer([data[0]["prompt"]] * rows, return_tensors="pt", add_special_tokens=False)

    def batch(L: int) -> Rollout:
        ids = torch.randint(100, model.config.vocab_size, (rows, L), generator=gen)
        ones = torch.ones(rows, L, dtype=torch.long)
        return Rollout(prompt["input_ids"], prompt["attention_mask"], ids, ones, torch.zeros(rows, dtype=torch.bool), [""] * rows)

    def micro_batch(b: Rollout) -> float:
        t0 = time.perf_counter()
        logp, entropy = completion_logprobs(model, b, slice(0, rows), 1.0, with_entropy=True, chunk_mib=chunk_mib)
        loss, _ = policy_loss(logp, None, torch.linspace(-1, 1, rows), b.completion_mask)
        loss.backward()
        model.zero_grad(set_to_none=False)  # the gradients stay allocated: part of the baseline, not of the peak
        return time.perf_counter() - t0

    micro_batch(batch(8))  # warm-up: allocator, oneDNN primitives, autograd buffers
    baseline = _rss_mib()
    seconds = micro_batch(batch(length))
    return {"peak_mib": peak_rss_mib() - baseline, "seconds": seconds, "vocab": model.get_output_embeddings().out_features}


def measure(length: int, rows: int, chunk_mib: float, model_name: str) -> dict:
    spec = json.dumps({"length": length, "rows": rows, "chunk_mib": chunk_mib, "model_name": model_name})
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_memory", "--worker", spec], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--lengths", default="256,1024,4096")
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--chunk-mib", type=float, default=512.0, help="logits_chunk_mib of the 'after' column (default 512)")
    parser.add_argument("--model", default=Workload.model)
    parser.add_argument("--out", help="also write the table (markdown) here")
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(run(**json.loads(args.worker))))
        return 0
    lengths = [int(x) for x in args.lengths.split(",")]
    print(f"# One loss micro-batch: peak memory before/after chunked log-probs\n\n{machine()}; {args.rows} rows, float32, "
          f"gradient checkpointing on; after = logits_chunk_mib {args.chunk_mib:g}\n")
    lines = ["| L | rows × L | float32 logits of the micro-batch | peak MiB before | peak MiB after | after/before | s before | s after |",
             "|---|---|---|---|---|---|---|---|"]
    for L in lengths:
        before = measure(L, args.rows, UNBOUNDED, args.model)
        after = measure(L, args.rows, args.chunk_mib, args.model)
        logits_mib = args.rows * L * before["vocab"] * 4 / 2**20
        line = (f"| {L} | {args.rows * L} | {logits_mib:.0f} MiB | {before['peak_mib']:.0f} | {after['peak_mib']:.0f} | "
                f"{after['peak_mib'] / before['peak_mib']:.2f} | {before['seconds']:.1f} | {after['seconds']:.1f} |")
        lines.append(line)
        print(line, flush=True)
    text = "\n".join(lines) + "\n"
    print()
    report(text, args.out, header=f"{machine()}; {args.rows} rows, float32, gradient checkpointing; after: logits_chunk_mib {args.chunk_mib:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
