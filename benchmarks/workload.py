"""The GRPO workload every benchmark shares, and the measurements they all take.

One workload (model, prompts, G, lengths, β, μ, learning rate, seed) is handed to each side of a
comparison unchanged. Prompts are synthetic word-free arithmetic rendered with the model's chat
template and a short R1-style system text (about 60 prompt tokens on SmolLM2), so the benchmark
needs no data files.
"""

from __future__ import annotations

import json
import os
import resource
import time
from dataclasses import asdict, dataclass, replace

SYSTEM = (
    "You are a careful math tutor. Think step by step inside <think> </think>, "
    "then give only the final number inside <answer> </answer>."
)


@dataclass(frozen=True)
class Workload:
    model: str = "smollm2-135m-instruct"
    prompts_per_step: int = 2  # B
    group_size: int = 8  # G
    max_new_tokens: int = 64
    temperature: float = 1.0
    beta: float = 0.04
    num_iterations: int = 1  # μ
    learning_rate: float = 1e-6
    loss: str = "grpo"  # our loss_aggregation = TRL's loss_type
    seed: int = 0
    steps: int = 3  # timed steps
    warmup_steps: int = 1  # untimed steps first (allocations, lazy inits)
    trl_gradient_checkpointing: bool = False  # TRL's default is True (an extra forward per step)
    precision: str = "fp32"  # fp32 | bf16-mixed (ours: grpo/precision.py; TRL: bf16=True)

    def with_(self, **changes) -> "Workload":
        return replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @staticmethod
    def from_json(text: str) -> "Workload":
        return Workload(**json.loads(text))


def load(workload: Workload):
    """(model, tokenizer, rows) for the workload: float32, eval-ready, rows with rendered prompts."""
    import torch

    from grpo.models import load_model_and_tokenizer
    from grpo.tasks import get_task
    from grpo.templates import TemplateSpec, render_prompt

    torch.manual_seed(workload.seed)
    model, tokenizer = load_model_and_tokenizer(workload.model, dtype=torch.float32)
    rows = get_task("arithmetic")(256, workload.seed, "en", min_value=10, max_value=99, num_terms=3)
    template = TemplateSpec(kind="chat", system=SYSTEM)
    rows = [{**r, "prompt": render_prompt(r, template, tokenizer)} for r in rows]
    return model, tokenizer, rows


def reward(prompts, completions, **kwargs) -> list[float]:
    """The benchmark's reward, cheap and the same for both trainers: the format reward plus a
    small length term so rewards within a group differ."""
    from rewards import get_reward

    fmt = get_reward("format")(prompts, completions)
    return [f + 0.001 * len(c) for f, c in zip(fmt, completions)]


def peak_rss_mib() -> float:
    """This process's peak resident memory (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_gflops(seconds: float = 2.0, n: int = 1024, dtype: str = "float32") -> float:
    """Measured square-matmul (GEMM) throughput of this machine in ``dtype`` with torch's current
    threads (GFLOP/s): the peak a utilisation figure of that dtype is measured against."""
    import torch

    a, b = torch.randn(n, n).to(getattr(torch, dtype)), torch.randn(n, n).to(getattr(torch, dtype))
    for _ in range(3):
        a @ b
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - t0) / 1e9


def num_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class ModelShape:
    """What FLOP counts need: parameters of the body (every matmul weight but the embedding
    lookup) and the LM head's hidden × vocabulary."""

    body_params: int
    hidden: int
    vocab: int

    @staticmethod
    def of(model) -> "ModelShape":
        embed = model.get_input_embeddings().weight
        head = model.get_output_embeddings()
        total = sum(p.numel() for p in model.parameters())
        head_own = 0 if head.weight is embed else head.weight.numel()  # an untied head is not body
        return ModelShape(total - embed.numel() - head_own, embed.shape[1], head.out_features)


def executed_gflop(shape: ModelShape, side: str, *, rows: int, group_size: int, prompt_len: float, completion_tokens: float,
                   max_completion: float, beta: float, mu: int = 1) -> dict:
    """GFLOP one GRPO step executes, counted as 2 FLOPs per weight per token position forward and
    4 backward, split into the body (``body_params``) and the LM head (2·hidden·vocab per
    projected position); attention's own products (≈3% here) and elementwise work are not counted.

    ``side="ours"``: each prompt runs once per group in the prefill and in every loss forward
    (its ``prompt_len`` tokens, padded, once per B prompts), completions are padded to the longest
    (``max_completion``) in the body, the head projects only real completion tokens, and finished
    rows leave the decoding batch. ``side="trl"``: TRL's GRPOTrainer repeats each prompt for its G
    rows in generation and in every forward, generate keeps finished rows decoding to the longest,
    and the head projects every padded completion position. ``avoided`` is what the prompt repeats
    would have cost ours (the work sharing saves).
    """
    N, B, P, C, L = rows, rows // group_size, prompt_len, completion_tokens, max_completion
    passes = (1 if beta else 0) + (1 if mu > 1 else 0) + 3 * mu  # reference, π_old, μ × (forward + backward)
    if side == "ours":
        rollout_body, rollout_head = B * P + C, B + C
        loss_body, loss_head = B * P + N * L, C
    elif side == "trl":
        rollout_body, rollout_head = N * (P + L), N * (1 + L)
        loss_body, loss_head = N * (P + L), N * L
    else:
        raise ValueError(f"side: expected 'ours' or 'trl', got {side!r}")
    body, head = 2 * shape.body_params / 1e9, 2 * shape.hidden * shape.vocab / 1e9
    body_gflop = body * (rollout_body + passes * loss_body)
    head_gflop = head * (rollout_head + passes * loss_head)
    avoided = body * (1 + passes) * (N - B) * P if side == "ours" else 0.0
    return {"body": body_gflop, "head": head_gflop, "total": body_gflop + head_gflop, "avoided": avoided}


def report(text: str, out: str | None, header: str | None = None) -> None:
    """Print a result table and, with ``out``, also write it there under a line naming the machine."""
    print(text)
    if out:
        from pathlib import Path

        Path(out).write_text(f"{header or machine()}\n\n{text}")


def machine() -> str:
    """The machine a figure was measured on: cores, bf16 instructions (AMX or AVX512-BF16: bf16 speed
    depends on them), torch and its threads."""
    import torch

    from grpo.precision import cpu_bf16_flags

    flags = cpu_bf16_flags()
    bf16 = ", ".join(flags) + ("" if "amx_bf16" in flags else ", no AMX") if flags else "no bf16 instructions"
    return f"{os.cpu_count()} CPU cores ({bf16}), torch {torch.__version__}, {torch.get_num_threads()} threads"
