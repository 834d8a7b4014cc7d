"""The lab base model: a tiny bilingual Llama with the habits R1-Zero started from, in minutes.

DeepSeek-R1-Zero began from a base model that could sometimes solve the problems, whose
reasoning drifted between languages, and that seldom kept to the ``<think>…</think>
<answer>…</answer>`` format. :func:`build_lab_model` makes such a model on a CPU: a character-level
Llama (:mod:`grpo.tiny`) pretrained for a few minutes on worked solutions of the ``arithmetic``
task (``synthetic:arithmetic`` with ``worked``, ``language_mix``, ``format_rate`` and
``error_rate``) whose

* sentences switch between English and Chinese at random (``language_mix``),
* answers are mostly free-form ("The answer is 17." / "答案是 17。"), in R1 tags only sometimes
  (``format_rate``),
* reasoning is often wrong: the question is restated with a misread number ("We need 17 + 18."
  for 18 + 18) and solved as misread (``error_rate``, ``error_at``). Every ``a + b = c`` written
  is still true arithmetic, so the model learns correct arithmetic *and* a habit of misreading,
  which reinforcement learning on accuracy can break within tens of steps.

Prompts in the corpus are rendered exactly as the pipeline renders them (``LabSpec.template``;
default: the tokenizer's chat template, no system text), so a recipe with the same template and
task options (:meth:`LabSpec.task_options`) meets the model on home ground. The model is built
once and cached under ``cache_dir()/lab/<name>-<hash of the spec>/``: an ordinary Hugging Face
directory plus ``lab.json`` (spec, corpus figures, training figures). The alias
``lab-bilingual`` resolves to the default spec's directory wherever a model name is accepted.
:func:`lab_probe` samples a model on lab prompts and measures accuracy, format rate and
language consistency.

With ``holdout`` > 0, a slice of the task's problems (chosen by a hash of the expression) never
appears in the corpus, and the probe asks only those: a test of computing rather than recall.

::

    python -m grpo.lab build                    # print the model directory (builds it once)
    python -m grpo.lab build --set steps=200    # any LabSpec field
    python -m grpo.lab probe [MODEL] --n 64 --samples 4
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from grpo.io import atomic_directory, file_lock
from grpo.models import cache_dir

__all__ = [
    "LAB_VERSION", "LabSpec", "spec_hash", "lab_model_dir", "corpus_rows", "probe_rows", "build_lab_model",
    "read_spec", "probe_terms", "lab_probe", "main", "SMALL_SPEC", "build_small_lab_model",
]

#: Bump when the corpus generator or the training loop changes what a spec builds: it is part
#: of the hash, so cached models of older code are not mistaken for new ones.
LAB_VERSION = 1


@dataclass(frozen=True)
class LabSpec:
    """Everything that determines a lab model; its hash names the cached directory."""

    name: str = "bilingual"  # first part of the directory name (<name>-<hash>)

    # --- model (grpo.tiny.build_tiny_model) ------------------------------------------------
    hidden_size: int = 128  # width; the MLP is 4x this
    num_layers: int = 4  # transformer blocks
    num_heads: int = 4  # attention heads (must divide hidden_size)

    # --- the task (synthetic:arithmetic options, see task_options) -------------------------
    min_value: int = 1  # smallest operand
    max_value: int = 20  # largest operand
    ops: str = "+-"  # operators to draw from
    allow_negative: bool = False  # False: subtractions never go below zero
    language: str = "mixed"  # en, zh or mixed (rows alternate en, zh)
    holdout: float = 0.0  # share of problems (by expression hash) kept out of the corpus, for lab_probe

    # --- prompt template (grpo.templates.TemplateSpec) -------------------------------------
    template: str = "chat"  # template kind the corpus prompts are rendered with: chat, r1, plain
    system: str | None = None  # its system text (None: none / the template's own)

    # --- the pretraining corpus ------------------------------------------------------------
    corpus_size: int = 20_000  # worked solutions generated (each seen about steps*batch_size/corpus_size times)
    corpus_seed: int = 1_000  # seed of the task generator for the corpus
    language_mix: float = 0.45  # probability that each sentence is in the other language
    format_rate: float = 0.1  # share of solutions in <think>…</think><answer>…</answer>; the rest free-form
    error_rate: float = 0.6  # share of solutions that misread a number (so reach a wrong answer)
    error_at: str = "question"  # where: "question" (restating the problem) or "step" (inside any step)

    # --- training (AdamW, linear warm-up then cosine decay to 10%) -------------------------
    steps: int = 900  # optimiser steps
    batch_size: int = 32  # sequences per step
    learning_rate: float = 3e-3  # peak learning rate
    warmup_steps: int = 30  # linear warm-up steps
    weight_decay: float = 0.01  # AdamW weight decay
    seed: int = 0  # weight initialisation and batch order

    def __post_init__(self) -> None:
        from grpo.tasks import LANGUAGES
        from grpo.templates import TEMPLATES

        for name in ("language_mix", "format_rate", "error_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}: must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.holdout < 1.0:
            raise ValueError(f"holdout: must be in [0, 1), got {self.holdout}")
        if self.error_at not in ("question", "step"):
            raise ValueError(f"error_at: expected 'question' or 'step', got {self.error_at!r}")
        if self.language not in LANGUAGES:
            raise ValueError(f"language: expected one of {', '.join(LANGUAGES)}, got {self.language!r}")
        if self.template not in TEMPLATES:
            raise ValueError(f"template: unknown template {self.template!r}; known: {', '.join(sorted(TEMPLATES))}")
        for name in ("hidden_size", "num_layers", "num_heads", "corpus_size", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")

    def task_options(self) -> dict:
        """The ``synthetic:arithmetic`` options of the lab task (for a recipe's ``data.*.options``)."""
        return {"min_value": self.min_value, "max_value": self.max_value, "ops": self.ops, "allow_negative": self.allow_negative}

    def template_spec(self):
        """The :class:`~grpo.templates.TemplateSpec` the corpus prompts were rendered with."""
        from grpo.templates import TemplateSpec

        return TemplateSpec(kind=self.template, system=self.system)


#: The lab's small student (``lab-bilingual-small``): the same corpus, task and tokenizer as the
#: default lab model (so on-policy distillation can read the teacher's log-probabilities of its
#: tokens), a 7× smaller network (hidden 64, 2 layers: 0.15M parameters).
SMALL_SPEC = LabSpec(name="bilingual-small", hidden_size=64, num_layers=2)


def build_small_lab_model() -> Path:
    """The directory of ``lab-bilingual-small`` (:data:`SMALL_SPEC`), built on first use."""
    return build_lab_model(SMALL_SPEC)


def small_lab_model_dir() -> Path:
    return lab_model_dir(SMALL_SPEC)


def spec_hash(spec: LabSpec) -> str:
    """12 hex digits of SHA-256 over the spec's fields and :data:`LAB_VERSION`."""
    text = json.dumps({"version": LAB_VERSION, **asdict(spec)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def lab_model_dir(spec: LabSpec = LabSpec(), cache: Path | None = None) -> Path:
    """Where the model of ``spec`` lives (whether or not it is built): ``<cache>/<name>-<hash>``,
    with ``cache`` defaulting to ``cache_dir()/lab``."""
    root = Path(cache) if cache is not None else cache_dir() / "lab"
    return root / f"{spec.name}-{spec_hash(spec)}"


# ============================================================================================
# data


def _held_out(expression: str, fraction: float) -> bool:
    """Whether a problem belongs to the held-out slice (stable across runs and languages)."""
    digest = hashlib.sha256(expression.encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < fraction


def _draw(spec: LabSpec, n: int, seed: int, held_out: bool, **worked) -> list[dict]:
    """``n`` task rows from the held-out slice (or from the rest), drawing more until there are enough."""
    from grpo.tasks import get_task

    share = spec.holdout if held_out else 1.0 - spec.holdout
    if n and share == 0.0:
        raise ValueError("holdout is 0: there are no held-out problems to draw from")
    want = n
    while True:
        batch = math.ceil(want / share * 1.2) + 16
        rows = get_task("arithmetic")(batch, seed, spec.language, **spec.task_options(), **worked)
        picked = [r for r in rows if _held_out(r["expression"], spec.holdout) == held_out]
        if len(picked) >= n:
            return picked[:n]
        want *= 2


def corpus_rows(spec: LabSpec) -> list[dict]:
    """The pretraining corpus: ``corpus_size`` task rows with a ``completion`` (mixed-language,
    mostly free-form, partly wrong worked solutions), none from the held-out slice."""
    return _draw(
        spec, spec.corpus_size, spec.corpus_seed, held_out=False,
        worked=True, language_mix=spec.language_mix, format_rate=spec.format_rate, error_rate=spec.error_rate,
        error_at=spec.error_at,
    )


def probe_rows(spec: LabSpec, n: int, seed: int = 0, held_out: bool = True) -> list[dict]:
    """``n`` task rows (prompt not yet rendered) drawn with ``seed``: from the held-out slice
    (problems absent from the corpus) or, with ``held_out=False``, from the problems it covers."""
    return _draw(spec, n, 7_919 + seed, held_out=held_out and spec.holdout > 0)


def _missing_chars(texts: list[str]) -> str:
    """Characters of ``texts`` the plain char tokenizer does not know, sorted (its ``extra_chars``)."""
    from grpo.tiny import _vocab

    known = _vocab("")
    return "".join(sorted({c for t in texts for c in t} - set(known)))


# ============================================================================================
# build


def _is_built(path: Path) -> bool:
    return (path / "lab.json").is_file()


def build_lab_model(
    spec: LabSpec = LabSpec(), cache: Path | None = None, progress: bool = True, *, threads: int | None = None
) -> Path:
    """The directory of the lab model of ``spec``, pretraining it first if it is not cached.

    The directory (see :func:`lab_model_dir`) is a Hugging Face model directory (model,
    tokenizer, generation config) plus ``lab.json`` (the spec, its hash, corpus and training
    figures). It is built in a temporary directory and renamed into place, under a lock, so a
    directory that exists is complete and concurrent callers build it once.

    ``threads`` sets torch's CPU threads for the build (default: torch's own choice; 1 is
    faster on a machine already busy with other work). The weights are bitwise reproducible
    for a given spec, torch build and thread count.
    """
    target = lab_model_dir(spec, cache)
    if _is_built(target):
        return target
    with file_lock(target.with_name(f".{target.name}.lock")):  # one build of a directory at a time
        if _is_built(target):  # another process built it meanwhile
            return target
        import torch

        before = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        try:
            with atomic_directory(target) as tmp:
                _pretrain(spec, tmp, progress)
        finally:
            torch.set_num_threads(before)
    return target


def _corpus_figures(rows: list[dict]) -> dict:
    """The corpus's own accuracy, format rate and language consistency (what the model imitates)."""
    from rewards import get_reward

    prompts = [r["prompt"] for r in rows]
    completions = [r["completion"] for r in rows]
    columns = {"solution": [r["solution"] for r in rows], "language": [r["language"] for r in rows]}
    accuracy = get_reward("accuracy")(prompts, completions, fallback="last_number", **columns)
    fmt = get_reward("format")(prompts, completions, **columns)
    lc = get_reward("language_consistency")(prompts, completions, **columns)
    mean = lambda xs: round(sum(xs) / len(xs), 4)  # noqa: E731
    return {
        "accuracy": mean(accuracy),
        "format_rate": mean(fmt),
        "language_consistency": mean(lc),
        "single_language_share": mean([float(v >= 0.95) for v in lc]),
        "mean_completion_chars": mean([len(c) for c in completions]),
    }


def _encode_corpus(spec: LabSpec):
    """The corpus rows, a char tokenizer that knows all their characters, and the training
    examples as ``(prompt ids, completion ids + eos)`` with prompts rendered by the spec's template."""
    from grpo.templates import render_prompt
    from grpo.tiny import build_char_tokenizer

    rows = corpus_rows(spec)
    template = spec.template_spec()
    tokenizer = build_char_tokenizer(extra_chars=_missing_chars([r["prompt"] + r["completion"] for r in rows]))
    prompts = [render_prompt(r, template, tokenizer) for r in rows]
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer([r["completion"] for r in rows], add_special_tokens=False)["input_ids"]
    for ids, prompt in zip(prompt_ids, prompts):
        if tokenizer.unk_token_id in ids:  # a system text with characters the tokenizer lacks
            raise ValueError(f"lab: the rendered prompt {prompt!r} has characters the char tokenizer does not know")
    examples = [(p, c + [tokenizer.eos_token_id]) for p, c in zip(prompt_ids, completion_ids)]
    return rows, tokenizer, examples


def _batches(examples: list, batch_size: int, rng: random.Random, pool: int = 4) -> Iterator[list[int]]:
    """Endless batches of example indices: each epoch is shuffled, cut into pools of ``pool``
    batches whose examples are sorted by length (so a batch pads little), and the batches of
    the epoch are shuffled again."""
    while True:
        order = list(range(len(examples)))
        rng.shuffle(order)
        epoch = []
        for start in range(0, len(order), batch_size * pool):
            chunk = sorted(order[start : start + batch_size * pool], key=lambda i: len(examples[i][0]) + len(examples[i][1]))
            epoch += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
        rng.shuffle(epoch)
        yield from (b for b in epoch if len(b) == batch_size)


def _train(model, tokenizer, examples, spec: LabSpec, progress: bool, callback=None) -> dict:
    """Pretrain ``model`` on ``examples`` (loss on completions only); returns training figures.

    ``callback(step, model)``, when given, runs after every optimiser step (diagnostics)."""
    import torch
    from tqdm.auto import tqdm

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, betas=(0.9, 0.95), weight_decay=spec.weight_decay)

    def lr_factor(step: int) -> float:  # linear warm-up, then cosine down to 10% of the peak
        if step < spec.warmup_steps:
            return (step + 1) / spec.warmup_steps
        done = (step - spec.warmup_steps) / max(1, spec.steps - spec.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, done)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    batches = _batches(examples, spec.batch_size, random.Random(spec.seed))
    norm = spec.batch_size * sum(len(c) for _, c in examples) / len(examples)  # completion tokens in a typical batch
    losses: list[float] = []
    tokens = 0
    pad = tokenizer.pad_token_id
    t0 = time.perf_counter()
    bar = tqdm(total=spec.steps, disable=not progress, desc="lab pretrain", unit="step", dynamic_ncols=True)
    for step in range(spec.steps):
        batch = [examples[i] for i in next(batches)]
        width = max(len(p) + len(c) for p, c in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (p, c) in enumerate(batch):  # right padding; loss on the completion and its eos
            ids[row, : len(p) + len(c)] = torch.tensor(p + c)
            labels[row, len(p) : len(p) + len(c)] = torch.tensor(c)
            mask[row, : len(p) + len(c)] = 1
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        # Summed over tokens and divided by a constant, so every completion token weighs the same
        # whether its batch holds long or short sequences (batches are grouped by length).
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum"
        ) / norm
        batch_tokens = int((labels != -100).sum())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item() * norm / batch_tokens)  # the batch's mean loss per token
        tokens += int(mask.sum())
        bar.update(1)
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}", tok_s=f"{tokens / (time.perf_counter() - t0):.0f}")
        if callback is not None:
            callback(step + 1, model)
            model.train()
    bar.close()
    seconds = time.perf_counter() - t0
    model.eval()
    return {
        "first_loss": round(losses[0], 4),
        "final_loss": round(sum(losses[-50:]) / len(losses[-50:]), 4),
        "tokens": tokens,
        "seconds": round(seconds, 1),
        "tokens_per_second": round(tokens / seconds),
        "torch_threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def _pretrain(spec: LabSpec, out: Path, progress: bool) -> None:
    """Generate the corpus, train the model on it, and save everything into ``out``."""
    import torch
    import transformers

    from grpo.tiny import build_tiny_model

    started = time.perf_counter()
    rows, tokenizer, examples = _encode_corpus(spec)
    longest = max(len(p) + len(c) for p, c in examples)
    model = build_tiny_model(
        tokenizer, hidden_size=spec.hidden_size, num_layers=spec.num_layers, num_heads=spec.num_heads,
        seed=spec.seed, max_position_embeddings=max(512, 2 * longest),
    )
    training = _train(model, tokenizer, examples, spec, progress)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    info = {
        "lab_version": LAB_VERSION,
        "hash": spec_hash(spec),
        "spec": asdict(spec),
        "task_options": spec.task_options(),
        "template": {"kind": spec.template, "system": spec.system},
        "corpus": _corpus_figures(rows),
        "training": {**training, "build_seconds": round(time.perf_counter() - started, 1)},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    (out / "lab.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# ============================================================================================
# probe


def read_spec(model_dir: str | os.PathLike) -> LabSpec | None:
    """The :class:`LabSpec` a lab model directory was built from (None for other models)."""
    path = Path(model_dir) / "lab.json"
    if not path.is_file():
        return None
    return LabSpec(**json.loads(path.read_text(encoding="utf-8"))["spec"])


def probe_terms() -> list:
    """The reward terms :func:`lab_probe` scores with: lenient ``accuracy`` (last number when
    there is no ``<answer>``), strict ``accuracy_strict`` (the default accuracy reward),
    ``format`` and ``language_consistency`` (target: the row's language)."""
    from grpo.scoring import RewardTerm
    from rewards import get_reward

    accuracy = get_reward("accuracy")
    return [
        RewardTerm("accuracy", accuracy, params={"fallback": "last_number"}),
        RewardTerm("accuracy_strict", accuracy),
        RewardTerm("format", get_reward("format")),
        RewardTerm("language_consistency", get_reward("language_consistency")),
    ]


def lab_probe(
    model_dir: str | os.PathLike,
    n: int = 64,
    samples: int = 4,
    seed: int = 0,
    *,
    temperature: float = 1.0,
    max_new_tokens: int = 128,
    held_out: bool = True,
    spec: LabSpec | None = None,
    progress: bool = False,
    return_samples: bool = False,
) -> dict:
    """Sample a (lab) model on ``n`` lab prompts × ``samples`` and measure the R1-Zero habits.

    ``model_dir`` is any model name; the task and template come from its ``lab.json`` (else
    ``spec``, else the default :class:`LabSpec`). Prompts are held-out problems unless
    ``held_out=False``. Returns ``accuracy`` (pass@1 with the answer taken from ``<answer>`` or
    else the last number), ``accuracy_strict`` (``<answer>`` required), ``format_rate``,
    ``language_consistency`` (mean), ``single_language_share`` (share of samples with
    consistency ≥ 0.95), ``mean_length``, ``truncated_rate``, ``num_prompts``,
    ``samples_per_prompt`` and the sampling settings; with ``return_samples`` also ``samples``
    (the scored records).
    """
    import torch

    from grpo.evaluation import evaluation_summary, sample_completions, score_samples
    from grpo.models import load_model_and_tokenizer, resolve_model_path
    from grpo.templates import render_prompt

    path = resolve_model_path(model_dir)
    spec = read_spec(path) or spec or LabSpec()
    model, tokenizer = load_model_and_tokenizer(path, dtype=torch.float32)
    template = spec.template_spec()
    rows = [{**r, "raw_prompt": r["prompt"], "prompt": render_prompt(r, template, tokenizer)} for r in probe_rows(spec, n, seed, held_out)]
    records = sample_completions(
        model, tokenizer, rows, samples, seed=seed, temperature=temperature, max_new_tokens=max_new_tokens,
        progress=progress, keep_ids=False,
    )
    terms = probe_terms()
    scored = score_samples(records, terms)
    summary = evaluation_summary(scored, terms)
    result = {
        "model": str(path),
        "num_prompts": summary["num_prompts"],
        "samples_per_prompt": summary["samples_per_prompt"],
        "held_out": held_out and spec.holdout > 0,
        "temperature": temperature,
        "max_new_tokens": max_new_tokens,
        "accuracy": summary["pass@1"],
        "accuracy_strict": summary["rewards/accuracy_strict/mean"],
        "format_rate": summary["format_rate"],
        "language_consistency": summary["language_consistency"],
        "single_language_share": summary["language_consistency_rate"],
        "mean_length": summary["mean_length"],
        "truncated_rate": summary.get("truncated_rate"),
    }
    if return_samples:
        result["samples"] = scored
    return result


# ============================================================================================
# CLI


def _spec_from(overrides: list[str]) -> LabSpec:
    import yaml

    fields = {f.name for f in dataclasses.fields(LabSpec)}
    values = {}
    for text in overrides:
        key, sep, raw = text.partition("=")
        key = key.strip()
        if not sep or key not in fields:
            from grpo.schema import nearest

            hint = nearest(key, fields)
            raise SystemExit(f"error: --set {text}: expected FIELD=VALUE with a LabSpec field" + (f"; did you mean {hint!r}?" if hint else ""))
        values[key] = yaml.safe_load(raw) if raw.strip() else ""
    return dataclasses.replace(LabSpec(), **values)


def main(argv: list[str] | None = None) -> int:
    """``python -m grpo.lab {build | probe [MODEL]}``; ``--set FIELD=VALUE`` changes the LabSpec."""
    parser = argparse.ArgumentParser(prog="python -m grpo.lab", description="The lab base model (R1-Zero habits, CPU minutes).")
    sub = parser.add_subparsers(dest="command", required=True)
    p_build = sub.add_parser("build", help="build (or find) the lab model; print its directory")
    p_probe = sub.add_parser("probe", help="sample a model on lab prompts; print accuracy, format, language figures (JSON)")
    p_probe.add_argument("model", nargs="?", help="model name or directory (default: the lab model of the spec)")
    for p in (p_build, p_probe):
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE", help="a LabSpec field")
        p.add_argument("--cache", type=Path, help="directory holding lab models (default: <cache>/lab)")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        p.add_argument("--threads", type=int, help="torch CPU threads for building (1 is faster on a busy machine)")
    p_probe.add_argument("--n", type=int, default=64, help="prompts (default 64)")
    p_probe.add_argument("--samples", type=int, default=4, help="samples per prompt (default 4)")
    p_probe.add_argument("--seed", type=int, default=0)
    p_probe.add_argument("--temperature", type=float, default=1.0)
    p_probe.add_argument("--max-new-tokens", type=int, default=128)
    p_probe.add_argument("--seen", action="store_true", help="probe problems the corpus covers instead of held-out ones")
    args = parser.parse_args(argv)

    spec = _spec_from(args.overrides)
    if args.command == "build":
        print(build_lab_model(spec, args.cache, progress=not args.quiet, threads=args.threads))
        return 0
    model = args.model or build_lab_model(spec, args.cache, progress=not args.quiet, threads=args.threads)
    result = lab_probe(
        model, n=args.n, samples=args.samples, seed=args.seed, temperature=args.temperature,
        max_new_tokens=args.max_new_tokens, held_out=not args.seen, spec=spec, progress=not args.quiet,
    )
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
