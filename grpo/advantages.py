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


def register_advantage(name: str):
    """Register an advantage estimator ``fn(rewards[N], group_size, eps) -> advantages[N]``."""

    def wrap(fn: AdvantageFn) -> AdvantageFn:
        ADVANTAGE_ESTIMATORS[name] = fn
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


@dataclass
class AdvantageStats:
    frac_reward_zero_std: float
    reward_std: float  # mean over groups of the within-group std (TRL's `reward_std`)


def compute_advantages(
    rewards: torch.Tensor, group_size: int, estimator: str = "grpo", eps: float = 1e-4
) -> tuple[torch.Tensor, AdvantageStats]:
    """Advantages with the named estimator, plus the group statistics the trainer logs."""
    try:
        fn = ADVANTAGE_ESTIMATORS[estimator]
    except KeyError:
        raise ValueError(f"unknown advantage estimator {estimator!r}; registered: {', '.join(ADVANTAGE_ESTIMATORS)}") from None
    adv = fn(rewards, group_size, eps)
    stats = AdvantageStats(
        frac_reward_zero_std=zero_std_groups(rewards, group_size).float().mean().item(),
        reward_std=_group_std(rewards, group_size).mean().item(),
    )
    return adv, stats
