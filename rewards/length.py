"""Length rewards: a target-length reward and DAPO's soft overlong punishment."""

from __future__ import annotations

from .registry import register_reward
from .text import completion_text


def _completion_lengths(completions: list, completion_ids: list | None) -> list[int]:
    """Token counts from ``completion_ids`` when the trainer passes them, else whitespace words."""
    if completion_ids is not None:
        if len(completion_ids) != len(completions):
            raise ValueError(f"got {len(completions)} completions but {len(completion_ids)} completion_ids")
        return [len(ids) for ids in completion_ids]
    return [len(completion_text(c).split()) for c in completions]


@register_reward("length")
def length_reward(
    prompts: list,
    completions: list,
    *,
    target_tokens: int = 1024,
    completion_ids: list | None = None,
    **kwargs,
) -> list[float]:
    """Peaks at 1.0 when the completion is target_tokens long, falling linearly to 0.0.

    reward = clip(1 - |length - target_tokens| / target_tokens, 0, 1)

    ``length`` is the number of completion tokens (``completion_ids``, passed by the trainer), or
    the number of whitespace-separated words when no ids are given. So a completion half or
    one-and-a-half times the target scores 0.5, and an empty one or one twice the target scores 0.
    """
    if target_tokens <= 0:
        raise ValueError(f"target_tokens must be positive, got {target_tokens}")
    return [
        min(1.0, max(0.0, 1.0 - abs(length - target_tokens) / target_tokens))
        for length in _completion_lengths(completions, completion_ids)
    ]


@register_reward("overlong")
def overlong_reward(
    prompts: list,
    completions: list,
    *,
    max_tokens: int = 4096,
    buffer: int = 1024,
    completion_ids: list | None = None,
    **kwargs,
) -> list[float]:
    """DAPO's soft overlong punishment: 0 up to max_tokens - buffer, then linearly down to -1.

    With L = completion tokens, L_max = ``max_tokens``, L_cache = ``buffer``:
    reward = 0 if L <= L_max - L_cache; (L_max - L_cache - L) / L_cache if L_max - L_cache < L <= L_max;
    -1 if L > L_max.

    Set ``max_tokens`` to the trainer's max completion length, so that truncated completions get
    the full -1. Needs ``completion_ids`` (token counts), which TRL's GRPO trainer always passes.
    """
    if completion_ids is None:
        raise ValueError(
            "the overlong reward needs completion_ids (token ids of each completion); "
            "TRL's GRPOTrainer passes them, other callers must pass completion_ids=[[...], ...]"
        )
    if not 0 < buffer <= max_tokens:
        raise ValueError(f"overlong needs 0 < buffer <= max_tokens, got buffer={buffer}, max_tokens={max_tokens}")
    safe_length = max_tokens - buffer
    rewards = []
    for length in _completion_lengths(completions, completion_ids):
        if length <= safe_length:
            rewards.append(0.0)
        elif length <= max_tokens:
            rewards.append((safe_length - length) / buffer)
        else:
            rewards.append(-1.0)
    return rewards
