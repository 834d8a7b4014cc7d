"""Rollout speed: our shared-prefix engine against plain ``model.generate``, side by side.

    python -m benchmarks.bench_rollout [--rounds 3] [--prompts 2] [--group-size 8] [--max-new-tokens 64]

Both sample B×G completions of the same prompts from the same distribution (temperature 1,
no top-k/top-p; the engine's distribution equals generate's, see tests/test_rollout_engine.py)
with the same end-of-sequence ids and budget. They alternate in one process, `--rounds` times
each, and the table gives generated tokens per second (tokens up to and including each row's
end of sequence) and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from benchmarks.workload import Workload, load, machine, report


def generate_plain(model, tokenizer, prompts, params) -> int:
    """``model.generate`` on the B×G rows as a user would call it; returns the tokens generated."""
    from grpo.rollout import completion_mask_from_ids, eos_token_ids

    enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    ids = enc["input_ids"].repeat_interleave(params.group_size, 0)
    mask = enc["attention_mask"].repeat_interleave(params.group_size, 0)
    eos = eos_token_ids(tokenizer, model)
    with torch.no_grad():
        out = model.generate(
            # top_k=0: generate's own default is top-k 50, which would sample another distribution
            input_ids=ids, attention_mask=mask, do_sample=True, temperature=params.temperature, top_p=1.0, top_k=0,
            max_new_tokens=params.max_new_tokens, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
        )
    completion_mask, _ = completion_mask_from_ids(out[:, ids.shape[1] :], eos)
    return int(completion_mask.sum())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--model", default=Workload.model)
    parser.add_argument("--out", help="also write the table (markdown) here")
    args = parser.parse_args(argv)

    from grpo.rollout import SamplingParams, get_rollout_engine

    workload = Workload(model=args.model, prompts_per_step=args.prompts, group_size=args.group_size, max_new_tokens=args.max_new_tokens)
    model, tokenizer, rows = load(workload)
    model.eval()
    engine = get_rollout_engine("shared_prefix", model, tokenizer)
    params = SamplingParams(args.group_size, args.max_new_tokens, temperature=1.0)
    print(f"# Rollouts: shared-prefix engine vs model.generate\n\n{machine()}")
    print(f"{args.prompts} prompts × G={args.group_size}, ≤ {args.max_new_tokens} new tokens, temperature 1.0\n")
    rates: dict[str, list[float]] = {"model.generate": [], "shared_prefix": []}
    for round_ in range(args.rounds + 1):  # round 0 warms both up and is not counted
        prompts = [r["prompt"] for r in rows[round_ * args.prompts : (round_ + 1) * args.prompts]]
        for name in rates:
            torch.manual_seed(round_)
            t0 = time.perf_counter()
            if name == "model.generate":
                tokens = generate_plain(model, tokenizer, prompts, params)
            else:
                tokens = int(engine.generate(prompts, params, seeds=list(range(len(prompts)))).lengths.sum())
            seconds = time.perf_counter() - t0
            if round_:
                rates[name].append(tokens / seconds)
                print(f"  round {round_} {name}: {tokens} tokens in {seconds:.2f} s", flush=True)
    plain, ours = statistics.median(rates["model.generate"]), statistics.median(rates["shared_prefix"])
    text = (
        "| engine | generated tok/s (median) |\n|---|---|\n"
        f"| model.generate | {plain:.1f} |\n| shared_prefix (ours) | {ours:.1f} |\n\n"
        f"speed-up: **{ours / plain:.2f}×**\n"
    )
    report(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
