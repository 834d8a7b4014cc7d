"""On-policy distillation: the student samples, the teacher scores every sampled token.

The GRPO step is unchanged except for its advantage, which becomes per token. For completion
i, token t (sampled by the student π_θ from its own prefix y_<t), with the log-probabilities at
the sampling temperature and the student's those of the policy that sampled (π_old):

    r_it = log π_old(y_it | y_<t) − log π_T(y_it | y_<t)        one-sample reverse KL(student ‖ teacher)
    r̄    = Σ_it m_it·r_it / Σ_it m_it                           its mean over the batch's tokens (baseline)
    A_it = −λ_KL · (r_it − r̄) + λ_R · A_i                       masked: 0 on padding

where A_i is the group-relative advantage of the rule rewards (grpo/advantages.py) and λ_R = 0
is pure distillation. The baseline r̄ is a constant, and E_y[∇log π_θ(y | ·)] = 0 at every
position, so it leaves the expected gradient as it is and only removes variance: without it a
student far from its teacher gets a negative advantage on nearly every token it samples, and
pushing down whatever it sampled is mostly noise (on the tests' tiny student and "end early"
teacher at learning rate 3e-2, the reverse KL of the last 5 of 30 steps averaged 0.38 with the
baseline and 1.25 without; at 1e-2 both converge). ``baseline=False`` turns it off. A token the teacher finds likelier than the student gets pushed up,
one it finds unlikelier pushed down: with μ = 1 the gradient of the clipped surrogate is
−Σ_t A_it ∇log π_θ(y_it), and E[r_it] over the student's sampling is the per-token reverse KL,
so the step descends KL(π_θ ‖ π_T) on the student's own states (each token's own term only,
the "discount 0" form; GKD, Agarwal et al. 2024; MiniLLM, Gu et al. 2024). Reverse KL is mode
seeking: the student concentrates on what the teacher does well rather than spreading over
everything the teacher might say.

The teacher needs the student's token ids to mean the same text: its tokenizer's vocabulary
must equal the student's (:func:`check_same_vocabulary`; off-policy distillation through SFT on
teacher samples has no such limit, its data is text).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from grpo.schema import ConfigError

__all__ = ["Teacher", "reverse_kl_advantages", "reverse_kl", "check_same_vocabulary", "VocabularyMismatch"]


@dataclass
class Teacher:
    """A frozen teacher for on-policy distillation and the weights of the advantage above."""

    model: Any  # a causal LM sharing the student's vocabulary
    tokenizer: Any = None  # checked against the student's when given
    kl_weight: float = 1.0  # λ_KL
    reward_weight: float = 0.0  # λ_R: 0 = pure distillation; > 0 mixes in the rule rewards' advantage
    baseline: bool = True  # subtract the batch's mean r̄ from r (variance reduction; see above)

    def __post_init__(self):
        if self.kl_weight < 0 or self.reward_weight < 0:
            raise ValueError(f"kl_weight and reward_weight: must be ≥ 0, got {self.kl_weight} and {self.reward_weight}")
        if self.kl_weight == 0 and self.reward_weight == 0:
            raise ValueError("kl_weight: at least one of kl_weight and reward_weight must be > 0")


def reverse_kl(student_logp: torch.Tensor, teacher_logp: torch.Tensor) -> torch.Tensor:
    """r_it = log π_s(y_it) − log π_T(y_it), the one-sample estimate of KL(π_s ‖ π_T) at each
    sampled token (its expectation over y_it ~ π_s is the per-token reverse KL). [n, T]."""
    return student_logp - teacher_logp


def reverse_kl_advantages(
    student_logp: torch.Tensor,
    teacher_logp: torch.Tensor,
    mask: torch.Tensor,
    rule_advantages: torch.Tensor | None = None,
    kl_weight: float = 1.0,
    reward_weight: float = 0.0,
    baseline: bool = True,
) -> torch.Tensor:
    """Per-token advantages A_it = −λ_KL · (r_it − r̄) + λ_R · A_i with r_it = log π_s(y_it) −
    log π_T(y_it) and r̄ its masked mean (0 with ``baseline=False``); 0 where ``mask`` is 0.
    Shapes: logps and mask [n, T], ``rule_advantages`` [n]. No gradient flows (the
    log-probabilities are detached): these are fixed weights of the policy gradient."""
    mask = mask.to(student_logp.dtype)
    r = reverse_kl(student_logp.detach(), teacher_logp.detach())
    if baseline:
        r = r - (r * mask).sum() / mask.sum().clamp(min=1)
    advantages = -kl_weight * r
    if reward_weight and rule_advantages is not None:
        advantages = advantages + reward_weight * rule_advantages.detach().to(advantages.dtype).unsqueeze(1)
    return advantages * mask


class VocabularyMismatch(ConfigError):
    """The teacher's tokenizer does not share the student's vocabulary."""


def check_same_vocabulary(student_tokenizer, teacher_tokenizer, teacher_vocab_size: int | None = None) -> None:
    """On-policy distillation reads the teacher's log-probability of the student's token ids, so
    every id must be the same token for both: the two vocabularies (token → id) must be equal,
    and the teacher's output layer must cover them. ``VocabularyMismatch`` says how they differ."""
    student, teacher = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    if student != teacher:
        only_student = sorted(set(student) - set(teacher))
        moved = sorted(t for t in set(student) & set(teacher) if student[t] != teacher[t])
        detail = []
        if only_student:
            detail.append(f"{len(only_student)} student tokens the teacher lacks (e.g. {only_student[0]!r})")
        if moved:
            detail.append(f"{len(moved)} tokens with other ids (e.g. {moved[0]!r}: {student[moved[0]]} vs {teacher[moved[0]]})")
        if not detail:
            detail.append(f"the teacher has {len(set(teacher) - set(student))} extra tokens")
        raise VocabularyMismatch(
            f"teacher: on-policy distillation needs the teacher to share the student's vocabulary "
            f"({len(student)} vs {len(teacher)} tokens; {'; '.join(detail)}); use mode: off_policy (SFT on teacher samples) for another tokenizer"
        )
    needed = max(student.values()) + 1 if student else 0
    if teacher_vocab_size is not None and teacher_vocab_size < needed:
        raise VocabularyMismatch(f"teacher: its output layer has {teacher_vocab_size} logits, the vocabulary needs {needed}")
