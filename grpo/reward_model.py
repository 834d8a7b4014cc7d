"""A learned reward model as a reward function: any sequence-classification checkpoint.

R1's final RL stage scores general (non-reasoning) prompts with a reward model and reasoning
prompts with the rule rewards. Registering the model as an ordinary reward function keeps one
mechanism: route rows to it with ``when:`` in the recipe::

    rewards:
      accuracy:     {weight: 1.0, when: {task_type: reasoning}}
      reward_model: {weight: 1.0, model: path/to/rm, when: {task_type: general}}

It lives in ``grpo/`` rather than ``rewards/`` because it needs torch.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from rewards.registry import register_reward
from rewards.text import completion_text, prompt_text


@lru_cache(maxsize=2)
def _load(model: str, dtype: str):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from grpo.models import resolve_model_path

    path = resolve_model_path(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    rm = AutoModelForSequenceClassification.from_pretrained(path, dtype=getattr(torch, dtype))
    if rm.config.pad_token_id is None:
        rm.config.pad_token_id = tokenizer.pad_token_id
    return rm.eval(), tokenizer


@register_reward("reward_model")
def reward_model_reward(
    prompts: list, completions: list, *, model: str, batch_size: int = 8, max_length: int = 1024, dtype: str = "float32", **kwargs
) -> list[float]:
    """Score of a sequence-classification reward model on prompt + completion.

    reward = logit of the single output (num_labels = 1, the usual reward-model head), or the
    probability of the last label for a classifier with several labels. The text scored is the
    rendered prompt followed by the completion, truncated on the left to ``max_length`` tokens.
    """
    rm, tokenizer = _load(model, dtype)
    texts = [prompt_text(p) + completion_text(c) for p, c in zip(prompts, completions)]
    scores: list[float] = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(
            texts[start : start + batch_size], return_tensors="pt", padding=True, truncation=True,
            max_length=max_length, add_special_tokens=False,
        )
        with torch.no_grad():
            logits = rm(**enc).logits.float()
        values = logits[:, 0] if logits.shape[1] == 1 else logits.softmax(-1)[:, -1]
        scores.extend(values.tolist())
    return scores


# Calling it at load (grpo.scoring.probe_rewards) would load the reward model before the policy.
reward_model_reward.probe_at_load = False
