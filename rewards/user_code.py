"""Loading the user's own code: ``module:function``, ``path/to/file.py:function`` and imports.

A recipe names user code in two ways:

* ``module.path:function``: an importable module. It is looked for first where Python finds
  modules anyway (this toolkit, installed packages, ``PYTHONPATH``), then in the *user folders*:
  the recipe's folder (and its ``code_dirs``), then the current directory. The user folders are
  added at the *end* of ``sys.path``, so a user file never replaces one of our modules (or any
  installed one): a user file with the same name as one is an error that names the file.
* ``path/to/file.py:function``: a file, loaded under a private module name
  (``_grpo_user_<stem>_<hash of its path>``), so the file may have any name, even ``rewards.py``.

:func:`load_module` also serves a recipe's ``imports:`` list: modules whose import registers
rewards, templates, tasks or stage kinds with their decorators.

Plain Python, no torch: ``rewards/registry.py`` resolves reward paths with it, and the recipe
loader (``pipelines/recipe.py``) registers the folders and runs the imports.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import os
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["UserCodeError", "add_user_dirs", "user_dirs", "is_file_spec", "load_module", "load_object", "shadowed_packages"]

# Folders registered by recipes, most recent first; each is also at the end of sys.path.
_USER_DIRS: list[Path] = []
# Private module names of files loaded by path -> (mtime_ns, size) when loaded.
_FILE_STAMPS: dict[str, tuple[int, int]] = {}
# sys.path entries we appended (removed again when a user folder moves to the front).
_ADDED_TO_SYS_PATH: list[str] = []


class UserCodeError(ValueError):
    """User code cannot be found or imported; the message is one line naming the file."""


def add_user_dirs(dirs) -> None:
    """Search these folders (in this order, before earlier-registered ones) for user modules."""
    new = [Path(os.path.abspath(os.path.expanduser(str(d)))) for d in dirs]
    for d in reversed(new):
        if d in _USER_DIRS:
            _USER_DIRS.remove(d)
        _USER_DIRS.insert(0, d)
    _place_on_sys_path()


def user_dirs() -> list[Path]:
    """Where user modules are looked for, in order: registered folders, then the current directory."""
    cwd = Path.cwd()
    return [*_USER_DIRS, *([cwd] if cwd not in _USER_DIRS else [])]


def _place_on_sys_path() -> None:
    """The user folders at the end of sys.path (after everything Python had), most recent first,
    so a user module can import its neighbours but never hide ours."""
    for entry in _ADDED_TO_SYS_PATH:
        while entry in sys.path:
            sys.path.remove(entry)
    _ADDED_TO_SYS_PATH.clear()
    present = {os.path.abspath(p or os.curdir) for p in sys.path}
    for d in user_dirs():
        if str(d) not in present:
            sys.path.append(str(d))
            _ADDED_TO_SYS_PATH.append(str(d))
    importlib.invalidate_caches()  # files written since the last import are found


def is_file_spec(text: str) -> bool:
    """True when the module part of a spec is a file path (``x.py``, ``dir/x.py``) rather than a module name."""
    text = text.strip()
    return text.endswith(".py") or "/" in text or "\\" in text


def split_spec(spec: str) -> tuple[str, str]:
    """``"target:attr.path"`` -> (target, attr path); the last colon splits (``C:\\x.py:fn`` works)."""
    target, sep, attr = spec.strip().rpartition(":")
    if not sep or not target.strip() or not attr.strip():
        raise UserCodeError(f"'{spec}' must look like 'module.path:function' or 'path/to/file.py:function'")
    return target.strip(), attr.strip()


def load_object(spec: str) -> Any:
    """The object named by ``"module.path:attr"`` or ``"path/to/file.py:attr"`` (``attr`` may be dotted)."""
    target, attr = split_spec(spec)
    module = load_module(target)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            file = getattr(module, "__file__", None)
            what = f"file '{file}'" if is_file_spec(target) else f"module '{target}'"
            where = f" ({file})" if file and not is_file_spec(target) else ""
            names = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n, None))]
            listed = f"; it defines: {', '.join(names[:12])}" if names else ""
            raise UserCodeError(f"{what} has no attribute '{attr}'{where}{listed}")
        obj = getattr(obj, part)
    return obj


def load_module(target: str) -> ModuleType:
    """Import a module by name (installed first, then the user folders) or a file by path."""
    if is_file_spec(target):
        return _load_file(Path(os.path.expanduser(target)))
    if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", target):
        raise UserCodeError(f"'{target}' is neither a module name (a.b.c) nor a path to a .py file")
    top = target.split(".")[0]
    local = _find_in_user_dirs(top)
    installed = _installed_location(top)
    if local is not None and installed is not None and not _same(local, installed):
        kind = "the toolkit's" if top in _OUR_PACKAGES else "Python's" if installed == "built-in" else "the installed"
        raise UserCodeError(
            f"'{local}' has the same name as {kind} module '{top}' ({installed}) and cannot be imported as '{top}'; "
            f"rename it (e.g. my_{top}{'.py' if local.suffix == '.py' else ''}), or name it by path: {local}:<function>"
        )
    if installed is None and local is not None:
        _import_from_folder(top, local)
    elif isinstance(installed, Path) and top not in _OUR_PACKAGES:
        _forget_if_elsewhere(top, installed)
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name == top and local is None:
            looked = ", ".join(str(d) for d in user_dirs())
            raise UserCodeError(
                f"cannot import module '{top}': ModuleNotFoundError: it is not installed and there is no {top}.py in {looked}; "
                "put it beside the recipe, or name a file by path (path/to/file.py:function)"
            ) from None
        raise _import_error(target, exc) from exc
    except Exception as exc:  # any failure inside user code at import time
        raise _import_error(target, exc) from exc


_OUR_PACKAGES = ("grpo", "rewards", "pipelines")


def _import_error(target: str, exc: BaseException) -> UserCodeError:
    where = ""
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f" ({exc.filename}, line {exc.lineno})"
    detail = " ".join(str(exc).split())
    what = f"file '{target}'" if is_file_spec(target) else f"module '{target}'"
    return UserCodeError(f"cannot import {what}{where}: {type(exc).__name__}: {detail}")


def _find_in_user_dirs(top: str) -> Path | None:
    """``<dir>/<top>.py`` or the package ``<dir>/<top>/`` in the first user folder that has one."""
    for d in user_dirs():
        if (d / f"{top}.py").is_file():
            return d / f"{top}.py"
        if (d / top / "__init__.py").is_file():
            return d / top
    return None


def _location(module: ModuleType) -> Path | str | None:
    file = getattr(module, "__file__", None)
    if file:
        path = Path(file)
        return path.parent if path.name == "__init__.py" else path
    locations = list(getattr(module, "__path__", []) or [])
    return Path(locations[0]) if locations else "built-in"


def _installed_location(top: str) -> Path | str | None:
    """Where Python finds ``top`` without the user folders (a file, a package folder, 'built-in'),
    or None. Looked up afresh: a module imported earlier from a folder no longer on the path
    (another recipe's, in the same process) does not count."""
    module = sys.modules.get(top)
    if module is not None and top in _OUR_PACKAGES:
        return _location(module)
    saved_path, saved_module = sys.path[:], sys.modules.pop(top, None)
    sys.path[:] = [p for p in sys.path if p not in _ADDED_TO_SYS_PATH]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        spec = None
    finally:
        sys.path[:] = saved_path
        if saved_module is not None:
            sys.modules[top] = saved_module
    if spec is None:
        return None
    if spec.origin in (None, "namespace") and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    if spec.origin in ("built-in", "frozen") or spec.origin is None:
        return "built-in"
    path = Path(spec.origin)
    return path.parent if path.name == "__init__.py" else path


def _same(a: Path | str, b: Path | str) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return os.path.realpath(a) == os.path.realpath(b)


def _forget_if_elsewhere(top: str, location: Path) -> bool:
    """Drop ``top`` (and its submodules) from sys.modules when the module there came from
    somewhere other than ``location``: a same-named module of another recipe's folder, imported
    earlier in this process. True when ``top`` is already the module at ``location``."""
    module = sys.modules.get(top)
    if module is None:
        return False
    current = _location(module)
    if isinstance(current, Path) and _same(current, location):
        return True
    for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
        del sys.modules[name]
    return False


def _import_from_folder(top: str, local: Path) -> None:
    """Make ``import top`` give the module at ``local``."""
    if _forget_if_elsewhere(top, local):
        return
    _execute(importlib.machinery.PathFinder.find_spec(top, [str(local.parent)]), top, top)


def _execute(spec, name: str, label: str) -> ModuleType:
    """Run the module of ``spec`` as ``sys.modules[name]`` (removed again if its code fails);
    errors name ``label`` (the module name, or the file's path)."""
    if spec is None or spec.loader is None:
        raise UserCodeError(f"cannot load '{label}' as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        del sys.modules[name]
        raise _import_error(label, exc) from exc
    return module


def _load_file(path: Path) -> ModuleType:
    path = Path(os.path.abspath(path))
    if not path.is_file():
        raise UserCodeError(f"file '{path}' does not exist" if not path.exists() else f"'{path}' is not a file")
    stem = re.sub(r"\W", "_", path.stem)
    name = f"_grpo_user_{stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    stat = path.stat()
    stamp = (stat.st_mtime_ns, stat.st_size)
    if name in sys.modules and _FILE_STAMPS.get(name) == stamp:
        return sys.modules[name]
    add_user_dirs([path.parent])  # so the file can import its neighbours
    module = _execute(importlib.util.spec_from_file_location(name, path), name, str(path))
    _FILE_STAMPS[name] = stamp
    return module


def shadowed_packages(root: Path, names=_OUR_PACKAGES) -> str | None:
    """A one-line message when one of our packages would be imported from somewhere other than
    ``root`` (a user's ``rewards.py`` earlier on the Python path), else None. Nothing is imported."""
    for top in names:
        module = sys.modules.get(top)
        location = _location(module) if module is not None else None
        if location is None:
            try:
                spec = importlib.util.find_spec(top)
            except (ImportError, ValueError):
                continue
            if spec is None or spec.origin is None:
                continue
            origin = Path(spec.origin)
            location = origin.parent if origin.name == "__init__.py" else origin
        if isinstance(location, Path) and not _same(location, root / top):
            return (
                f"'{location}' has the same name as the toolkit's '{top}' package and comes first on the Python path; "
                f"rename it (e.g. my_{top}{'.py' if location.suffix == '.py' else ''}): recipes find modules beside them without PYTHONPATH"
            )
    return None
