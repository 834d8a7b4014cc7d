"""Files that are either complete or absent: write to a temporary name, fsync, rename.

Also the checks that a run directory can be written at all (:func:`check_writable`,
:func:`check_free_space`), made before training starts, and :class:`StorageError`, which a
write that runs out of space becomes (the CLI prints it as one line).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class StorageError(OSError):
    """The run directory cannot be written, or the disk is (about to be) full; the message says which."""


def _pause_point(point: str, target: Path, tmp: Path) -> None:
    """Test hook, inert unless ``GRPO_TEST_PAUSE_IN`` names this point (``checkpoint_write``,
    ``rejection_sampling_write``), optionally with the target's name (``checkpoint_write:step-000004``).

    Then it prints ``GRPO_TEST_PAUSED <point> <temp path>`` and sleeps, with the files written and
    fsynced but not yet renamed, so tests/test_kill.py can SIGKILL the process inside the write.
    """
    wanted = os.environ.get("GRPO_TEST_PAUSE_IN")
    if wanted and wanted in (point, f"{point}:{target.name}"):
        print(f"GRPO_TEST_PAUSED {point} {tmp}", flush=True)
        time.sleep(3600)


def _raise_storage_error(exc: OSError, path: Path) -> None:
    """Re-raise a disk-full error as a one-line StorageError naming ``path``; other errors as they are."""
    if exc.errno in _NO_SPACE and not isinstance(exc, StorageError):
        raise StorageError(
            f"no space left on the device while writing '{path}'; free some space and rerun "
            "(a training run continues from its last complete checkpoint with --resume)"
        ) from exc
    raise exc


def check_writable(path: str | os.PathLike) -> Path:
    """Create directory ``path`` if needed and prove a file can be written in it; StorageError if not."""
    path = Path(path)
    probe = path / f".write-test-{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise StorageError(f"run directory '{path}' is not writable: {reason}; choose another output_dir") from None
    return path


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def check_free_space(path: str | os.PathLike, needed: int, what: str) -> None:
    """StorageError when the file system of ``path`` has less than ``needed`` bytes free."""
    free = shutil.disk_usage(path).free
    if free < needed:
        raise StorageError(
            f"run directory '{path}' has {format_bytes(free)} free, but {what} needs about {format_bytes(needed)}; "
            "free some space or choose another output_dir",
        )


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str, *, pause_point: str | None = None) -> Path:
    """Write ``text`` to ``path`` so that a reader sees the old file or the new one, never half.

    A failed write removes its temporary file; running out of space raises :class:`StorageError`.
    ``pause_point`` names the write for the test hook (:func:`_pause_point`).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        _raise_storage_error(exc, path)
    if pause_point:
        _pause_point(pause_point, path, tmp)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return path


def atomic_write_json(path: str | os.PathLike, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


@contextmanager
def atomic_directory(path: str | os.PathLike, *, pause_point: str | None = None):
    """Yield a temporary directory beside ``path``; on success fsync its files and rename it to ``path``.

    An existing ``path`` is replaced only after the new one is complete. When the body raises,
    the temporary directory is removed (running out of space becomes :class:`StorageError`); after
    a kill it is left behind under a dotted name that readers ignore and the next writer removes.
    ``pause_point`` names the write for the test hook (:func:`_pause_point`).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            _raise_storage_error(exc, path)
        raise
    if pause_point:
        _pause_point(pause_point, path, tmp)
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old)
    else:
        os.replace(tmp, path)
    fsync_dir(path.parent)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Rows of a JSON-lines file; a torn last line (a kill mid-append) is ignored."""
    rows = []
    path = Path(path)
    if not path.exists():
        return rows
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break  # incomplete final line
            rows.append(json.loads(line))
    return rows


def append_jsonl(path: str | os.PathLike, row: dict) -> None:
    """Append one line; a torn line (kill, full disk) is dropped by :func:`read_jsonl` and rewritten on resume."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
    except OSError as exc:
        _raise_storage_error(exc, Path(path))


@contextmanager
def file_lock(path: str | os.PathLike):
    """Hold an exclusive POSIX advisory lock on ``path`` (created if missing) for the block:
    one process at a time builds what the lock guards. Best effort where ``fcntl`` is missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - non-POSIX: no lock
            yield
            return
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
