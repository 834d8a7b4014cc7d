"""Format reward: does the completion follow the R1 template ``<think>...</think><answer>...</answer>``?"""

from __future__ import annotations

import re

from .registry import register_reward
from .text import completion_text, prompt_text

_TEMPLATE = re.compile(r"\s*<think>.*?</think>\s*<answer>.*?</answer>\s*", re.DOTALL)
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def prompt_opens_think(prompt, think_in_prompt: bool | None = None) -> bool:
    """Whether generation starts inside an already opened ``<think>`` block.

    ``think_in_prompt`` forces the answer; otherwise it is True when the prompt text ends with
    ``<think>`` (trailing whitespace ignored), as with chat templates that open the block
    themselves. A conversational prompt only shows its last message here, not the template's
    generation prompt, so such recipes should bind ``think_in_prompt=True``.
    """
    if think_in_prompt is not None:
        return think_in_prompt
    return prompt_text(prompt).rstrip().endswith("<think>")


def follows_r1_template(text: str) -> bool:
    """True if ``text`` is ``<think>…</think>`` then ``<answer>…</answer>``, with only whitespace
    around and between them and exactly one of each tag."""
    return all(text.count(tag) == 1 for tag in _TAGS) and _TEMPLATE.fullmatch(text) is not None


@register_reward("format")
def format_reward(prompts: list, completions: list, *, think_in_prompt: bool | None = None, **kwargs) -> list[float]:
    """1.0 if the completion is exactly <think>…</think> then <answer>…</answer>, else 0.0.

    reward = 1.0 if completion matches ``\\s*<think>.*</think>\\s*<answer>.*</answer>\\s*`` with
    exactly one of each of the four tags, else 0.0. Tag contents may be anything, nothing may
    follow ``</answer>`` but whitespace. When the prompt already opened ``<think>`` (it ends with
    ``<think>``, or ``think_in_prompt=True``), the completion is checked as ``"<think>" + completion``.
    """
    rewards = []
    for prompt, completion in zip(prompts, completions, strict=True):
        text = completion_text(completion)
        if prompt_opens_think(prompt, think_in_prompt):
            text = "<think>" + text
        rewards.append(1.0 if follows_r1_template(text) else 0.0)
    return rewards
