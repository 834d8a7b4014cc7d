"""Group-relative advantages: GRPO's replacement for a learned value model.

Rewards arrive flat, ``rewards[N]`` with ``N = B × G``: the G completions of one prompt are
contiguous (rows ``g·G … g·G+G−1`` belong to prompt ``g``). Each estimator maps them to
``advantages[N]``; one scalar per completion, broadcast over its tokens by the loss.

Estimators are registered by name (``advantage_estimator`` in the config):

``grpo`` (DeepSeekMath / R1, default)
    A_i = (r_i − mean_g) / (std_g + ε)
``dr_grpo`` (Dr. GRPO: no std scaling, which up-weights near-solved and near-failed groups)
    A_i = r_i − mean_g
``batch_std`` (group baseline, scale by the std of the whole batch)
    A_i = (r_i − mean_g) / (std_batch + ε)
``rloo`` (REINFORCE leave-one-out: each sample's baseline is the mean of the *other* G−1)
    A_i = r_i − (Σ_g r − r_i)/(G−1) = G/(G−1) · (r_i − mean_g)
``reinforce_pp`` (REINFORCE++-baseline: group mean baseline, then whitened over the batch)
    c_i = r_i − mean_g ;  A_i = (c_i − mean_batch c) / (std_batch c + ε)
``gdpo`` (GDPO: each reward normalised within its group before the weighted sum; needs the
    per-reward table, so ``compute_advantages`` gets ``per_reward`` and ``weights``)
    a_ik = (r_ik − mean_g r_k) / (std_g r_k + ε) ;  s_i = Σ_k w_k·a_ik ;
    A_i = (s_i − mean_batch s) / (std_batch s + ε)

``std`` is the sample standard deviation (Bessel's correction, as TRL and most GRPO code use).
A group whose rewards are all equal carries no learning signal: its advantages are exactly 0
(not 0 up to rounding) and it is counted in ``frac_reward_zero_std``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

AdvantageFn = Callable[..., torch.Tensor]
ADVANTAGE_ESTIMATORS: dict[str, AdvantageFn] = {}
# Estimators that read each reward function's values, not only their weighted total.
PER_REWARD_ESTIMATORS: set[str] = set()


def register_advantage(name: str, per_reward: bool = False):
    """Register an advantage estimator ``fn(rewards[N], group_size, eps) -> advantages[N]``.

    With ``per_reward=True`` the estimator reads the per-reward table instead:
    ``fn(per_reward[N, K], weights[K], group_size, eps) -> advantages[N]``, NaN where a reward
    function did not score a row (``None``).
    """

    def wrap(fn: AdvantageFn) -> AdvantageFn:
        ADVANTAGE_ESTIMATORS[name] = fn
        if per_reward:
            PER_REWARD_ESTIMATORS.add(name)
        return fn

    return wrap


def _grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be flat with a multiple of group_size={group_size} entries, got {tuple(rewards.shape)}")
    return rewards.view(-1, group_size)


def zero_std_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Bool[B]: groups whose G rewards are all equal (no signal for the policy gradient)."""
    grouped = _grouped(rewards, group_size)
    return (grouped == grouped[:, :1]).all(dim=1)


def _centered(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    grouped = _grouped(rewards, group_size)
    return grouped - grouped.mean(dim=1, keepdim=True)


def _group_std(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    # Sample std (Bessel); G == 1 has no spread by definition.
    grouped = _grouped(rewards, group_size)
    if group_size == 1:
        return torch.zeros(grouped.shape[0], 1, dtype=rewards.dtype)
    return grouped.std(dim=1, keepdim=True)


@register_advantage("grpo")
def grpo_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """A_i = (r_i − mean_g) / (std_g + eps); exactly 0 for groups with equal rewards."""
    adv = _centered(rewards, group_size) / (_group_std(rewards, group_size) + eps)
    adv[zero_std_groups(rewards, group_size)] = 0.0
    return adv.reshape(-1)


@register_advantage("dr_grpo")
def dr_grpo_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """A_i = r_i − mean_g (Dr. GRPO drops the std division); exactly 0 for equal-reward groups."""
    adv = _centered(rewards, group_size)
    adv[zero_std_groups(rewards, group_size)] = 0.0
    return adv.reshape(-1)


@register_advantage("batch_std")
def batch_std_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """A_i = (r_i − mean_g) / (std_batch + eps); exactly 0 for equal-reward groups."""
    std = rewards.std() if rewards.numel() > 1 else torch.zeros((), dtype=rewards.dtype)
    adv = _centered(rewards, group_size) / (std + eps)
    adv[zero_std_groups(rewards, group_size)] = 0.0
    return adv.reshape(-1)


@register_advantage("rloo")
def rloo_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """A_i = r_i − mean_{j≠i} r_j = G/(G−1)·(r_i − mean_g): the baseline leaves the sample out,
    so it does not depend on r_i (unbiased); exactly 0 for equal-reward groups."""
    if group_size < 2:
        raise ValueError("rloo needs group_size ≥ 2 (the baseline is the mean of the other samples)")
    adv = _centered(rewards, group_size) * (group_size / (group_size - 1))
    adv[zero_std_groups(rewards, group_size)] = 0.0
    return adv.reshape(-1)


def _whiten(values: torch.Tensor, eps: float) -> torch.Tensor:
    """(v − mean) / (std + eps) over all of ``values`` (sample std); 0 when there is one value."""
    if values.numel() < 2:
        return torch.zeros_like(values)
    return (values - values.mean()) / (values.std() + eps)


@register_advantage("reinforce_pp")
def reinforce_pp_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """REINFORCE++-baseline (Hu et al. 2025): c_i = r_i − mean_g, A_i = (c_i − mean_batch c) /
    (std_batch c + eps); exactly 0 for equal-reward groups.

    Unlike ``batch_std``, the batch std is that of the centred rewards, so the spread *between*
    prompts' mean rewards does not shrink the advantages. verl whitens over tokens (long
    completions weigh more in the statistics); here every completion counts once.
    """
    adv = _whiten(_centered(rewards, group_size).reshape(-1), eps).view(-1, group_size)
    adv[zero_std_groups(rewards, group_size)] = 0.0
    return adv.reshape(-1)


@register_advantage("gdpo", per_reward=True)
def gdpo_advantages(per_reward: torch.Tensor, weights: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """GDPO (Liu et al. 2026): normalise each reward within its group, then weight, sum, whiten:

        a_ik = (r_ik − mean_g r_k) / (std_g r_k + eps)      per reward k, per group g
        s_i  = Σ_k w_k·a_ik
        A_i  = (s_i − mean_batch s) / (std_batch s + eps)

    With a plain weighted sum, a reward with a large spread (a length or reward-model score)
    decides the sign of every advantage and a 0/1 reward beside it is lost; here each reward
    contributes on the same scale, w_k its share. A reward that is constant in a group (or
    unscored, NaN) gives that group a = 0; groups whose rewards are all constant get A = 0
    exactly. Mean and std of a reward's group are taken over the rows it scored.
    """
    if per_reward.dim() != 2 or per_reward.shape[1] != weights.numel():
        raise ValueError(f"gdpo: per_reward must be [N, K] with K = {weights.numel()} weights, got {tuple(per_reward.shape)}")
    N, K = per_reward.shape
    grouped = per_reward.reshape(-1, group_size, K)
    scored = ~torch.isnan(grouped)
    values = torch.where(scored, grouped, torch.zeros((), dtype=grouped.dtype))
    count = scored.sum(1, keepdim=True)
    mean = values.sum(1, keepdim=True) / count.clamp(min=1)
    var = (torch.where(scored, values - mean, torch.zeros((), dtype=grouped.dtype)) ** 2).sum(1, keepdim=True) / (count - 1).clamp(min=1)
    inf = torch.tensor(float("inf"), dtype=grouped.dtype)
    highest = torch.where(scored, grouped, -inf).amax(1, keepdim=True)
    lowest = torch.where(scored, grouped, inf).amin(1, keepdim=True)
    spread = highest > lowest  # [B, 1, K]: the reward differs between the rows it scored
    normalised = torch.where(scored & spread, (values - mean) / (var.sqrt() + eps), torch.zeros((), dtype=grouped.dtype))
    summed = (normalised * weights.to(grouped.dtype)).sum(-1)  # [B, G]
    silent = ~spread.squeeze(1).any(-1)  # every reward constant in the group: no signal
    adv = _whiten(summed.reshape(-1), eps).view(-1, group_size)
    adv[silent] = 0.0
    return adv.reshape(-1)


@dataclass
class AdvantageStats:
    frac_reward_zero_std: float
    reward_std: float  # mean over groups of the within-group std (TRL's `reward_std`)


def compute_advantages(
    rewards: torch.Tensor,
    group_size: int,
    estimator: str = "grpo",
    eps: float = 1e-4,
    per_reward: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, AdvantageStats]:
    """Advantages with the named estimator, plus the group statistics the trainer logs.

    ``rewards[N]`` is the weighted total; ``per_reward[N, K]`` (NaN: not scored) and
    ``weights[K]`` are needed by the estimators registered with ``per_reward=True`` (gdpo).
    """
    try:
        fn = ADVANTAGE_ESTIMATORS[estimator]
    except KeyError:
        raise ValueError(f"unknown advantage estimator {estimator!r}; registered: {', '.join(ADVANTAGE_ESTIMATORS)}") from None
    _grouped(rewards, group_size)  # the shape check, for every estimator
    if estimator in PER_REWARD_ESTIMATORS:
        if per_reward is None or weights is None:
            raise ValueError(f"advantage estimator {estimator!r} needs per_reward and weights (each reward function's values)")
        adv = fn(per_reward, weights, group_size, eps)
    else:
        adv = fn(rewards, group_size, eps)
    stats = AdvantageStats(
        frac_reward_zero_std=zero_std_groups(rewards, group_size).float().mean().item(),
        reward_std=_group_std(rewards, group_size).mean().item(),
    )
    return adv, stats
