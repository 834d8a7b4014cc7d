"""Countdown reward: did the completion write an expression that reaches the target?

Rows of the ``synthetic:countdown`` task (``grpo/tasks.py``) carry ``numbers`` (the numbers
that may be used) and ``solution`` (the target). A completion scores 1.0 when its final
expression

* is taken from the last ``<answer> ... </answer>`` block, or else from its last non-empty line
  (an ``expr = target`` or ``target = expr`` form is accepted, as are ``×``, ``÷`` and ``−``),
* contains only integers, ``+ - * /`` and parentheses,
* uses each given number at most once (a number given twice may be used twice), and no other,
* evaluates, exactly (rational arithmetic), to the target within 1e-6.

Anything else scores 0.0, and a row without ``numbers`` gets None (not applicable). The
expression is parsed with :mod:`ast` and walked node by node: nothing is ever evaluated by
Python, so text like ``__import__('os')`` is simply not an expression of the allowed form.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from fractions import Fraction

from rewards.registry import register_reward

__all__ = ["countdown", "countdown_score", "final_expression", "evaluate_expression"]

MAX_EXPRESSION_CHARS = 200  # longer "expressions" are not answers to a 3-6 number puzzle
TOLERANCE = 1e-6

_ANSWER_OPEN = re.compile(r"<answer>", re.IGNORECASE)
_ANSWER_CLOSE = re.compile(r"</answer>", re.IGNORECASE)
_ALLOWED_CHARS = re.compile(r"[0-9+\-*/().\s]*")
_REPLACEMENTS = {"×": "*", "·": "*", "÷": "/", "−": "-", "–": "-", "\\times": "*", "\\div": "/", "\\cdot": "*"}


def final_expression(completion: str) -> str:
    """The candidate expression: the last ``<answer>`` block, else the last non-empty line."""
    blocks = _answer_blocks(completion)
    if blocks:
        text = blocks[-1]
    else:
        lines = [line for line in completion.splitlines() if line.strip()]
        text = lines[-1] if lines else ""
    text = text.strip().strip("$`").strip()
    for old, new in _REPLACEMENTS.items():
        text = text.replace(old, new)
    return text.rstrip(".。").strip()


def _answer_blocks(text: str) -> list[str]:
    """What ``re.findall(r"<answer>(.*?)</answer>", text, re.S | re.I)`` gives, in linear time.

    (That regex re-scans the rest of the text from every unclosed opener: quadratic, seconds on a
    long completion of repeated ``<answer>`` tags.)
    """
    closers = list(_ANSWER_CLOSE.finditer(text))
    blocks, pos, j = [], 0, 0
    for opener in _ANSWER_OPEN.finditer(text):
        if opener.start() < pos:
            continue
        while j < len(closers) and closers[j].start() < opener.end():
            j += 1
        if j == len(closers):
            break
        blocks.append(text[opener.end() : closers[j].start()])
        pos = closers[j].end()
    return blocks


def _value(node: ast.AST, used: list[int]) -> Fraction:
    """Exact value of an allowed expression node; records the integer literals in ``used``."""
    if isinstance(node, ast.Expression):
        return _value(node.body, used)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        used.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        inner = _value(node.operand, used)
        return -inner if isinstance(node.op, ast.USub) else inner
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
        left, right = _value(node.left, used), _value(node.right, used)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        if right == 0:
            raise ZeroDivisionError("division by zero")
        return left / right
    raise ValueError(f"not allowed in a countdown expression: {type(node).__name__}")


def evaluate_expression(text: str) -> tuple[Fraction, list[int]] | None:
    """``(value, numbers used)`` for an expression of integers, + - * / and parentheses, else None."""
    if not text or len(text) > MAX_EXPRESSION_CHARS or not _ALLOWED_CHARS.fullmatch(text):
        return None
    try:
        tree = ast.parse(text, mode="eval")
        used: list[int] = []
        return _value(tree, used), used
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError):
        return None


def _split_equation(text: str, target: Fraction) -> str | None:
    """``"expr = 24"`` or ``"24 = expr"`` -> ``"expr"`` when the number is the target; else None."""
    parts = [p.strip() for p in text.split("=")]
    if len(parts) != 2:
        return None
    for expr, other in (parts, parts[::-1]):
        try:
            stated = Fraction(other)
        except ValueError:
            continue
        return expr if stated == target else None
    return None


def countdown_score(completion: str, numbers, target) -> float | None:
    """1.0 if ``completion`` reaches ``target`` with ``numbers`` (each at most once), else 0.0.

    None when ``numbers`` is None (the row is not a countdown puzzle) or ``target`` is missing.
    """
    if numbers is None or target is None:
        return None
    if isinstance(numbers, str):  # e.g. "[3, 7, 25]" read back from a CSV file
        numbers = re.findall(r"-?\d+", numbers)
    try:
        goal = Fraction(str(target).strip())
        allowed = Counter(int(x) for x in numbers)
    except (ValueError, TypeError):
        return None
    text = final_expression(completion if isinstance(completion, str) else "")
    if "=" in text:
        text = _split_equation(text, goal)
        if text is None:
            return 0.0
    result = evaluate_expression(text)
    if result is None:
        return 0.0
    value, used = result
    if Counter(used) - allowed:  # a number not given, or given fewer times than used
        return 0.0
    return 1.0 if abs(float(value - goal)) <= TOLERANCE else 0.0


def _completion_text(completion) -> str:
    """Plain text of a completion, also for chat-style ``[{"role": ..., "content": ...}]`` ones."""
    if isinstance(completion, list):
        contents = [m.get("content", "") for m in completion if isinstance(m, dict)]
        return contents[-1] if contents and isinstance(contents[-1], str) else ""
    return completion if isinstance(completion, str) else ""


@register_reward("countdown")
def countdown(prompts, completions, numbers=None, solution=None, **kwargs) -> list[float | None]:
    """Countdown correctness per completion (see the module docstring); None where a row has no numbers."""
    n = len(completions)
    numbers = numbers if numbers is not None else [None] * n
    solution = solution if solution is not None else [None] * n
    return [
        countdown_score(_completion_text(c), nums, target) for c, nums, target in zip(completions, numbers, solution)
    ]
