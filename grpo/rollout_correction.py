"""Sampler–trainer agreement: how far the sampler's token probabilities are from the trainer's
π_old, and the importance weights that correct for the difference.

The engine draws token y_t from π_sampler: its own kernels, bf16 weights under ``precision:
bf16-mixed``, vLLM, top-k/top-p truncation. The loss treats the batch as drawn from π_old, the
trainer's own forward at the same weights. Per completion token, with mask m_t,

    r_t = π_old(y_t) / π_sampler(y_t) = exp(logπ_old − logπ_sampler)

Every step logs (:func:`mismatch_stats`)

    mismatch/kl            Σ m·(r − 1 − log r) / Σ m     k3 estimate of KL(π_sampler ‖ π_old) from
                                                         the sampled tokens (unbiased, ≥ 0)
    mismatch/max_abs_logp  max over tokens of m·|log r|

and ``rollout_correction`` (:data:`ROLLOUT_CORRECTIONS`) turns r into detached weights w that
multiply the policy-gradient term of the loss, never the KL term:

    none   w_t = 1
    tis    w_t = min(r_t, C)                      token-level truncated importance sampling
    mis    R_i = Π_t r_t^{m_t} = exp(Σ_t m·log r)  sequence-level masked importance sampling:
           w_it = R_i if 1/C ≤ R_i ≤ C else 0      the whole sequence is dropped when its ratio
                                                   leaves [1/C, C], reweighted by R_i otherwise

C is ``rollout_correction_cap``. TIS bounds the variance a rare token the sampler over-weighted
can add; MIS drops whole sequences the trainer's policy would hardly have produced. ``auto`` (the
default) is ``tis`` whenever the sampler is known to differ from the trainer
(:func:`sampler_differs`) and ``none`` where both run the same float32 computation.
"""

from __future__ import annotations

from typing import Callable

import torch

from grpo.registry import registrar

__all__ = [
    "ROLLOUT_CORRECTIONS",
    "register_rollout_correction",
    "rollout_correction_weights",
    "mismatch_stats",
    "sampler_differs",
    "resolve_rollout_correction",
]

ROLLOUT_CORRECTIONS: dict[str, Callable[[torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, dict]]] = {}


#: ``@register_rollout_correction(name)`` on ``fn(log_ratio[n, T] (masked: 0 off the mask), mask[n, T], cap) -> (weights[n, T], stats)``.
register_rollout_correction = registrar(ROLLOUT_CORRECTIONS)


@register_rollout_correction("none")
def _no_correction(log_ratio: torch.Tensor, mask: torch.Tensor, cap: float):
    """w = 1."""
    return torch.ones_like(log_ratio), {}


@register_rollout_correction("tis")
def _truncated_is(log_ratio: torch.Tensor, mask: torch.Tensor, cap: float):
    """w_t = min(r_t, C)."""
    ratio = torch.exp(log_ratio)
    n = mask.sum().clamp(min=1.0)
    return ratio.clamp(max=cap), {"rollout_correction/clipped_frac": float(((ratio > cap).float() * mask).sum() / n)}


@register_rollout_correction("mis")
def _masked_sequence_is(log_ratio: torch.Tensor, mask: torch.Tensor, cap: float):
    """R_i = exp(Σ_t m·log r); w_it = R_i when 1/C ≤ R_i ≤ C, else 0."""
    import math

    seq_log_ratio = (log_ratio * mask).sum(dim=1)
    keep = seq_log_ratio.abs() <= math.log(cap)
    weights = torch.where(keep, torch.exp(seq_log_ratio), torch.zeros_like(seq_log_ratio))
    return weights.unsqueeze(1).expand_as(log_ratio), {"rollout_correction/masked_frac": float((~keep).float().mean())}


def rollout_correction_weights(
    old_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor, method: str = "tis", cap: float = 2.0
) -> tuple[torch.Tensor, dict]:
    """Detached weights [n, T] for the policy-gradient term, and their stats (module docstring).

    ``old_logp``: the trainer's logπ_old of the sampled tokens; ``sampler_logp``: the engine's;
    ``mask``: 1 on completion tokens (weights off the mask are returned as computed and must be
    masked by the loss). ``stats`` holds ``rollout_correction/weight_mean`` (masked token mean)
    and the method's own count (clipped tokens, masked sequences).
    """
    try:
        correct = ROLLOUT_CORRECTIONS[method]
    except KeyError:
        raise ValueError(f"unknown rollout_correction {method!r}; registered: {', '.join(ROLLOUT_CORRECTIONS)}") from None
    if cap <= 1.0:
        raise ValueError(f"rollout_correction_cap: must be > 1, got {cap}")
    with torch.no_grad():
        mask = mask.to(old_logp.dtype)
        log_ratio = (old_logp.detach() - sampler_logp.to(old_logp.dtype)) * mask
        weights, stats = correct(log_ratio, mask, cap)
        n = mask.sum().clamp(min=1.0)
        stats = {"rollout_correction/weight_mean": float((weights * mask).sum() / n), **stats}
    return weights.detach(), stats


def mismatch_stats(old_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor) -> tuple[float, float, int]:
    """(mean k3 KL(π_sampler ‖ π_old) per token, max |logπ_old − logπ_sampler|, tokens) over the mask.

    With δ = logπ_old − logπ_sampler on tokens drawn from π_sampler, k3 = exp(δ) − δ − 1 has
    expectation KL(π_sampler ‖ π_old) and is never negative.
    """
    with torch.no_grad():
        mask = mask.to(old_logp.dtype)
        delta = (old_logp.detach() - sampler_logp.to(old_logp.dtype)) * mask
        n = int(mask.sum())
        kl = float(((torch.exp(delta) - delta - 1) * mask).sum() / max(n, 1))
        return kl, float(delta.abs().max()) if n else 0.0, n


def sampler_differs(engine: str, top_p: float, top_k: int, sampler_dtype: torch.dtype, trainer_dtype: torch.dtype,
                    mixed: bool) -> str | None:
    """Why the sampler's distribution differs from the trainer's π_old, or None when both are the
    same float32 computation (then they agree to float rounding, ~1e-6 in log p)."""
    reasons = []
    if engine == "vllm":
        reasons.append("vLLM samples with its own kernels")
    if sampler_dtype != torch.float32 or trainer_dtype != torch.float32 or mixed:
        reasons.append(f"rollouts compute in {str(sampler_dtype).removeprefix('torch.')}")
    if top_p < 1.0 or top_k:
        reasons.append("top-p/top-k truncate the sampling distribution")
    return "; ".join(reasons) or None


def resolve_rollout_correction(requested: str, why_different: str | None) -> tuple[str, str]:
    """The correction to apply (``auto`` → ``tis`` where the sampler differs, else ``none``) and why."""
    if requested != "auto":
        return requested, f"rollout_correction: {requested} in the config"
    if why_different:
        return "tis", f"auto: the sampler differs from the trainer ({why_different})"
    return "none", "auto: sampler and trainer run the same float32 computation"
