"""`grpo eval`: several models on several data specs, side by side, with the eval stage's figures."""

import json

import pytest

from grpo.evaluation import maj_at_k, pass_at_1, pass_at_k
from grpo.io import read_jsonl
from pipelines.cli import main
from pipelines.evaluate import default_rewards, label_of, parse_data_spec, parse_rewards

# MATH-500's fields: problem, solution (worked, ending in \boxed{}), answer, subject, level, unique_id.
MATH_ROWS = [
    {"problem": "What is $1+1$?", "solution": "Adding, $1+1=\\boxed{2}$.", "answer": "2", "subject": "Algebra", "level": 1, "unique_id": "a/1.json"},
    {"problem": "Compute $\\frac{9}{3}$.", "solution": "It is $\\boxed{3}$.", "answer": "3", "subject": "Algebra", "level": 1, "unique_id": "a/2.json"},
    {"problem": "What is $2 \\cdot 2$?", "solution": "$\\boxed{4}$", "answer": "4", "subject": "Algebra", "level": 1, "unique_id": "a/3.json"},
]


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    from grpo.tiny import save_tiny

    root = tmp_path_factory.mktemp("models")
    return str(save_tiny(root / "a", seed=0)), str(save_tiny(root / "b", seed=1))


def test_grpo_eval_two_models_two_data_specs(two_models, tmp_path, capsys):
    math500 = tmp_path / "math500.jsonl"
    math500.write_text("".join(json.dumps(r) + "\n" for r in MATH_ROWS))
    out = tmp_path / "eval"
    code = main([
        "eval", *two_models, "--data", str(math500), "--data", "{source: 'synthetic:arithmetic', size: 4, language: zh}",
        "--samples", "3", "--max-new-tokens", "8", "--out", str(out), "--rewards", "accuracy,format,language_consistency=0.5",
    ])
    assert code == 0
    results = json.loads((out / "eval.json").read_text())
    assert list(results) == ["math500", "synthetic-arithmetic-zh"]
    assert list(results["math500"]) == ["a", "b"]
    for data, by_model in results.items():
        for model, summary in by_model.items():
            pair = out / data / model
            samples = read_jsonl(pair / "samples.jsonl")
            assert summary == json.loads((pair / "eval.json").read_text())
            # the figures are those of the samples written beside them
            assert summary["num_prompts"] == (3 if data == "math500" else 4) and summary["samples_per_prompt"] == 3
            assert len(samples) == 3 * summary["num_prompts"]
            assert summary["pass@1"] == pytest.approx(pass_at_1(samples))
            assert summary["pass@k"] == pytest.approx(pass_at_k(samples, 3))
            assert summary["maj@k"] == pytest.approx(maj_at_k(samples))
            assert {"format_rate", "language_consistency_rate", "mean_length_wrong"} <= set(summary)
    # MATH-500 field mapping: prompt from `problem`, gold from `solution`'s \boxed{} (= `answer`)
    first = read_jsonl(out / "math500" / "a" / "samples.jsonl")[0]
    assert first["raw_prompt"] == MATH_ROWS[0]["problem"] and first["solution"] == "2" and first["subject"] == "Algebra"
    assert read_jsonl(out / "synthetic-arithmetic-zh" / "b" / "samples.jsonl")[0]["language"] == "zh"
    table = (out / "eval.md").read_text()
    assert "| metric | a | b |" in table and "| pass@3 |" in table and "| maj@3 |" in table
    assert "### math500 (correctness: accuracy)" in table
    assert "math500" in capsys.readouterr().out


def test_grpo_eval_errors_are_one_line(two_models, tmp_path, capsys):
    assert main(["eval", two_models[0], "--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
    assert main(["eval", two_models[0], "--data", "synthetic:arithmetic", "--rewards", "acuracy", "--out", str(tmp_path / "o")]) == 2
    assert "acuracy" in capsys.readouterr().err
    assert main(["eval", two_models[0], "--data", "synthetic:arithmetic", "--template", "chatt", "--out", str(tmp_path / "o")]) == 2
    assert "--template" in capsys.readouterr().err
    assert main(["eval", two_models[0], "--data", "{source: 'synthetic:arithmetic', sise: 3}", "--out", str(tmp_path / "o")]) == 2
    assert "did you mean 'size'" in capsys.readouterr().err


def test_eval_argument_parsing():
    assert parse_rewards("accuracy,format=0.5") == {"accuracy": 1.0, "format": 0.5}
    assert parse_rewards("{accuracy: {weight: 1, fallback: last_number}}") == {"accuracy": {"weight": 1, "fallback": "last_number"}}
    assert parse_data_spec("gsm8k").source == "gsm8k"
    assert parse_data_spec("{source: mgsm_zh, size: 250}").size == 250
    assert label_of("runs/r1/final_rl/final") == "final_rl-final" and label_of("data/math500.jsonl") == "math500"
    assert label_of("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB-SmolLM2-135M"
    assert list(default_rewards([{"prompt": "q", "solution": "1"}])) == ["accuracy", "format", "language_consistency"]


def test_grpo_eval_on_unit_test_data_uses_the_code_reward(two_models, tmp_path, monkeypatch):
    """Rows with a `tests` column (HumanEval-style) are scored by the `code` reward by default,
    pass@k counts it, and there is no majority vote over programs."""
    from rewards import registry

    def code(prompts, completions, **columns):  # a stand-in for the sandboxed code reward
        return [1.0 if t == "assert True" else 0.0 for t in columns["tests"]]

    monkeypatch.setitem(registry._REGISTRY, "code", code)
    rows = [{"prompt": "Write f.", "tests": "assert True", "entry_point": "f", "solution": "def f(): pass"},
            {"prompt": "Write g.", "tests": "assert False", "entry_point": "g", "solution": "def g(): pass"}]
    (tmp_path / "code.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "eval"
    spec = "{source: " + str(tmp_path / "code.jsonl") + ", extract_gold: false}"
    assert main(["eval", two_models[0], "--data", spec, "--samples", "2", "--max-new-tokens", "4", "--out", str(out)]) == 0
    summary = json.loads((out / "code" / "a" / "eval.json").read_text())
    assert summary["pass@1"] == 0.5 and summary["pass@k"] == 0.5 and "maj@k" not in summary
    assert list(read_jsonl(out / "code" / "a" / "samples.jsonl")[0]["rewards"]) == ["code"]
    assert "(correctness: code)" in (out / "eval.md").read_text()
