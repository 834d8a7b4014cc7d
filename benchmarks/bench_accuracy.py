"""How often the accuracy reward agrees with the right verdict, beside plain math-verify.

    python -m benchmarks.bench_accuracy [--out benchmarks/results/accuracy.md]

Three tables, all from files in tests/data (sources in tests/data/README.md):

1. the answer-pair regression set (``answer_pairs.jsonl.gz``: real (gold, prediction, verdict) pairs),
   per source, for our reward with ``answer_extraction: strict`` on the prediction as it is, strict
   with the prediction wrapped in ``<answer>...</answer>``, ``any``, and plain math-verify
   (``verify(parse(gold), parse(pred))``);
2. MATH-500: each gold answer against its own reference solution (must be 500/500), and against
   the next problem's solution where the two answers differ (false positives);
3. the hedge table (``hedges.jsonl``): our reward and plain math-verify on each case.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import time
from collections import defaultdict
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
MODES = ("strict", "wrapped", "any", "plain math-verify")


def load_jsonl(name: str) -> list[dict]:
    path = DATA / name
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def ours(gold: str, pred: str, mode: str) -> bool:
    from rewards.accuracy import accuracy_reward

    completion = f"<answer>{pred}</answer>" if mode == "wrapped" else pred
    extraction = "any" if mode == "any" else "strict"
    return accuracy_reward(["q"], [completion], solution=[gold], answer_extraction=extraction)[0] == 1.0


def plain_math_verify(gold: str, pred: str) -> bool:
    """``verify(parse(gold), parse(pred))`` with math-verify's defaults (a bare gold gets ``$...$``,
    as the math-verify tests write their golds)."""
    from math_verify import parse, verify

    try:
        return bool(verify(parse(gold if "$" in gold or "\\boxed" in gold else f"${gold}$"), parse(pred)))
    except Exception:
        return False


def verdicts(pair: dict) -> dict[str, bool]:
    found = {mode: ours(pair["gold"], pair["pred"], mode) for mode in MODES[:3]}
    found["plain math-verify"] = plain_math_verify(pair["gold"], pair["pred"])
    return found


def source_group(source: str) -> str:
    """``huggingface/Math-Verify@5d148cf tests/test_all.py:57 (...)`` -> ``huggingface/Math-Verify``;
    ``sampled in this repository: <model> on ...`` -> ``sampled in this repository: <model>``."""
    if "@" in source:
        return source.split("@")[0]
    return source.split(" on ")[0]


def agreement_table(pairs: list[dict]) -> tuple[str, dict]:
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for pair in pairs:
        group = source_group(pair["source"])
        found = verdicts(pair)
        for key in (group, "all"):
            counts[key]["pairs"] += 1
            for mode in MODES:
                counts[key][mode] += found[mode] == pair["verdict"]
            counts[key]["ours any, where plain math-verify is right"] += found["plain math-verify"] == pair["verdict"] and found["any"] == pair["verdict"]
            counts[key]["plain right"] += found["plain math-verify"] == pair["verdict"]
    lines = ["| source | pairs | strict | strict, wrapped in <answer> | any | plain math-verify | any, where plain math-verify is right |", "|---|---|---|---|---|---|---|"]
    for key in sorted(counts, key=lambda k: (k == "all", k)):
        c = counts[key]
        lines.append(
            f"| {key} | {c['pairs']} | {c['strict']} | {c['wrapped']} | {c['any']} | {c['plain math-verify']} | "
            f"{c['ours any, where plain math-verify is right']}/{c['plain right']} |"
        )
    return "\n".join(lines), counts


def math500_table() -> tuple[str, dict]:
    from rewards.accuracy import accuracy_reward
    from rewards.answers import normalize_answer

    rows = load_jsonl("math500.jsonl.gz")
    golds = [r["answer"] for r in rows]
    start = time.perf_counter()
    own = accuracy_reward(["q"] * len(rows), [r["solution"] for r in rows], solution=golds)
    mismatched = [i for i in range(len(rows)) if normalize_answer(golds[i]) != normalize_answer(golds[(i + 1) % len(rows)])]
    neighbour = accuracy_reward(["q"] * len(mismatched), [rows[(i + 1) % len(rows)]["solution"] for i in mismatched], solution=[golds[i] for i in mismatched])
    elapsed = time.perf_counter() - start
    false_positives = [(golds[i], golds[(i + 1) % len(rows)]) for i, r in zip(mismatched, neighbour) if r == 1.0]
    result = {"own": sum(r == 1.0 for r in own), "rows": len(rows), "mismatched": len(mismatched), "false_positives": false_positives}
    text = (
        f"MATH-500, gold answer vs its reference solution: {result['own']}/{len(rows)}\n"
        f"MATH-500, gold answer vs the next problem's solution ({len(mismatched)} pairs whose answers differ as "
        f"strings): {len(false_positives)} judged equal {false_positives} ({elapsed:.1f} s for all)"
    )
    return text, result


def hedge_table() -> str:
    from rewards.accuracy import accuracy_reward

    lines = ["| kind | gold | completion | expected | ours | plain math-verify |", "|---|---|---|---|---|---|"]
    for row in load_jsonl("hedges.jsonl"):
        got = accuracy_reward(["q"], [row["completion"]], solution=[row["gold"]], answer_extraction=row["answer_extraction"])[0]
        plain = float(plain_math_verify(row["gold"], row["completion"]))
        shown = row["completion"].replace("\n", "\\n").replace("|", "\\|")
        mode = "" if row["answer_extraction"] == "strict" else f" (answer_extraction: {row['answer_extraction']})"
        lines.append(f"| {row['kind']} | `{row['gold']}` | `{shown}`{mode} | {row['expected']:.0f} | {got:.0f} | {plain:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="also write the tables to this markdown file")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # math-verify's own parse warnings
    from benchmarks.workload import report

    pairs = load_jsonl("answer_pairs.jsonl.gz")
    table, _ = agreement_table(pairs)
    math500, _ = math500_table()
    text = (
        f"## Agreement with the right verdict on {len(pairs)} real answer pairs\n\n{table}\n\n## MATH-500\n\n{math500}\n\n"
        f"## Hedges and controls\n\n{hedge_table()}\n"
    )
    report(text, args.out, header="accuracy reward (no timing-sensitive figures)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
