"""Turn TRL prompts/completions (plain strings or chat message lists) into plain text."""

from __future__ import annotations

from typing import Any


def completion_text(completion: Any) -> str:
    """Text of a completion.

    A string passes through. A conversational completion (``[{"role": "assistant", "content": ...}]``)
    gives the content of its assistant messages joined by newlines; messages without a ``role`` are
    taken as the model's. ``None`` gives ``""``.
    """
    if completion is None:
        return ""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):  # a single message
        completion = [completion]
    if isinstance(completion, (list, tuple)):
        parts = [
            _content_text(message.get("content"))
            for message in completion
            if isinstance(message, dict) and message.get("role", "assistant") == "assistant"
        ]
        return "\n".join(part for part in parts if part)
    raise TypeError(f"a completion must be a str or a list of chat messages, got {type(completion).__name__}")


def prompt_text(prompt: Any) -> str:
    """Text of a prompt: a string passes through; a message list gives its last message's content."""
    if prompt is None:
        return ""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, dict):
        return _content_text(prompt.get("content"))
    if isinstance(prompt, (list, tuple)):
        return _content_text(prompt[-1].get("content")) if prompt and isinstance(prompt[-1], dict) else ""
    raise TypeError(f"a prompt must be a str or a list of chat messages, got {type(prompt).__name__}")


def _content_text(content: Any) -> str:
    """Message content as text; multimodal content lists keep only their text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and part.get("type", "text") == "text":
                texts.append(str(part.get("text", "")))
        return "".join(texts)
    return str(content)
