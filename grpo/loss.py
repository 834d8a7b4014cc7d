"""The GRPO objective, token by token, with the KL penalty inside the loss.

Notation, per completion i and completion token t (masked by m_it ∈ {0, 1}):

    ρ_it      = exp(logπ_θ − logπ_old)                      importance ratio to the sampling policy
    P_it      = the registered *policy loss* (``policy_loss:``; below), e.g. clip:
                −min(ρ_it·A_i, clip(ρ_it, 1−ε_low, 1+ε_high)·A_i)
    L_it      = w_it·P_it + β·KL_it − c_H·H_it                KL to the frozen reference, in the loss;
                                                            optional entropy bonus (``entropy_coef``)

``w_it`` are the rollout-correction weights (grpo/rollout_correction.py; 1 when the sampler and
the trainer agree): detached, a separate factor per token on the policy term only, whichever
policy loss P is. They correct for the sampler's probabilities differing from the trainer's
π_old; P's own ratio (token or sequence, clipped or gated) handles π_θ against π_old.

``π_old`` is the policy that sampled the batch: with μ = 1 it equals π_θ at the first pass, so
ρ = 1 and the gradient is the plain policy gradient; with μ > 1 inner passes the clip keeps later
passes close to it. The policy losses differ only in how they treat ρ ≠ 1, so with μ = 1 (and
no rollout-engine mismatch) clip, gspo, cispo and sapo all give the same gradient, −A·∇logπ per
token (gspo: averaged over the sequence): they are choices for off-policy passes.

Registered policy losses (``@register_policy_loss``; each function's docstring has its equation):

``clip``   (PPO / GRPO, default)   token ratio, hard clip
``gspo``   (GSPO, Qwen3)           one length-normalised ratio per sequence, clipped per sequence
``cispo``  (CISPO, MiniMax-M1)     clipped, detached ratio times logπ: every token keeps a gradient
``sapo``   (SAPO)                  a soft, temperature-controlled gate instead of the hard clip

The per-token losses L are then reduced by a registered *aggregation*:

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

Clip-higher (DAPO): with a symmetric clip a token of probability 0.01 may rise only to 0.012 in
one pass, while a likely token has room to grow, so exploration tokens are squeezed out and the
entropy collapses. DAPO decouples the bounds and raises the upper one, ε_low = 0.2, ε_high = 0.28
(``epsilon_high: 0.28``); the lower bound stays, so unlikely tokens are not pushed to zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from grpo.registry import registrar

# --- KL estimators ---------------------------------------------------------------------------

KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {}


register_kl = registrar(KL_ESTIMATORS)


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


#: ``@register_aggregation(name)`` on ``fn(per_token_loss[n, T], mask[n, T], batch: BatchShape) -> scalar``.
register_aggregation = registrar(AGGREGATIONS)


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


# --- policy losses ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyLossSettings:
    """The knobs the registered policy losses read (GRPOConfig's fields of the same names)."""

    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    sapo_temperature_pos: float = 1.0  # SAPO's τ for A > 0
    sapo_temperature_neg: float = 1.05  # SAPO's τ for A ≤ 0


@dataclass
class PolicyTerm:
    """A policy loss's per-token term and the importance ratio it used (for the logs).

    ``loss`` and ``ratio`` are [n, T] (one value per token) or [n, 1] (one per sequence,
    broadcast over its tokens). ``clipped_low`` / ``clipped_high`` are bool masks of the same
    shape marking where a hard bound was active (None: the loss has no such bound).
    """

    loss: torch.Tensor
    ratio: torch.Tensor
    clipped_low: torch.Tensor | None = None
    clipped_high: torch.Tensor | None = None


PolicyLossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, PolicyLossSettings], PolicyTerm]
POLICY_LOSSES: dict[str, PolicyLossFn] = {}


#: ``@register_policy_loss(name)`` on ``fn(logp[n, T], old_logp[n, T], advantages[n, 1] or [n, T], mask[n, T], settings) -> PolicyTerm``.
#: ``old_logp`` is always a tensor (π_θ detached when μ = 1). The function gives the policy term
#: only: :func:`policy_loss` adds β·KL and the entropy bonus and aggregates, the same for every loss.
register_policy_loss = registrar(POLICY_LOSSES)


def _clipped_surrogate(ratio: torch.Tensor, adv: torch.Tensor, s: PolicyLossSettings) -> PolicyTerm:
    clipped = torch.clamp(ratio, 1 - s.epsilon_low, 1 + s.epsilon_high)
    loss = -torch.min(ratio * adv, clipped * adv)
    return PolicyTerm(loss, ratio, (ratio < 1 - s.epsilon_low) & (adv < 0), (ratio > 1 + s.epsilon_high) & (adv > 0))


@register_policy_loss("clip")
def clip_policy_loss(logp, old_logp, advantages, mask, s: PolicyLossSettings) -> PolicyTerm:
    """PPO's clipped surrogate, per token (DeepSeekMath / R1):

        ρ_it = exp(logπ_θ(y_it) − logπ_old(y_it))
        P_it = −min(ρ_it·A_i, clip(ρ_it, 1−ε_low, 1+ε_high)·A_i)

    Gradient −A_i·ρ_it·∇logπ_θ(y_it), except 0 where the clip is active (ρ > 1+ε_high with A > 0,
    ρ < 1−ε_low with A < 0): such a token drops out of the update.
    """
    return _clipped_surrogate(torch.exp(logp - old_logp), advantages, s)


@register_policy_loss("gspo")
def gspo_policy_loss(logp, old_logp, advantages, mask, s: PolicyLossSettings) -> PolicyTerm:
    """GSPO (Zheng et al. 2025, Qwen3): one length-normalised importance ratio per sequence:

        s_i = exp( Σ_t m_it·(logπ_θ(y_it) − logπ_old(y_it)) / Σ_t m_it )    (geometric mean of ρ_it)
        P_i = −min(s_i·A_i, clip(s_i, 1−ε_low, 1+ε_high)·A_i)                [n, 1]: every token of i

    Gradient −A_i·s_i·(1/|y_i|)·Σ_t ∇logπ_θ(y_it) inside the range, 0 outside: a sequence is kept
    or dropped whole, so one token's noisy ratio cannot clip it alone. The paper's objective is the
    mean over sequences, the ``grpo`` aggregation; its ranges are far narrower than the token
    clip's (ε_low = 3e-4, ε_high = 4e-4), since s_i moves far less than single tokens' ratios.
    """
    m = mask.to(logp.dtype)
    log_s = ((logp - old_logp) * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp(min=1.0)
    return _clipped_surrogate(torch.exp(log_s), advantages, s)


@register_policy_loss("cispo")
def cispo_policy_loss(logp, old_logp, advantages, mask, s: PolicyLossSettings) -> PolicyTerm:
    """CISPO (MiniMax-M1, 2025): bound the importance weight, not the update, and detach it:

        ρ̂_it = sg( min(ρ_it, 1+ε_high) )           sg: stop-gradient
        P_it = −ρ̂_it·A_i·logπ_θ(y_it)

    Gradient −ρ̂_it·A_i·∇logπ_θ(y_it) for every token: where the clip would zero a token that
    left the range, CISPO keeps its (bounded) gradient, so rare tokens that fork a chain of
    thought still learn after the first pass. Only the upper bound (MiniMax-M1 sets no lower
    one). TRL's ``epsilon_high`` for cispo is the bound itself (ε_max; 5.0 in ScaleRL): ours is
    1 + ε_high, the same meaning as for the clip. The value is −ρ̂·A·logπ, not a surrogate of the
    return; only its gradient matters.
    """
    ratio = torch.exp(logp - old_logp)
    weight = torch.clamp(ratio, max=1 + s.epsilon_high).detach()
    return PolicyTerm(-weight * advantages * logp, ratio, None, (ratio > 1 + s.epsilon_high) & (advantages > 0))


@register_policy_loss("sapo")
def sapo_policy_loss(logp, old_logp, advantages, mask, s: PolicyLossSettings) -> PolicyTerm:
    """SAPO (Gao et al. 2025): a soft, temperature-controlled gate in place of the hard clip:

        τ_i  = τ_pos if A_i > 0 else τ_neg
        f_it = (4/τ_i)·σ(τ_i·(ρ_it − 1))
        P_it = −f_it·A_i

    ∂f/∂ρ = 4·σ·(1−σ) is 1 at ρ = 1 (the plain policy gradient, as with the clip) and fades
    smoothly as ρ leaves 1, faster for the larger τ; SAPO gives negative advantages the larger
    one (τ_neg = 1.05 > τ_pos = 1.0), since pushing a token down spreads mass over the whole
    vocabulary and destabilises more.
    """
    ratio = torch.exp(logp - old_logp)
    tau = torch.where(advantages > 0, s.sapo_temperature_pos, s.sapo_temperature_neg).to(ratio.dtype)
    return PolicyTerm(-(4 / tau) * torch.sigmoid(tau * (ratio - 1)) * advantages, ratio)


# --- the loss of one micro-batch ------------------------------------------------------------


@dataclass
class LossStats:
    """Masked token means of the quantities the trainer logs (TRL's names in comments)."""

    kl: float | None  # `kl` (None when β = 0: no reference is loaded)
    clip_low: float  # `clip_ratio/low_mean`: a lower bound active (clip: ρ < 1−ε_low where A < 0)
    clip_high: float  # `clip_ratio/high_mean`: an upper bound active (ρ > 1+ε_high where A > 0)
    clip_region: float  # `clip_ratio/region_mean`
    ratio_mean: float
    num_tokens: int


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    policy: str = "clip",
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
    sapo_temperature_pos: float = 1.0,
    sapo_temperature_neg: float = 1.05,
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
    kl_estimator: str = "k3",
    entropy: torch.Tensor | None = None,
    entropy_coef: float = 0.0,
    aggregation: str = "grpo",
    batch: BatchShape | None = None,
    rollout_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, LossStats]:
    """GRPO loss of one micro-batch: L = aggregate(w·P + β·KL − c_H·H); see the module docstring.

    Shapes: ``logp``, ``old_logp``, ``ref_logp``, ``entropy``, ``mask``, ``rollout_weights``: [n, T];
    ``advantages``: [n], or [n, T] for per-token advantages (on-policy distillation, grpo/distill.py).
    ``old_logp=None`` means π_old = π_θ (μ = 1): ρ is exp(logp − logp.detach()) = 1 with the
    policy gradient intact. ``policy`` names the registered policy loss P. ``entropy`` (with its
    graph) is needed when ``entropy_coef`` ≠ 0: the bonus is a per-token term like the KL, so it
    is aggregated the same way and micro-batches still add up to the batch loss. ``batch``
    defaults to this micro-batch alone. ``rollout_weights`` (grpo.rollout_correction; None = 1)
    multiply the policy term P only.
    """
    mask = mask.to(logp.dtype)
    if batch is None:
        batch = BatchShape(num_sequences=logp.shape[0], num_tokens=int(mask.sum().item()), max_completion_length=logp.shape[1])
    try:
        aggregate = AGGREGATIONS[aggregation]
    except KeyError:
        raise ValueError(f"unknown loss aggregation {aggregation!r}; registered: {', '.join(AGGREGATIONS)}") from None
    try:
        policy_fn = POLICY_LOSSES[policy]
    except KeyError:
        raise ValueError(f"unknown policy loss {policy!r}; registered: {', '.join(POLICY_LOSSES)}") from None

    old = logp.detach() if old_logp is None else old_logp
    adv = advantages if advantages.dim() == 2 else advantages.unsqueeze(1)  # [n, T]: per-token (distillation)
    settings = PolicyLossSettings(epsilon_low, epsilon_high, sapo_temperature_pos, sapo_temperature_neg)
    term = policy_fn(logp, old, adv, mask, settings)
    per_token = term.loss
    if rollout_weights is not None:
        per_token = per_token * rollout_weights.detach()

    kl = None
    if beta != 0.0:
        if ref_logp is None:
            raise ValueError("beta > 0 needs ref_logp (log-probabilities under the reference policy)")
        kl = kl_divergence(logp, ref_logp, kl_estimator)
        per_token = per_token + beta * kl
    if entropy_coef != 0.0:
        if entropy is None:
            raise ValueError("entropy_coef ≠ 0 needs entropy (the per-token policy entropy, with its graph)")
        per_token = per_token - entropy_coef * entropy

    loss = aggregate(per_token.expand_as(mask), mask, batch)

    with torch.no_grad():
        n = mask.sum().clamp(min=1.0)

        def token_mean(x: torch.Tensor | None) -> float:
            return 0.0 if x is None else ((x.to(mask.dtype).expand_as(mask) * mask).sum() / n).item()

        low = term.clipped_low if term.clipped_low is not None else torch.zeros_like(term.ratio, dtype=torch.bool)
        high = term.clipped_high if term.clipped_high is not None else torch.zeros_like(term.ratio, dtype=torch.bool)
        stats = LossStats(
            kl=token_mean(kl) if kl is not None else None,
            clip_low=token_mean(low),
            clip_high=token_mean(high),
            clip_region=token_mean(low | high),
            ratio_mean=token_mean(term.ratio),
            num_tokens=int(mask.sum().item()),
        )
    return loss, stats
