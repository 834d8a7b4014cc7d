"""``grpo eval``: one or more models against one or more benchmarks, side by side.

The eval stage of a pipeline, outside a pipeline: the same sampling (``sample_rows``), scoring
and figures (``write_evaluation``: pass@1 as the mean over k samples, the unbiased pass@k,
maj@k, format and language-consistency rates, mean length of correct and wrong answers), for
any model name (alias, Hugging Face id, local directory such as ``runs/x/final``) and any data
spec (a named source such as ``gsm8k``/``mgsm_zh``, a local file, ``synthetic:<task>``, a hub
id, or a DataSpec mapping in YAML)::

    <out>/eval.json                    {data: {model: summary}}
    <out>/eval.md                      one table per data set, a column per model
    <out>/<data>/<model>/eval.json     that pair's summary (as an eval stage writes it)
    <out>/<data>/<model>/eval.md
    <out>/<data>/<model>/samples.jsonl every scored sample

The correctness reward (what pass@k and maj@k count) is the first of ``rewards``. Without
``--rewards``: ``accuracy`` (+ ``format`` and ``language_consistency``, measured), or the
``code`` reward for data with a ``tests`` column (HumanEval-style).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from grpo.data import DataSpec
from grpo.io import atomic_write_json, atomic_write_text
from grpo.schema import ConfigError, from_dict
from grpo.templates import TemplateSpec

#: Rewards measured when none are given: the correctness reward first.
DEFAULT_REWARDS = {"accuracy": 1.0, "format": 0.5, "language_consistency": 0.5}
#: ... and for data whose rows carry unit tests (a ``tests`` column), when a ``code`` reward is registered.
CODE_REWARDS = {"code": 1.0}


@dataclass
class EvalSettings:
    """Everything ``grpo eval`` needs besides the models and the data."""

    samples: int = 4  # k samples per prompt
    rewards: dict[str, Any] | None = None  # name -> weight or {weight, params}; None: DEFAULT_REWARDS / CODE_REWARDS
    template: TemplateSpec = field(default_factory=TemplateSpec)
    max_new_tokens: int = 256
    temperature: float = 0.6  # R1's evaluation setting (with top_p 0.95)
    top_p: float = 0.95
    top_k: int = 0
    max_prompts: int | None = None  # the first N prompts of each data set
    batch_prompts: int = 8
    seed: int = 0
    dtype: str = "float32"
    device: str = "auto"
    max_prompt_length: int | None = None
    progress: bool = True

    def __post_init__(self):
        if self.samples < 1:
            raise ConfigError(f"--samples: must be ≥ 1, got {self.samples}")
        if self.max_prompts is not None and self.max_prompts < 1:
            raise ConfigError(f"--max-prompts: must be ≥ 1, got {self.max_prompts}")

    @property
    def sampling(self) -> dict:
        return {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}


def _yaml_mapping(text: str, flag: str) -> dict:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{flag} {text}: not a valid YAML mapping ({str(exc).splitlines()[0]})") from None
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"{flag} {text}: expected a non-empty mapping")
    return value


def parse_data_spec(text: str) -> DataSpec:
    """``gsm8k``, ``path/to/file.jsonl``, ``synthetic:arithmetic``, a hub id, or a YAML mapping
    of DataSpec fields (``{source: gsm8k, size: 250}``)."""
    text = text.strip()
    if text.startswith("{"):
        return from_dict(DataSpec, _yaml_mapping(text, "--data"), "--data")
    if not text:
        raise ConfigError("--data: expected a data source (e.g. gsm8k, mgsm_zh, a .jsonl file), got an empty value")
    return DataSpec(source=text)


def parse_rewards(text: str | None) -> dict[str, Any] | None:
    """``accuracy,format`` or ``accuracy=1,format=0.5`` or a YAML mapping as in a recipe's ``rewards:``."""
    if text is None:
        return None
    text = text.strip()
    if text.startswith("{"):
        return _yaml_mapping(text, "--rewards")
    rewards: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, weight = part.partition("=")
        try:
            rewards[name.strip()] = float(weight) if sep else 1.0
        except ValueError:
            raise ConfigError(f"--rewards {part}: expected NAME or NAME=WEIGHT, got weight {weight!r}") from None
    if not rewards:
        raise ConfigError("--rewards: expected at least one reward name (grpo rewards list)")
    return rewards


def default_rewards(rows: list[dict]) -> dict[str, Any]:
    """CODE_REWARDS for rows with unit tests when a ``code`` reward exists, else DEFAULT_REWARDS."""
    from rewards import list_rewards

    if rows and "tests" in rows[0] and "code" in list_rewards():
        return dict(CODE_REWARDS)
    return dict(DEFAULT_REWARDS)


def label_of(name: str) -> str:
    """A short, file-name-safe label: ``runs/x/final`` → ``x-final``, a directory or file by its
    name (``data/math500.jsonl`` → ``math500``), anything else (an alias, a hub id) as written."""
    path = Path(name).expanduser()
    if path.suffix in (".jsonl", ".json", ".parquet", ".csv", ".tsv", ".gz"):
        name = path.name.split(".")[0]
    elif path.name == "final" and path.parent.name:
        name = f"{path.parent.name}-final"
    elif path.is_dir():
        name = path.name
    label = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")
    return label or "model"


def _unique(labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label}-{seen[label]}")
    return out


def data_label(spec: DataSpec) -> str:
    return label_of(spec.source) + "".join(f"-{v}" for v in (spec.subset, spec.language if spec.is_synthetic else None) if v)


def evaluate_models(models: list[str], data: list[DataSpec], settings: EvalSettings, out_dir: str | Path) -> dict[str, dict[str, dict]]:
    """Sample and score every model on every data set; write the files above; returns
    ``{data label: {model label: summary}}``. Data and rewards are checked before any model loads."""
    from grpo.data import load_rows
    from grpo.evaluation import comparison_markdown, score_samples
    from grpo.io import check_writable
    from grpo.models import load_model_and_tokenizer
    from pipelines.recipe import reward_terms
    from pipelines.stages.sampling import sample_rows, write_evaluation

    if not models:
        raise ConfigError("grpo eval: name at least one model")
    if not data:
        raise ConfigError("grpo eval: --data: name at least one data set (grpo data list)")
    out_dir = Path(out_dir)
    check_writable(out_dir)
    data_labels = _unique([data_label(d) for d in data])
    model_labels = _unique([label_of(m) for m in models])
    tables: dict[str, list[dict]] = {}
    terms: dict[str, list] = {}
    for label, spec in zip(data_labels, data):
        rows = load_rows(spec)
        tables[label] = rows[: settings.max_prompts] if settings.max_prompts else rows
        rewards = settings.rewards or default_rewards(tables[label])
        try:
            terms[label] = reward_terms(rewards)
        except ConfigError as exc:
            raise ConfigError(f"--rewards: {exc}") from None
    results: dict[str, dict[str, dict]] = {label: {} for label in data_labels}
    for model_label, model in zip(model_labels, models):
        policy, tokenizer = load_model_and_tokenizer(model, dtype=settings.dtype, device=settings.device)
        for label in data_labels:
            started = time.perf_counter()
            samples = sample_rows(
                policy, tokenizer, tables[label], settings.template, settings.sampling, settings.samples, seed=settings.seed,
                batch_prompts=settings.batch_prompts, max_prompt_length=settings.max_prompt_length, progress=settings.progress,
                label=f"{model_label} on {label}",
            )
            scored = score_samples(samples, terms[label])
            where = out_dir / label / model_label
            where.mkdir(parents=True, exist_ok=True)
            has_tests = bool(tables[label]) and "tests" in tables[label][0]  # answers are programs: no majority vote
            summary = write_evaluation(where, scored, terms[label], f"{model_label} on {label}", model,
                                       accuracy=terms[label][0].name, majority=not has_tests)
            summary["wall_time_s"] = time.perf_counter() - started
            atomic_write_json(where / "eval.json", summary)
            results[label][model_label] = summary
            print(f"[{model_label} on {label}] pass@1 {_fmt(summary.get('pass@1'))} ({summary['num_prompts']} prompts × {settings.samples}, "
                  f"{summary['wall_time_s']:.0f} s)")
        del policy
    atomic_write_json(out_dir / "eval.json", results)
    header = [
        f"# Evaluation: {', '.join(model_labels)}", "",
        f"k = {settings.samples} samples per prompt, temperature {settings.temperature}, top_p {settings.top_p}, "
        f"≤ {settings.max_new_tokens} new tokens, template {settings.template.kind}, seed {settings.seed}; "
        "pass@1 is the mean over the k samples, pass@k the unbiased estimator (Chen et al. 2021), "
        "maj@k the accuracy of the majority answer.", "",
    ]
    parts = []
    for label in data_labels:
        summaries = {m: {k: v for k, v in s.items() if k != "model"} for m, s in results[label].items()}
        parts.append(comparison_markdown(summaries, f"{label} (correctness: {terms[label][0].name})"))
    atomic_write_text(out_dir / "eval.md", "\n".join(header) + "\n".join(parts))
    return results


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def main_table(results: dict[str, dict[str, dict]]) -> str:
    """One line per (data, model) with the headline figures, for the terminal."""
    keys = ["pass@1", "pass@k", "maj@k", "format_rate", "language_consistency_rate", "mean_length_correct", "mean_length_wrong"]
    width = max([len(d) for d in results] + [4])
    names = ["pass@1", "pass@k", "maj@k", "format", "single-lang", "len correct", "len wrong"]
    lines = [f"{'data':<{width}} {'model':<28} " + " ".join(f"{k:>11}" for k in names)]
    for data, by_model in results.items():
        for model, summary in by_model.items():
            cells = []
            for key in keys:
                value = summary.get(key)
                cells.append(f"{'-' if value is None else (f'{value:.1f}' if 'length' in key else f'{value:.3f}'):>11}")
            lines.append(f"{data:<{width}} {model[:28]:<28} " + " ".join(cells))
    return "\n".join(lines)


__all__ = ["EvalSettings", "evaluate_models", "parse_data_spec", "parse_rewards", "default_rewards", "label_of", "main_table"]
