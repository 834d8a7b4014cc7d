"""Reward functions for GRPO, in TRL's convention ``fn(prompts, completions, **kwargs) -> list[float | None]``.

Pure Python (no torch/transformers). Importing the package registers the built-ins:
``accuracy``, ``code``, ``countdown``, ``format``, ``language_consistency``, ``length`` and ``overlong``.
"""

from . import accuracy, code, countdown, format, language, length  # noqa: F401  (imported to register the built-ins)
from .registry import bind_reward, get_reward, list_rewards, register_reward

__all__ = ["bind_reward", "get_reward", "list_rewards", "register_reward"]
