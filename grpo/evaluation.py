"""Sample completions, score them, summarise them, and filter them for rejection sampling.

Used by the pipeline's eval, generate and rejection-sampling stages. Three layers:

1. :func:`sample_completions` (needs a model) turns rows into one record per completion::

       {"row": 3, "sample": 0, "prompt": ..., "completion": ..., "length": 41, "truncated": False,
        "completion_ids": [...], <every other column of row 3: solution, language, raw_prompt, ...>}

2. :func:`score_samples` adds ``rewards`` (name -> value or None), ``reward`` (the weighted total,
   exactly as the trainer computes it) and ``answer`` (the extracted final answer).

3. Pure functions over scored records (no torch, no model): :func:`pass_at_1`, :func:`pass_at_k`, :func:`maj_at_k`,
   :func:`rate`, :func:`mean_reward`, :func:`mean_length`, :func:`evaluation_summary`,
   :func:`summary_markdown`, and the rejection-sampling filters :class:`KeepRules`,
   :func:`select_samples`, :func:`mix_with`, :func:`to_sft_rows`.

Conventions shared by the summary functions:

- A prompt is identified by the record's ``row`` (its index in the sampled rows); records without
  ``row`` are grouped by their ``prompt`` text.
- A reward value of ``None`` means "not applicable to this sample" (e.g. accuracy on a row whose
  gold answer could not be parsed): it is left out of means and rates, as in the trainer's logs.
  A prompt none of whose samples has a value is left out of per-prompt means.
- Asking for a reward that no record carries raises ``KeyError`` (a typo must not read as 0).
- Functions return ``None`` when there is nothing to average.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

from grpo.rollout import SamplingParams, get_rollout_engine
from grpo.scoring import RewardTerm, score_completions
from rewards.answers import extract_completion_answer, last_number, normalize_answer

__all__ = [
    "sample_completions",
    "score_samples",
    "pass_at_1",
    "pass_at_k",
    "pass_at_k_estimate",
    "maj_at_k",
    "rate",
    "mean_reward",
    "mean_length",
    "evaluation_summary",
    "summary_markdown",
    "metric_label",
    "comparison_markdown",
    "KeepRules",
    "select_samples",
    "mix_with",
    "to_sft_rows",
    "LANGUAGE_CONSISTENCY_THRESHOLD",
]

#: A completion counts as "single-language" when its language_consistency reward is at least this.
LANGUAGE_CONSISTENCY_THRESHOLD = 0.95

# Record keys written by sample_completions / score_samples; not dataset columns.
_RECORD_KEYS = ("row", "sample", "prompt", "completion", "length", "truncated", "completion_ids")
_SCORE_KEYS = ("rewards", "reward", "answer")


# ============================================================================================
# sampling and scoring (need a model)


def _sampling_params(sampling: Any, n: int, overrides: dict) -> SamplingParams:
    """A ``SamplingParams`` with ``group_size=n`` from ``sampling`` (a SamplingParams, a GRPOConfig,
    any object with the attributes, a mapping, or None) and keyword ``overrides`` (None values do
    not override). ``max_new_tokens`` is required; temperature, top_p, top_k default to 1.0, 1.0, 0."""
    if sampling is None:
        sampling = {}
    get = sampling.get if isinstance(sampling, dict) else lambda k, d=None: getattr(sampling, k, d)
    values = {k: get(k) for k in ("max_new_tokens", "temperature", "top_p", "top_k")}
    values.update({k: v for k, v in overrides.items() if v is not None})
    if values["max_new_tokens"] is None:
        raise ValueError("sampling: max_new_tokens is required")
    return SamplingParams(
        group_size=n,
        max_new_tokens=int(values["max_new_tokens"]),
        temperature=float(1.0 if values["temperature"] is None else values["temperature"]),
        top_p=float(1.0 if values["top_p"] is None else values["top_p"]),
        top_k=int(values["top_k"] or 0),
    )


def sample_completions(
    model,
    tokenizer,
    rows: list[dict],
    n: int,
    sampling: Any = None,
    seed: int = 0,
    batch_prompts: int = 8,
    engine: str = "shared_prefix",
    progress: bool = False,
    keep_ids: bool = True,
    *,
    shard: tuple[int, int] = (0, 1),
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
) -> list[dict]:
    """``n`` sampled completions for each row, one record per completion, in (row, sample) order.

    ``rows[i]["prompt"]`` is the rendered model input. ``max_new_tokens``, ``temperature``,
    ``top_p`` and ``top_k`` come from ``sampling`` (a :class:`~grpo.rollout.SamplingParams`, a
    ``GRPOConfig`` or a dict; its ``group_size`` is ignored in favour of ``n``) and/or the keyword
    arguments of the same names, which win when not None. Prompts go to the
    registered rollout ``engine`` ``batch_prompts`` at a time (so ``batch_prompts × n`` sequences
    per generate call); batch ``b`` (0-based) samples under ``torch.manual_seed(step_seed(seed, b))``,
    as trainer step ``b`` would, so the records are a pure function of (model, rows, n, sampling,
    seed, batch_prompts) on a given device. Changing ``batch_prompts`` changes the draws.
    ``shard=(rank, world)`` samples only batches ``b`` with ``b % world == rank``: the records of
    the ranks together are the one-process records (sort them by ``row``).

    Each record: ``row`` (index into ``rows``), ``sample`` (0..n-1), ``prompt``, ``completion``
    (decoded text without the final eos), ``length`` (completion tokens, counting the eos token
    when there is one, as the trainer's ``completions/mean_length``), ``truncated`` (no eos within
    ``max_new_tokens``), ``completion_ids`` (token ids incl. eos; what token-length rewards such as
    ``overlong`` read; left out with ``keep_ids=False``), then every other column of the row
    (``solution``, ``language``, ``raw_prompt`` ...). A row column named like a record key above is
    not copied (the record's own value wins).
    """
    import torch

    from grpo.trainer import step_seed

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive integer, got {n!r}")
    if batch_prompts < 1:
        raise ValueError(f"batch_prompts: expected a positive integer, got {batch_prompts!r}")
    for i, row in enumerate(rows):
        if not isinstance(row.get("prompt"), str):
            raise ValueError(f"row {i}: 'prompt' must be the rendered prompt text (a str), got {type(row.get('prompt')).__name__}")
    params = _sampling_params(
        sampling, n, {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "top_k": top_k}
    )
    rollout_engine = get_rollout_engine(engine, model, tokenizer)
    from tqdm.auto import tqdm

    records: list[dict] = []
    rank, world = shard
    mine = [(b, start) for b, start in enumerate(range(0, len(rows), batch_prompts)) if b % world == rank]
    with tqdm(total=sum(len(rows[s : s + batch_prompts]) for _, s in mine), disable=not progress, desc="sampling", unit="prompt",
              dynamic_ncols=True) as bar:
        for b, start in mine:
            batch = rows[start : start + batch_prompts]
            torch.manual_seed(step_seed(seed, b))
            rollout = rollout_engine.generate([r["prompt"] for r in batch], params)
            lengths = rollout.lengths.tolist()
            truncated = rollout.truncated.tolist()
            ids = rollout.completion_id_lists if keep_ids else None
            for offset, row in enumerate(batch):
                for j in range(n):
                    k = offset * n + j
                    record = {
                        "row": start + offset,
                        "sample": j,
                        "prompt": row["prompt"],
                        "completion": rollout.texts[k],
                        "length": int(lengths[k]),
                        "truncated": bool(truncated[k]),
                    }
                    if ids is not None:
                        record["completion_ids"] = ids[k]
                    record.update({c: v for c, v in row.items() if c not in _RECORD_KEYS})
                    records.append(record)
            bar.update(len(batch))
    return records


def score_samples(samples: list[dict], terms: list[RewardTerm]) -> list[dict]:
    """Copies of ``samples`` with ``rewards`` ({name: value or None}), ``reward`` and ``answer``.

    ``reward`` is the weighted total of :func:`grpo.scoring.score_completions`,
    ``Σ_k w_k · r_k`` over the terms that scored the sample (None values add nothing). The reward
    functions receive the records' ``prompt`` and ``completion`` and, as keyword columns, every
    other key the records carry except the bookkeeping ones (``row``, ``sample``, ``length``,
    ``truncated`` and earlier scores), as the trainer passes dataset columns; ``completion_ids``
    is passed when every record has it. ``answer`` is
    :func:`rewards.answers.extract_completion_answer` of the completion (None when it gave none),
    or its last number when a term scores with ``fallback: last_number`` (so the majority vote
    counts the answers that lenient accuracy grades). An empty list gives an empty list.
    """
    if not samples:
        return []
    if not terms:
        raise ValueError("score_samples: at least one reward term is needed")
    skip = set(_RECORD_KEYS) | set(_SCORE_KEYS)
    names: list[str] = []
    for s in samples:
        names.extend(k for k in s if k not in skip and k not in names)
    columns = {k: [s.get(k) for s in samples] for k in names}
    if all("completion_ids" in s for s in samples):
        columns["completion_ids"] = [s["completion_ids"] for s in samples]
    scores = score_completions(terms, [s["prompt"] for s in samples], [s["completion"] for s in samples], columns)
    lenient = any(t.params.get("fallback") == "last_number" for t in terms)
    out = []
    for i, s in enumerate(samples):
        rewards = {t.name: (None if math.isnan(scores.per_reward[t.name][i]) else scores.per_reward[t.name][i]) for t in terms}
        answer = extract_completion_answer(s["completion"])
        if answer is None and lenient:
            answer = last_number(s["completion"])
        out.append({**s, "rewards": rewards, "reward": scores.total[i], "answer": answer})
    return out


# ============================================================================================
# pure summaries over scored records


def _prompt_key(sample: dict):
    return sample["row"] if "row" in sample else sample.get("prompt")


def _by_prompt(samples: Iterable[dict]) -> dict[Any, list[dict]]:
    """Records grouped per prompt, prompts in order of first appearance, each group in
    ``sample`` order (record order where ``sample`` is missing)."""
    groups: dict[Any, list[dict]] = {}
    for s in samples:
        groups.setdefault(_prompt_key(s), []).append(s)
    return {k: sorted(g, key=lambda s: s.get("sample", 0)) for k, g in groups.items()}


def _check_reward(samples: list[dict], name: str) -> None:
    if samples and not any(name in (s.get("rewards") or {}) for s in samples):
        present = sorted({k for s in samples for k in (s.get("rewards") or {})})
        raise KeyError(f"no sample carries reward {name!r}; rewards present: {', '.join(present) or '(none)'}")


def _value(sample: dict, name: str) -> float | None:
    return (sample.get("rewards") or {}).get(name)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def pass_at_1(samples: list[dict], reward: str = "accuracy") -> float | None:
    """Mean over prompts of the mean ``reward`` over that prompt's samples.

    pass@1 = (1/P) Σ_p (1/k_p) Σ_j r_pj

    With k samples per prompt this is the unbiased pass@1 estimate (each prompt weighs the same,
    whatever its k). None values are left out; prompts with no value at all are not counted.
    """
    _check_reward(samples, reward)
    per_prompt = []
    for group in _by_prompt(samples).values():
        m = _mean([v for v in (_value(s, reward) for s in group) if v is not None])
        if m is not None:
            per_prompt.append(m)
    return _mean(per_prompt)


def pass_at_k_estimate(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k for one prompt with ``c`` correct among ``n`` samples
    (Chen et al. 2021, "Evaluating Large Language Models Trained on Code"):

        pass@k = 1 − C(n − c, k) / C(n, k) = 1 − Π_{i=n−c+1}^{n} (1 − k / i)

    the probability that k samples drawn without replacement from the n hold at least one
    correct one. The product form avoids huge binomials. Needs 0 ≤ c ≤ n and 1 ≤ k ≤ n.
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 ≤ c ≤ n and 1 ≤ k ≤ n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def pass_at_k(samples: list[dict], k: int, reward: str = "accuracy", threshold: float = 1.0) -> float | None:
    """Mean over prompts of :func:`pass_at_k_estimate`, a sample being correct when its
    ``reward`` is at least ``threshold``.

    pass@k = (1/P) Σ_p [1 − C(n_p − c_p, k) / C(n_p, k)]

    n_p counts the prompt's samples with a value (None values are left out); prompts with fewer
    than k such samples are not counted. With k = 1 this is :func:`pass_at_1` for 0/1 rewards.
    """
    _check_reward(samples, reward)
    per_prompt = []
    for group in _by_prompt(samples).values():
        values = [v for v in (_value(s, reward) for s in group) if v is not None]
        if len(values) >= k:
            per_prompt.append(pass_at_k_estimate(len(values), sum(v >= threshold for v in values), k))
    return _mean(per_prompt)


def _majority(group: list[dict]) -> tuple[str | None, list[dict]]:
    """The voted answer of one prompt's samples and the samples carrying it.

    Votes group answers by :func:`rewards.answers.normalize_answer` (so ``$5$``, ``5.`` and ``5``
    are one answer). None answers do not vote. Ties go to the answer that appears first in sample
    order. ``(None, [])`` when no sample gave an answer.
    """
    votes: Counter = Counter()
    carriers: dict[str, list[dict]] = {}
    for s in group:
        answer = s.get("answer")
        if answer is None:
            continue
        key = normalize_answer(str(answer))
        votes[key] += 1
        carriers.setdefault(key, []).append(s)
    if not votes:
        return None, []
    best = max(votes.values())
    winner = next(k for k in carriers if votes[k] == best)  # carriers keeps first-seen order
    return winner, carriers[winner]


def maj_at_k(samples: list[dict], reward: str = "accuracy") -> float | None:
    """Majority-vote accuracy (maj@k, "cons@k" in the R1 paper): mean over prompts of the
    ``reward`` of the answer most of the prompt's k samples gave.

    maj@k = (1/P) Σ_p r(voted answer of p)

    Per prompt: the extracted ``answer`` of each sample votes (after ``normalize_answer``;
    None answers do not vote); a tie goes to the answer seen first in sample order; the
    prompt's score is the ``reward`` value of the first sample carrying the voted answer that has
    a value (for a 0/1 accuracy: 1 if the voted answer is correct). A prompt with no answer at
    all scores 0. Prompts whose samples all have a None ``reward`` are not counted.
    """
    _check_reward(samples, reward)
    per_prompt = []
    for group in _by_prompt(samples).values():
        if all(_value(s, reward) is None for s in group):
            continue
        _, carriers = _majority(group)
        values = [v for v in (_value(s, reward) for s in carriers) if v is not None]
        per_prompt.append(values[0] if values else 0.0)
    return _mean(per_prompt)


def rate(samples: list[dict], reward: str, threshold: float) -> float | None:
    """Share of samples whose ``reward`` is at least ``threshold``.

    rate = #{i : r_i ≥ threshold} / #{i : r_i is not None}

    e.g. the format rate is ``rate(samples, "format", 1.0)``, the single-language rate
    ``rate(samples, "language_consistency", 0.95)``.
    """
    _check_reward(samples, reward)
    values = [v for v in (_value(s, reward) for s in samples) if v is not None]
    return sum(v >= threshold for v in values) / len(values) if values else None


def mean_reward(samples: list[dict], name: str) -> float | None:
    """Mean of reward ``name`` over the samples where it is not None: (1/n) Σ_i r_i."""
    _check_reward(samples, name)
    return _mean([v for v in (_value(s, name) for s in samples) if v is not None])


def mean_length(
    samples: list[dict], correct: bool | None = None, reward: str = "accuracy", threshold: float = 1.0
) -> float | None:
    """Mean completion ``length`` (tokens) of all samples (``correct=None``), of the correct ones
    (``True``: ``reward`` ≥ ``threshold``) or of the wrong ones (``False``: ``reward`` < ``threshold``).

    mean_length = (1/|S|) Σ_{i∈S} length_i

    Samples whose ``reward`` is None are neither correct nor wrong.
    """
    if correct is None:
        chosen = samples
    else:
        _check_reward(samples, reward)
        chosen = [s for s in samples if _value(s, reward) is not None and (_value(s, reward) >= threshold) == correct]
    return _mean([s["length"] for s in chosen])


def evaluation_summary(
    samples: list[dict],
    terms: list[RewardTerm] | list[str],
    accuracy: str = "accuracy",
    language_threshold: float = LANGUAGE_CONSISTENCY_THRESHOLD,
    majority: bool = True,
) -> dict:
    """The figures of an evaluation, as one flat dict (JSON-ready; absent figures are left out).

    - ``num_prompts``, ``num_samples``, ``samples_per_prompt`` (an int when every prompt has the
      same number of samples, else the mean);
    - with the ``accuracy`` reward scored: ``pass@1`` (:func:`pass_at_1`), ``pass@k`` (the
      unbiased estimator, :func:`pass_at_k`, with k = samples_per_prompt, when that is an int
      above 1), ``maj@k`` (:func:`maj_at_k`), ``mean_length_correct`` and ``mean_length_wrong`` (:func:`mean_length`);
    - with ``format``: ``format_rate`` = share with format reward 1.0;
    - with ``language_consistency``: ``language_consistency`` (mean) and
      ``language_consistency_rate`` = share ≥ ``language_threshold`` (0.95);
    - always: ``mean_length``, ``truncated_rate`` (share of samples cut at max_new_tokens, when
      records carry ``truncated``), ``mean_reward`` (weighted total) and ``rewards/<name>/mean``
      for every term (named as in the trainer's metrics).

    ``terms`` are the RewardTerms the samples were scored with (or just their names);
    ``accuracy`` names the correctness reward (e.g. ``code`` for unit-test rewards);
    ``majority=False`` leaves maj@k out (answers that are programs have no vote).
    """
    names = [t if isinstance(t, str) else t.name for t in terms]
    groups = _by_prompt(samples)
    counts = {len(g) for g in groups.values()}
    summary: dict[str, Any] = {
        "num_prompts": len(groups),
        "num_samples": len(samples),
        "samples_per_prompt": counts.pop() if len(counts) == 1 else (len(samples) / len(groups) if groups else 0),
    }
    if not samples:
        return summary
    if accuracy in names:
        summary["pass@1"] = pass_at_1(samples, accuracy)
        k = summary["samples_per_prompt"]
        if isinstance(k, int) and k > 1:
            summary["pass@k"] = pass_at_k(samples, k, accuracy)
        if majority:
            summary["maj@k"] = maj_at_k(samples, accuracy)
    if "format" in names:
        summary["format_rate"] = rate(samples, "format", 1.0)
    if "language_consistency" in names:
        summary["language_consistency"] = mean_reward(samples, "language_consistency")
        summary["language_consistency_rate"] = rate(samples, "language_consistency", language_threshold)
    summary["mean_length"] = mean_length(samples)
    if accuracy in names:
        summary["mean_length_correct"] = mean_length(samples, True, accuracy)
        summary["mean_length_wrong"] = mean_length(samples, False, accuracy)
    if all("truncated" in s for s in samples):
        summary["truncated_rate"] = sum(bool(s["truncated"]) for s in samples) / len(samples)
    totals = [s["reward"] for s in samples if s.get("reward") is not None]
    summary["mean_reward"] = _mean(totals)
    for name in names:
        summary[f"rewards/{name}/mean"] = mean_reward(samples, name)
    return summary


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 100 else f"{value:.4f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def summary_markdown(summary: dict, title: str) -> str:
    """A two-column markdown table (``| metric | value |``) under a ``### title`` heading.

    Floats get 4 decimals (1 from 100 up), None shows as ``–``; ``maj@k`` and ``pass@k`` are
    shown as ``maj@<samples_per_prompt>`` and ``pass@<samples_per_prompt>``.
    """
    lines = [f"### {title}", "", "| metric | value |", "|---|---|"]
    for key, value in summary.items():
        lines.append(f"| {_cell(metric_label(key, summary))} | {_cell(value)} |")
    return "\n".join(lines) + "\n"


def metric_label(key: str, summary: dict) -> str:
    """``maj@k`` / ``pass@k`` with k made concrete (``maj@4``) when every prompt had k samples."""
    k = summary.get("samples_per_prompt")
    return key.replace("@k", f"@{k}") if key in ("maj@k", "pass@k") and isinstance(k, int) else key


def comparison_markdown(summaries: dict[str, dict], title: str, keys: list[str] | None = None) -> str:
    """Several evaluations side by side: ``| metric | <name 1> | <name 2> | ... |`` under
    ``### title``; ``summaries`` maps a column name (a model) to its :func:`evaluation_summary`.
    Rows are ``keys`` (default: every key any summary has, in first-seen order); a figure a
    summary lacks shows as ``–``."""
    names = list(summaries)
    if keys is None:
        keys = list(dict.fromkeys(k for s in summaries.values() for k in s if not isinstance(s[k], (dict, list))))
    first = next(iter(summaries.values()), {})
    lines = [f"### {title}", "", "| metric | " + " | ".join(_cell(n) for n in names) + " |", "|---|" + "---|" * len(names)]
    for key in keys:
        lines.append(f"| {_cell(metric_label(key, first))} | " + " | ".join(_cell(summaries[n].get(key)) for n in names) + " |")
    return "\n".join(lines) + "\n"


# ============================================================================================
# rejection sampling


@dataclass
class KeepRules:
    """Which sampled completions rejection sampling keeps (R1: correct, readable, one language).

    Checks run in this order and the first failing one is the reason counted for a rejection:
    ``truncated`` (when ``drop_truncated``), ``too_short`` (length < ``min_length``), ``too_long``
    (length > ``max_length``), then each reward of ``min_rewards`` in its order (value below the
    minimum, or None, fails; the reason is the reward's name). Then, per prompt, among the passing
    samples, ordered by total ``reward`` (highest first) then ``sample`` index: ``duplicate``
    (same completion as an earlier one after whitespace normalisation, when ``dedupe``) and
    ``over_max_per_prompt`` (beyond the first ``max_per_prompt``; None keeps all).
    """

    # reward name -> minimum value, e.g. {"accuracy": 1.0, "format": 1.0, "language_consistency": 0.95}
    min_rewards: dict[str, float] = field(default_factory=dict)
    # completion length bounds in tokens (the record's ``length``), inclusive; None = no bound
    min_length: int | None = None
    max_length: int | None = None
    # drop completions cut at max_new_tokens (they have no end and usually no answer)
    drop_truncated: bool = True
    # drop exact repeats of a kept completion of the same prompt (whitespace runs count as one space)
    dedupe: bool = True
    # at most this many completions per prompt; None = no limit
    max_per_prompt: int | None = 1

    def __post_init__(self) -> None:
        if self.max_per_prompt is not None and self.max_per_prompt < 1:
            raise ValueError(f"max_per_prompt: expected a positive integer or null, got {self.max_per_prompt}")
        if self.min_length is not None and self.max_length is not None and self.min_length > self.max_length:
            raise ValueError(f"min_length {self.min_length} is greater than max_length {self.max_length}")


def _failed_rule(sample: dict, rules: KeepRules) -> str | None:
    if rules.drop_truncated and sample.get("truncated"):
        return "truncated"
    if rules.min_length is not None and sample["length"] < rules.min_length:
        return "too_short"
    if rules.max_length is not None and sample["length"] > rules.max_length:
        return "too_long"
    for name, minimum in rules.min_rewards.items():
        value = _value(sample, name)
        if value is None or value < minimum:
            return name
    return None


def _normalise_whitespace(text: str) -> str:
    return " ".join(str(text).split())


def select_samples(samples: list[dict], rules: KeepRules) -> tuple[list[dict], dict]:
    """Rejection sampling: the records ``rules`` keep, and statistics of the filtering.

    ``kept`` lists prompts in order of first appearance; within a prompt, highest total
    ``reward`` first, then ``sample`` order. ``stats``:

    - ``total``, ``kept``, ``prompts``, ``prompts_with_kept``;
    - ``rejected``: reason -> count (every reason listed, 0 included): ``truncated``,
      ``too_short``, ``too_long``, one per ``min_rewards`` name, ``duplicate``,
      ``over_max_per_prompt``; each rejected sample counts under its first failing check;
    - ``pass_rate_histogram``: 10 counts of prompts by the share of their samples that passed the
      per-sample checks (before dedupe and ``max_per_prompt``); bin i holds shares in
      [i/10, (i+1)/10), the last bin also 1.0 (so bin 0 counts prompts with no passing sample).
    """
    for name in rules.min_rewards:
        _check_reward(samples, name)
    rejected = {"truncated": 0, "too_short": 0, "too_long": 0, **{n: 0 for n in rules.min_rewards}, "duplicate": 0, "over_max_per_prompt": 0}
    histogram = [0] * 10
    kept: list[dict] = []
    prompts_with_kept = 0
    groups = _by_prompt(samples)
    for group in groups.values():
        passing = []
        for s in group:
            reason = _failed_rule(s, rules)
            if reason is None:
                passing.append(s)
            else:
                rejected[reason] += 1
        histogram[min(9, len(passing) * 10 // len(group))] += 1
        passing.sort(key=lambda s: -(s.get("reward") if s.get("reward") is not None else -math.inf))  # stable: sample order
        seen: set[str] = set()
        chosen = []
        for s in passing:
            text = _normalise_whitespace(s["completion"])
            if rules.dedupe and text in seen:
                rejected["duplicate"] += 1
                continue
            seen.add(text)
            if rules.max_per_prompt is not None and len(chosen) >= rules.max_per_prompt:
                rejected["over_max_per_prompt"] += 1
                continue
            chosen.append(s)
        prompts_with_kept += bool(chosen)
        kept.extend(chosen)
    stats = {
        "total": len(samples),
        "kept": len(kept),
        "rejected": rejected,
        "prompts": len(groups),
        "prompts_with_kept": prompts_with_kept,
        "pass_rate_histogram": histogram,
    }
    return kept, stats


def mix_with(kept_rows: list[dict], general_rows: list[dict], ratio: float, seed: int) -> list[dict]:
    """``kept_rows`` followed by ``round(ratio × len(kept_rows))`` rows drawn from ``general_rows``.

    The general rows are drawn without replacement with ``random.Random(seed)`` (in the drawn
    order); the result is not shuffled (SFT trainers shuffle). ``ratio=0`` returns a copy of
    ``kept_rows``. ``ValueError`` when ``general_rows`` has fewer rows than needed.
    """
    if ratio < 0 or math.isnan(ratio):
        raise ValueError(f"ratio: expected a non-negative number, got {ratio}")
    need = round(ratio * len(kept_rows))
    if need > len(general_rows):
        raise ValueError(
            f"mixing ratio {ratio} needs {need} general rows for {len(kept_rows)} kept rows, but only {len(general_rows)} are given"
        )
    return list(kept_rows) + random.Random(seed).sample(list(general_rows), need)


def to_sft_rows(kept: list[dict]) -> list[dict]:
    """SFT rows from kept records: ``{"prompt", "completion", "solution", "language", "source_prompt"}``.

    ``prompt`` is the raw question (the record's ``raw_prompt``, falling back to ``prompt`` when
    there is none), so the SFT stage can render it with its own template; ``source_prompt`` is
    the rendered text the completion was sampled from. Missing ``solution``/``language`` are None.
    """
    return [
        {
            "prompt": s["raw_prompt"] if s.get("raw_prompt") is not None else s["prompt"],
            "completion": s["completion"],
            "solution": s.get("solution"),
            "language": s.get("language"),
            "source_prompt": s["prompt"],
        }
        for s in kept
    ]
