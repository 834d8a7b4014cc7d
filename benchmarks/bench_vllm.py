"""Rollout throughput: the ``hf`` and ``shared_prefix`` engines against the ``vllm`` engine.

Run it in the vLLM environment (``make install-vllm``)::

    .venv-vllm/bin/python -m benchmarks.bench_vllm [--model smollm2-135m-instruct] [--repeats 3] [--threads N]

Every engine gets the same model (float32), the same 2 prompts × G=8 samples, 64 new tokens at
temperature 1, the same torch thread count (vLLM runs in this process), one untimed call first,
then ``--repeats`` timed calls. Throughput counts the completion tokens each engine produced
(up to and including the end-of-sequence token), so an engine whose samples end early is not
credited with tokens it did not generate. For the vllm engine it also times the engine's start and
one weight sync (the copy a GRPO step pays after each optimiser step).
"""

from __future__ import annotations

import argparse
import os
import time


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_vllm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: as the environment sets them)")
    parser.add_argument("--engines", default="hf,shared_prefix,vllm")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from grpo.models import load_model_and_tokenizer
    from grpo.rollout import SamplingParams, get_rollout_engine

    model, tok = load_model_and_tokenizer(args.model, dtype=torch.float32)
    model.eval()
    questions = ["What is 37 + 48 - 19? Answer briefly.", "A box holds 12 eggs. How many eggs are in 7 boxes?"]
    prompts = [
        tok.apply_chat_template([{"role": "user", "content": questions[i % len(questions)]}], tokenize=False, add_generation_prompt=True)
        for i in range(args.prompts)
    ]
    params = SamplingParams(args.group_size, args.max_new_tokens, temperature=1.0)
    threads = torch.get_num_threads()

    rows, notes = [], []
    for name in args.engines.split(","):
        t0 = time.perf_counter()
        engine = get_rollout_engine(name, model, tok)
        start = time.perf_counter() - t0
        if name == "vllm":
            t0 = time.perf_counter()
            engine.sync_weights(model)
            notes.append(f"vllm: engine start {start:.1f} s, one weight sync {time.perf_counter() - t0:.2f} s")
        engine.generate(prompts, params, seeds=list(range(100, 100 + args.prompts)))  # untimed: lazy inits
        tokens, seconds = 0, 0.0
        for r in range(args.repeats):
            seeds = [1000 * (r + 1) + i for i in range(args.prompts)]
            t0 = time.perf_counter()
            rollout = engine.generate(prompts, params, seeds=seeds)
            seconds += time.perf_counter() - t0
            tokens += int(rollout.completion_mask.sum())
        rows.append((name, args.repeats, tokens, seconds, tokens / seconds))
        if name == "vllm":
            engine.close()
        del engine

    load = os.getloadavg()
    print(
        f"\n{args.model}, float32, {args.prompts} prompts x G={args.group_size} = {args.prompts * args.group_size} completions, "
        f"{args.max_new_tokens} new tokens, temperature 1.0; torch threads {threads} on {os.cpu_count()} cores; "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    base = next((r[4] for r in rows if r[0] == "hf"), rows[0][4])
    print(f"{'engine':<15}{'calls':>6}{'tokens':>9}{'seconds':>10}{'tok/s':>9}{'vs hf':>8}")
    for name, calls, tokens, seconds, rate in rows:
        print(f"{name:<15}{calls:>6}{tokens:>9}{seconds:>10.2f}{rate:>9.1f}{rate / base:>8.2f}")
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
