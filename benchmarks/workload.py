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


def matmul_gflops(seconds: float = 2.0, n: int = 1024) -> float:
    """Measured fp32 matmul throughput of this machine with torch's current threads (GFLOP/s)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - t0) / 1e9


def num_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def model_gflop(params: int, completion_tokens: int, prompt_tokens: int, beta: float, mu: int = 1) -> float:
    """The work a GRPO step cannot avoid, in GFLOP, counting 2·N FLOPs per token forward and 4·N
    backward (N parameters): each completion token is generated (2N), scored by the reference
    when β > 0 (2N) and trained on μ times (6N each; plus one 2N π_old pass when μ > 1). Each
    distinct prompt (``prompt_tokens``: counted once per group, not G times) is read by the same
    passes. Attention's own FLOPs are left out (small at these lengths)."""
    passes = 2 + (2 if beta else 0) + 6 * mu + (2 if mu > 1 else 0)
    return passes * params * (completion_tokens + prompt_tokens) / 1e9


def report(text: str, out: str | None, header: str | None = None) -> None:
    """Print a result table and, with ``out``, also write it there under a line naming the machine."""
    print(text)
    if out:
        from pathlib import Path

        Path(out).write_text(f"{header or machine()}\n\n{text}")


def machine() -> str:
    import torch

    return f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
