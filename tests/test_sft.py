"""SFT through TRL's SFTTrainer on the tiny offline model: it learns the target, masks the prompt,
resumes to the same weights, merges LoRA, and rejects bad rows with a clear message."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from grpo.config import LoraSettings
from grpo.io import read_jsonl
from grpo.models import load_model_and_tokenizer, load_tokenizer
from grpo.sft import (
    SFTSettings,
    build_sft_dataset,
    last_checkpoint,
    sft_config,
    tokenize_sft_example,
    train_sft,
)
from grpo.templates import TemplateSpec, render_prompt

TARGET = "<think>2+3=5</think><answer>5</answer>"
CHAT = TemplateSpec(kind="chat")


def fixed_rows(n=32):
    return [{"prompt": "What is 2+3?", "completion": TARGET, "solution": "5", "language": "en"} for _ in range(n)]


def varied_rows(n=16):
    """Distinct rows, so that a resumed run that replayed the wrong batches would end elsewhere."""
    return [{"prompt": f"What is {i}+{i % 5}?", "completion": f"<think>{i}+{i % 5}={i + i % 5}</think><answer>{i + i % 5}</answer>"} for i in range(n)]


def quick(**overrides):
    values = dict(max_steps=4, learning_rate=3e-3, batch_size=8, save_every=100, progress=False)
    values.update(overrides)
    return SFTSettings(**values)


def final_weights(path):
    return load_file(Path(path) / "model.safetensors")


# --- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("epochs", 0, "epochs: must be > 0, got 0"),
        ("max_steps", 0, "max_steps: must be ≥ 1"),
        ("batch_size", 0, "batch_size: must be ≥ 1, got 0"),
        ("max_length", 0, "max_length: must be ≥ 1, got 0"),
        ("save_every", 0, "save_every: must be ≥ 1, got 0"),
        ("learning_rate", 0.0, "learning_rate: must be > 0, got 0.0"),
        ("lr_scheduler", "cosin", "lr_scheduler: expected one of 'constant', 'linear', 'cosine', got 'cosin'"),
        ("warmup_ratio", 1.0, "warmup_ratio: must be in [0, 1), got 1.0"),
        ("max_grad_norm", -1.0, "max_grad_norm: must be ≥ 0"),
    ],
)
def test_settings_are_validated_with_field_names(field, value, message):
    with pytest.raises(ValueError) as err:
        SFTSettings(**{field: value})
    assert str(err.value).startswith(message)


def test_settings_map_onto_trl_config(tmp_path):
    s = SFTSettings(epochs=2, learning_rate=2e-5, batch_size=4, gradient_accumulation_steps=2, lr_scheduler="constant",
                    warmup_ratio=0.1, save_every=7, max_length=256)
    cfg = sft_config(s, tmp_path, seed=3)
    assert cfg.output_dir == str(tmp_path / "checkpoints")
    assert (cfg.num_train_epochs, cfg.max_steps, cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps) == (2, -1, 4, 2)
    assert cfg.lr_scheduler_type == "constant_with_warmup" and cfg.warmup_steps == 0.1
    assert (cfg.save_steps, cfg.save_total_limit, cfg.logging_steps, cfg.seed, cfg.data_seed) == (7, 2, 1, 3, 3)
    assert cfg.completion_only_loss is True and cfg.max_length == 256
    assert not cfg.bf16 and not cfg.fp16 and not cfg.gradient_checkpointing and cfg.report_to == []


# --- rows → tokens ---------------------------------------------------------------------------


def test_bad_rows_name_what_is_missing(tiny_model_dir, tmp_path):
    settings = quick()
    with pytest.raises(ValueError, match="SFT data is empty"):
        train_sft(tiny_model_dir, [], CHAT, settings, tmp_path / "a")
    with pytest.raises(ValueError) as err:
        train_sft(tiny_model_dir, [{"question": "1+1?", "answer": "2"}], CHAT, settings, tmp_path / "b")
    assert str(err.value) == (
        "row 0: needs a 'messages' column or 'prompt' and 'completion' columns; "
        "missing 'prompt', 'completion' (columns: question, answer)"
    )
    with pytest.raises(ValueError, match=r"row 1: .*missing 'completion' \(columns: prompt, solution\)"):
        train_sft(tiny_model_dir, [fixed_rows(1)[0], {"prompt": "x", "solution": "1"}], CHAT, settings, tmp_path / "c")
    tok = load_tokenizer(tiny_model_dir)
    with pytest.raises(ValueError, match="row 0: the last message must be the assistant's reply"):
        build_sft_dataset([{"messages": [{"role": "user", "content": "hi"}]}], CHAT, tok, 64)
    with pytest.raises(ValueError, match="max_length: every prompt is at least 5 tokens long"):
        build_sft_dataset(fixed_rows(2), CHAT, tok, max_length=5)
    assert not (tmp_path / "a").exists()  # nothing was written before the rows were checked


def test_prompt_is_our_template_encoded_as_the_rollout_does_and_completion_ends_with_eos(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    for template in (CHAT, TemplateSpec(kind="r1"), TemplateSpec(kind="chat", system="Be brief.", open_think=True)):
        row = fixed_rows(1)[0]
        ex = build_sft_dataset([row], template, tok, max_length=1024)[0]
        prompt_ids = tok(render_prompt(row, template, tok), add_special_tokens=False)["input_ids"]
        n = len(prompt_ids)
        assert ex["input_ids"][:n] == prompt_ids
        assert ex["completion_mask"] == [0] * n + [1] * (len(ex["input_ids"]) - n)
        assert tok.decode(ex["input_ids"][n:]) == TARGET + tok.eos_token


def test_messages_rows_use_the_chat_template_and_learn_only_the_last_reply(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "A2"},
    ]
    ex = build_sft_dataset([{"messages": messages, "id": 7}], CHAT, tok, max_length=1024)[0]
    ids, mask = ex["input_ids"], ex["completion_mask"]
    assert tok.decode(ids) == tok.apply_chat_template(messages, tokenize=False).rstrip("\n")
    learned = [i for i, m in zip(ids, mask) if m]
    # The template's "</s>\n" end of turn: generation stops at </s>, so the trailing newline is cut.
    assert tok.decode(learned) == "A2</s>"
    assert mask == sorted(mask)  # one contiguous completion at the end


def test_an_eos_already_there_is_not_doubled(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    ex = tokenize_sft_example("Q:", "5</s>\n", tok)
    assert tok.decode(ex["input_ids"]) == "Q:5</s>"


def test_trl_labels_mask_the_prompt_and_keep_the_completion(tiny_model_dir, tmp_path):
    """The labels SFTTrainer trains on: -100 on every prompt token (and on padding), the ids on the completion."""
    from trl import SFTTrainer

    model, tok = load_model_and_tokenizer(tiny_model_dir)
    rows = [fixed_rows(1)[0], {"prompt": "Hi", "completion": "<answer>7</answer>"}]
    dataset = build_sft_dataset(rows, CHAT, tok, max_length=1024)
    trainer = SFTTrainer(model=model, args=sft_config(quick(batch_size=2), tmp_path, seed=0), train_dataset=dataset, processing_class=tok)
    for prepared, original in zip(trainer.train_dataset, dataset):
        n = original["completion_mask"].count(0)
        assert prepared["input_ids"] == original["input_ids"]
        assert prepared["labels"][:n] == [-100] * n
        assert prepared["labels"][n:] == original["input_ids"][n:]
        assert prepared["labels"][-1] == tok.eos_token_id
    batch = trainer.data_collator([trainer.train_dataset[0], trainer.train_dataset[1]])
    short = batch["attention_mask"][1] == 0
    assert short.any() and (batch["labels"][1][short] == -100).all()  # padding carries no loss either


def test_max_length_truncates_the_completion(tiny_model_dir, tmp_path):
    from trl import SFTTrainer

    model, tok = load_model_and_tokenizer(tiny_model_dir)
    dataset = build_sft_dataset(fixed_rows(1), CHAT, tok, max_length=22)
    trainer = SFTTrainer(model=model, args=sft_config(quick(max_length=22), tmp_path, seed=0), train_dataset=dataset, processing_class=tok)
    assert len(trainer.train_dataset[0]["input_ids"]) == 22


# --- training --------------------------------------------------------------------------------


def test_sft_learns_the_target_and_writes_the_run_directory(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    final = train_sft(tiny_model_dir, fixed_rows(32), CHAT, quick(max_steps=30, lr_scheduler="constant"), out, seed=0)
    assert final == out / "final"

    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(1, 31))
    for key in ("loss", "learning_rate", "grad_norm", "num_tokens", "mean_token_accuracy", "entropy", "epoch"):
        assert key in metrics[0], key
    assert metrics[-1]["loss"] < 0.3 * metrics[0]["loss"], (metrics[0]["loss"], metrics[-1]["loss"])
    assert metrics[-1]["mean_token_accuracy"] > 0.9
    assert metrics[-1]["num_tokens"] > metrics[0]["num_tokens"]
    assert (out / "curves.png").stat().st_size > 1000
    assert (out / "checkpoints" / "checkpoint-30" / "trainer_state.json").exists()  # the last step is always saved

    model, tok = load_model_and_tokenizer(final)
    prompt = render_prompt(fixed_rows(1)[0], CHAT, tok)
    enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
    out_ids = model.generate(**enc, max_new_tokens=len(TARGET), do_sample=False)
    text = tok.decode(out_ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert text.startswith(TARGET), text


def test_same_seed_same_weights_and_refuses_to_overwrite(tiny_model_dir, tmp_path):
    a = train_sft(tiny_model_dir, varied_rows(), CHAT, quick(max_steps=2, batch_size=4), tmp_path / "a", seed=1)
    b = train_sft(tiny_model_dir, varied_rows(), CHAT, quick(max_steps=2, batch_size=4), tmp_path / "b", seed=1)
    wa, wb = final_weights(a), final_weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    with pytest.raises(FileExistsError, match="already holds checkpoints"):
        train_sft(tiny_model_dir, varied_rows(), CHAT, quick(max_steps=2, batch_size=4), tmp_path / "a", seed=1)


class Interrupt(Exception):
    pass


def test_resume_ends_with_the_weights_and_metrics_of_an_uninterrupted_run(tiny_model_dir, tmp_path):
    """6 steps over 16 rows (4 per epoch, so the resume crosses an epoch boundary), cosine schedule,
    checkpoints every 2 steps. The interrupted run dies after logging step 3, one step past its
    newest checkpoint; resuming must replay step 3 and end exactly where the uninterrupted run ends."""
    from transformers import TrainerCallback

    class DieAtStep3(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.global_step == 3:
                raise Interrupt

    settings = quick(max_steps=6, batch_size=4, save_every=2, lr_scheduler="cosine", warmup_ratio=0.2)
    whole = train_sft(tiny_model_dir, varied_rows(), CHAT, settings, tmp_path / "whole", seed=0)

    run = tmp_path / "cut"
    with pytest.raises(Interrupt):
        train_sft(tiny_model_dir, varied_rows(), CHAT, settings, run, seed=0, callbacks=[DieAtStep3()])
    assert last_checkpoint(run / "checkpoints").name == "checkpoint-2"
    assert [m["step"] for m in read_jsonl(run / "metrics.jsonl")] == [1, 2, 3]
    assert not (run / "final").exists()

    class FirstStep(TrainerCallback):
        first = None

        def on_step_begin(self, args, state, control, **kwargs):
            FirstStep.first = state.global_step if FirstStep.first is None else FirstStep.first

    resumed = train_sft(tiny_model_dir, varied_rows(), CHAT, settings, run, seed=0, resume=True, callbacks=[FirstStep()])
    assert FirstStep.first == 2  # it continued from checkpoint-2 rather than starting over
    w1, w2 = final_weights(whole), final_weights(resumed)
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    m1, m2 = read_jsonl(tmp_path / "whole" / "metrics.jsonl"), read_jsonl(run / "metrics.jsonl")
    assert [m["step"] for m in m2] == [1, 2, 3, 4, 5, 6]
    assert m1 == m2


def test_lora_trains_and_is_merged_into_a_plain_model(tiny_model_dir, tmp_path):
    lora = LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    final = train_sft(tiny_model_dir, fixed_rows(16), CHAT, quick(max_steps=3, lora=lora, learning_rate=1e-2), tmp_path, seed=0)
    assert not (final / "adapter_config.json").exists()
    base, tuned = final_weights(tiny_model_dir), final_weights(final)
    assert base.keys() == tuned.keys()  # plain parameter names: no lora_A/lora_B, no base_model prefix
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert changed and all(("q_proj" in k or "v_proj" in k) for k in changed), changed
    assert json.loads((final / "tokenizer_config.json").read_text())  # the tokenizer travels with the model


def test_messages_rows_train(tiny_model_dir, tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"{i}+1?"}, {"role": "assistant", "content": f"<answer>{i + 1}</answer>"}]} for i in range(8)]
    final = train_sft(tiny_model_dir, rows, CHAT, quick(max_steps=2, batch_size=4), tmp_path, seed=0)
    assert (final / "model.safetensors").exists() and len(read_jsonl(tmp_path / "metrics.jsonl")) == 2


def test_packing_keeps_examples_apart(tiny_model_dir, tmp_path):
    """All 16 rows in one batch, packed into 128-token rows or padded: the first step's loss (before
    any update) is the same, so packed examples do not attend to one another."""
    def first_loss(packing, out):
        train_sft(tiny_model_dir, varied_rows(), CHAT, quick(max_steps=1, batch_size=16, packing=packing, max_length=128), out, seed=0)
        return read_jsonl(out / "metrics.jsonl")[0]["loss"]

    packed, padded = first_loss(True, tmp_path / "packed"), first_loss(False, tmp_path / "padded")
    assert packed == pytest.approx(padded, rel=1e-5)
