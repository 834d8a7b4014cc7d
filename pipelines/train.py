"""``grpo train``: one GRPO run from a recipe, into a run directory.

Recipe → model + tokenizer → rows → rendered prompts → reward terms → GRPOTrainer. The run
directory gets ``recipe.resolved.yaml`` (the recipe after overrides and defaults), and the
trainer's ``metrics.jsonl``, ``completions.jsonl``, ``checkpoints/``, ``final/`` and ``curves.png``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from grpo.data import load_rows
from grpo.io import atomic_write_text
from grpo.schema import to_dict
from grpo.templates import TemplateSpec, render_prompts
from pipelines.recipe import Recipe, reward_terms


@dataclass
class PreparedRows:
    rows: list[dict]
    dropped_too_long: int


def prepare_rows(rows: list[dict], template: TemplateSpec, tokenizer, max_prompt_length: int | None) -> PreparedRows:
    """Render each row's prompt to model input text; drop (and count) over-long prompts."""
    texts = render_prompts(rows, template, tokenizer)
    out, dropped = [], 0
    for row, text in zip(rows, texts):
        if max_prompt_length is not None and len(tokenizer(text, add_special_tokens=False)["input_ids"]) > max_prompt_length:
            dropped += 1
            continue
        out.append({**row, "raw_prompt": row["prompt"], "prompt": text})
    if not out:
        raise ValueError(f"data: all {len(rows)} prompts are longer than max_prompt_length={max_prompt_length} tokens")
    return PreparedRows(out, dropped)


def summarize(metrics: list[dict], window: int = 10) -> dict:
    """Mean reward, KL and completion length over the first and the last ``window`` steps."""
    window = max(1, min(window, len(metrics) // 2 or 1))
    first, last = metrics[:window], metrics[-window:]

    def mean(rows, key):
        vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
        return sum(vals) / len(vals) if vals else None

    keys = ["reward", "kl", "completions/mean_length"] + sorted(k for k in metrics[0] if k.startswith("rewards/") and k.endswith("/mean"))
    return {"window": window, "first": {k: mean(first, k) for k in keys}, "last": {k: mean(last, k) for k in keys}}


def format_summary(summary: dict) -> str:
    w = summary["window"]
    lines = [f"{'metric':<32} {'first ' + str(w) + ' steps':>16} {'last ' + str(w) + ' steps':>16}"]
    for key, first in summary["first"].items():
        last = summary["last"][key]
        fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        lines.append(f"{key:<32} {fmt(first):>16} {fmt(last):>16}")
    return "\n".join(lines)


def train_from_recipe(recipe: Recipe, resume: bool = False, run_dir: str | Path | None = None):
    """Run the recipe's GRPO training; returns (TrainResult, summary dict)."""
    from grpo.models import load_model_and_tokenizer
    from grpo.trainer import GRPOTrainer

    run_dir = Path(run_dir or recipe.run_dir)
    terms = reward_terms(recipe.rewards)  # fail on a bad reward name before loading anything big
    if run_dir.exists() and not resume and (run_dir / "checkpoints").exists():
        raise FileExistsError(f"run directory '{run_dir}' already holds a run; pass --resume to continue it or set output_dir")
    rows = load_rows(recipe.data.train)  # data errors surface before the model is loaded
    model, tokenizer = load_model_and_tokenizer(recipe.model, dtype=recipe.dtype)
    prepared = prepare_rows(rows, recipe.template, tokenizer, recipe.grpo.max_prompt_length)
    run_dir.mkdir(parents=True, exist_ok=True)
    if prepared.dropped_too_long:
        print(f"data.train: dropped {prepared.dropped_too_long} prompts longer than {recipe.grpo.max_prompt_length} tokens")
    atomic_write_text(run_dir / "recipe.resolved.yaml", yaml.safe_dump(to_dict(recipe), sort_keys=False, allow_unicode=True))
    trainer = GRPOTrainer(model, tokenizer, terms, prepared.rows, recipe.grpo, run_dir, seed=recipe.seed)
    started = time.perf_counter()
    result = trainer.train(resume=resume)
    summary = summarize(result.metrics)
    summary["wall_time_s"] = time.perf_counter() - started
    return result, summary
