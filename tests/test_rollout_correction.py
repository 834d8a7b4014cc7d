"""Sampler–trainer agreement: the mismatch measures and the TIS/MIS weights by hand, their place in
the loss, and a CPU run where bf16 rollouts against a float32 trainer show a mismatch that the
correction weights account for."""

import math

import pytest
import torch

import grpo.trainer as trainer_module
from grpo.config import GRPOConfig
from grpo.loss import policy_loss
from grpo.models import load_model_and_tokenizer
from grpo.rollout import get_rollout_engine
from grpo.rollout_correction import mismatch_stats, resolve_rollout_correction, rollout_correction_weights, sampler_differs
from grpo.scoring import RewardTerm
from grpo.trainer import GRPOTrainer, completion_logprobs

from test_trainer import digit_share, make_rows

LOG = math.log


def test_tis_weights_by_hand():
    old = torch.tensor([[LOG(0.5), LOG(0.2), LOG(0.9), LOG(0.9)]])
    sampler = torch.tensor([[LOG(0.25), LOG(0.4), LOG(0.3), LOG(0.01)]])  # r = 2, 0.5, 3, 90 (the last one masked)
    mask = torch.tensor([[1, 1, 1, 0]])
    w, stats = rollout_correction_weights(old, sampler, mask, "tis", cap=2.5)
    assert torch.allclose(w[0, :3], torch.tensor([2.0, 0.5, 2.5]), atol=1e-6)
    assert stats["rollout_correction/clipped_frac"] == pytest.approx(1 / 3)
    assert stats["rollout_correction/weight_mean"] == pytest.approx(5.0 / 3)


def test_mis_weights_by_hand():
    # sequence 0: R = 2 · 0.75 = 1.5 ∈ [1/2, 2] → every token weighs 1.5; sequence 1: R = 3 → dropped;
    # sequence 2: R = 0.4 < 1/2 → dropped. A masked token's ratio (100) does not count.
    old = torch.log(torch.tensor([[0.4, 0.3, 0.5], [0.6, 0.5, 0.5], [0.2, 0.5, 0.5]]))
    sampler = torch.log(torch.tensor([[0.2, 0.4, 0.005], [0.2, 0.5, 0.5], [0.5, 0.5, 0.5]]))
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 1, 1]])
    w, stats = rollout_correction_weights(old, sampler, mask, "mis", cap=2.0)
    assert torch.allclose(w, torch.tensor([[1.5] * 3, [0.0] * 3, [0.0] * 3]), atol=1e-6)
    assert stats["rollout_correction/masked_frac"] == pytest.approx(2 / 3)
    assert torch.equal(rollout_correction_weights(old, sampler, mask, "none")[0], torch.ones(3, 3))
    with pytest.raises(ValueError, match="unknown rollout_correction 'xis'; registered: none, tis, mis"):
        rollout_correction_weights(old, sampler, mask, "xis")


def test_mismatch_stats_by_hand():
    # δ = log 2 → k3 = 2 − log 2 − 1 = 0.30685; δ = −log 2 → 0.5 + log 2 − 1 = 0.19315; mean 0.25
    old = torch.tensor([[LOG(0.5), LOG(0.25), 0.0]])
    sampler = torch.tensor([[LOG(0.25), LOG(0.5), -9.0]])
    kl, max_abs, n = mismatch_stats(old, sampler, torch.tensor([[1, 1, 0]]))
    assert kl == pytest.approx(0.25, abs=1e-6) and max_abs == pytest.approx(LOG(2), abs=1e-6) and n == 2


def test_weights_multiply_the_policy_gradient_term_not_the_kl():
    """d loss / d logp_t = (−A·w_t + β·(1 − exp(ref − logp)_t)) / T for one sequence of T tokens (μ = 1)."""
    logp = torch.tensor([[-1.0, -2.0, -0.5]], requires_grad=True)
    ref = torch.tensor([[-1.2, -1.5, -0.5]])
    w = torch.tensor([[2.0, 0.5, 1.0]])
    A, beta = 0.7, 0.1
    loss, _ = policy_loss(logp, None, torch.tensor([A]), torch.ones(1, 3), ref_logp=ref, beta=beta, rollout_weights=w)
    loss.backward()
    expected = (-A * w + beta * (1 - torch.exp(ref - logp.detach()))) / 3
    assert torch.allclose(logp.grad, expected, atol=1e-6)


def test_weights_are_constants_even_when_computed_from_the_live_policy():
    """With μ = 1 the trainer's π_old is the live logp (with its graph): the TIS weight must still
    act as a constant, d loss / d logp_t = −A·w_t / T with w_t = min(π_t/π_sampler,t, C), no
    gradient through w."""
    logp = torch.tensor([[LOG(0.5), LOG(0.2), LOG(0.9)]], requires_grad=True)
    sampler = torch.tensor([[LOG(0.25), LOG(0.4), LOG(0.3)]])  # r = 2, 0.5, 3 → w = 2, 0.5, 2.5
    mask = torch.ones(1, 3)
    w, _ = rollout_correction_weights(logp, sampler, mask, "tis", cap=2.5)
    assert not w.requires_grad
    A = 0.7
    loss, _ = policy_loss(logp, None, torch.tensor([A]), mask, rollout_weights=w)
    loss.backward()
    assert torch.allclose(logp.grad, -A * torch.tensor([[2.0, 0.5, 2.5]]) / 3, atol=1e-6)
    # and the loss itself detaches weights handed to it with a graph
    logp.grad = None
    live = torch.exp(logp - sampler).clamp(max=2.5)
    loss, _ = policy_loss(logp, None, torch.tensor([A]), mask, rollout_weights=live)
    loss.backward()
    assert torch.allclose(logp.grad, -A * torch.tensor([[2.0, 0.5, 2.5]]) / 3, atol=1e-6)


def test_auto_turns_the_correction_on_where_the_sampler_differs():
    f32, bf16 = torch.float32, torch.bfloat16
    assert sampler_differs("shared_prefix", 1.0, 0, f32, f32, False) is None
    assert resolve_rollout_correction("auto", None)[0] == "none"
    for args in (("vllm", 1.0, 0, f32, f32, False), ("shared_prefix", 1.0, 0, bf16, f32, True), ("hf", 0.9, 0, f32, f32, False),
                 ("hf", 1.0, 20, f32, f32, False)):
        why = sampler_differs(*args)
        assert why and resolve_rollout_correction("auto", why)[0] == "tis", args
    assert resolve_rollout_correction("mis", None)[0] == "mis"


@pytest.fixture()
def lively_dir(tiny_model_dir, tmp_path):
    """The tiny model with its weights scaled up: large logits, so bf16 rounding shows in log p."""
    model, tok = load_model_and_tokenizer(tiny_model_dir)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4)
    model.save_pretrained(tmp_path / "lively")
    tok.save_pretrained(tmp_path / "lively")
    return tmp_path / "lively"


def _run_one_step(model_dir, out, rollout_dtype, monkeypatch, **overrides):
    model, tok = load_model_and_tokenizer(model_dir)
    cfg = GRPOConfig(steps=1, prompts_per_step=2, group_size=4, max_new_tokens=12, beta=0.0, progress=False, learning_rate=0.0,
                     rollout_correction="tis", rollout_correction_cap=1.05, **overrides)
    trainer = GRPOTrainer(model, tok, [RewardTerm("digits", digit_share, 1.0)], make_rows(tok), cfg, out, seed=0)
    # A float32 trainer whose sampler multiplies in bf16 (the situation of vLLM or bf16 rollouts).
    trainer.engine = get_rollout_engine("shared_prefix", trainer.model, tok, compute_dtype=rollout_dtype)
    seen = {}
    real_policy_loss = trainer_module.policy_loss

    def spy(logp, *args, **kwargs):
        seen["logp"], seen["weights"] = logp.detach().clone(), kwargs["rollout_weights"]
        return real_policy_loss(logp, *args, **kwargs)

    real_rollout = trainer._rollout_and_score

    def keep_rollout(*args, **kwargs):
        out = real_rollout(*args, **kwargs)
        seen["rollout"] = out[0]
        return out

    monkeypatch.setattr(trainer_module, "policy_loss", spy)
    monkeypatch.setattr(trainer, "_rollout_and_score", keep_rollout)
    metrics, _ = trainer.step(1)
    return metrics, seen, trainer


def test_bf16_rollouts_against_a_float32_trainer_are_measured_and_corrected(lively_dir, tmp_path, monkeypatch):
    same, _, _ = _run_one_step(lively_dir, tmp_path / "a", torch.float32, monkeypatch)
    differ, seen, trainer = _run_one_step(lively_dir, tmp_path / "b", torch.bfloat16, monkeypatch)
    assert same["mismatch/kl"] < 1e-9 and same["mismatch/max_abs_logp"] < 1e-4  # float32 both sides: rounding only
    assert differ["mismatch/kl"] > 1e-6 and differ["mismatch/max_abs_logp"] > 1e-3
    assert differ["mismatch/kl"] > 1000 * max(same["mismatch/kl"], 1e-12)
    # The weights the loss received are min(π_old/π_sampler, C), π_old being the trainer's own forward.
    rollout, mask = seen["rollout"], seen["rollout"].completion_mask.bool()
    with torch.no_grad():
        trainer_logp, _ = completion_logprobs(trainer.model, rollout, slice(0, 8), 1.0, group_size=4)
    assert torch.allclose(seen["logp"][mask], trainer_logp[mask], atol=1e-5)  # (learning_rate 0: the weights stay)
    expected = torch.exp(seen["logp"] - rollout.sampling_logprobs).clamp(max=1.05)
    assert torch.allclose(seen["weights"][mask], expected[mask], atol=1e-6)
    assert (seen["weights"][mask] != 1).float().mean() > 0.5  # the correction is doing something
    assert 0 < differ["rollout_correction/clipped_frac"] < 1
    assert differ["rollout_correction/weight_mean"] == pytest.approx(float(expected[mask].mean()), abs=1e-6)
