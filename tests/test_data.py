"""Data loading (grpo/data.py): real shared files, local formats, synthetic sources, errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from grpo.data import DataError, DataSpec, load_rows

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
GSM8K = SHARED / "gsm8k" / "train.jsonl"
MGSM_ZH = SHARED / "mgsm" / "mgsm_zh.tsv"
CJK = re.compile(r"[\u4e00-\u9fff]")


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.skipif(not GSM8K.exists(), reason="shared GSM8K data not present")
def test_gsm8k_first_rows():
    rows = load_rows(DataSpec(source=str(GSM8K), size=5))
    assert len(rows) == 5
    assert rows[0]["prompt"].startswith("Natalia sold clips to 48 of her friends in April")
    assert rows[0]["solution"] == "72"
    assert [r["solution"] for r in rows[:2]] == ["72", "10"]
    # The source's own columns stay beside the normalised ones (reward functions receive them as
    # keyword arguments); the raw GSM8K answer keeps its worked solution and "#### 72".
    assert set(rows[0]) == {"prompt", "solution", "question", "answer"}
    assert rows[0]["question"] == rows[0]["prompt"] and rows[0]["answer"].endswith("#### 72")
    # Shuffling is deterministic per seed and changes the order.
    a = load_rows(DataSpec(source=str(GSM8K), size=5, shuffle=True, seed=1))
    assert set(a[0]) == set(rows[0])  # the shuffle's row-index column does not leak
    assert a == load_rows(DataSpec(source=str(GSM8K), size=5, shuffle=True, seed=1))
    assert a != rows and a != load_rows(DataSpec(source=str(GSM8K), size=5, shuffle=True, seed=2))


@pytest.mark.skipif(not MGSM_ZH.exists(), reason="shared MGSM data not present")
def test_mgsm_chinese_tsv_without_header():
    rows = load_rows(DataSpec(source=str(MGSM_ZH), language="zh"))
    assert len(rows) == 250
    first = rows[0]
    assert first["prompt"].startswith("珍妮特的鸭子每天下 16 颗蛋") and CJK.search(first["prompt"])
    assert first["solution"] == "18" and first["language"] == "zh"
    assert all(re.fullmatch(r"-?[\d.]+", r["solution"]) for r in rows)


def test_jsonl_with_column_mapping_keeps_other_columns(tmp_path):
    path = _jsonl(
        tmp_path / "d.jsonl",
        [{"q": "1+1?", "gold_text": "#### 2", "lang": "en", "id": 7}, {"q": "2+2?", "gold_text": "#### 1,234", "lang": "en", "id": 8}],
    )
    rows = load_rows(DataSpec(source=str(path), columns={"q": "prompt", "gold_text": "solution", "lang": "language"}))
    # The mapping adds prompt/solution/language; the columns keep their own names too (TRL's way).
    assert rows == [
        {"q": "1+1?", "gold_text": "#### 2", "lang": "en", "id": 7, "prompt": "1+1?", "solution": "2", "language": "en"},
        {"q": "2+2?", "gold_text": "#### 1,234", "lang": "en", "id": 8, "prompt": "2+2?", "solution": "1234", "language": "en"},
    ]


def test_csv_parquet_and_save_to_disk(tmp_path):
    import datasets

    csv_path = tmp_path / "d.csv"
    csv_path.write_text('problem,final_answer,source\n"What is 3, plus 4?",7,toy\nHalf of 10?,5,toy\n', encoding="utf-8")
    rows = load_rows(DataSpec(source=str(csv_path), language="en"))
    assert rows[0] == {"problem": "What is 3, plus 4?", "final_answer": "7", "source": "toy", "prompt": "What is 3, plus 4?", "solution": "7", "language": "en"}

    headerless = tmp_path / "h.csv"
    headerless.write_text("Two plus two?,four\n", encoding="utf-8")
    rows = load_rows(DataSpec(source=str(headerless), header=False, extract_gold=False))
    assert rows == [{"prompt": "Two plus two?", "solution": "four"}]

    ds = datasets.Dataset.from_dict({"query": ["a?", "b?"], "target": [3, 4]})
    ds.to_parquet(str(tmp_path / "d.parquet"))
    rows = load_rows(DataSpec(source=str(tmp_path / "d.parquet"), size=1))
    assert rows == [{"query": "a?", "target": 3, "prompt": "a?", "solution": "3"}]  # target keeps its number

    datasets.DatasetDict({"test": ds}).save_to_disk(str(tmp_path / "saved"))
    rows = load_rows(DataSpec(source=str(tmp_path / "saved"), split="test"))
    assert [r["solution"] for r in rows] == ["3", "4"]
    with pytest.raises(DataError, match="has no split 'train'; splits: test"):
        load_rows(DataSpec(source=str(tmp_path / "saved")))


def test_hub_ids_go_to_load_dataset(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        return datasets.Dataset.from_dict({"question": ["q?"], "answer": ["x\n#### 5"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    rows = load_rows(DataSpec(source="openai/gsm8k", subset="main", split="test"))
    assert calls == [("openai/gsm8k", "main", "test")]
    assert rows == [{"question": "q?", "answer": "x\n#### 5", "prompt": "q?", "solution": "5"}]

    def offline(path, name=None, split=None, **kwargs):
        raise ConnectionError(f"Couldn't reach '{path}' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="^data source 'org/name' is not a local file or directory, and loading it"):
        load_rows(DataSpec(source="org/name"))


def test_synthetic_source():
    spec = DataSpec(source="synthetic:arithmetic", size=8, seed=3, language="mixed", options={"ops": "*"})
    rows = load_rows(spec)
    assert rows == load_rows(spec) and len(rows) == 8
    assert {r["language"] for r in rows} == {"en", "zh"} and all(" * " in r["expression"] for r in rows)
    assert len(load_rows(DataSpec(source="synthetic:countdown"))) == 1000
    with pytest.raises(DataError, match="unknown task 'nope'"):
        load_rows(DataSpec(source="synthetic:nope"))
    with pytest.raises(ValueError, match="^options: only used with synthetic"):
        DataSpec(source="x.jsonl", options={"a": 1})


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"^data file '{re.escape(str(Path.cwd()))}/missing.jsonl' does not exist$"):
        load_rows(DataSpec(source="missing.jsonl"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_rows(DataSpec(source=str(tmp_path / "nope" / "train.parquet")))


def test_missing_columns_are_listed(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", [{"text": "hi", "label": "1"}])
    with pytest.raises(DataError) as info:
        load_rows(DataSpec(source=str(path)))
    msg = str(info.value)
    assert "has no prompt column; its columns are: text, label" in msg and "columns: {<column>: prompt}" in msg
    with pytest.raises(DataError, match="column 'txt' given in columns: does not exist; its columns are: text, label"):
        load_rows(DataSpec(source=str(path), columns={"txt": "prompt"}))
    with pytest.raises(DataError, match="has no solution column"):
        load_rows(DataSpec(source=str(path), columns={"text": "prompt"}))


def test_empty_file(tmp_path):
    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(DataError, match="e.jsonl' has no rows"):
        load_rows(DataSpec(source=str(tmp_path / "e.jsonl")))


def test_unparseable_golds_are_counted_and_skipped(tmp_path):
    path = _jsonl(
        tmp_path / "d.jsonl",
        [{"question": f"q{i}", "answer": a} for i, a in enumerate(["#### 4", "", None, "   ", "#### 9"])],
    )
    with pytest.warns(UserWarning, match="skipped 3 of 5 rows whose gold answer in column 'answer' could not be parsed"):
        rows = load_rows(DataSpec(source=str(path)))
    assert [(r["prompt"], r["solution"]) for r in rows] == [("q0", "4"), ("q4", "9")]

    bad = _jsonl(tmp_path / "bad.jsonl", [{"question": "q", "answer": ""}, {"question": "r", "answer": None}])
    with pytest.raises(DataError, match="none of the 2 gold answers in column 'answer' could be parsed"):
        load_rows(DataSpec(source=str(bad)))


def test_from_dict_validates_types():
    from grpo.schema import ConfigError

    spec = DataSpec.from_dict({"source": "x.jsonl", "size": 3, "columns": {"q": "prompt"}}, path="data.train")
    assert spec.size == 3 and spec.columns == {"q": "prompt"}
    with pytest.raises(ConfigError, match="data.train.size: must be ≥ 1"):
        DataSpec.from_dict({"source": "x.jsonl", "size": 0}, path="data.train")


@pytest.mark.skipif(not GSM8K.exists(), reason="shared GSM8K data not present")
def test_named_sources_resolve_to_the_shared_files(monkeypatch):
    monkeypatch.setenv("GRPO_DATA_DIR", str(SHARED))
    named = load_rows(DataSpec(source="gsm8k", size=3))
    assert named == load_rows(DataSpec(source=str(GSM8K), size=3, language="en"))
    assert named[0]["solution"] == "72"
    zh = load_rows(DataSpec(source="mgsm_zh", size=2))
    assert zh[0]["solution"] == "18" and zh[0]["language"] == "zh" and CJK.search(zh[0]["prompt"])
    assert load_rows(DataSpec(source="mgsm_en", size=1))[0]["prompt"].startswith("Janet")
    # The user's own settings win over the source's defaults.
    assert load_rows(DataSpec(source="mgsm_zh", size=1, language="xx"))[0]["language"] == "xx"


def test_named_source_missing_data_says_where_it_looked(monkeypatch, tmp_path):
    from grpo.data import is_hub_id, list_data_sources

    monkeypatch.setenv("GRPO_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=r"gsm8k/train.jsonl not found; looked in '.*nowhere/gsm8k/train.jsonl'; set GRPO_DATA_DIR"):
        load_rows(DataSpec(source="gsm8k"))
    assert {"gsm8k", "mgsm_en", "mgsm_zh"} <= set(list_data_sources())
    assert not is_hub_id("gsm8k") and is_hub_id("hub:gsm8k") and is_hub_id("openai/gsm8k")
