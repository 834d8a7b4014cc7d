"""Completion log-probs in chunks: the same numbers and gradients as all logits at once, with the
logits held at once bounded by the setting."""

import pytest
import torch

import grpo.trainer as trainer_module
from grpo.rollout import SamplingParams, get_rollout_engine
from grpo.tiny import build_char_tokenizer, build_tiny_model
from grpo.trainer import completion_logprobs

PROMPTS = ["<|user|>\nWhat is 3 + 4?</s>\n<|assistant|>\n", "<|user|>\nhi</s>\n<|assistant|>\n"]


def all_at_once(model, batch, temperature, entropy_grad=False):
    """What completion_logprobs computed before chunking: every position's logits at once."""
    input_ids = torch.cat([batch.prompt_ids, batch.completion_ids], dim=1)
    attention = torch.cat([batch.prompt_mask, batch.completion_mask], dim=1)
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
    L = batch.completion_ids.shape[1]
    logits = model(input_ids=input_ids, attention_mask=attention, position_ids=positions, logits_to_keep=L + 1).logits[:, :-1]
    logits = logits.float() / temperature
    log_norm = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(-1, batch.completion_ids.unsqueeze(-1)).squeeze(-1) - log_norm
    entropy = log_norm - (torch.softmax(logits, dim=-1) * logits).sum(-1)
    return logp, entropy if entropy_grad else entropy.detach()


@pytest.fixture(scope="module")
def setup():
    tok = build_char_tokenizer()
    model = build_tiny_model(tok, hidden_size=32, num_layers=2, num_heads=2, seed=0)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4)
    with torch.no_grad():  # make </s> likely, so completions end at different lengths (padding in the batch)
        model.lm_head.weight[tok.eos_token_id] += 0.2 * model.model.norm.weight.sign()
    rollout = get_rollout_engine("shared_prefix", model, tok).generate(PROMPTS, SamplingParams(4, 16, temperature=1.0), seeds=[1, 2])
    assert len(set(rollout.lengths.tolist())) > 1
    return model, rollout


def grads(model, logp, mask):
    model.zero_grad()
    weights = torch.linspace(-1, 1, logp.numel()).reshape(logp.shape)
    (logp * weights * mask).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("group_size", [1, 4])
def test_chunks_give_the_same_numbers_and_gradients(setup, group_size, monkeypatch):
    model, rollout = setup
    model.train()
    rows, mask = slice(0, 8), rollout.completion_mask.float()
    ref_logp, ref_entropy = all_at_once(model, rollout, 0.7)
    ref_grads = grads(model, ref_logp, mask)
    vocab = model.lm_head.out_features
    sizes = []
    real_chunk = trainer_module._chunk_logprobs
    monkeypatch.setattr(trainer_module, "_chunk_logprobs", lambda f, h, *a: sizes.append(h.shape[0]) or real_chunk(f, h, *a))
    for chunk_tokens in (1, 7, 10_000):
        sizes.clear()
        logp, entropy = completion_logprobs(model, rollout, rows, 0.7, with_entropy=True, group_size=group_size,
                                            chunk_mib=chunk_tokens * 4 * vocab / 2**20)
        m = mask.bool()
        assert torch.allclose(logp[m], ref_logp[m], atol=1e-5) and (logp[~m] == 0).all()
        assert torch.allclose(entropy[m], ref_entropy[m], atol=1e-5)
        got = grads(model, logp, mask)
        for name, g in ref_grads.items():
            assert (got[name] - g).abs().max() <= 1e-5 * g.abs().max(), (chunk_tokens, name, float((got[name] - g).abs().max()))
        # the bound: no chunk holds more positions than the setting allows, and only real tokens are projected
        tokens = int(mask.sum())
        recomputed = tokens if chunk_tokens < tokens else 0  # several chunks: each is recomputed in the backward pass
        assert max(sizes) <= chunk_tokens and sum(sizes) == tokens + recomputed
    model.eval()


def test_entropy_gradient_is_the_same_in_chunks(setup):
    """The entropy bonus (entropy_coef) needs the entropy's gradient: in chunks (each recomputed in
    the backward pass) it is the gradient of all logits at once; without entropy_grad, none."""
    model, rollout = setup
    model.train()
    mask = rollout.completion_mask.float()
    ref_grads = grads(model, all_at_once(model, rollout, 0.7, entropy_grad=True)[1], mask)
    vocab = model.lm_head.out_features
    for chunk_tokens in (1, 10_000):
        _, entropy = completion_logprobs(model, rollout, slice(0, 8), 0.7, with_entropy=True, group_size=4,
                                         entropy_grad=True, chunk_mib=chunk_tokens * 4 * vocab / 2**20)
        got = grads(model, entropy, mask)
        for name, g in ref_grads.items():
            assert (got[name] - g).abs().max() <= 1e-5 * g.abs().max(), (chunk_tokens, name)
    _, detached = completion_logprobs(model, rollout, slice(0, 8), 0.7, with_entropy=True, group_size=4, chunk_mib=4 * vocab / 2**20)
    assert not detached.requires_grad
    model.eval()
