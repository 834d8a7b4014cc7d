"""The ``vllm`` rollout engine, run for real: vLLM's CPU build in this process (``make test-vllm``).

These tests need the ``.venv-vllm`` environment (``make install-vllm``); the main suite does not
collect this directory (``norecursedirs`` in pyproject.toml). It is not called ``tests/vllm``: with
``tests/`` on ``sys.path`` (pytest puts it there) that directory would import as a namespace
package named ``vllm`` wherever the real one is missing. The engine runs in-process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so nothing is spawned and no ``__main__`` guard is needed.

Models: tiny random-init Llamas with the character tokenizer of ``grpo/tiny.py``, 2 heads of 64
dimensions (vLLM's CPU attention has no kernel for the 16-dimension heads of the main suite's
tiny model), weights scaled up so outputs depend on the context and some completions end early.
"""

import math
import os
import subprocess
import sys

import pytest
import torch

if os.environ.get("GRPO_REQUIRE_VLLM") == "1":  # make test-vllm: a broken vLLM install fails, never skips
    import vllm  # noqa: F401
else:
    pytest.importorskip("vllm", reason="make install-vllm: these tests run in .venv-vllm")

from grpo.config import GRPOConfig  # noqa: E402
from grpo.models import load_model_and_tokenizer  # noqa: E402
from grpo.rollout import SamplingParams, decode_completions, get_rollout_engine  # noqa: E402
from grpo.rollout_vllm import VLLMEngine, policy_weights  # noqa: E402
from grpo.scoring import RewardTerm  # noqa: E402
from grpo.tiny import save_tiny  # noqa: E402
from grpo.trainer import GRPOTrainer, completion_logprobs  # noqa: E402

os.environ.setdefault("GRPO_VLLM_KV_CACHE_GIB", "0.25")

PROMPTS = ["<|user|>\nWhat is 3 + 4?</s>\n<|assistant|>\n", "<|user|>\nhi</s>\n<|assistant|>\n"]
TOL = 1e-3  # |log p_vLLM − log p_HF| on sampled tokens, float32


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny-vllm") / "model", hidden_size=128, num_heads=2, seed=0)


def load_lively(model_dir, scale=8.0):
    model, tok = load_model_and_tokenizer(model_dir)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    return model.eval(), tok


@pytest.fixture(scope="module")
def engine(model_dir):
    model, tok = load_lively(model_dir)
    eng = get_rollout_engine("vllm", model, tok)
    yield eng
    eng.close()


def hf_logprobs(model, rollout, temperature):
    with torch.no_grad():
        return completion_logprobs(model, rollout, slice(0, rollout.completion_ids.shape[0]), temperature)[0]


def max_masked_diff(a, b, mask):
    return ((a - b) * mask).abs().max().item()


# --- (a) the Rollout contract ---------------------------------------------------------------------


def test_registered_lazily_and_importing_grpo_does_not_import_vllm():
    code = "import sys, grpo.rollout, grpo.trainer, grpo.evaluation; assert 'vllm' not in sys.modules; print(type(grpo.rollout.ROLLOUT_ENGINES['vllm']).__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "function"  # the lazy factory, until grpo.rollout_vllm is imported


def test_rollout_contract(engine):
    tok, G, max_new = engine.tokenizer, 8, 40
    rollout = engine.generate(PROMPTS, SamplingParams(G, max_new, temperature=0.7), seeds=[11, 12])
    assert isinstance(engine, VLLMEngine)
    N = len(PROMPTS) * G

    # prompts: the hf engine's left-padded tokenisation, each prompt repeated G times
    enc = tok(PROMPTS, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    assert torch.equal(rollout.prompt_ids, enc["input_ids"].repeat_interleave(G, dim=0))
    assert torch.equal(rollout.prompt_mask, enc["attention_mask"].repeat_interleave(G, dim=0))
    assert rollout.prompt_mask[G:, 0].sum() == 0  # the shorter prompt is padded on the left

    # completions: right-padded, mask up to and including the first eos, truncated = no eos
    ids, mask = rollout.completion_ids, rollout.completion_mask
    assert ids.shape[0] == N and mask.shape == ids.shape and ids.shape[1] <= max_new
    eos, pad = tok.eos_token_id, tok.pad_token_id
    ended = 0
    for i in range(N):
        n = int(mask[i].sum())
        assert mask[i, :n].all() and not mask[i, n:].any()
        assert (ids[i, n:] == pad).all()
        eos_at = (ids[i, :n] == eos).nonzero().flatten().tolist()
        if rollout.truncated[i]:
            assert eos_at == [] and n == max_new
        else:
            assert eos_at == [n - 1]  # the first eos closes the completion and is inside the mask
            ended += 1
    assert 0 < ended < N, "the lively tiny model should end some completions early and run others out"
    assert rollout.texts == decode_completions(tok, ids, mask, rollout.truncated)
    assert all("</s>" not in t for t, cut in zip(rollout.texts, rollout.truncated) if not cut)

    # the sampled tokens' log-probabilities: negative inside the mask, 0 past it
    lp = engine.last_logprobs
    assert lp.shape == ids.shape
    assert (lp[mask.bool()] <= 0).all() and (lp[~mask.bool()] == 0).all()


# --- (b) seeds --------------------------------------------------------------------------------------


def test_same_seed_same_completions_other_seed_other_completions(engine):
    params = SamplingParams(4, 24, temperature=1.0, top_p=0.95, top_k=50)
    a = engine.generate(PROMPTS, params, seeds=[5, 6])
    a_lp = engine.last_logprobs.clone()
    b = engine.generate(PROMPTS, params, seeds=[5, 6])
    assert torch.equal(a.completion_ids, b.completion_ids) and a.texts == b.texts
    assert torch.equal(a_lp, engine.last_logprobs)
    c = engine.generate(PROMPTS, params, seeds=[7, 6])
    assert not torch.equal(a.completion_ids[:4], c.completion_ids[:4])  # prompt 0's seed changed
    assert a.texts[4:] == c.texts[4:]  # prompt 1 kept its seed: its samples do not depend on the batch
    # the G samples of one prompt differ from each other (vLLM gives sample j the seed s + j)
    assert len(set(a.texts[:4])) > 1
    # without seeds the engine draws them from the global torch RNG
    torch.manual_seed(3)
    d = engine.generate(PROMPTS, params)
    torch.manual_seed(3)
    e = engine.generate(PROMPTS, params)
    assert d.texts == e.texts


# --- (c) weight sync --------------------------------------------------------------------------------


def test_weight_sync_makes_vllm_follow_the_policy(model_dir):
    model, tok = load_lively(model_dir)
    eng = get_rollout_engine("vllm", model, tok)
    try:
        eng.auto_sync = False
        params, T = SamplingParams(4, 24, temperature=0.8), 0.8
        r = eng.generate(PROMPTS, params, seeds=[1, 2])
        m = r.completion_mask.float()
        assert max_masked_diff(eng.last_logprobs, hf_logprobs(model, r, T), m) < TOL  # the initial weights

        old = {n: p.detach().clone() for n, p in model.named_parameters()}
        with torch.no_grad():  # a change the size of many optimiser steps
            g = torch.Generator().manual_seed(0)
            for p in model.parameters():
                p.add_(0.5 * p.std() * torch.randn(p.shape, generator=g))

        r = eng.generate(PROMPTS, params, seeds=[1, 2])  # not synced yet: still the old weights
        m = r.completion_mask.float()
        stale, fresh = eng.last_logprobs, hf_logprobs(model, r, T)
        assert max_masked_diff(stale, fresh, m) > 0.1
        with torch.no_grad():
            now = {n: p.detach().clone() for n, p in model.named_parameters()}
            for n, p in model.named_parameters():
                p.copy_(old[n])
            assert max_masked_diff(stale, hf_logprobs(model, r, T), m) < TOL  # ... it matches the old policy
            for n, p in model.named_parameters():
                p.copy_(now[n])

        eng.sync_weights(model)
        r = eng.generate(PROMPTS, params, seeds=[1, 2])
        m = r.completion_mask.float()
        assert max_masked_diff(eng.last_logprobs, hf_logprobs(model, r, T), m) < TOL

        # greedy decoding agrees with HF's argmax on the synced weights
        r = eng.generate(PROMPTS, SamplingParams(2, 12, temperature=0.0), seeds=[0, 0])
        with torch.no_grad():
            for i in range(r.completion_ids.shape[0]):
                prompt = r.prompt_ids[i][r.prompt_mask[i].bool()]
                hf = model.generate(prompt[None], attention_mask=torch.ones_like(prompt)[None], do_sample=False,
                                    max_new_tokens=12, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
                n = int(r.completion_mask[i].sum())
                assert hf[0, len(prompt):len(prompt) + n].tolist() == r.completion_ids[i, :n].tolist()
    finally:
        eng.close()


def test_generate_syncs_by_itself_after_an_optimiser_step(model_dir):
    model, tok = load_lively(model_dir)
    eng = get_rollout_engine("vllm", model, tok)
    try:
        params, T = SamplingParams(4, 16, temperature=1.0), 1.0
        r = eng.generate(PROMPTS, params, seeds=[3, 4])
        syncs = eng.syncs
        opt = torch.optim.SGD(model.parameters(), lr=5.0)
        lp = completion_logprobs(model.train(), r, slice(0, 8), T)[0]
        (-(lp * r.completion_mask[:8]).sum()).backward()
        opt.step()  # in-place update: bumps the parameters' version counters
        model.eval()
        r = eng.generate(PROMPTS, params, seeds=[3, 4])
        assert eng.syncs == syncs + 1
        assert max_masked_diff(eng.last_logprobs, hf_logprobs(model, r, T), r.completion_mask.float()) < TOL
        eng.generate(PROMPTS, params, seeds=[3, 4])
        assert eng.syncs == syncs + 1  # nothing changed: no copy
    finally:
        eng.close()


def test_lora_policy_is_sent_merged(model_dir):
    from peft import LoraConfig, get_peft_model

    base, tok = load_lively(model_dir)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g))  # B = 0 at init would make the test vacuous
    before = {n: t.clone() for n, t in model.state_dict().items()}
    merged = policy_weights(model)
    assert not any("lora_" in n or "base_layer" in n for n in merged)
    assert all(torch.equal(before[n], t) for n, t in model.state_dict().items())  # the policy is untouched
    eng = get_rollout_engine("vllm", model.eval(), tok)
    try:
        r = eng.generate(PROMPTS, SamplingParams(4, 16, temperature=1.0), seeds=[8, 9])
        m = r.completion_mask.float()
        assert max_masked_diff(eng.last_logprobs, hf_logprobs(model, r, 1.0), m) < TOL
        with model.disable_adapter():
            assert max_masked_diff(eng.last_logprobs, hf_logprobs(model, r, 1.0), m) > 0.1  # the adapter matters
    finally:
        eng.close()


# --- (d) GRPO with vLLM rollouts ---------------------------------------------------------------------


def digit_share(prompts, completions, **_):
    return [sum(ch.isdigit() for ch in c) / max(1, len(c)) for c in completions]


def test_three_grpo_steps_with_vllm_rollouts(model_dir, tmp_path):
    model, tok = load_model_and_tokenizer(model_dir)
    rows = [{"prompt": tok.apply_chat_template([{"role": "user", "content": f"{i}+{i}?"}], tokenize=False, add_generation_prompt=True),
             "solution": str(2 * i)} for i in range(12)]
    cfg = GRPOConfig(steps=3, prompts_per_step=2, group_size=4, max_new_tokens=12, learning_rate=3e-3, beta=0.04,
                     save_every=3, progress=False, rollout_engine="vllm")
    trainer = GRPOTrainer(model, tok, [RewardTerm("digits", digit_share, 1.0)], rows, cfg, tmp_path, seed=0)
    try:
        assert isinstance(trainer.engine, VLLMEngine)
        result = trainer.train()
        assert [m["step"] for m in result.metrics] == [1, 2, 3]
        for m in result.metrics:
            assert math.isfinite(m["loss"]) and m["completions/max_length"] <= 12 and m["kl"] >= 0
        assert result.metrics[-1]["kl"] > 0  # the policy moved, so the rollouts of steps 2-3 came from moved weights
        # the initial load, then one sync before each of steps 2 and 3 (the weights changed after steps 1 and 2)
        assert trainer.engine.syncs == 3
        assert (tmp_path / "final" / "model.safetensors").exists()
        # the engine is on the trained policy: its log-probs are HF's on the final weights
        r = trainer.engine.generate([rows[0]["prompt"]], SamplingParams(4, 12, temperature=1.0), seeds=[0])
        assert max_masked_diff(trainer.engine.last_logprobs, hf_logprobs(trainer.model.eval(), r, 1.0), r.completion_mask.float()) < TOL
    finally:
        trainer.engine.close()
