"""The shared-prefix rollout engine: same sampling distribution as `generate`, less work."""

import pytest
import torch

from grpo.rollout import SamplingParams, draw_tokens, get_rollout_engine, sampling_probs
from grpo.tiny import build_char_tokenizer, build_tiny_model
from grpo.trainer import completion_logprobs

PROMPTS = ["<|user|>\nWhat is 3 + 4?</s>\n<|assistant|>\n", "<|user|>\nhi</s>\n<|assistant|>\n", "<|user|>\n2+2</s>\n<|assistant|>\n"]


@pytest.fixture(scope="module")
def lively():
    """A tiny random model with weights scaled up, so its outputs vary with the context (a plain
    random init predicts the same character everywhere, which would let position bugs hide)."""
    tok = build_char_tokenizer()
    model = build_tiny_model(tok, hidden_size=64, num_layers=2, num_heads=4, seed=0)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(8)
    return model.eval(), tok


def test_sampling_probs_match_transformers_warpers():
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    logits = torch.randn(5, 50, generator=torch.Generator().manual_seed(0)) * 3
    for temperature, top_k, top_p in [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.0, 5, 1.0), (0.9, 0, 0.8), (1.3, 10, 0.5)]:
        scores = TemperatureLogitsWarper(temperature)(None, logits.clone())
        if top_k:
            scores = TopKLogitsWarper(top_k)(None, scores)
        if top_p < 1.0:
            scores = TopPLogitsWarper(top_p)(None, scores)
        expected = scores.softmax(-1)
        assert torch.allclose(sampling_probs(logits, temperature, top_k, top_p), expected, atol=1e-6), (temperature, top_k, top_p)


def test_draw_tokens_inverse_cdf_by_hand():
    probs = torch.tensor([[0.25, 0.0, 0.5, 0.25]]).repeat(6, 1)  # cdf 0.25, 0.25, 0.75, 1 (exact in binary)
    uniforms = torch.tensor([0.0, 0.125, 0.25, 0.7, 0.75, 0.999])
    assert draw_tokens(probs, uniforms).tolist() == [0, 0, 2, 2, 3, 3]  # never token 1 (p = 0)


def test_draw_tokens_frequencies_follow_the_probabilities():
    probs = torch.tensor([[0.5, 0.2, 0.0, 0.25, 0.05]]).repeat(40_000, 1)
    tokens = draw_tokens(probs, torch.rand(40_000, generator=torch.Generator().manual_seed(1)))
    freq = torch.bincount(tokens, minlength=5).float() / 40_000
    assert freq[2] == 0 and torch.allclose(freq, probs[0], atol=0.01)


def test_greedy_equals_generate(lively):
    model, tok = lively
    engine = get_rollout_engine("shared_prefix", model, tok)
    enc = tok(PROMPTS, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    out = model.generate(**enc, do_sample=False, max_new_tokens=16, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    expected = [tok.decode(o[enc["input_ids"].shape[1] :]) for o in out]
    rollout = engine.generate(PROMPTS, SamplingParams(2, 16, temperature=0))
    assert rollout.texts == [t for t in expected for _ in range(2)]
    assert len(set(expected)) == 3  # the model's output depends on the prompt


def test_sampled_logprobs_equal_the_training_forward(lively):
    """What the engine sampled from is what the loss differentiates: positions, cache and masks agree."""
    model, tok = lively
    engine = get_rollout_engine("shared_prefix", model, tok)
    rollout = engine.generate(PROMPTS, SamplingParams(4, 24, temperature=0.8), seeds=[1, 2, 3])
    with torch.no_grad():
        logp, _ = completion_logprobs(model, rollout, slice(0, 12), 0.8)
    mask = rollout.completion_mask.bool()
    diff = (logp[mask] - engine.last_logprobs[mask]).abs().max().item()
    assert diff < 2e-3, diff  # (weights scaled by 8 magnify float32 rounding)


def test_finished_rows_leave_and_masks_follow_eos():
    tok = build_char_tokenizer()
    model = build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, seed=0)
    with torch.no_grad():  # make </s> likely but not certain, so rows end at different steps
        model.lm_head.weight[tok.eos_token_id] += 0.08 * model.model.norm.weight.sign() * 20
    engine = get_rollout_engine("shared_prefix", model, tok)
    rollout = engine.generate(PROMPTS, SamplingParams(6, 30, temperature=1.0), seeds=[0, 1, 2])
    ids, mask = rollout.completion_ids, rollout.completion_mask
    lengths = rollout.lengths.tolist()
    assert len(set(lengths)) > 1 and ids.shape[1] == max(lengths)
    for row in range(ids.shape[0]):
        n = lengths[row]
        if rollout.truncated[row]:
            assert n == 30 and tok.eos_token_id not in ids[row].tolist()
        else:
            assert ids[row, n - 1] == tok.eos_token_id and tok.eos_token_id not in ids[row, : n - 1].tolist()
            assert (ids[row, n:] == tok.pad_token_id).all() and (mask[row, n:] == 0).all()


def test_a_completion_does_not_depend_on_the_rest_of_the_batch(lively):
    """Per-row generators: a data-parallel rank sampling some prompts gets the rows one process gets."""
    model, tok = lively
    engine = get_rollout_engine("shared_prefix", model, tok)
    params = SamplingParams(4, 20, temperature=1.0)
    whole = engine.generate(PROMPTS, params, seeds=[10, 11, 12])
    part = engine.generate(PROMPTS[1:], params, seeds=[11, 12])
    assert whole.texts[4:] == part.texts
    again = engine.generate(PROMPTS, params, seeds=[10, 11, 12])
    other = engine.generate(PROMPTS, params, seeds=[13, 11, 12])
    assert again.texts == whole.texts and other.texts[:4] != whole.texts[:4] and other.texts[4:] == whole.texts[4:]
    assert len(set(whole.texts[:4])) > 1  # a group's completions differ from one another


def test_seed_count_must_match_prompts(lively):
    model, tok = lively
    with pytest.raises(ValueError, match="seeds: expected one per prompt"):
        get_rollout_engine("shared_prefix", model, tok).generate(PROMPTS, SamplingParams(2, 4), seeds=[1])


def test_hf_engine_samples_from_the_recipes_distribution_not_the_checkpoints(lively):
    """A checkpoint's generation_config (repetition penalty, n-gram ban, top-k, min-p) must not reach
    the sampler: the hf engine's log-probs equal the training forward's."""
    model, tok = lively
    model.generation_config.repetition_penalty = 3.0
    model.generation_config.no_repeat_ngram_size = 2
    model.generation_config.top_k = 5
    model.generation_config.min_p = 0.2  # one generate would take from the model for any setting left unset
    try:
        engine = get_rollout_engine("hf", model, tok)
        rollout = engine.generate(PROMPTS, SamplingParams(4, 24, temperature=0.8), seeds=[1, 2, 3])
        assert model.generation_config.repetition_penalty == 3.0  # the model's own config is put back
    finally:
        model.generation_config.repetition_penalty, model.generation_config.no_repeat_ngram_size = 1.0, 0
        model.generation_config.top_k = model.generation_config.min_p = None
    with torch.no_grad():
        logp, _ = completion_logprobs(model, rollout, slice(0, 12), 0.8)
        best = _max_logprobs(model, rollout, 0.8)
    mask = rollout.completion_mask.bool()
    assert (logp[mask] - rollout.sampling_logprobs[mask]).abs().max() < 2e-3
    assert (rollout.sampling_logprobs[~mask] == 0).all()
    # tokens min-p 0.2 would never have drawn (p < 0.2·p_max) were drawn: the checkpoint's min-p was not applied
    assert ((logp - best)[mask] < torch.log(torch.tensor(0.2))).sum() >= 3
    # top-k/top-p from the recipe do apply: log p under the truncated, renormalised distribution
    truncated = engine.generate(PROMPTS, SamplingParams(2, 8, temperature=1.0, top_k=3), seeds=[4, 5, 6])
    with torch.no_grad():
        full, _ = completion_logprobs(model, truncated, slice(0, 6), 1.0)
    m = truncated.completion_mask.bool()
    assert (truncated.sampling_logprobs[m] >= full[m] - 1e-4).all() and (truncated.sampling_logprobs[m] > full[m] + 1e-3).any()


def _max_logprobs(model, rollout, temperature):
    """log p of the most likely token at each completion position, [N, L]."""
    ids = torch.cat([rollout.prompt_ids, rollout.completion_ids], dim=1)
    mask = torch.cat([rollout.prompt_mask, rollout.completion_mask], dim=1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0)).logits
    L = rollout.completion_ids.shape[1]
    return torch.log_softmax(logits[:, -L - 1 : -1].float() / temperature, dim=-1).max(dim=-1).values


def test_rollouts_carry_the_samplers_logprobs_through_select_and_concat(lively):
    from grpo.rollout import concat_rollouts

    model, tok = lively
    engine = get_rollout_engine("shared_prefix", model, tok)
    a = engine.generate(PROMPTS[:1], SamplingParams(2, 6, temperature=1.0), seeds=[1])
    b = engine.generate(PROMPTS[1:], SamplingParams(2, 10, temperature=1.0), seeds=[2, 3])
    assert torch.equal(b.sampling_logprobs, engine.last_logprobs)
    both = concat_rollouts([a, b], tok.pad_token_id)
    assert both.sampling_logprobs.shape == both.completion_ids.shape
    assert torch.equal(both.sampling_logprobs[:2, : a.completion_ids.shape[1]], a.sampling_logprobs)
    assert torch.equal(both.select([3, 0]).sampling_logprobs[1], both.sampling_logprobs[0])


def test_no_deprecated_past_key_values_argument(lively):
    """transformers 5.24 renamed the KV-cache argument to `cache=` and removes `past_key_values=` in
    5.40: our forwards must not pass the old name (here a forward that refuses it, as 5.40 will)."""
    from grpo.rollout import cache_kwargs

    import transformers
    from packaging.version import Version

    model, tok = lively
    if Version(transformers.__version__) < Version("5.24"):  # (.venv-vllm pins an older one, which takes only the old name)
        assert list(cache_kwargs(model, None)) == ["past_key_values"]
        return
    assert list(cache_kwargs(model, None)) == ["cache"]  # the installed transformers takes `cache=`
    real_forward = model.forward

    def refusing(*args, **kwargs):
        if "past_key_values" in kwargs:
            raise TypeError("forward() got an unexpected keyword argument 'past_key_values'")
        return real_forward(*args, **kwargs)

    model.forward = refusing
    try:
        rollout = get_rollout_engine("shared_prefix", model, tok).generate(PROMPTS, SamplingParams(4, 8, temperature=1.0), seeds=[1, 2, 3])
        with torch.no_grad():
            completion_logprobs(model, rollout, slice(0, 12), 1.0, group_size=4)
    finally:
        del model.forward
