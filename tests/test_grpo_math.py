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


# --- advantage estimators added with the policy-loss registry ---------------------------------

def test_rloo_advantages_leave_one_out_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    adv, _ = compute_advantages(rewards, group_size=4, estimator="rloo")
    # row 0: 1 − mean(0, 0, 0) = 1 ; rows 1-3: 0 − mean(1, 0, 0) = −1/3 ; equal group: 0
    assert adv.tolist() == pytest.approx([1.0, -1 / 3, -1 / 3, -1 / 3, 0, 0, 0, 0])


def test_reinforce_pp_whitens_group_centred_rewards_over_the_batch():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    # centred: [.75, −.25, −.25, −.25, .5, .5, −.5, −.5]: mean 0, sample variance (0.5625 + 3·0.0625 + 4·0.25)/7 = 0.25
    adv, _ = compute_advantages(rewards, group_size=4, estimator="reinforce_pp", eps=0.0)
    assert adv.tolist() == pytest.approx([1.5, -0.5, -0.5, -0.5, 1.0, 1.0, -1.0, -1.0])
    # batch_std divides by the raw rewards' std instead: sqrt(120/448), a different scale
    other, _ = compute_advantages(rewards, group_size=4, estimator="batch_std", eps=0.0)
    assert other[0].item() == pytest.approx(0.75 / math.sqrt(120 / 448))


def _gdpo_by_hand(table, weights):
    """GDPO step by step in plain Python: per-reward group z-scores, weighted sum, batch whitening."""
    def z(values):
        m = sum(values) / len(values)
        s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
        return [0.0 if s == 0 else (v - m) / s for v in values]

    columns = [z([row[k] for row in table]) for k in range(len(weights))]
    summed = [sum(w * columns[k][i] for k, w in enumerate(weights)) for i in range(len(table))]
    m = sum(summed) / len(summed)
    s = math.sqrt(sum((v - m) ** 2 for v in summed) / (len(summed) - 1))
    return [(v - m) / s for v in summed]


def test_gdpo_keeps_a_small_reward_from_being_drowned_by_a_large_one():
    # One group of 4: a 0/1 correctness reward beside a score on a 0-30 scale (say a length bonus).
    table = [[1.0, 10.0], [0.0, 30.0], [0.0, 20.0], [1.0, 0.0]]
    per_reward = torch.tensor(table)
    weights = torch.tensor([1.0, 1.0])
    totals = (per_reward * weights).sum(1)  # [11, 30, 20, 1]
    grpo, _ = compute_advantages(totals, group_size=4, estimator="grpo", eps=0.0)
    gdpo, _ = compute_advantages(totals, 4, "gdpo", eps=0.0, per_reward=per_reward, weights=weights)
    assert gdpo.tolist() == pytest.approx(_gdpo_by_hand(table, [1.0, 1.0]), abs=1e-6)
    # Summed first, the score decides every sign: the correct, short answer (row 0) is pushed down.
    assert grpo[0] < 0 and grpo[1] > 0
    # Normalised first, correctness counts as much as the score: row 0 is pushed up.
    assert gdpo[0] > 0.9 and gdpo[2] < -0.9
    # Numbers: z(correct) = ±0.866, z(score) = [−.387, 1.162, .387, −1.162]; sum whitened
    assert gdpo.tolist() == pytest.approx([1.0418, 0.6440, -1.0418, -0.6440], abs=1e-3)


def test_gdpo_weights_groups_and_unscored_rows():
    # Group 1 as above with weights (1, 0.5); group 2 constant in both rewards: exactly 0.
    table = [[1.0, 10.0], [0.0, 30.0], [0.0, 20.0], [1.0, 0.0], [1.0, 5.0], [1.0, 5.0], [1.0, 5.0], [1.0, 5.0]]
    per_reward, weights = torch.tensor(table), torch.tensor([1.0, 0.5])
    adv, stats = compute_advantages((per_reward * weights).sum(1), 4, "gdpo", eps=0.0, per_reward=per_reward, weights=weights)
    a = [1.0 * c + 0.5 * s for c, s in zip([0.866025, -0.866025, -0.866025, 0.866025], [-0.387298, 1.161895, 0.387298, -1.161895])]
    summed = a + [0.0] * 4
    std = math.sqrt(sum(v * v for v in summed) / 7)  # the batch mean of summed is 0
    assert adv.tolist() == pytest.approx([v / std for v in summed], abs=1e-5)
    assert adv[4:].tolist() == [0.0] * 4 and stats.frac_reward_zero_std == 0.5
    # A reward a row was not scored on (None → NaN) is left out of its group's mean and std.
    partial = torch.tensor([[1.0, float("nan")], [0.0, 2.0], [0.0, 4.0], [1.0, float("nan")]])
    adv, _ = compute_advantages(torch.tensor([1.0, 2.0, 4.0, 1.0]), 4, "gdpo", eps=0.0, per_reward=partial, weights=torch.tensor([1.0, 1.0]))
    z = [0.866025, -0.866025 - 0.707107, -0.866025 + 0.707107, 0.866025]  # score z over rows 1-2 only: ∓0.707
    std = math.sqrt(sum(v * v for v in z) / 3)
    assert adv.tolist() == pytest.approx([v / std for v in z], abs=1e-5)
    with pytest.raises(ValueError, match="'gdpo' needs per_reward and weights"):
        compute_advantages(torch.zeros(4), 4, "gdpo")


def test_gdpo_refuses_the_kl_in_the_reward():
    from grpo.config import GRPOConfig

    # gdpo rescales each reward to unit spread: a β·KL penalty in the reward would lose its β.
    with pytest.raises(ValueError, match=r"advantage_estimator: 'gdpo' normalises each reward .* use kl_in: loss"):
        GRPOConfig(advantage_estimator="gdpo", kl_in="reward", beta=0.04)
    GRPOConfig(advantage_estimator="gdpo", kl_in="loss", beta=0.04)


# --- the policy losses --------------------------------------------------------------------------

def _leaf(values):
    return torch.tensor(values, dtype=torch.float64, requires_grad=True)


def test_gspo_clips_whole_sequences_by_the_length_normalised_ratio():
    # Sequence 1: token log-ratios (ln 2, 0) → s = exp(ln 2 / 2) = √2 > 1.2 with A = +1: clipped whole.
    # Sequence 2: (ln 0.9, ln 0.9, masked) → s = 0.9 with A = −1: inside [0.8, 1.2].
    logp = _leaf([[math.log(2.0), 0.0, 0.0], [math.log(0.9), math.log(0.9), 5.0]])
    old = torch.zeros(2, 3, dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    loss, stats = policy_loss(logp, old, torch.tensor([1.0, -1.0], dtype=torch.float64), mask, policy="gspo", aggregation="grpo")
    assert loss.item() == pytest.approx((-1.2 + 0.9) / 2)  # mean over sequences of −min(sA, clip(s)A)
    loss.backward()
    # d/dlogp_t of s·(−A)/2 = s/|y|/2 = 0.9/2/2 for sequence 2's tokens; sequence 1 gets none.
    assert logp.grad.flatten().tolist() == pytest.approx([0.0, 0.0, 0.0, 0.225, 0.225, 0.0])
    assert stats.clip_high == pytest.approx(0.5) and stats.ratio_mean == pytest.approx((2 * math.sqrt(2) + 2 * 0.9) / 4)
    # The token-level clip on the same input drops only token 1 of sequence 1.
    logp.grad = None
    clip_loss, _ = policy_loss(logp, old, torch.tensor([1.0, -1.0], dtype=torch.float64), mask, policy="clip")
    clip_loss.backward()
    assert logp.grad[0].tolist() == pytest.approx([0.0, -0.25, 0.0])


def test_cispo_keeps_a_bounded_detached_weight_on_every_token():
    # Token 1: ρ = 2, A = +1 → weight min(2, 1.2) = 1.2 ; token 2: ρ = 0.5, A = −1 → weight 0.5.
    logp = _leaf([[math.log(2.0)], [math.log(0.5)]])
    old = torch.zeros(2, 1, dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    loss, stats = policy_loss(logp, old, adv, torch.ones(2, 1, dtype=torch.float64), policy="cispo", aggregation="dapo", epsilon_high=0.2)
    assert loss.item() == pytest.approx((-1.2 * math.log(2.0) + 0.5 * math.log(0.5)) / 2)
    loss.backward()
    assert logp.grad.flatten().tolist() == pytest.approx([-1.2 / 2, 0.5 / 2])  # −ρ̂·A / tokens: nothing zeroed
    assert stats.clip_high == 0.5
    # The clip zeroes both tokens' gradients on the same input.
    logp.grad = None
    policy_loss(logp, old, adv, torch.ones(2, 1, dtype=torch.float64), policy="clip", aggregation="dapo")[0].backward()
    assert logp.grad.tolist() == [[0.0], [0.0]]


def test_sapo_soft_gate_by_hand():
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    # Token 1: ρ = 2, A = +1, τ_pos = 1 ; token 2: ρ = 0.5, A = −1, τ_neg = 1.05 ; token 3: ρ = 1, A = +1.
    logp = _leaf([[math.log(2.0)], [math.log(0.5)], [0.0]])
    old = torch.zeros(3, 1, dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64)
    loss, _ = policy_loss(logp, old, adv, torch.ones(3, 1, dtype=torch.float64), policy="sapo", aggregation="dapo",
                          sapo_temperature_pos=1.0, sapo_temperature_neg=1.05)
    values = [-4 * sigmoid(1.0), (4 / 1.05) * sigmoid(1.05 * -0.5), -4 * sigmoid(0.0)]
    assert loss.item() == pytest.approx(sum(values) / 3)
    loss.backward()
    # d/dlogp (−A·(4/τ)σ(τ(ρ−1))) = −A·4σ(1−σ)·ρ ; at ρ = 1 that is −A: the plain policy gradient.
    s1, s2 = sigmoid(1.0), sigmoid(-0.525)
    assert logp.grad.flatten().tolist() == pytest.approx([-4 * s1 * (1 - s1) * 2 / 3, 4 * s2 * (1 - s2) * 0.5 / 3, -1 / 3])


@pytest.mark.parametrize("policy", ["clip", "gspo", "cispo", "sapo"])
def test_policy_losses_on_policy_are_the_plain_policy_gradient(policy):
    """With μ = 1 (old = π_θ) every registered loss has the gradient −A·∇logπ (gspo: per sequence)."""
    g = torch.Generator().manual_seed(3)
    logp = (-torch.rand(4, 5, generator=g, dtype=torch.float64)).requires_grad_()
    adv = torch.randn(4, generator=g, dtype=torch.float64)
    mask = torch.ones(4, 5, dtype=torch.float64)
    policy_loss(logp, None, adv, mask, policy=policy, aggregation="grpo")[0].backward()
    assert logp.grad.flatten().tolist() == pytest.approx((-adv.unsqueeze(1) / 5 / 4).expand(4, 5).flatten().tolist())


def test_entropy_bonus_is_a_per_token_term_aggregated_like_the_loss():
    logp = torch.zeros(1, 2)
    entropy = torch.tensor([[1.0, 2.0]], requires_grad=True)
    loss, _ = policy_loss(logp, None, torch.tensor([0.0]), torch.ones(1, 2), entropy=entropy, entropy_coef=0.1)
    assert loss.item() == pytest.approx(-0.1 * 1.5)
    loss.backward()
    assert entropy.grad.flatten().tolist() == pytest.approx([-0.05, -0.05])  # raising H lowers the loss
    with pytest.raises(ValueError, match="entropy_coef ≠ 0 needs entropy"):
        policy_loss(logp, None, torch.tensor([0.0]), torch.ones(1, 2), entropy_coef=0.1)
    with pytest.raises(ValueError, match="unknown policy loss 'ppo'; registered: clip, gspo, cispo, sapo"):
        policy_loss(logp, None, torch.tensor([0.0]), torch.ones(1, 2), policy="ppo")


@pytest.mark.parametrize("policy", ["clip", "gspo", "cispo", "sapo"])
def test_rollout_correction_weights_are_a_separate_factor_on_each_policy_term(policy):
    # L = Σ m·(w·P + β·KL) / Σ m (dapo): w per token scales the policy term P of every policy
    # loss (gspo's is one value per sequence, broadcast), never the KL, and carries no gradient.
    from grpo.loss import POLICY_LOSSES, PolicyLossSettings

    g = torch.Generator().manual_seed(1)
    old = -torch.rand(3, 4, generator=g) - 0.5
    start = old + 0.2 * torch.randn(3, 4, generator=g)
    ref = old + 0.3 * torch.randn(3, 4, generator=g)
    adv = torch.tensor([1.0, -0.7, 0.4])
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]])
    w = torch.tensor([[0.5, 1.0, 2.0, 3.0], [1.5, 0.2, 1.0, 1.0], [0.8, 1.2, 9.0, 9.0]], requires_grad=True)
    logp = start.clone().requires_grad_()
    kw = dict(policy=policy, epsilon_low=0.2, epsilon_high=0.28, ref_logp=ref, beta=0.04, aggregation="dapo")
    loss, _ = policy_loss(logp, old, adv, mask, rollout_weights=w, **kw)
    loss.backward()

    by_hand = start.clone().requires_grad_()
    term = POLICY_LOSSES[policy](by_hand, old, adv.unsqueeze(1), mask, PolicyLossSettings(0.2, 0.28)).loss
    expected = ((w.detach() * term + 0.04 * kl_divergence(by_hand, ref)) * mask).sum() / mask.sum()
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert torch.allclose(logp.grad, by_hand.grad, atol=1e-6)
    assert w.grad is None  # detached: the weights are constants of the loss


@pytest.mark.parametrize("policy", ["gspo", "cispo", "sapo"])
def test_new_policy_losses_add_up_over_micro_batches(policy):
    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(6, 5, generator=g)
    old = logp + 0.3 * torch.randn(6, 5, generator=g)
    adv = torch.randn(6, generator=g)
    mask = (torch.rand(6, 5, generator=g) > 0.3).float()
    shape = BatchShape(num_sequences=6, num_tokens=int(mask.sum()), num_micro_batches=3, max_completion_length=5)
    full, _ = policy_loss(logp, old, adv, mask, policy=policy, aggregation="dapo", batch=BatchShape(6, int(mask.sum()), 1, 5))
    parts = [policy_loss(logp[s], old[s], adv[s], mask[s], policy=policy, aggregation="dapo", batch=shape)[0] for s in (slice(0, 2), slice(2, 4), slice(4, 6))]
    assert sum(p.item() for p in parts) == pytest.approx(full.item(), abs=1e-6)


# --- the new policy losses against TRL 1.16 -------------------------------------------------------

def _trl_loss_and_grad(loss_type, level, logp, old_logp, ref_logp, adv, mask, beta, eps_low, eps_high, temps=(1.0, 1.05)):
    """TRL's loss (``_compute_loss``) and its gradient with respect to the policy's log-probs."""
    from collections import defaultdict

    from trl import GRPOTrainer as TRLGRPOTrainer

    leaf = logp.clone().requires_grad_()
    n, T = logp.shape
    identity = lambda x, **_: x  # noqa: E731
    stub = types.SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (leaf, torch.zeros_like(leaf), None),
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level=level, beta=beta,
        epsilon_low=eps_low, epsilon_high=eps_high, loss_type=loss_type, use_vllm=False,
        model=types.SimpleNamespace(training=True), current_gradient_accumulation_steps=1, max_completion_length=T,
        aux_loss_enabled=False, _entropy_bonus_enabled=False, _metrics={"train": defaultdict(list)},
        args=types.SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1,
                                   sapo_temperature_pos=temps[0], sapo_temperature_neg=temps[1]),
        accelerator=types.SimpleNamespace(num_processes=1, gather=identity, reduce=identity, gather_for_metrics=identity),
    )
    inputs = {
        "prompt_ids": torch.zeros(n, 1, dtype=torch.long), "prompt_mask": torch.ones(n, 1, dtype=torch.long),
        "completion_ids": torch.zeros(n, T, dtype=torch.long), "completion_mask": mask.long(), "advantages": adv,
        "old_per_token_logps": old_logp, "ref_per_token_logps": ref_logp, "num_items_in_batch": mask.sum(),
    }
    loss = TRLGRPOTrainer._compute_loss(stub, None, inputs)
    loss.backward()
    return loss.item(), leaf.grad


# (our policy loss, our aggregation, TRL's loss_type, TRL's importance_sampling_level, ε_low, our ε_high, TRL's ε_high)
TRL_PAIRS = [
    ("cispo", "dapo", "cispo", "token", 0.2, 0.28, 1 + 0.28),  # TRL's cispo bound is ε_max itself; ours is 1 + ε_high
    ("sapo", "grpo", "sapo", "token", 0.2, 0.28, 0.28),
    ("gspo", "grpo", "grpo", "sequence", 3e-4, 4e-4, 4e-4),  # GSPO's own (narrow) range
]


@pytest.mark.parametrize("ours,aggregation,loss_type,level,eps_low,eps_high,their_eps_high", TRL_PAIRS)
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_new_policy_losses_equal_trl_value_and_gradient(ours, aggregation, loss_type, level, eps_low, eps_high, their_eps_high, beta):
    g = torch.Generator().manual_seed(2)
    n, T = 8, 7
    logp = -3 * torch.rand(n, T, generator=g)
    old = logp + 0.3 * torch.randn(n, T, generator=g)
    ref = logp + 0.2 * torch.randn(n, T, generator=g)
    adv = torch.randn(n, generator=g)
    lengths = torch.tensor([7, 3, 5, 1, 7, 2, 6, 4])
    mask = (torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)).float()
    leaf = logp.clone().requires_grad_()
    loss, stats = policy_loss(
        leaf, old, adv, mask, policy=ours, epsilon_low=eps_low, epsilon_high=eps_high, ref_logp=ref, beta=beta,
        aggregation=aggregation, batch=BatchShape(n, int(mask.sum()), 1, max_completion_length=T),
    )
    loss.backward()
    theirs, their_grad = _trl_loss_and_grad(loss_type, level, logp, old, ref, adv, mask, beta, eps_low, their_eps_high)
    assert loss.item() == pytest.approx(theirs, abs=1e-6)
    assert torch.allclose(leaf.grad, their_grad, atol=1e-7), (leaf.grad - their_grad).abs().max()
    assert leaf.grad.abs().max() > 1e-3  # a real gradient
    if ours != "sapo":
        assert stats.clip_high > 0  # the comparison exercised the bound
