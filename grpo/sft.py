"""Supervised fine-tuning through TRL's ``SFTTrainer``: R1's cold start and its SFT on rejection-sampled data.

What we add around TRL is the part that must agree with the GRPO stage:

    rows ──▶ (prompt text, completion text)      prompt/completion rows: prompt rendered with OUR template;
                                                 messages rows: the tokenizer's chat template, last assistant
                                                 turn = completion
         ──▶ token ids + completion mask         prompt encoded exactly as the rollout engine encodes it
                                                 (no special tokens added); the completion ends on a
                                                 stop token (eos appended unless one is there)
         ──▶ SFTTrainer                          labels = ids on the completion, -100 on the prompt;
                                                 truncation, packing, loss, checkpoints, logging: TRL / HF
         ──▶ <output_dir>/final                  plain HF model directory (LoRA merged) + tokenizer

The rows are tokenized here rather than by TRL because TRL tokenizes a string prompt with
``tokenizer(text)``, which adds the tokenizer's special tokens (a BOS for Llama-style tokenizers) that
the rollout engine never adds: SFT would then train on a prefix GRPO never shows the model.

Run directory::

    <output_dir>/checkpoints/checkpoint-N/   HF Trainer checkpoints (the two newest are kept)
    <output_dir>/metrics.jsonl               one line per optimizer step (TRL/HF metric names)
    <output_dir>/curves.png                  loss, token accuracy, learning rate, gradient norm
    <output_dir>/final/                      the trained model
"""

from __future__ import annotations

import json
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from grpo.config import LoraSettings
from grpo.io import append_jsonl, atomic_directory, atomic_write_text
from grpo.templates import TemplateSpec, render_prompt

__all__ = [
    "SFTSettings",
    "train_sft",
    "check_rows",
    "sft_example_text",
    "tokenize_sft_example",
    "build_sft_dataset",
    "sft_config",
    "last_checkpoint",
    "save_final_model",
    "plot_sft_curves",
]

# Our scheduler names → Hugging Face's. Ours name the shape *after* warmup, as in GRPOConfig, so
# "constant" honours warmup_ratio (HF's plain "constant" would ignore it).
_HF_SCHEDULERS = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}


@dataclass
class SFTSettings:
    """Every knob of an SFT run (the ``sft:`` section of a recipe)."""

    epochs: float = 1.0  # passes over the rows (fractions allowed); ignored when max_steps is set
    max_steps: int | None = None  # optimizer steps to train; overrides epochs
    learning_rate: float = 1e-5  # peak AdamW learning rate (after warmup)
    batch_size: int = 8  # examples per device per micro-batch
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step
    max_length: int = 1024  # tokens of prompt + completion; longer examples are truncated at the end
    lr_scheduler: Literal["constant", "linear", "cosine"] = "cosine"  # learning-rate shape after warmup
    warmup_ratio: float = 0.0  # share of the optimizer steps spent in linear warmup
    weight_decay: float = 0.0  # AdamW weight decay
    max_grad_norm: float = 1.0  # clip the gradient norm to this; 0 = no clipping
    save_every: int = 50  # optimizer steps between checkpoints
    lora: LoraSettings | None = None  # train LoRA adapters (merged into the final model) instead of all weights
    packing: bool = False  # pack several examples into each max_length row (TRL's best-fit-decreasing packing)
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, ~20% slower
    progress: bool = True  # show progress bars and per-step logs

    def __post_init__(self):
        # Messages are "field: what was expected, got X" so schema.from_dict can prefix the recipe path.
        if not self.epochs > 0:
            raise ValueError(f"epochs: must be > 0, got {self.epochs}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps: must be ≥ 1 (or null to train by epochs), got {self.max_steps}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate: must be > 0, got {self.learning_rate}")
        for name in ("batch_size", "gradient_accumulation_steps", "max_length", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be ≥ 1, got {getattr(self, name)}")
        if self.lr_scheduler not in _HF_SCHEDULERS:
            raise ValueError(f"lr_scheduler: expected one of {', '.join(map(repr, _HF_SCHEDULERS))}, got {self.lr_scheduler!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio: must be in [0, 1), got {self.warmup_ratio}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay: must be ≥ 0, got {self.weight_decay}")
        if self.max_grad_norm < 0:
            raise ValueError(f"max_grad_norm: must be ≥ 0 (0 = no clipping), got {self.max_grad_norm}")
        if isinstance(self.lora, dict):  # built by hand rather than through schema.from_dict
            self.lora = LoraSettings(**self.lora)


# --------------------------------------------------------------------------- #
# Rows → examples
# --------------------------------------------------------------------------- #


def _columns(row) -> str:
    return ", ".join(map(str, row)) if isinstance(row, dict) and row else "none"


def _check_row(row, index: int) -> None:
    if not isinstance(row, dict):
        raise ValueError(f"row {index}: expected a dict, got {type(row).__name__}")
    missing = [] if "messages" in row else [k for k in ("prompt", "completion") if k not in row]
    if missing:
        raise ValueError(
            f"row {index}: needs a 'messages' column or 'prompt' and 'completion' columns; "
            f"missing {', '.join(map(repr, missing))} (columns: {_columns(row)})"
        )


def check_rows(rows: list[dict]) -> None:
    """Fail early, before any model is loaded, on an empty list or a row without the needed columns."""
    if not rows:
        raise ValueError("rows: the SFT data is empty; expected rows with a 'messages' column or 'prompt' and 'completion' columns")
    for i, row in enumerate(rows):
        _check_row(row, i)


def sft_example_text(row: dict, index: int, template: TemplateSpec, tokenizer) -> tuple[str, str]:
    """The (prompt text, completion text) of one row.

    * ``{"prompt": question, "completion": target, ...}``: the prompt is rendered with ``template``
      (exactly what the GRPO stage will prompt with); other columns are ignored.
    * ``{"messages": [..., {"role": "assistant", ...}]}``: the tokenizer's chat template; the prompt is
      every message before the last one plus the generation prompt, the completion is the rest of the
      rendered conversation (the last assistant turn with the template's end-of-turn). ``template`` is
      not used: such rows carry their own system message.

    Raises ``ValueError`` naming the row, what is missing and the columns it has.
    """
    _check_row(row, index)
    if "messages" in row:
        return _messages_example(row["messages"], index, tokenizer)
    for key in ("prompt", "completion"):
        if not isinstance(row[key], str):
            raise ValueError(f"row {index}: '{key}' must be a string, got {type(row[key]).__name__}")
    return render_prompt(row, template, tokenizer), row["completion"]


def _messages_example(messages, index: int, tokenizer) -> tuple[str, str]:
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages):
        raise ValueError(f"row {index}: 'messages' must be a non-empty list of {{'role', 'content'}} dicts")
    if messages[-1]["role"] != "assistant":
        raise ValueError(f"row {index}: the last message must be the assistant's reply to learn, got role {messages[-1]['role']!r}")
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"row {index}: 'messages' rows need a tokenizer with a chat template; this one has none — use prompt/completion rows")
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    whole = tokenizer.apply_chat_template(messages, tokenize=False)
    if not whole.startswith(prompt):
        raise ValueError(
            f"row {index}: the chat template renders the conversation without its last reply differently from the "
            "start of the whole conversation, so the reply cannot be cut out — use prompt/completion rows"
        )
    return prompt, whole[len(prompt):]


def _encode(tokenizer, text: str) -> list[int]:
    # As the rollout engine encodes prompts: the rendered text already holds any BOS the template wants.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _end_on_stop(ids: list[int], tokenizer, stop_ids: set[int]) -> list[int]:
    """End the completion on a stop token: cut whitespace a chat template puts after its end-of-turn
    (generation stops at that token, so nothing after it is ever produced), or append eos."""
    j = len(ids) - 1
    while j >= 0 and ids[j] not in stop_ids and tokenizer.decode([ids[j]]).strip() == "":
        j -= 1
    if j >= 0 and ids[j] in stop_ids:
        return ids[: j + 1]
    return ids + [tokenizer.eos_token_id]


def tokenize_sft_example(prompt: str, completion: str, tokenizer, stop_ids: set[int] | None = None) -> dict:
    """``{"input_ids", "completion_mask"}`` for one example; the mask is 1 on the completion's tokens.

    The prompt's ids are those the rollout engine would feed the model. The completion's are cut
    from the encoding of prompt + completion where it extends the prompt's (so they are the tokens
    the model would emit after that prompt), else encoded alone; they end on a stop token.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token: the model could not learn to stop")
    stop_ids = stop_ids or {tokenizer.eos_token_id}
    prompt_ids = _encode(tokenizer, prompt)
    whole = _encode(tokenizer, prompt + completion)
    if whole[: len(prompt_ids)] == prompt_ids:
        completion_ids = whole[len(prompt_ids):]
    else:  # a token merges across the boundary: keep the prompt as GRPO sees it
        completion_ids = _encode(tokenizer, completion)
    completion_ids = _end_on_stop(completion_ids, tokenizer, stop_ids)
    return {
        "input_ids": prompt_ids + completion_ids,
        "completion_mask": [0] * len(prompt_ids) + [1] * len(completion_ids),
    }


def build_sft_dataset(rows: list[dict], template: TemplateSpec, tokenizer, max_length: int, stop_ids: set[int] | None = None):
    """A ``datasets.Dataset`` of ``input_ids`` + ``completion_mask``, ready for ``SFTTrainer``.

    Raises ``ValueError`` for an empty list, rows without the needed columns, or when every prompt
    fills ``max_length`` (TRL would drop them all); warns when only some do.
    """
    from datasets import Dataset

    check_rows(rows)
    examples = [tokenize_sft_example(*sft_example_text(row, i, template, tokenizer), tokenizer, stop_ids) for i, row in enumerate(rows)]
    no_room = sum(1 for e in examples if e["completion_mask"][:max_length].count(1) == 0)
    if no_room == len(examples):
        raise ValueError(f"max_length: every prompt is at least {max_length} tokens long, leaving no completion to learn")
    if no_room:
        warnings.warn(f"{no_room} of {len(examples)} SFT examples have prompts of ≥ max_length={max_length} tokens and are dropped", stacklevel=2)
    return Dataset.from_list(examples)


# --------------------------------------------------------------------------- #
# Run directory
# --------------------------------------------------------------------------- #


def last_checkpoint(checkpoint_root: str | Path) -> Path | None:
    """The newest complete HF checkpoint (``checkpoint-N`` holding ``trainer_state.json``, which
    the Trainer writes last), or None."""
    root = Path(checkpoint_root)
    if not root.is_dir():
        return None
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("checkpoint-") and p.name[11:].isdigit()]
    complete = [p for p in found if (p / "trainer_state.json").is_file()]
    return max(complete, key=lambda p: int(p.name[11:]), default=None)


def _step_rows(log_history: list[dict]) -> list[dict]:
    """The per-step entries of a Trainer's log history (the end-of-training summary has no ``loss``)."""
    return [{"step": e["step"], **{k: v for k, v in e.items() if k != "step"}} for e in log_history if "loss" in e]


def _metrics_callback(path: Path):
    """A TrainerCallback that keeps ``metrics.jsonl`` in step with the Trainer's log history.

    At the start (after a resumed run has restored the checkpoint's history) the file is rewritten
    from that history, dropping lines the interrupted run wrote past its checkpoint; each step then
    appends its line.
    """
    from transformers import TrainerCallback

    class MetricsFile(TrainerCallback):  # (with several processes, rank 0 writes)
        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                _write_metrics(path, _step_rows(state.log_history))

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs and state.is_world_process_zero:
                append_jsonl(path, {"step": state.global_step, **logs})

    return MetricsFile()


def _write_metrics(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def plot_sft_curves(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """Loss, mean token accuracy, learning rate and gradient norm against step; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from grpo.plots import save_figure, smooth

    path = Path(path)
    window = max(1, len(rows) // 10)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for ax, key in zip(axes.flat, ("loss", "mean_token_accuracy", "learning_rate", "grad_norm")):
        pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        if pts:
            xs, ys = zip(*pts)
            line = ax.plot(xs, ys, alpha=0.3, linewidth=1)[0]
            ax.plot(xs, smooth(list(ys), window), color=line.get_color(), linewidth=2)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


# --------------------------------------------------------------------------- #
# Training
# --------------------------------------------------------------------------- #


def sft_config(settings: SFTSettings, output_dir: Path, seed: int, precision=None, fsdp: dict | None = None):
    """TRL's SFTConfig for these settings, checkpoints under ``output_dir/checkpoints``.

    ``precision`` (a grpo.precision.Precision; default fp32): ``bf16-mixed`` turns on TRL's own
    mixed-precision switch (``bf16=True``: float32 weights and optimiser state, bf16 autocast);
    ``fp32`` and pure ``bf16`` train the weights in the dtype they were loaded in.
    ``fsdp``: transformers' ``fsdp_config`` when several processes shard the model (:func:`fsdp_config`).
    """
    import torch
    from trl import SFTConfig

    return SFTConfig(
        **({"fsdp": True, "fsdp_config": fsdp} if fsdp is not None else {}),
        output_dir=str(output_dir / "checkpoints"),
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps if settings.max_steps is not None else -1,
        learning_rate=settings.learning_rate,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        lr_scheduler_type=_HF_SCHEDULERS[settings.lr_scheduler],
        warmup_steps=float(settings.warmup_ratio),  # transformers 5: a float in [0, 1) is a ratio of the steps
        weight_decay=settings.weight_decay,
        max_grad_norm=settings.max_grad_norm,
        max_length=settings.max_length,
        packing=settings.packing,
        completion_only_loss=True,  # our dataset is pre-tokenized, so TRL cannot infer it from the column names
        # TRL turns gradient checkpointing on by default; transformers 5 names it activation_checkpointing.
        activation_checkpointing=settings.gradient_checkpointing,
        bf16=precision is not None and precision.name == "bf16-mixed",  # autocast over float32 weights; else none
        fp16=False,
        use_cpu=not torch.cuda.is_available(),
        report_to=[],
        seed=seed,
        data_seed=seed,
        save_strategy="steps",
        save_steps=settings.save_every,
        save_total_limit=2,
        logging_steps=1,
        disable_tqdm=not settings.progress,
    )


def fsdp_config(model, distributed) -> dict:
    """transformers' ``fsdp_config`` for the recipe's ``distributed`` settings: FSDP2 with one unit
    per decoder layer, as the GRPO trainer shards, sharded checkpoints."""
    from grpo.parallel import decoder_layers

    layers = sorted({type(m).__name__ for m in decoder_layers(model)})
    return {
        "version": 2, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "transformer_layer_cls_to_wrap": layers,
        "reshard_after_forward": distributed.reshard_after_forward, "cpu_offload": distributed.cpu_offload,
        "state_dict_type": "SHARDED_STATE_DICT",
    }


@contextmanager
def _progress_bars(enabled: bool):
    """The progress bars of datasets (TRL's label building, truncation) and transformers (weight
    loading, saving) follow ``progress``; their previous state is restored afterwards."""
    import datasets
    from transformers.utils import logging as hf_logging

    datasets_on, transformers_on = datasets.is_progress_bar_enabled(), hf_logging.is_progress_bar_enabled()
    if not enabled:
        datasets.disable_progress_bars()
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if datasets_on:
            datasets.enable_progress_bars()
        if transformers_on:
            hf_logging.enable_progress_bar()


@contextmanager
def _environment_restored():
    """transformers' TrainingArguments announce FSDP to accelerate through ``os.environ``
    (``ACCELERATE_USE_FSDP`` ...): put the environment back afterwards, so that the stages after
    this one (a GRPO stage in the same processes) see the launcher's environment, not SFT's."""
    import os

    saved = dict(os.environ)
    try:
        yield
    finally:
        for key in set(os.environ) - set(saved):
            del os.environ[key]
        os.environ.update(saved)


def _peft_config(lora: LoraSettings | None):
    if lora is None:
        return None
    from peft import LoraConfig

    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.target_modules), task_type="CAUSAL_LM")


def save_final_model(model, tokenizer, path: Path) -> Path:
    """A plain Hugging Face directory (LoRA merged into the weights), written atomically."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    with atomic_directory(path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return path


def _token_count_callback(trainer):
    """Continue TRL's cumulative ``num_tokens`` across a resume (TRL keeps it on the trainer, not in
    the checkpoint, so a resumed run would count from zero again)."""
    from transformers import TrainerCallback

    class TokenCount(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            counts = [e["num_tokens"] for e in state.log_history if "num_tokens" in e]
            if counts and hasattr(trainer, "_total_train_tokens"):
                trainer._total_train_tokens = int(counts[-1])

    return TokenCount()


def train_sft(
    model_name_or_path: str,
    rows: list[dict],
    template: TemplateSpec,
    settings: SFTSettings,
    output_dir: str | Path,
    seed: int = 0,
    resume: bool = False,
    dtype: str = "float32",
    *,
    callbacks: list | None = None,
    precision: str | None = None,
    distributed=None,
) -> Path:
    """Fine-tune a model on ``rows`` with TRL's SFTTrainer; returns ``<output_dir>/final``.

    ``rows`` are ``{"prompt", "completion", ...}`` (the prompt is the raw question, rendered here with
    ``template``) or ``{"messages": [...]}``; the loss is on the completion / last assistant turn
    only. ``resume=True`` continues from the newest complete checkpoint in
    ``<output_dir>/checkpoints`` (a fresh start when there is none); without it, a directory that
    already holds checkpoints is refused. ``callbacks`` are extra ``transformers.TrainerCallback``s.
    ``precision`` (``auto | fp32 | bf16-mixed | bf16``; unset: from ``dtype``) is resolved for the
    device as for GRPO (grpo/precision.py), printed and written to ``<output_dir>/precision.json``.
    Deterministic for a seed on CPU, and a resumed run ends with the weights an uninterrupted one does.

    Under a launcher (``grpo run --num-processes N``) the Trainer runs in every process: DDP, or
    FSDP2 when ``distributed`` (a :class:`grpo.launch.DistributedSettings`) resolves to fsdp and
    the processes have GPUs (accelerate does not shard on the CPU); ``batch_size`` stays per
    process. Rank 0 writes the files; under FSDP the final model is gathered once onto it.
    """
    import torch
    from trl import SFTTrainer

    from grpo.io import atomic_write_json
    from grpo.launch import DistributedSettings, is_main_process, launched_world_size
    from grpo.precision import bf16_update_warning, precision_of_dtype, recorded_precision, requested_precision, resolve_precision
    from grpo.models import load_model_and_tokenizer
    from grpo.rollout import eos_token_ids

    check_rows(rows)  # before the (possibly slow) model load
    output_dir = Path(output_dir)
    checkpoint = last_checkpoint(output_dir / "checkpoints")
    if checkpoint is not None and not resume:
        raise FileExistsError(f"{output_dir} already holds checkpoints; resume it or choose another output_dir")

    with _progress_bars(settings.progress), _environment_restored():
        requested, why = requested_precision(precision, dtype)
        if requested == "checkpoint":  # dtype: auto, the checkpoint's own dtype
            model, tokenizer = load_model_and_tokenizer(model_name_or_path, dtype="auto", device="cpu")
            resolved = precision_of_dtype(next(model.parameters()).dtype, why)
        else:
            # A resumed `auto` run keeps its precision; the HF Trainer takes the GPU when there is one.
            resolved = recorded_precision(output_dir) if resume and requested == "auto" else None
            resolved = resolved or resolve_precision(requested, "cuda" if torch.cuda.is_available() else "cpu", why=why)
            model, tokenizer = load_model_and_tokenizer(model_name_or_path, dtype=resolved.param_dtype, device="cpu")
        if resolved.name == "bf16" and settings.lora is None:
            message = bf16_update_warning(model.parameters(), settings.learning_rate)
            if message:
                warnings.warn(message, stacklevel=2)
        if is_main_process():
            print(resolved.describe(), flush=True)  # also in <output_dir>/precision.json
        dataset = build_sft_dataset(rows, template, tokenizer, settings.max_length, set(eos_token_ids(tokenizer, model)))
        output_dir.mkdir(parents=True, exist_ok=True)
        if is_main_process():
            atomic_write_json(output_dir / "precision.json", resolved.to_json())
        metrics_path = output_dir / "metrics.jsonl"
        with warnings.catch_warnings():
            # peft reads a property transformers 5 deprecated; nothing a user can act on.
            warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
            distributed = (distributed or DistributedSettings()).from_launcher()
            sharded = launched_world_size() > 1 and distributed.strategy == "fsdp"
            if sharded and not torch.cuda.is_available():
                # accelerate shards only over GPUs (its CPU launch type has no FSDP): DDP here.
                sharded = False
                if is_main_process():
                    print("sft: distributed.strategy fsdp: accelerate shards over GPUs only; on the CPU this SFT runs data-parallel (DDP)")
            trainer = SFTTrainer(
                model=model,
                args=sft_config(settings, output_dir, seed, resolved, fsdp_config(model, distributed) if sharded else None),
                train_dataset=dataset,
                processing_class=tokenizer,
                peft_config=_peft_config(settings.lora),
                callbacks=[_metrics_callback(metrics_path), *(callbacks or [])],
            )
        trainer.add_callback(_token_count_callback(trainer))
        if not settings.progress:
            from transformers import PrinterCallback

            trainer.remove_callback(PrinterCallback)  # it prints every step's log dict
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint is not None else None)

        final = output_dir / "final"
        if sharded:  # gathered once onto rank 0 (every rank takes part), LoRA merged there
            from grpo.parallel import lora_scalings, merge_lora

            state = trainer.accelerator.get_state_dict(trainer.model)
            if trainer.is_world_process_zero():
                model = trainer.accelerator.unwrap_model(trainer.model)
                if settings.lora is not None:
                    state, model = merge_lora(state, lora_scalings(model)), model.get_base_model()
                with atomic_directory(final) as tmp:
                    model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
                    tokenizer.save_pretrained(tmp)
        if not trainer.is_world_process_zero():
            trainer.accelerator.wait_for_everyone()
            return final
        logged = _step_rows(trainer.state.log_history)
        _write_metrics(metrics_path, logged)
        if logged:
            plot_sft_curves(logged, output_dir / "curves.png", title=output_dir.name)
        if not sharded:
            save_final_model(trainer.model, tokenizer, final)
        trainer.accelerator.wait_for_everyone()
        return final
