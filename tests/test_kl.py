"""KL said truly: what each estimator's gradient is in the loss, k1 refused there, and `kl_in: reward`."""

import pytest
import torch

import grpo.trainer as trainer_module
from grpo.config import GRPOConfig
from grpo.loss import kl_divergence, kl_reward_penalty
from grpo.models import load_model_and_tokenizer
from grpo.schema import ConfigError, from_dict
from grpo.scoring import RewardTerm
from grpo.trainer import GRPOTrainer, completion_logprobs

from test_trainer import digit_share, make_rows


def expected_pathwise_gradient(theta, ref_logp, estimator):
    """E_{y~π_θ}[∇_θ k(y)] with y held fixed (what the loss's gradient averages to over samples)."""
    logp = torch.log_softmax(theta, -1)
    per_token = kl_divergence(logp, ref_logp, estimator)
    (grad,) = torch.autograd.grad((logp.exp().detach() * per_token).sum(), theta)
    return grad


def test_estimator_gradients_are_the_documented_ones():
    theta = torch.tensor([0.3, -1.0, 0.8, 0.1], requires_grad=True)
    ref_logp = torch.log_softmax(torch.tensor([0.0, 0.5, -0.2, 0.4]), -1)
    p, ref = torch.softmax(theta, -1), ref_logp.exp()
    (forward_kl,) = torch.autograd.grad((p * (torch.log(p) - ref_logp)).sum(), theta)  # ∇ KL(π_θ‖π_ref)
    p = torch.softmax(theta, -1)
    (reverse_kl,) = torch.autograd.grad((ref * (ref_logp - torch.log(p))).sum(), theta)  # ∇ KL(π_ref‖π_θ)
    assert torch.allclose(expected_pathwise_gradient(theta, ref_logp, "k1"), torch.zeros(4), atol=1e-7)
    assert torch.allclose(expected_pathwise_gradient(theta, ref_logp, "k2"), forward_kl, atol=1e-6)
    assert torch.allclose(expected_pathwise_gradient(theta, ref_logp, "k3"), reverse_kl, atol=1e-6)
    assert not torch.allclose(forward_kl, reverse_kl, atol=1e-3)  # the two really differ here


def test_k1_in_the_loss_is_refused_with_one_line():
    with pytest.raises(ConfigError) as err:
        from_dict(GRPOConfig, {"kl_estimator": "k1"}, "grpo")
    message = str(err.value)
    assert message.startswith("grpo.kl_estimator: 'k1' in the loss has zero expected gradient") and "\n" not in message
    assert "use k3" in message and "kl_in: reward" in message
    GRPOConfig(kl_estimator="k1", kl_in="reward")  # as a reward it is the right estimator
    GRPOConfig(kl_estimator="k1", beta=0.0)  # no KL at all


def test_kl_reward_penalty_by_hand():
    old = torch.tensor([[-1.0, -2.0, -0.5], [-0.1, -0.2, -9.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-0.3, -0.2, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    # row 0: β·(0.5 − 1.0 + 0) ; row 1: β·(0.2 + 0), its third token masked
    assert kl_reward_penalty(old, ref, mask, 0.1).tolist() == pytest.approx([-0.05, 0.02])


def test_kl_in_reward_penalises_the_rewards_and_leaves_the_loss_without_kl(tiny_model_dir, tmp_path, monkeypatch):
    model, tok = load_model_and_tokenizer(tiny_model_dir)
    cfg = GRPOConfig(steps=3, prompts_per_step=2, group_size=4, max_new_tokens=8, learning_rate=3e-3, beta=0.5, kl_in="reward",
                     progress=False, save_every=100)
    trainer = GRPOTrainer(model, tok, [RewardTerm("digits", digit_share, 1.0)], make_rows(tok), cfg, tmp_path, seed=0)
    seen = {"rollouts": [], "advantage_rewards": [], "betas": []}
    real_rollout, real_adv, real_loss = trainer._rollout_and_score, trainer_module.compute_advantages, trainer_module.policy_loss

    def keep_rollout(*args, **kwargs):
        out = real_rollout(*args, **kwargs)
        seen["rollouts"].append((out[0], torch.tensor(out[2].total)))
        return out

    def spy_advantages(rewards, *args, **kwargs):
        rollout, raw = seen["rollouts"][-1]
        with torch.no_grad():  # π_old and π_ref computed here, independently of the trainer's own
            old, _ = completion_logprobs(trainer.model, rollout, slice(0, 8), 1.0)
            with trainer.ref_packed:
                ref, _ = completion_logprobs(trainer.ref_model, rollout, slice(0, 8), 1.0)
        seen["advantage_rewards"].append((raw, rewards.clone(), 0.5 * ((old - ref) * rollout.completion_mask).sum(-1)))
        return real_adv(rewards, *args, **kwargs)

    def spy_loss(*args, **kwargs):
        seen["betas"].append(kwargs["beta"])
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(trainer, "_rollout_and_score", keep_rollout)
    monkeypatch.setattr(trainer_module, "compute_advantages", spy_advantages)
    monkeypatch.setattr(trainer_module, "policy_loss", spy_loss)
    metrics = [trainer.step(s)[0] for s in (1, 2, 3)]
    assert seen["betas"] == [0.0, 0.0, 0.0]  # no KL term in the loss
    for m, (raw, advantage_rewards, penalty) in zip(metrics, seen["advantage_rewards"]):
        assert torch.allclose(advantage_rewards, raw - penalty, atol=1e-5)  # r − β·Σ_t k1, row by row
        assert m["reward"] == pytest.approx(float(raw.mean()))  # `reward` stays the task's reward
        assert m["kl_penalty"] == pytest.approx(float(penalty.mean()), abs=1e-5)
    assert abs(metrics[-1]["kl_penalty"]) > 1e-4 and metrics[-1]["kl"] != 0  # the policy moved: the penalty bites
