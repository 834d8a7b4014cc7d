"""The lab base model (grpo/lab.py) and the corpus options of the arithmetic task behind it."""

import json
import operator
import re

import pytest

from grpo import lab
from grpo.lab import LabSpec, build_lab_model, corpus_rows, lab_model_dir, lab_probe, spec_hash
from grpo.tasks import get_task

#: Builds in a few seconds: for caching and determinism, not for behaviour.
TINY = LabSpec(name="tiny", hidden_size=32, num_layers=1, num_heads=2, max_value=5, corpus_size=200, steps=4, batch_size=8, warmup_steps=1)

_EN_STEP = re.compile(r"(-?\d+) ([-+]) (-?\d+) = (-?\d+)\.")
_ZH_STEP = re.compile(r"(-?\d+) (加|减) (-?\d+) 等于 (-?\d+)。")
_APPLY = {"+": operator.add, "-": operator.sub, "加": operator.add, "减": operator.sub}


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


# --- the corpus: options of synthetic:arithmetic ---------------------------------------------


def test_corpus_options_shape_the_worked_solutions():
    rows = get_task("arithmetic")(2_000, 3, "mixed", worked=True, max_value=20, ops="+-", allow_negative=False,
                                  language_mix=0.35, format_rate=0.1, error_rate=0.6)
    plain = get_task("arithmetic")(2_000, 3, "mixed", max_value=20, ops="+-", allow_negative=False)
    assert [{k: v for k, v in r.items() if k != "completion"} for r in rows] == plain  # options touch only the completion
    wrong = tagged = 0
    for r in rows:
        text = r["completion"]
        steps = _EN_STEP.findall(text) + _ZH_STEP.findall(text)
        assert steps, text
        for a, op, b, c in steps:  # a mistake misreads a number; every written step is still true
            assert _APPLY[op](int(a), int(b)) == int(c), text
        tagged += text.startswith("<think>")
        answer = re.search(r"<answer>(-?\d+)</answer>$", text) or re.search(r"(-?\d+)\D*$", text)
        wrong += answer.group(1) != r["solution"]
    assert 0.07 < tagged / len(rows) < 0.13
    assert 0.5 < wrong / len(rows) < 0.65  # a misread number sometimes gives the right answer anyway

    figures = lab._corpus_figures(rows)
    assert figures["format_rate"] == pytest.approx(tagged / len(rows))
    assert 0.55 < figures["language_consistency"] < 0.8
    assert 0.15 < figures["single_language_share"] < 0.45


def test_corpus_options_defaults_and_errors():
    kwargs = dict(worked=True, max_value=20)
    assert get_task("arithmetic")(50, 1, "mixed", **kwargs) == get_task("arithmetic")(
        50, 1, "mixed", language_mix=0.0, format_rate=1.0, error_rate=0.0, **kwargs
    )
    with pytest.raises(ValueError, match="worked"):
        get_task("arithmetic")(5, 0, language_mix=0.2)
    with pytest.raises(ValueError, match="format_rate"):
        get_task("arithmetic")(5, 0, worked=True, format_rate=1.5)


def test_corpus_rows_leave_out_the_held_out_problems():
    spec = LabSpec(corpus_size=500, holdout=0.2)
    corpus = {r["expression"] for r in corpus_rows(spec)}
    probe = lab.probe_rows(spec, 40, seed=0)
    assert len(probe) == 40 and not corpus & {r["expression"] for r in probe}
    assert len(corpus_rows(spec)) == 500 and corpus_rows(spec) == corpus_rows(spec)


def test_spec_hash_and_validation():
    assert spec_hash(LabSpec()) == spec_hash(LabSpec()) and len(spec_hash(LabSpec())) == 12
    assert spec_hash(LabSpec(seed=1)) != spec_hash(LabSpec())
    assert lab_model_dir(LabSpec(), cache="/x").name == f"bilingual-{spec_hash(LabSpec())}"
    with pytest.raises(ValueError, match="language_mix"):
        LabSpec(language_mix=1.5)
    with pytest.raises(ValueError, match="template"):
        LabSpec(template="nope")


# --- building and caching ----------------------------------------------------------------------


def test_build_is_cached_and_not_rebuilt(tmp_path, monkeypatch):
    path = build_lab_model(TINY, cache=tmp_path, progress=False)
    assert path == lab_model_dir(TINY, tmp_path) and (path / "config.json").is_file()
    info = json.loads((path / "lab.json").read_text())
    assert info["hash"] == spec_hash(TINY) and info["spec"]["steps"] == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") and p.is_dir()]  # no temp dir left behind
    stamp = (path / "model.safetensors").stat().st_mtime_ns

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the cached model was rebuilt")

    monkeypatch.setattr(lab, "_pretrain", no_rebuild)
    assert build_lab_model(TINY, cache=tmp_path, progress=False) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp


def test_build_is_deterministic_for_a_seed(tmp_path):
    import torch

    a = _weights(build_lab_model(TINY, cache=tmp_path / "a", progress=False))
    b = _weights(build_lab_model(TINY, cache=tmp_path / "b", progress=False))
    c = _weights(build_lab_model(LabSpec(**{**TINY.__dict__, "seed": 1}), cache=tmp_path / "c", progress=False))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_lab_model_loads_anywhere_by_name(tmp_path, monkeypatch):
    from grpo.models import load_model_and_tokenizer, resolve_model_path

    path = build_lab_model(TINY, cache=tmp_path, progress=False)
    calls = []

    def fake_build(spec=LabSpec(), cache=None, progress=True):
        calls.append(spec)
        return path

    monkeypatch.setattr(lab, "build_lab_model", fake_build)  # the alias's builder, looked up on use
    assert resolve_model_path("lab-bilingual") == str(path)
    assert resolve_model_path(" LAB-Bilingual ") == str(path) and calls == [LabSpec(), LabSpec()]
    model, tokenizer = load_model_and_tokenizer(str(path))
    assert "此" in tokenizer.get_vocab()  # every corpus character is a token ("因此答案是")
    assert tokenizer.decode(tokenizer.encode("答案是 7。<answer>7</answer>")) == "答案是 7。<answer>7</answer>"


def test_cli_build_and_errors(tmp_path, capsys):
    args = ["build", "--quiet", "--cache", str(tmp_path)]
    for field, value in TINY.__dict__.items():
        if value != getattr(LabSpec(), field):  # (None is the default of the one optional field)
            args += ["--set", f"{field}={value}"]
    assert lab.main(args) == 0
    assert capsys.readouterr().out.strip() == str(lab_model_dir(TINY, tmp_path))
    with pytest.raises(SystemExit, match="did you mean 'steps'"):
        lab.main(["build", "--set", "stepz=3"])


# --- behaviour --------------------------------------------------------------------------------


@pytest.mark.slow
def test_ci_lab_model_has_the_r1_zero_habits(ci_lab_model):
    result = lab_probe(ci_lab_model, n=16, samples=4, seed=0)
    assert result["num_prompts"] == 16 and result["samples_per_prompt"] == 4
    assert result["accuracy"] > 0.0  # sometimes solves
    assert result["format_rate"] < 0.5  # rarely follows the format
    assert result["language_consistency"] < 0.95  # mixes languages
    assert result["single_language_share"] < 0.9
