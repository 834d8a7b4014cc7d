"""The GRPO objective, token by token, with the KL penalty inside the loss.

Notation, per completion i and completion token t (masked by m_it ∈ {0, 1}):

    ρ_it      = exp(logπ_θ − logπ_old)                      importance ratio to the sampling policy
    L^clip_it = −min(ρ_it·A_i, clip(ρ_it, 1−ε_low, 1+ε_high)·A_i)
    L_it      = w_it·L^clip_it + β·KL_it                     KL to the frozen reference, in the loss

``w_it`` are the rollout-correction weights (grpo/rollout_correction.py; 1 when the sampler and
the trainer agree): detached, on the policy-gradient term only.

``π_old`` is the policy that sampled the batch: with μ = 1 it equals π_θ at the first pass, so
ρ = 1 and the gradient is the plain policy gradient; with μ > 1 inner passes the clip keeps later
passes close to it. The per-token losses are then reduced by a registered *aggregation*:

``grpo``     (DeepSeekMath / R1)   mean_i [ Σ_t m·L / Σ_t m ]          each sequence weighs the same
``bnpo``                            Σ m·L / Σ m over the micro-batch    each token weighs the same
``dapo``     (DAPO)                 Σ m·L / Σ m over the whole batch    ... across micro-batches/ranks
``dr_grpo``  (Dr. GRPO)             Σ m·L / (N · L_max)                 a constant: no length bias

The KL estimators (Schulman, "Approximating KL divergence"), with δ = logπ_ref − logπ_θ on tokens
sampled from π_θ. As *values* all three estimate KL(π_θ‖π_ref) (k1 and k3 without bias; k2 with a
small one). As *terms of the loss* what matters is their gradient, and that differs:

``k1``  −δ                ∇ = ∇logπ_θ, the score function: zero in expectation, so k1 in the loss
                          does not regularise at all. Refused there (GRPOConfig); it is the
                          estimator of ``kl_in: reward``, where it is a reward, not a loss term.
``k2``  δ² / 2            ∇ = −δ·∇logπ_θ: in expectation the gradient of KL(π_θ‖π_ref)
``k3``  exp(δ) − δ − 1    ∇ = (1 − π_ref/π_θ)·∇logπ_θ: in expectation the gradient of the
                          *reverse* KL(π_ref‖π_θ) (GRPO's choice; value ≥ 0, low variance)

``kl_in: reward`` (PPO, verl) leaves the KL out of the loss and subtracts β·Σ_t k1_t from each
completion's reward before the advantages (:func:`kl_reward_penalty`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

# --- KL estimators ---------------------------------------------------------------------------

KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {}


def register_kl(name: str):
    def wrap(fn):
        KL_ESTIMATORS[name] = fn
        return fn

    return wrap


@register_kl("k1")
def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k1 = logπ_θ − logπ_ref (a value estimate; its gradient has mean 0, see the module docstring)."""
    return logp - ref_logp


@register_kl("k2")
def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k2 = (logπ_θ − logπ_ref)² / 2."""
    return 0.5 * (logp - ref_logp) ** 2


@register_kl("k3")
def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 = exp(δ) − δ − 1 with δ = logπ_ref − logπ_θ."""
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1


def kl_divergence(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimate of the value KL(π_θ ‖ π_ref) with the named estimator (its gradient in
    the loss depends on the estimator: module docstring)."""
    try:
        return KL_ESTIMATORS[estimator](logp, ref_logp)
    except KeyError:
        raise ValueError(f"unknown kl_estimator {estimator!r}; registered: {', '.join(KL_ESTIMATORS)}") from None


def kl_reward_penalty(old_logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-completion KL penalty for ``kl_in: reward``, [n]:

        penalty_i = β · Σ_t m_it · (logπ_old − logπ_ref)_it        (k1 summed over the completion)

    subtracted from reward r_i before the group advantages (PPO/verl put the per-token k1 into the
    per-token rewards; with one outcome reward per completion their sum is the same). No gradient.
    """
    with torch.no_grad():
        return beta * ((old_logp - ref_logp) * mask.to(old_logp.dtype)).sum(dim=-1)


# --- loss aggregations -----------------------------------------------------------------------


@dataclass(frozen=True)
class BatchShape:
    """Sizes of the whole optimisation batch, so micro-batch losses add up to the batch loss.

    A step's B×G rows may be split into micro-batches (gradient accumulation) and across ranks;
    each aggregation says how one micro-batch's share of the full loss is normalised.
    """

    num_sequences: int  # rows in the whole batch (all micro-batches, all ranks)
    num_tokens: int  # unmasked completion tokens in the whole batch
    num_micro_batches: int = 1  # micro-batches per optimiser step (counted over the whole batch)
    max_completion_length: int = 1  # L_max, the constant of Dr. GRPO
    # Unmasked tokens of the micro-batch this one belongs to, when it is a rank's slice of a
    # micro-batch spread over several ranks (grpo/distributed.py); None: the micro-batch is whole.
    micro_batch_tokens: int | None = None


AGGREGATIONS: dict[str, Callable[[torch.Tensor, torch.Tensor, BatchShape], torch.Tensor]] = {}


def register_aggregation(name: str):
    """Register ``fn(per_token_loss[n, T], mask[n, T], batch: BatchShape) -> scalar``."""

    def wrap(fn):
        AGGREGATIONS[name] = fn
        return fn

    return wrap


@register_aggregation("grpo")
def aggregate_seq_mean_token_mean(loss: torch.Tensor, mask: torch.Tensor, batch: BatchShape) -> torch.Tensor:
    """mean over sequences of each sequence's token mean (R1 / DeepSeekMath)."""
    per_seq = (loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    return per_seq.sum() / batch.num_sequences


@register_aggregation("bnpo")
def aggregate_micro_token_mean(loss: torch.Tensor, mask: torch.Tensor, batch: BatchShape) -> torch.Tensor:
    """token mean within each micro-batch, micro-batches averaged."""
    tokens = mask.sum().clamp(min=1.0) if batch.micro_batch_tokens is None else max(batch.micro_batch_tokens, 1)
    return (loss * mask).sum() / tokens / batch.num_micro_batches


@register_aggregation("dapo")
def aggregate_token_mean(loss: torch.Tensor, mask: torch.Tensor, batch: BatchShape) -> torch.Tensor:
    """token mean over the whole batch (DAPO): every generated token weighs the same."""
    return (loss * mask).sum() / max(batch.num_tokens, 1)


@register_aggregation("dr_grpo")
def aggregate_token_sum_constant(loss: torch.Tensor, mask: torch.Tensor, batch: BatchShape) -> torch.Tensor:
    """token sum divided by a constant N·L_max (Dr. GRPO): no per-sequence length normalisation."""
    return (loss * mask).sum() / (batch.num_sequences * batch.max_completion_length)


# --- the policy loss -------------------------------------------------------------------------


@dataclass
class LossStats:
    """Masked token means of the quantities the trainer logs (TRL's names in comments)."""

    kl: float | None  # `kl` (None when β = 0: no reference is loaded)
    clip_low: float  # `clip_ratio/low_mean`: ρ < 1−ε_low where A < 0
    clip_high: float  # `clip_ratio/high_mean`: ρ > 1+ε_high where A > 0
    clip_region: float  # `clip_ratio/region_mean`
    ratio_mean: float
    num_tokens: int


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
    kl_estimator: str = "k3",
    aggregation: str = "grpo",
    batch: BatchShape | None = None,
    rollout_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, LossStats]:
    """GRPO loss of one micro-batch; see the module docstring for the equations.

    Shapes: ``logp``, ``old_logp``, ``ref_logp``, ``mask``, ``rollout_weights``: [n, T];
    ``advantages``: [n], or [n, T] for per-token advantages (on-policy distillation, grpo/distill.py).
    ``old_logp=None`` means π_old = π_θ (μ = 1): ρ is exp(logp − logp.detach()) = 1 with the
    policy gradient intact. ``batch`` defaults to this micro-batch alone.
    ``rollout_weights`` (grpo.rollout_correction; None = 1) multiply the policy-gradient term only.
    """
    mask = mask.to(logp.dtype)
    if batch is None:
        batch = BatchShape(num_sequences=logp.shape[0], num_tokens=int(mask.sum().item()), max_completion_length=logp.shape[1])
    try:
        aggregate = AGGREGATIONS[aggregation]
    except KeyError:
        raise ValueError(f"unknown loss aggregation {aggregation!r}; registered: {', '.join(AGGREGATIONS)}") from None

    old = logp.detach() if old_logp is None else old_logp
    ratio = torch.exp(logp - old)
    adv = advantages if advantages.dim() == 2 else advantages.unsqueeze(1)  # [n, T]: per-token (distillation)
    clipped_ratio = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    per_token = -torch.min(ratio * adv, clipped_ratio * adv)
    if rollout_weights is not None:
        per_token = per_token * rollout_weights.detach()

    kl = None
    if beta != 0.0:
        if ref_logp is None:
            raise ValueError("beta > 0 needs ref_logp (log-probabilities under the reference policy)")
        kl = kl_divergence(logp, ref_logp, kl_estimator)
        per_token = per_token + beta * kl

    loss = aggregate(per_token, mask, batch)

    with torch.no_grad():
        n = mask.sum().clamp(min=1.0)
        low = ((ratio < 1 - epsilon_low) & (adv < 0)).to(mask.dtype)
        high = ((ratio > 1 + epsilon_high) & (adv > 0)).to(mask.dtype)
        stats = LossStats(
            kl=((kl * mask).sum() / n).item() if kl is not None else None,
            clip_low=((low * mask).sum() / n).item(),
            clip_high=((high * mask).sum() / n).item(),
            clip_region=(((low + high).clamp(max=1.0) * mask).sum() / n).item(),
            ratio_mean=((ratio * mask).sum() / n).item(),
            num_tokens=int(mask.sum().item()),
        )
    return loss, stats
