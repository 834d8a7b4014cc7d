"""Sampling, scoring, summaries and rejection-sampling filters (grpo/evaluation.py).

The summary and filter functions are checked on hand-made records with hand-computed numbers;
sampling runs on the tiny offline model.
"""

from __future__ import annotations

import math

import pytest

from grpo.evaluation import (
    KeepRules,
    comparison_markdown,
    evaluation_summary,
    maj_at_k,
    mean_length,
    mean_reward,
    mix_with,
    pass_at_1,
    pass_at_k,
    pass_at_k_estimate,
    rate,
    sample_completions,
    score_samples,
    select_samples,
    summary_markdown,
    to_sft_rows,
)
from grpo.scoring import RewardTerm


def rec(row, sample, accuracy=None, answer=None, length=10, completion=None, **rewards):
    """A scored record as score_samples writes it (rewards passed by keyword)."""
    values = {"accuracy": accuracy, **rewards}
    return {
        "row": row,
        "sample": sample,
        "prompt": f"rendered {row}",
        "raw_prompt": f"question {row}",
        "completion": completion if completion is not None else f"completion {row}.{sample}",
        "length": length,
        "truncated": False,
        "solution": str(row),
        "language": "en",
        "rewards": values,
        "reward": sum(v for v in values.values() if v is not None),
        "answer": answer,
    }


# --- pass@1, maj@k, rates, lengths ---------------------------------------------------------


def test_pass_at_1_averages_per_prompt_then_over_prompts():
    samples = [
        *(rec(0, j, a) for j, a in enumerate([1.0, 0.0, 1.0, 1.0])),  # 0.75
        *(rec(1, j, a) for j, a in enumerate([0.0, 0.0])),  # 0.0
        *(rec(2, j, a) for j, a in enumerate([1.0, None])),  # 1.0 (None left out)
        *(rec(3, j, a) for j, a in enumerate([None, None])),  # not counted
    ]
    assert pass_at_1(samples) == pytest.approx((0.75 + 0.0 + 1.0) / 3)
    assert pass_at_1([rec(0, 0, None)]) is None
    with pytest.raises(KeyError, match="no sample carries reward 'acuracy'; rewards present: accuracy"):
        pass_at_1(samples, "acuracy")


def test_maj_at_k_votes_ties_and_missing_answers():
    samples = [
        # tie 2-2: the answer seen first (sample 0, "5") wins, and it is correct -> 1
        *(rec(0, j, a, ans) for j, (a, ans) in enumerate([(1.0, "5"), (0.0, "7"), (1.0, "5"), (0.0, "7")])),
        # None answers do not vote: "4" has 2 votes against 1 -> correct -> 1
        *(rec(1, j, a, ans) for j, (a, ans) in enumerate([(0.0, None), (0.0, "3"), (0.0, None), (1.0, "4"), (1.0, "4")])),
        # no answer at all -> 0
        *(rec(2, j, 0.0, None) for j in range(2)),
        # "$9$" and "9." are one answer after normalisation -> beats "8" -> 1
        *(rec(3, j, a, ans) for j, (a, ans) in enumerate([(1.0, "$9$"), (0.0, "8"), (1.0, "9.")])),
        # tie 1-1 where the first-seen answer is wrong -> 0
        *(rec(4, j, a, ans) for j, (a, ans) in enumerate([(0.0, "2"), (1.0, "3")])),
        # accuracy not applicable anywhere -> not counted
        *(rec(5, j, None, "1") for j in range(2)),
    ]
    assert maj_at_k(samples) == pytest.approx(3 / 5)
    # record order does not matter: ties follow the sample index
    assert maj_at_k(list(reversed(samples))) == pytest.approx(3 / 5)
    # pass@1 of the same records, for contrast: (0.5 + 0.4 + 0 + 2/3 + 0.5) / 5
    assert pass_at_1(samples) == pytest.approx((0.5 + 0.4 + 0.0 + 2 / 3 + 0.5) / 5)


def test_pass_at_k_unbiased_estimator_against_hand_computed_values():
    # 1 − C(n−c, k)/C(n, k): n=5, c=2, k=2 → 1 − C(3,2)/C(5,2) = 1 − 3/10
    assert pass_at_k_estimate(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k_estimate(5, 2, 1) == pytest.approx(2 / 5)  # pass@1 = c/n
    assert pass_at_k_estimate(10, 3, 5) == pytest.approx(1 - math.comb(7, 5) / math.comb(10, 5))  # = 1 − 21/252
    assert pass_at_k_estimate(4, 0, 2) == 0.0 and pass_at_k_estimate(4, 3, 2) == 1.0  # n − c < k: certain
    with pytest.raises(ValueError, match="1 ≤ k ≤ n"):
        pass_at_k_estimate(2, 1, 3)
    samples = [rec(0, j, v, None) for j, v in enumerate([1.0, 0.0, 0.0, 1.0])] + [rec(1, j, 0.0, None) for j in range(4)]
    samples += [rec(2, 0, 1.0, None), rec(2, 1, None, None)]  # one valid sample < k=2: left out
    # prompt 0: 1 − C(2,2)/C(4,2) = 5/6; prompt 1: 0
    assert pass_at_k(samples, 2) == pytest.approx((5 / 6 + 0.0) / 2)
    assert pass_at_k(samples, 1) == pytest.approx((0.5 + 0.0 + 1.0) / 3)  # k = 1 is pass@1
    with pytest.raises(KeyError, match="acuracy"):
        pass_at_k(samples, 2, "acuracy")


def test_comparison_markdown_puts_models_side_by_side():
    a = {"samples_per_prompt": 4, "pass@1": 0.25, "maj@k": 0.5}
    b = {"samples_per_prompt": 4, "pass@1": 0.75}
    table = comparison_markdown({"base": a, "rl": b}, "gsm8k")
    assert table.splitlines()[:4] == ["### gsm8k", "", "| metric | base | rl |", "|---|---|---|"]
    assert "| pass@1 | 0.2500 | 0.7500 |" in table and "| maj@4 | 0.5000 | – |" in table


def test_rates_means_and_lengths():
    samples = [
        rec(0, 0, 1.0, "1", length=10, format=1.0, language_consistency=1.0),
        rec(0, 1, 0.0, "2", length=26, format=0.0, language_consistency=0.95),
        rec(1, 0, 1.0, "1", length=30, format=1.0, language_consistency=0.9),
        rec(1, 1, None, None, length=40, format=None, language_consistency=0.5),
    ]
    assert rate(samples, "format", 1.0) == pytest.approx(2 / 3)  # None left out
    assert rate(samples, "language_consistency", 0.95) == pytest.approx(2 / 4)
    assert mean_reward(samples, "language_consistency") == pytest.approx((1.0 + 0.95 + 0.9 + 0.5) / 4)
    assert mean_reward(samples, "accuracy") == pytest.approx(2 / 3)
    assert mean_length(samples) == pytest.approx(26.5)
    assert mean_length(samples, correct=True) == pytest.approx(20.0)
    assert mean_length(samples, correct=False) == pytest.approx(26.0)  # the None sample is neither
    assert mean_length([], correct=None) is None

    summary = evaluation_summary(samples, ["accuracy", "format", "language_consistency"])
    assert summary == pytest.approx(
        {
            "num_prompts": 2,
            "num_samples": 4,
            "samples_per_prompt": 2,
            "pass@1": (0.5 + 1.0) / 2,
            "pass@k": 1.0,  # prompt 0: one of 2 correct, pass@2 = 1; prompt 1 has 1 valid sample < k: not counted
            "maj@k": (1.0 + 1.0) / 2,  # prompt 0: tie "1"/"2", "1" first and correct
            "format_rate": 2 / 3,
            "language_consistency": 3.35 / 4,
            "language_consistency_rate": 0.5,
            "mean_length": 26.5,
            "mean_length_correct": 20.0,
            "mean_length_wrong": 26.0,
            "truncated_rate": 0.0,
            "mean_reward": (3.0 + 0.95 + 2.9 + 0.5) / 4,
            "rewards/accuracy/mean": 2 / 3,
            "rewards/format/mean": 2 / 3,
            "rewards/language_consistency/mean": 3.35 / 4,
        }
    )
    # figures that need an absent reward are left out
    plain = evaluation_summary(samples, ["accuracy"])
    assert "format_rate" not in plain and "language_consistency" not in plain and plain["pass@1"] == 0.75

    table = summary_markdown(summary, "eval: demo")
    assert table.startswith("### eval: demo\n\n| metric | value |\n|---|---|\n")
    assert "| pass@1 | 0.7500 |" in table and "| maj@2 | 1.0000 |" in table and "| pass@2 | 1.0000 |" in table and "| num_prompts | 2 |" in table
    assert summary_markdown({"x": None, "y": 123.456}, "t").endswith("| x | – |\n| y | 123.5 |\n")


# --- rejection sampling ---------------------------------------------------------------------


R1_RULES = {"accuracy": 1.0, "format": 1.0, "language_consistency": 0.95}


def good(row, sample, completion, length=50, lang=1.0, **extra):
    return {**rec(row, sample, 1.0, "1", length=length, completion=completion, format=1.0, language_consistency=lang), **extra}


def selection_samples():
    truncated = good(0, 3, "cut off")
    truncated["truncated"] = True
    truncated["rewards"]["accuracy"] = 0.0  # also wrong: the first failing check is what counts
    return [
        good(0, 0, "<think>a b</think><answer>1</answer>"),  # kept
        {**good(0, 1, "wrong"), "rewards": {"accuracy": 0.0, "format": 1.0, "language_consistency": 1.0}},
        good(0, 2, "mixed 语言", lang=0.5),  # mixed language
        truncated,
        good(0, 4, "  <think>a \n  b</think><answer>1</answer>\n"),  # duplicate of sample 0
        good(0, 5, "<think>another</think><answer>1</answer>"),  # passes, over max_per_prompt=1
        good(1, 0, "long", length=500),
        good(1, 1, "short", length=2),
        {**good(1, 2, "no gold"), "rewards": {"accuracy": None, "format": 1.0, "language_consistency": 1.0}},
        good(1, 3, "<think>ok</think><answer>1</answer>", lang=0.95),  # passes, total 2.95
        good(1, 4, "<think>best</think><answer>1</answer>"),  # passes, total 3.0: preferred
        *({**good(2, j, f"bad format {j}"), "rewards": {"accuracy": 1.0, "format": 0.0, "language_consistency": 1.0}} for j in range(2)),
        good(3, 0, "<think>only</think><answer>1</answer>"),
    ]


def test_select_samples_keeps_exactly_the_expected_rows_with_reason_counts():
    rules = KeepRules(min_rewards=R1_RULES, min_length=5, max_length=200)
    kept, stats = select_samples(selection_samples(), rules)
    assert [(s["row"], s["sample"]) for s in kept] == [(0, 0), (1, 4), (3, 0)]
    assert stats == {
        "total": 14,
        "kept": 3,
        "rejected": {
            "truncated": 1,
            "too_short": 1,
            "too_long": 1,
            "accuracy": 2,  # a wrong answer, and a None (no gold) one
            "format": 2,
            "language_consistency": 1,
            "duplicate": 1,
            "over_max_per_prompt": 2,
        },
        "prompts": 4,
        "prompts_with_kept": 3,
        # pass shares before dedupe/max_per_prompt: 3/6, 2/5, 0/2, 1/1
        "pass_rate_histogram": [1, 0, 0, 0, 1, 1, 0, 0, 0, 1],
    }
    assert stats["kept"] + sum(stats["rejected"].values()) == stats["total"]


def test_select_samples_options():
    samples = selection_samples()
    base = dict(min_rewards=R1_RULES, min_length=5, max_length=200)
    kept, stats = select_samples(samples, KeepRules(**base, max_per_prompt=2))
    assert [(s["row"], s["sample"]) for s in kept] == [(0, 0), (0, 5), (1, 4), (1, 3), (3, 0)]
    assert stats["rejected"]["over_max_per_prompt"] == 0 and stats["rejected"]["duplicate"] == 1
    kept, stats = select_samples(samples, KeepRules(**base, dedupe=False, max_per_prompt=None))
    assert [(s["row"], s["sample"]) for s in kept] == [(0, 0), (0, 4), (0, 5), (1, 4), (1, 3), (3, 0)]
    kept, stats = select_samples(samples, KeepRules(min_rewards={"accuracy": 1.0}, drop_truncated=False, max_per_prompt=None))
    assert stats["rejected"]["truncated"] == 0 and stats["rejected"]["accuracy"] == 3  # the cut one is wrong too
    empty_kept, empty = select_samples([], KeepRules())
    assert empty_kept == [] and empty["total"] == empty["kept"] == empty["prompts"] == 0
    assert empty["pass_rate_histogram"] == [0] * 10 and set(empty["rejected"].values()) == {0}
    with pytest.raises(KeyError, match="no sample carries reward 'lang'"):
        select_samples(samples, KeepRules(min_rewards={"lang": 0.9}))
    with pytest.raises(ValueError, match="max_per_prompt"):
        KeepRules(max_per_prompt=0)


def test_mix_with_and_to_sft_rows():
    kept = [{"k": i} for i in range(4)]
    general = [{"g": i} for i in range(10)]
    mixed = mix_with(kept, general, 0.5, seed=1)
    assert mixed[:4] == kept and len(mixed) == 6 and all(r in general for r in mixed[4:])
    assert len({r["g"] for r in mixed[4:]}) == 2  # without replacement
    assert mix_with(kept, general, 0.5, seed=1) == mixed
    assert any(mix_with(kept, general, 0.5, seed=s) != mixed for s in range(2, 6))
    assert mix_with(kept, general, 0.0, seed=0) == kept
    with pytest.raises(ValueError, match="needs 12 general rows for 4 kept rows, but only 10"):
        mix_with(kept, general, 3.0, seed=0)

    kept_samples, _ = select_samples(selection_samples(), KeepRules(min_rewards=R1_RULES, min_length=5, max_length=200))
    rows = to_sft_rows(kept_samples)
    assert rows[0] == {
        "prompt": "question 0",
        "completion": "<think>a b</think><answer>1</answer>",
        "solution": "0",
        "language": "en",
        "source_prompt": "rendered 0",
    }
    assert to_sft_rows([{"prompt": "p", "completion": "c"}]) == [{"prompt": "p", "completion": "c", "solution": None, "language": None, "source_prompt": "p"}]


# --- scoring --------------------------------------------------------------------------------


def test_score_samples_passes_columns_and_combines_weights():
    from rewards.accuracy import accuracy_reward
    from rewards.format import format_reward

    seen = {}

    def spy(prompts, completions, **kwargs):
        seen.update(kwargs)
        return [None if lang == "zh" else 0.5 for lang in kwargs["language"]]

    samples = [
        {"row": 0, "sample": 0, "prompt": "p0", "completion": "<think>x</think><answer>5</answer>", "length": 3, "truncated": False,
         "completion_ids": [1, 2, 3], "solution": "5", "language": "en"},
        {"row": 1, "sample": 0, "prompt": "p1", "completion": "the answer is \\boxed{6}", "length": 2, "truncated": True,
         "completion_ids": [4, 5], "solution": "7", "language": "zh"},
    ]
    terms = [RewardTerm("accuracy", accuracy_reward, 1.0), RewardTerm("format", format_reward, 0.5), RewardTerm("spy", spy, 2.0)]
    scored = score_samples(samples, terms)
    assert scored[0]["rewards"] == {"accuracy": 1.0, "format": 1.0, "spy": 0.5}
    assert scored[0]["reward"] == pytest.approx(1.0 + 0.5 + 1.0)
    assert scored[1]["rewards"] == {"accuracy": 0.0, "format": 0.0, "spy": None}
    assert scored[1]["reward"] == 0.0
    assert [s["answer"] for s in scored] == ["5", "6"]
    assert seen["completion_ids"] == [[1, 2, 3], [4, 5]] and seen["solution"] == ["5", "7"]
    assert not {"row", "sample", "length", "truncated", "prompt", "completion"} & set(seen)
    assert "rewards" not in samples[0]  # inputs are not modified
    assert score_samples(scored, terms) == scored  # re-scoring scored records gives the same
    # lenient accuracy (fallback: last_number): the vote counts the answers it grades
    prose = [{**samples[0], "completion": "so 2 + 3 = 5 apples", "sample": j} for j in range(2)]
    lenient = score_samples(prose, [RewardTerm("accuracy", accuracy_reward, 1.0, params={"fallback": "last_number"})])
    assert [s["answer"] for s in lenient] == ["5", "5"] and maj_at_k(lenient) == 1.0 == pass_at_1(lenient)
    assert [s["answer"] for s in score_samples(prose, terms)] == [None, None]


# --- sampling on the tiny model -------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from grpo.models import load_model_and_tokenizer

    return load_model_and_tokenizer(tiny_model_dir)


def tiny_rows(tokenizer, n=3):
    return [
        {
            "prompt": tokenizer.apply_chat_template([{"role": "user", "content": f"{i}+{i}?"}], tokenize=False, add_generation_prompt=True),
            "raw_prompt": f"{i}+{i}?",
            "solution": str(2 * i),
            "language": "en",
        }
        for i in range(n)
    ]


def test_sample_completions_records_and_determinism(tiny):
    from grpo.rollout import SamplingParams

    model, tok = tiny
    rows = tiny_rows(tok)
    params = SamplingParams(group_size=99, max_new_tokens=8, temperature=1.0)
    first = sample_completions(model, tok, rows, n=2, sampling=params, seed=3, batch_prompts=2)
    assert len(first) == 6
    assert [(r["row"], r["sample"]) for r in first] == [(i, j) for i in range(3) for j in range(2)]
    for r in first:
        assert r["prompt"] == rows[r["row"]]["prompt"] and r["raw_prompt"] == rows[r["row"]]["raw_prompt"]
        assert r["solution"] == rows[r["row"]]["solution"] and r["language"] == "en"
        assert 1 <= r["length"] <= 8 and len(r["completion_ids"]) == r["length"]
        assert r["truncated"] == (r["length"] == 8 and r["completion_ids"][-1] != tok.eos_token_id)
    again = sample_completions(model, tok, rows, n=2, sampling={"max_new_tokens": 8, "temperature": 1.0}, seed=3, batch_prompts=2)
    assert again == first
    # the pipeline's call: sampling values as keywords
    keywords = sample_completions(model, tok, rows, 2, seed=3, batch_prompts=2, max_new_tokens=8, temperature=1.0, top_p=1.0, top_k=0)
    assert keywords == first
    other = sample_completions(model, tok, rows, n=2, sampling=params, seed=4, batch_prompts=2)
    assert [r["completion"] for r in other] != [r["completion"] for r in first]

    from rewards.format import format_reward

    scored = score_samples(first, [RewardTerm("format", format_reward)])
    summary = evaluation_summary(scored, ["format"])
    assert summary["num_prompts"] == 3 and summary["samples_per_prompt"] == 2 and 0 <= summary["format_rate"] <= 1
    with pytest.raises(ValueError, match="max_new_tokens is required"):
        sample_completions(model, tok, rows, n=1, sampling={}, seed=0)
