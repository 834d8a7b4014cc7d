"""The GRPO formulas against numbers computed by hand, and the loss against TRL's."""

import math
import types

import pytest
import torch

from grpo.advantages import compute_advantages
from grpo.loss import AGGREGATIONS, BatchShape, kl_divergence, policy_loss

LN2 = math.log(2.0)


# --- advantages ------------------------------------------------------------------------------

def test_grpo_advantages_by_hand():
    # group 1: mean 0.25, sample std sqrt((0.75² + 3·0.25²)/3) = 0.5 ; group 2: all equal
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    adv, stats = compute_advantages(rewards, group_size=4, estimator="grpo", eps=0.0)
    assert adv.tolist() == pytest.approx([1.5, -0.5, -0.5, -0.5, 0.0, 0.0, 0.0, 0.0])
    assert stats.frac_reward_zero_std == 0.5
    assert stats.reward_std == pytest.approx(0.25)  # mean of the group stds 0.5 and 0


def test_grpo_advantages_eps_and_exact_zero_for_equal_groups():
    rewards = torch.tensor([0.1, 0.1, 0.1, 1.0, 0.0, 0.0])  # 0.1·3/3 is not exactly 0.1 in floats
    adv, stats = compute_advantages(rewards, group_size=3, estimator="grpo", eps=1e-4)
    assert adv[:3].tolist() == [0.0, 0.0, 0.0]
    # group 2: mean 1/3, std sqrt(((2/3)² + 2·(1/3)²)/2) = sqrt(1/3)
    std = math.sqrt(1 / 3)
    assert adv[3:].tolist() == pytest.approx([(2 / 3) / (std + 1e-4), (-1 / 3) / (std + 1e-4), (-1 / 3) / (std + 1e-4)])
    assert stats.frac_reward_zero_std == 0.5


def test_dr_grpo_advantages_are_mean_centred_only():
    rewards = torch.tensor([2.0, 0.0, 1.0, 1.0])
    adv, _ = compute_advantages(rewards, group_size=2, estimator="dr_grpo")
    assert adv.tolist() == [1.0, -1.0, 0.0, 0.0]


def test_batch_std_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    # batch: five 1s, three 0s, mean 5/8; sample variance (5·(3/8)² + 3·(5/8)²)/7 = 120/448
    std = math.sqrt(120 / 448)
    adv, _ = compute_advantages(rewards, group_size=4, estimator="batch_std", eps=0.0)
    assert adv.tolist() == pytest.approx([0.75 / std, -0.25 / std, -0.25 / std, -0.25 / std, 0, 0, 0, 0])


def test_unknown_estimator_and_bad_shape():
    with pytest.raises(ValueError, match="unknown advantage estimator 'ppo'"):
        compute_advantages(torch.zeros(4), 2, "ppo")
    with pytest.raises(ValueError, match="multiple of group_size=3"):
        compute_advantages(torch.zeros(4), 3)


# --- KL ---------------------------------------------------------------------------------------

def test_kl_estimators_by_hand():
    logp = torch.tensor([math.log(0.5)])
    ref = torch.tensor([math.log(0.25)])  # δ = ref − logp = −ln 2
    assert kl_divergence(logp, ref, "k1").item() == pytest.approx(LN2)
    assert kl_divergence(logp, ref, "k2").item() == pytest.approx(0.5 * LN2**2)
    assert kl_divergence(logp, ref, "k3").item() == pytest.approx(0.5 + LN2 - 1)
    assert kl_divergence(ref, ref, "k3").item() == 0.0
    with pytest.raises(ValueError, match="unknown kl_estimator 'k4'"):
        kl_divergence(logp, ref, "k4")


# --- policy loss ------------------------------------------------------------------------------

def test_policy_loss_on_policy_is_minus_advantage():
    logp = torch.log(torch.tensor([[0.3, 0.6]]))
    loss, stats = policy_loss(logp.clone().requires_grad_(), None, torch.tensor([2.0]), torch.ones(1, 2))
    assert loss.item() == pytest.approx(-2.0)
    assert stats.ratio_mean == 1.0 and stats.clip_region == 0.0 and stats.kl is None


def test_policy_loss_clipping_by_hand():
    old = torch.zeros(2, 1)
    logp = torch.tensor([[math.log(1.5)], [math.log(0.5)]])
    adv = torch.tensor([1.0, -1.0])
    loss, stats = policy_loss(logp, old, adv, torch.ones(2, 1), epsilon_low=0.2, epsilon_high=0.2)
    # row 1: −min(1.5, 1.2) = −1.2 ; row 2: −min(−0.5, −0.8) = 0.8 ; mean over rows
    assert loss.item() == pytest.approx((-1.2 + 0.8) / 2)
    assert stats.clip_high == 0.5 and stats.clip_low == 0.5 and stats.clip_region == 1.0


def test_clip_higher_uses_epsilon_high():
    old = torch.zeros(1, 1)
    logp = torch.tensor([[math.log(1.25)]])
    loss, stats = policy_loss(logp, old, torch.tensor([1.0]), torch.ones(1, 1), epsilon_low=0.2, epsilon_high=0.28)
    assert loss.item() == pytest.approx(-1.25) and stats.clip_high == 0.0


def test_kl_is_added_inside_the_loss():
    logp = torch.full((1, 2), math.log(0.5))
    ref = torch.full((1, 2), math.log(0.25))
    loss, stats = policy_loss(logp, None, torch.tensor([0.0]), torch.ones(1, 2), ref_logp=ref, beta=0.1)
    assert loss.item() == pytest.approx(0.1 * (0.5 + LN2 - 1))
    assert stats.kl == pytest.approx(0.5 + LN2 - 1)
    with pytest.raises(ValueError, match="beta > 0 needs ref_logp"):
        policy_loss(logp, None, torch.tensor([0.0]), torch.ones(1, 2), beta=0.1)


def test_aggregations_by_hand():
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    shape = BatchShape(num_sequences=2, num_tokens=4, max_completion_length=3)
    assert AGGREGATIONS["grpo"](per_token, mask, shape).item() == pytest.approx((2.0 + 4.0) / 2)
    assert AGGREGATIONS["bnpo"](per_token, mask, shape).item() == pytest.approx(10 / 4)
    assert AGGREGATIONS["dapo"](per_token, mask, shape).item() == pytest.approx(10 / 4)
    assert AGGREGATIONS["dr_grpo"](per_token, mask, shape).item() == pytest.approx(10 / 6)


@pytest.mark.parametrize("aggregation", ["grpo", "dapo", "dr_grpo"])
def test_micro_batches_add_up_to_the_full_batch(aggregation):
    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(6, 5, generator=g)
    old = logp + 0.1 * torch.randn(6, 5, generator=g)
    ref = logp + 0.1 * torch.randn(6, 5, generator=g)
    adv = torch.randn(6, generator=g)
    mask = (torch.rand(6, 5, generator=g) > 0.3).float()
    kw = dict(ref_logp=ref, beta=0.05, aggregation=aggregation)
    shape = BatchShape(num_sequences=6, num_tokens=int(mask.sum()), num_micro_batches=3, max_completion_length=5)
    full, _ = policy_loss(logp, old, adv, mask, batch=BatchShape(6, int(mask.sum()), 1, 5), **kw)
    parts = [policy_loss(logp[s], old[s], adv[s], mask[s], batch=shape, **{**kw, "ref_logp": ref[s]})[0] for s in (slice(0, 2), slice(2, 4), slice(4, 6))]
    assert sum(p.item() for p in parts) == pytest.approx(full.item(), abs=1e-6)


# --- parity with TRL --------------------------------------------------------------------------

def _trl_loss(loss_type, logp, old_logp, ref_logp, adv, mask, beta, eps_low, eps_high, max_len):
    """Call TRL's own GRPOTrainer._compute_loss with its model forward replaced by fixed logprobs."""
    from collections import defaultdict

    from trl import GRPOTrainer as TRLGRPOTrainer

    n, T = logp.shape
    identity = lambda x, **_: x  # noqa: E731  (one process: gather/reduce are the identity)
    stub = types.SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp, torch.zeros_like(logp), None),
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level="token",
        beta=beta,
        epsilon_low=eps_low,
        epsilon_high=eps_high,
        loss_type=loss_type,
        use_vllm=False,
        model=types.SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1,
        max_completion_length=max_len,
        aux_loss_enabled=False,
        _entropy_bonus_enabled=False,
        _metrics={"train": defaultdict(list)},
        args=types.SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
        accelerator=types.SimpleNamespace(num_processes=1, gather=identity, reduce=identity, gather_for_metrics=identity),
    )
    inputs = {
        "prompt_ids": torch.zeros(n, 1, dtype=torch.long),
        "prompt_mask": torch.ones(n, 1, dtype=torch.long),
        "completion_ids": torch.zeros(n, T, dtype=torch.long),
        "completion_mask": mask.long(),
        "advantages": adv,
        "old_per_token_logps": old_logp,
        "ref_per_token_logps": ref_logp,
        "num_items_in_batch": mask.sum(),
    }
    return TRLGRPOTrainer._compute_loss(stub, None, inputs), stub._metrics["train"]


@pytest.mark.parametrize("aggregation", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_loss_equals_trl(aggregation, beta):
    g = torch.Generator().manual_seed(1)
    n, T = 8, 7
    logp = -3 * torch.rand(n, T, generator=g)
    old = logp + 0.3 * torch.randn(n, T, generator=g)  # large enough that both clip sides trigger
    ref = logp + 0.2 * torch.randn(n, T, generator=g)
    adv = torch.randn(n, generator=g)
    lengths = torch.tensor([7, 3, 5, 1, 7, 2, 6, 4])
    mask = (torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)).float()
    ours, stats = policy_loss(
        logp, old, adv, mask, epsilon_low=0.2, epsilon_high=0.28, ref_logp=ref, beta=beta, aggregation=aggregation,
        batch=BatchShape(n, int(mask.sum()), 1, max_completion_length=T),
    )
    theirs, their_metrics = _trl_loss(aggregation, logp, old, ref, adv, mask, beta, 0.2, 0.28, T)
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-6)
    assert stats.clip_region == pytest.approx(their_metrics["clip_ratio/region_mean"][0], abs=1e-6)
    assert stats.clip_region > 0  # the comparison exercised the clipped branch
    if beta:
        assert stats.kl == pytest.approx(their_metrics["kl"][0], abs=1e-6)
