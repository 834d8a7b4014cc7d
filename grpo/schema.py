"""Typed-dataclass loading with errors that name the field.

Every configuration object in the toolkit is a plain ``@dataclass``. ``from_dict`` turns the
nested dicts that come out of YAML into those dataclasses and checks, on the way, that

* every key is a field (an unknown key names its full path and the nearest valid key),
* every value has the declared type (``int``, ``float``, ``bool``, ``str``, ``Literal``,
  ``X | None``, ``list[X]``, ``dict[str, X]``, nested dataclasses, unions of these),
* every field without a default is present.

Errors are :class:`ConfigError` with a one-line message such as
``grpo.group_sise: unknown key; did you mean 'group_size'?``.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


def nearest(word: str, options) -> str | None:
    """The closest option to ``word`` (difflib), or None when nothing is close."""
    match = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return match[0] if match else None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _type_name(tp) -> str:
    if tp is type(None):
        return "null"
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        return f"a list of {_type_name(get_args(tp)[0])}"
    if origin is dict:
        value_tp = get_args(tp)[1] if get_args(tp) else Any
        return "a mapping" if value_tp is Any else f"a mapping of {_type_name(value_tp)}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return _SIMPLE_NAMES.get(tp, getattr(tp, "__name__", str(tp)))


_SIMPLE_NAMES = {float: "a number", int: "an integer", str: "a string", bool: "true or false"}


def _describe(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _same_shape(value, tp) -> bool:
    origin = get_origin(tp) or tp
    if isinstance(value, dict):
        return dataclasses.is_dataclass(tp) or origin is dict
    if isinstance(value, (list, tuple)):
        return origin is list
    return False


def convert(value: Any, tp, path: str) -> Any:
    """Check ``value`` against type ``tp`` and convert it (dicts to dataclasses, ints to floats)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        # Try the non-None options in order; the first that accepts the value wins.
        for option in options:
            if option is type(None):
                continue
            try:
                return convert(value, option, path)
            except ConfigError as exc:
                errors.append((option, exc))
        # When exactly one option has the value's shape (a mapping for a dataclass, ...), its
        # error is the informative one: "template.kind: unknown ..." beats "expected a or b".
        same_shape = [exc for option, exc in errors if _same_shape(value, option)]
        if len(errors) == 1 or len(same_shape) == 1:
            raise (same_shape or [errors[0][1]])[0]
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {_describe(value)}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            hint = nearest(str(value), [str(c) for c in choices])
            extra = f"; did you mean {hint!r}?" if hint else ""
            raise ConfigError(f"{path}: expected one of {', '.join(map(repr, choices))}, got {_describe(value)}{extra}")
        return value
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value) and isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {_describe(value)}")
        return from_dict(tp, value, path)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected {_type_name(tp)}, got {_describe(value)}")
        (item_tp,) = get_args(tp) or (Any,)
        return [convert(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected {_type_name(tp)}, got {_describe(value)}")
        key_tp, val_tp = get_args(tp) or (str, Any)
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"{path}: keys must be strings, got {_describe(k)}")
            out[k] = convert(v, val_tp, _join(path, k))
        return out
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {_describe(value)}")
        return value
    if tp is float:
        # YAML reads "1e-6" (no dot) as a string: accept numeric strings for floats only.
        if isinstance(value, bool):
            raise ConfigError(f"{path}: expected a number, got {_describe(value)}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{path}: expected a number, got {_describe(value)}")
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {_describe(value)}")
        return value
    if isinstance(tp, type):
        if not isinstance(value, tp):
            raise ConfigError(f"{path}: expected {_type_name(tp)}, got {_describe(value)}")
        return value
    raise TypeError(f"{path}: unsupported annotation {tp!r}")


def from_dict(cls, data: dict | None, path: str = ""):
    """Build dataclass ``cls`` from ``data``, validating keys and types; errors name ``path``."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path or cls.__name__}: expected a mapping, got {_describe(data)}")
    # A class may read other names for its keys first (GRPOConfig: TRL's), or act on the
    # mapping before it is checked (Recipe: imports that register what its keys name).
    prepare = getattr(cls, "prepare_dict", None)
    if prepare is not None:
        data = prepare(dict(data), path)
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            known = getattr(cls, "unknown_key_hint", None)
            special = known(str(key)) if known is not None else None
            hint = nearest(str(key), fields)
            extra = f"; {special}" if special else f"; did you mean {hint!r}?" if hint else f"; valid keys: {', '.join(fields)}"
            raise ConfigError(f"{_join(path, str(key))}: unknown key{extra}")
    kwargs = {}
    for name, field in fields.items():
        if name in data:
            kwargs[name] = convert(data[name], hints[name], _join(path, name))
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{_join(path, name)}: required key is missing")
    try:
        obj = cls(**kwargs)
    except (ValueError, TypeError) as exc:
        if isinstance(exc, ConfigError):
            raise
        # __post_init__ checks raise ValueError("field: message"); prefix the path.
        raise ConfigError(f"{path + ('.' if path else '')}{exc}") from None
    return obj


def to_dict(obj) -> Any:
    """The inverse of ``from_dict``: nested dataclasses to plain dicts (for YAML dumps and hashes)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    """Apply a ``--set a.b.c=value`` override to nested dict ``data`` (creating mappings as needed)."""
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        if isinstance(node, list):
            node = node[_list_index(node, key, dotted)]
            continue
        if node.get(key) is None:
            node[key] = {}
        node = node[key]
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"--set {dotted}: '{key}' is not a mapping")
    last = keys[-1]
    if isinstance(node, list):
        node[_list_index(node, last, dotted)] = value
    else:
        node[last] = value


def _list_index(node: list, key: str, dotted: str) -> int:
    try:
        index = int(key)
        node[index]
    except (ValueError, IndexError):
        raise ConfigError(f"--set {dotted}: expected an index below {len(node)} for a list of {len(node)} items, got '{key}'") from None
    return index


__all__ = ["ConfigError", "convert", "from_dict", "to_dict", "nearest", "set_dotted"]
