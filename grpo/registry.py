"""Name → implementation tables filled by decorators (KL estimators, loss aggregations, policy
losses, rollout engines and corrections, templates, trackers, stage kinds).

    KL_ESTIMATORS: dict[str, Callable] = {}
    register_kl = registrar(KL_ESTIMATORS)

    @register_kl("k3")
    def kl_k3(logp, ref_logp): ...

A config names an entry by its key; an unknown name is reported, with the known ones, where the
table is read. Registering a name again replaces the entry (a module re-imported by user code
registers the same objects again).
"""

from __future__ import annotations

from typing import Callable, TypeVar

T = TypeVar("T")


def registrar(table: dict[str, T], name_attr: str | None = None) -> Callable[[str], Callable[[T], T]]:
    """``register(name)``: a decorator that stores what it decorates in ``table`` under ``name``,
    returns it unchanged and, with ``name_attr``, sets that attribute of it to ``name`` (a class
    that knows its own registered name, as a tracker or a stage kind does)."""

    def register(name: str) -> Callable[[T], T]:
        def wrap(obj: T) -> T:
            if name_attr is not None:
                setattr(obj, name_attr, name)
            table[name] = obj
            return obj

        return wrap

    return register
