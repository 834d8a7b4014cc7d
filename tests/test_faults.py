"""Faults during training: rewards that misbehave, non-finite losses, pathological completions for
the math checker, an unwritable or full disk. (Kill -9 is in test_kill.py, bad inputs in test_errors_*.py.)"""

import errno
import json
import math
import shutil
import time

import pytest
import torch
import yaml

from bad_inputs import COMPLETIONS as CONTRACT_ROWS
from bad_inputs import REWARD_CASES, STORAGE_CASES, Ctx, base_recipe, check_message, cli_error, skip_plots
from grpo.scoring import RewardError, RewardTerm, score_completions


def fails_on_x(prompts, completions, **_):
    return [float(len(c)) if "x" not in c else 1 / 0 for c in completions]


def nan_on_x(prompts, completions, **_):
    return [math.nan if "x" in c else 1.0 for c in completions]


def short_list(prompts, completions, **_):
    return [1.0] * (len(completions) - 1)


COMPLETIONS = ["aa", "bbb", "cxc", "d"]


@pytest.mark.parametrize(
    "fn, message",
    [
        (fails_on_x, "reward 'r' raised ZeroDivisionError on row 2: division by zero"),
        (nan_on_x, "reward 'r' returned nan for row 2; expected a finite float or None"),
        (short_list, "reward 'r' returned 3 values for 4 completions; expected a list of 4"),
        (lambda prompts, completions, **_: "good", "reward 'r' returned str values for 4 completions"),
        (lambda prompts, completions, **_: [1.0, "1", 1.0, 1.0], "reward 'r' returned str for row 1; expected a float or None"),
    ],
)
def test_reward_errors_name_the_reward_and_row(fn, message):
    with pytest.raises(RewardError) as info:
        score_completions([RewardTerm("r", fn)], ["p"] * 4, COMPLETIONS, {})
    assert message in str(info.value)


def test_skip_policy_scores_bad_rows_as_none_and_counts_them():
    terms = [RewardTerm("bad", fails_on_x), RewardTerm("nan", nan_on_x), RewardTerm("ok", lambda prompts, completions, **_: [1.0] * len(completions))]
    scores = score_completions(terms, ["p"] * 4, COMPLETIONS, {}, on_error="skip")
    assert scores.per_reward["bad"][:2] == [2.0, 3.0] and math.isnan(scores.per_reward["bad"][2]) and scores.per_reward["bad"][3] == 1.0
    assert math.isnan(scores.per_reward["nan"][2]) and scores.per_reward["nan"][0] == 1.0
    assert scores.extra_metrics["reward_errors/bad"] == 1 and scores.extra_metrics["reward_errors/nan"] == 1
    assert "reward_errors/ok" not in scores.extra_metrics
    assert scores.total == [4.0, 5.0, 1.0, 3.0]  # None rows add nothing


def test_nonfinite_loss_skips_the_update_then_stops(tiny_model_dir, tmp_path, monkeypatch):
    import grpo.trainer as trainer_module
    from grpo.config import GRPOConfig
    from grpo.models import load_model_and_tokenizer
    from grpo.trainer import GRPOTrainer

    model, tok = load_model_and_tokenizer(tiny_model_dir)
    rows = [{"prompt": f"<|user|>\n{i}</s>\n<|assistant|>\n"} for i in range(8)]
    cfg = GRPOConfig(steps=5, prompts_per_step=2, group_size=4, max_new_tokens=8, learning_rate=1e-2, beta=0.0, progress=False, max_nonfinite_steps=2)
    digits = RewardTerm("digits", lambda prompts, completions, **_: [sum(ch.isdigit() for ch in c) / max(1, len(c)) for c in completions])
    trainer = GRPOTrainer(model, tok, [digits], rows, cfg, tmp_path, seed=0)
    real = trainer_module.policy_loss

    def nan_loss(*args, **kwargs):
        loss, stats = real(*args, **kwargs)
        return loss * torch.tensor(float("nan")), stats

    monkeypatch.setattr(trainer_module, "policy_loss", nan_loss)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    metrics, _ = trainer.step(1)
    assert metrics["nonfinite_skipped"] == 1 and metrics["loss"] is None
    assert all(torch.equal(before[n], p) for n, p in trainer.model.named_parameters())  # weights untouched
    trainer.step(2)
    with pytest.raises(FloatingPointError, match="3 optimiser steps had a non-finite loss or gradient"):
        trainer.step(3)


# --------------------------------------------------------------------------- the registered reward faults

STORAGE = {c.id: c for c in STORAGE_CASES}


@pytest.mark.parametrize("case", REWARD_CASES, ids=repr)
def test_reward_fault_fails_naming_reward_and_row_or_is_skipped(case, tmp_path):
    term = RewardTerm("r", case.make)
    with pytest.raises(RewardError) as info:
        score_completions([term], ["p"] * len(CONTRACT_ROWS), CONTRACT_ROWS, {})
    check_message(str(info.value), case, tmp_path)
    # on_reward_error: skip scores the rows that break the contract as None and counts them.
    scores = score_completions([term, RewardTerm("ok", lambda prompts, completions, **_: [1.0] * len(completions))],
                               ["p"] * len(CONTRACT_ROWS), CONTRACT_ROWS, {}, on_error="skip")
    failed = scores.extra_metrics["reward_errors/r"]
    assert failed == (1 if "row 2" in case.expect else len(CONTRACT_ROWS))
    assert sum(math.isnan(v) for v in scores.per_reward["r"]) == failed and scores.total == [
        1.0 if math.isnan(v) else 2.0 for v in scores.per_reward["r"]
    ]


# --------------------------------------------------------------------------- the policy through the command line

PICKY = '''
def picky(prompts, completions, **kwargs):
    for p in prompts:
        if "2+2" in p:
            raise ValueError("no opinion on 2+2")
    return [1.0] * len(completions)
'''


def _picky_recipe(ctx: Ctx) -> str:
    data = ctx.write("two.jsonl", "".join(json.dumps(r) + "\n" for r in ({"prompt": "What is 1+1?", "solution": "2"}, {"prompt": "What is 2+2?", "solution": "4"})))
    ctx.write("picky_rewards.py", PICKY)
    recipe = base_recipe(ctx)
    recipe.update(data={"train": data}, rewards={"picky_rewards:picky": 1.0, "format": 0.5})
    recipe["grpo"]["steps"] = 2
    return ctx.write("r.yaml", yaml.safe_dump(recipe))


def test_reward_that_raises_stops_grpo_train_with_one_line(tmp_path, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(tmp_path))
    recipe = _picky_recipe(Ctx(tmp_path, tiny_model_dir))
    message = cli_error(["train", recipe], capsys)
    assert message.startswith("reward 'picky' raised ValueError on row ") and message.endswith(": no opinion on 2+2")
    assert int(message.split("on row ")[1].split(":")[0]) in (0, 4)  # the first row of the 2+2 group (G = 4)


def test_reward_that_raises_is_skipped_and_counted_with_on_reward_error_skip(tmp_path, tiny_model_dir, monkeypatch):
    from grpo.io import read_jsonl
    from pipelines.cli import main

    skip_plots(monkeypatch)
    monkeypatch.syspath_prepend(str(tmp_path))
    recipe = _picky_recipe(Ctx(tmp_path, tiny_model_dir))
    assert main(["train", recipe, "--set", "grpo.on_reward_error=skip"]) == 0
    metrics = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(m["reward_errors/picky"] == 4 and m["rewards/picky/mean"] == 1.0 for m in metrics)  # the 2+2 group: None


def test_nonfinite_steps_stop_grpo_train_with_one_line(tmp_path, tiny_model_dir, monkeypatch, capsys):
    import grpo.trainer as trainer_module

    real = trainer_module.policy_loss

    def nan_loss(*args, **kwargs):
        loss, stats = real(*args, **kwargs)
        return loss * float("nan"), stats

    monkeypatch.setattr(trainer_module, "policy_loss", nan_loss)
    ctx = Ctx(tmp_path, tiny_model_dir)
    recipe = ctx.write("r.yaml", yaml.safe_dump(base_recipe(ctx)))
    message = cli_error(["train", recipe, "--set", "grpo.max_nonfinite_steps=0"], capsys)
    assert message == "step 1: 1 optimiser steps had a non-finite loss or gradient (max_nonfinite_steps=0); lower the learning rate or check the rewards"
    assert not (tmp_path / "run" / "checkpoints").exists()


# --------------------------------------------------------------------------- pathological completions for the math checker

# Inputs that reach the worker and would run for minutes without the deadline.
SLOW_ANSWERS = [r"99^{99^{99}}", "1000000!", "+".join(["1"] * 600)]  # (power towers: in the batch test below)
# Inputs rejected before any parsing.
HUGE_ANSWERS = ["9" * 100_000, r"\frac{" * 40 + "1" + "}" * 40, r"\left(" * 300, "{" * 5000]


@pytest.fixture(scope="module")
def quick_verifier():
    from rewards.verify import MathVerifier

    verifier = MathVerifier(timeout_s=3.0, inner_timeout_s=1)
    verifier.check(r"\frac12", "0.5")  # start the worker outside the timed parts
    yield verifier
    verifier.close()


def test_every_pathological_check_returns_within_its_bound(quick_verifier):
    from rewards.verify import Outcome

    for answer in SLOW_ANSWERS + HUGE_ANSWERS:
        start = time.perf_counter()
        outcome = quick_verifier.judge(answer, "3")
        elapsed = time.perf_counter() - start
        assert elapsed < quick_verifier.timeout_s + 1.0, (answer[:30], elapsed)
        assert outcome in (Outcome.TIMEOUT, Outcome.NOT_EQUAL, Outcome.TOO_LONG), (answer[:30], outcome)
        if answer in HUGE_ANSWERS:
            assert outcome is Outcome.TOO_LONG and elapsed < 0.1  # never parsed
    assert quick_verifier.check(r"\frac{1}{4}", "0.25") is True  # and the worker still answers


def _pathological_batch(G: int = 16):
    """10,000 completions in groups of G: a realistic mix of ordinary and hostile answers.

    Returns completions, golds and the expected counters. Ordinary answers (integers, which the
    verifier compares without parsing, and distinct LaTeX fractions) are most of the batch; the
    hostile ones are many distinct strings: 100k-character answers and over-deep LaTeX (rejected
    unparsed), 20k-character texts that made the answer extraction quadratic (no answer in
    them), and a few power towers repeated across their group (one deadline each, then cached).
    """
    completions, golds = [], []
    expected = {"timeouts": 0, "too_long": 0, "too_deep": 0, "cache_hits": 0, "timeout_rows": 0, "correct": 0}

    def group(texts, gold):
        completions.extend(texts)
        golds.extend([gold] * len(texts))

    n_groups = 10_000 // G  # 625
    towers = [rf"{b}^{{{b}^{{{b}^{{{b}}}}}}}" for b in (5, 6, 7, 8, 9)]
    for i, tower in enumerate(towers):  # identical within the group, as a collapsed policy produces
        group([f"<think>powers</think><answer>{tower}</answer>"] * G, str(i))
        expected["timeouts"] += 1
        expected["cache_hits"] += G - 1
        expected["timeout_rows"] += G
    for g in range(20):
        group([f"<answer>{g}{j:02d}" + "9" * 100_000 + "</answer>" for j in range(G)], "7")
        expected["too_long"] += G
    for g in range(50):
        group([r"\boxed{" + r"\frac{" * (21 + j) + f"{g}" + "}" * (21 + j) + "}" for j in range(G)], "7")
        expected["too_deep"] += G
    for g in range(10):
        group([f"#### {g} {j} " * 3000 + "\nno final answer" for j in range(G)], "7")
    for g in range(10):
        group([f"<answer>{j}<answer>{g}" * 2000 for j in range(G)], "7")
    for g in range(10):  # distinct fractions, each parsed by the worker; the first of each group is right
        group([rf"<answer>\frac{{{g * G + j}}}{{{g + 97}}}</answer>" for j in range(G)], rf"\frac{{{g * G}}}{{{g + 97}}}")
        expected["correct"] += 1
    for g in range(n_groups - len(completions) // G):  # plain integers, a third of them right
        group([f"<think>adding</think><answer>{g + j % 3}</answer>" for j in range(G)], str(g))
        expected["correct"] += sum(j % 3 == 0 for j in range(G))
    assert len(completions) == 10_000
    return completions, golds, expected


def test_ten_thousand_pathological_completions_are_scored_in_bounded_time(monkeypatch):
    from rewards import accuracy as accuracy_module
    from rewards.accuracy import accuracy_reward
    from rewards.verify import MathVerifier

    completions, golds, expected = _pathological_batch()
    verifier = MathVerifier(timeout_s=3.0, inner_timeout_s=1)  # fresh: counters and cache start at zero
    monkeypatch.setattr(accuracy_module, "get_verifier", lambda: verifier)
    logged = {}
    try:
        start = time.perf_counter()
        rewards = accuracy_reward(["p"] * len(completions), completions, solution=golds, log_metric=logged.__setitem__)
        elapsed = time.perf_counter() - start
        stats = verifier.stats
    finally:
        verifier.close()
    assert elapsed < 45.0, elapsed  # ~10 s here; each slow answer costs one deadline (3 s) at most
    for key in ("timeouts", "cache_hits", "too_long", "too_deep"):
        assert stats[key] == expected[key], (key, stats)
    assert logged["accuracy/verify_timeouts"] == pytest.approx(expected["timeout_rows"] / 10_000)  # the count of timeouts, logged
    assert len(rewards) == 10_000 and rewards.count(None) == expected["timeout_rows"]  # a timeout is undecided
    assert sum(r for r in rewards if r is not None) == expected["correct"] and set(rewards) == {0.0, 1.0, None}


# --------------------------------------------------------------------------- storage: unwritable, too small, full


def _storage_recipe(ctx: Ctx, **grpo) -> str:
    recipe = base_recipe(ctx)
    recipe["grpo"].update(grpo)
    return ctx.write("r.yaml", yaml.safe_dump(recipe))


@pytest.mark.parametrize("case", [STORAGE["train_dir_unwritable"], STORAGE["run_dir_unwritable"]], ids=repr)
def test_unwritable_run_directory_fails_before_anything_runs(case, tmp_path, tiny_model_dir, capsys):
    """(Tests run as root, for whom permissions do not stop a write: the run directory's parent is a file.)"""
    ctx = Ctx(tmp_path, tiny_model_dir)
    ctx.write("a-file", "not a directory")
    recipe = base_recipe(ctx)
    recipe["output_dir"] = str(tmp_path / "a-file" / "run")
    if case.command == ("run",):
        recipe["stages"] = [{"name": "rl", "kind": "grpo"}]
    message = cli_error([*case.command, ctx.write("r.yaml", yaml.safe_dump(recipe))], capsys)
    check_message(message, case, tmp_path)


def test_too_little_disk_space_fails_before_step_one(tmp_path, tiny_model_dir, monkeypatch, capsys):
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=1024 * 1024))
    message = cli_error(["train", _storage_recipe(Ctx(tmp_path, tiny_model_dir))], capsys)
    check_message(message, STORAGE["disk_too_small"], tmp_path)
    run = tmp_path / "run"
    assert not (run / "metrics.jsonl").exists() and not (run / "checkpoints").exists()


def test_disk_full_in_a_file_write_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    """fsync is where a full disk often shows (delayed allocation): the old file stays, the temp goes."""
    import os

    import grpo.io
    from grpo.io import StorageError, append_jsonl, atomic_write_json, read_jsonl

    target = tmp_path / "stats.json"
    atomic_write_json(target, {"kept": 1})
    append_jsonl(tmp_path / "metrics.jsonl", {"step": 1})

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StorageError) as info:
        atomic_write_json(target, {"kept": 2})
    check_message(str(info.value), STORAGE["file_write_disk_full"], tmp_path)
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"kept": 1} and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "stats.json"]

    class HalfWrite:  # writes half the line, then the disk is full
        def __init__(self, path, mode, encoding=None):
            self.f = open(path, mode, encoding=encoding)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, text):
            self.f.write(text[: len(text) // 2])
            self.f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(grpo.io, "open", HalfWrite, raising=False)
    with pytest.raises(StorageError) as info:
        append_jsonl(tmp_path / "metrics.jsonl", {"step": 2, "reward": 0.5})
    check_message(str(info.value), STORAGE["append_disk_full"], tmp_path)
    monkeypatch.undo()
    assert read_jsonl(tmp_path / "metrics.jsonl") == [{"step": 1}]  # the torn line is not read as a row


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """ENOSPC halfway through writing step 2's checkpoint: one-line error, step 1's checkpoint intact,
    the half-written one never taken for a checkpoint, and --resume continues from step 1."""
    from grpo.io import read_jsonl
    from pipelines.cli import main

    skip_plots(monkeypatch)
    recipe = _storage_recipe(Ctx(tmp_path, tiny_model_dir), steps=2, save_every=1)
    real_save = torch.save

    def save_until_full(obj, f, *args, **kwargs):
        if ".step-000002.tmp" in str(f):
            with open(f, "wb") as fh:
                fh.write(b"\0" * 100)  # a partial file, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_full)
    message = cli_error(["train", recipe], capsys)
    check_message(message, STORAGE["disk_full_mid_checkpoint"], tmp_path)
    ckpts = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-000001"]  # the partial directory was removed
    monkeypatch.setattr(torch, "save", real_save)

    # A partial directory as a kill would leave it is not taken for a checkpoint either.
    (ckpts / ".step-000002.tmp").mkdir()
    (ckpts / ".step-000002.tmp" / "model.safetensors").write_bytes(b"\0" * 10)
    capsys.readouterr()
    assert main(["train", recipe, "--resume"]) == 0
    assert [m["step"] for m in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1, 2]
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-000001", "step-000002"]
