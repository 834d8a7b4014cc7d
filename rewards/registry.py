"""Name -> reward-function registry, and loading of user rewards from ``module:function`` and
``path/to/file.py:function`` (see :mod:`rewards.user_code` for where modules are looked for).

A reward function follows TRL's convention::

    fn(prompts: list, completions: list, **kwargs) -> list[float | None]

Dataset columns and trainer extras (``completion_ids``, ``trainer_state``...) arrive as keyword
arguments; recipe parameters are keyword-only arguments with defaults, bound per recipe with
:func:`functools.partial` (or :func:`bind_reward`, which also checks the parameter names).
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable
from typing import Any

RewardFn = Callable[..., list]

_REGISTRY: dict[str, RewardFn] = {}


def register_reward(name: str | Callable | None = None, *, overwrite: bool = False):
    """Decorator registering a reward function under ``name`` (default: the function's ``__name__``).

    Usable as ``@register_reward("accuracy")``, ``@register_reward()`` or bare ``@register_reward``.
    Registering a name that is already taken raises ``ValueError`` unless ``overwrite=True``.
    The function is returned unchanged apart from a ``reward_name`` attribute.
    """
    if callable(name):  # bare @register_reward
        return register_reward(None, overwrite=overwrite)(name)

    def decorator(fn: RewardFn) -> RewardFn:
        if not callable(fn):
            raise TypeError(f"register_reward expects a function, got {type(fn).__name__}")
        reward_name = name or fn.__name__
        existing = _REGISTRY.get(reward_name)
        # The same function defined again (its module re-imported, e.g. a recipe's file loaded
        # once more after an edit) replaces itself; a different function needs overwrite=True.
        reloaded = existing is not None and _describe(existing) == _describe(fn)
        if existing is not None and existing is not fn and not reloaded and not overwrite:
            raise ValueError(
                f"a reward named '{reward_name}' is already registered "
                f"({_describe(_REGISTRY[reward_name])}); pass overwrite=True to replace it"
            )
        _REGISTRY[reward_name] = fn
        fn.reward_name = reward_name
        return fn

    return decorator


def get_reward(name_or_path: str) -> RewardFn:
    """Resolve a registered reward name, or a user reward given as ``"module.path:function"`` or
    ``"path/to/file.py:function"``.

    Every failure raises ``ValueError`` with a one-line message saying what is wrong.
    """
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ValueError(f"reward must be a non-empty string, got {name_or_path!r}")
    key = name_or_path.strip()
    if ":" in key:
        return _load_from_path(key)
    if key in _REGISTRY:
        return _REGISTRY[key]

    registered = ", ".join(sorted(_REGISTRY)) or "(none)"
    close = difflib.get_close_matches(key, list(_REGISTRY), n=1)
    if close:
        hint = f"did you mean '{close[0]}'? "
    elif "." in key or "/" in key:
        hint = "to load your own function use 'module.path:function' or 'path/to/file.py:function'; "
    else:
        hint = ""
    raise ValueError(f"unknown reward '{key}'; {hint}registered: {registered}")


def list_rewards() -> dict[str, str]:
    """Registered reward names (sorted) mapped to the first line of their docstring."""
    return {name: _first_doc_line(_REGISTRY[name]) for name in sorted(_REGISTRY)}


def bind_reward(name_or_path: str, **params: Any) -> RewardFn:
    """Resolve a reward and bind recipe parameters to it with :func:`functools.partial`.

    Parameter names are checked against the function's keyword-only parameters so that a typo
    in a recipe (``target_langauge``) fails at start-up instead of being swallowed by ``**kwargs``.
    TRL names the reward after the wrapped function, so logging is unaffected by the partial.
    """
    fn = get_reward(name_or_path)
    if not params:
        return fn
    accepted = [
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    for param in params:
        if param not in accepted:
            close = difflib.get_close_matches(param, accepted, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ValueError(
                f"reward '{name_or_path}' has no parameter '{param}'; {hint}"
                f"parameters: {', '.join(accepted) or '(none)'}"
            )
    return functools.partial(fn, **params)


def _load_from_path(path: str) -> RewardFn:
    from .user_code import UserCodeError, load_object

    try:
        obj = load_object(path)
    except UserCodeError as exc:
        raise ValueError(str(exc)) from None
    if not callable(obj):
        raise ValueError(
            f"'{path}' is not callable (it is a {type(obj).__name__}); "
            "a reward must be a function fn(prompts, completions, **kwargs)"
        )
    return obj


def _first_doc_line(fn: RewardFn) -> str:
    doc = inspect.getdoc(fn) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _describe(fn: RewardFn) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
