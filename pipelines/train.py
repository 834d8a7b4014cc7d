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

from grpo.config import GRPOConfig
from grpo.data import DataSpec, load_rows
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


def run_grpo(*, model: str, data: DataSpec, template: TemplateSpec, rewards: dict, config: GRPOConfig, out_dir: Path,
             seed: int, dtype: str = "float32", resume: bool = False):
    """Load everything a GRPO run needs and train into ``out_dir``; returns the TrainResult."""
    from grpo.models import load_model_and_tokenizer
    from grpo.trainer import GRPOTrainer

    terms = reward_terms(rewards)  # fail on a bad reward name before loading anything big
    rows = load_rows(data)  # data errors surface before the model is loaded
    policy, tokenizer = load_model_and_tokenizer(model, dtype=dtype)
    prepared = prepare_rows(rows, template, tokenizer, config.max_prompt_length)
    if prepared.dropped_too_long:
        print(f"data: dropped {prepared.dropped_too_long} prompts longer than {config.max_prompt_length} tokens")
    trainer = GRPOTrainer(policy, tokenizer, terms, prepared.rows, config, out_dir, seed=seed)
    return trainer.train(resume=resume)


def train_from_recipe(recipe: Recipe, resume: bool = False, run_dir: str | Path | None = None):
    """``grpo train``: the recipe's GRPO run in its run directory; returns (TrainResult, summary)."""
    run_dir = Path(run_dir or recipe.run_dir)
    reward_terms(recipe.rewards)
    if run_dir.exists() and not resume and (run_dir / "checkpoints").exists():
        raise FileExistsError(f"run directory '{run_dir}' already holds a run; pass --resume to continue it or set output_dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "recipe.resolved.yaml", yaml.safe_dump(to_dict(recipe), sort_keys=False, allow_unicode=True))
    started = time.perf_counter()
    result = run_grpo(model=recipe.model, data=recipe.data.train, template=recipe.template, rewards=recipe.rewards,
                      config=recipe.grpo, out_dir=run_dir, seed=recipe.seed, dtype=recipe.dtype, resume=resume)
    summary = summarize(result.metrics)
    summary["wall_time_s"] = time.perf_counter() - started
    return result, summary
