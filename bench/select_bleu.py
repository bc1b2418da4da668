"""Benchmark: seq-inter's choice among the teacher's n best, `sacrebleu.sentence_bleu` per hypothesis vs
`mgkd.losses.sequence.SentenceBleu` (one metric, each reference read once).

    python bench/select_bleu.py               # 11,256 verses x 4 hypotheses, like the demo's training split
    python bench/select_bleu.py --verses 2000

A seq-inter student (the demo's) scores each of its teacher's 4 best
translations of every training source by sentence BLEU against the reference,
once per generation. Here the references are Louis Segond 1910 verses of the
built-in corpus (those of at most 20 words, as the demo keeps) and each verse's
4 "hypotheses" are real French text of similar length: the same verse in the
two other French Bibles of the corpus (codes 5 and o) and Segond's previous and
next verse. Both ways must give every score equal (checked), and so the same
choice; the table gives their times, measured in one run, alternating rounds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import sacrebleu  # noqa: E402

import results as R  # noqa: E402  (bench/results.py: the hardware line)
from mgkd.losses.sequence import SentenceBleu, select_hypotheses  # noqa: E402
from mgkd.tasks.translation.corpus import read_bible  # noqa: E402


def nbest_of_the_corpus(verses: int) -> tuple[list[list[tuple[float, str]]], list[str]]:
    """Segond's verses of at most 20 words as references, each with 4 hypotheses (see the module docstring)."""
    five, o = read_bible("l", "5"), read_bible("l", "o")  # the same verses in the same order, Segond as source
    refs, nbest = [], []
    for j in range(1, len(five) - 1):
        ref = five[j].source
        if len(ref.split()) > 20:
            continue
        hyps = [five[j].target, o[j].target, five[j - 1].source, five[j + 1].source]
        refs.append(ref)
        nbest.append([(-float(i), h) for i, h in enumerate(hyps)])
        if len(refs) == verses:
            break
    return nbest, refs


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--verses", type=int, default=11256, help="references, each with 4 hypotheses")
    ap.add_argument("--rounds", type=int, default=3, help="alternating timing rounds of each way")
    args = ap.parse_args(argv)
    nbest, refs = nbest_of_the_corpus(args.verses)
    n = sum(len(h) for h in nbest)

    def per_call() -> list[list[float]]:
        return [[sacrebleu.sentence_bleu(h, [r]).score for _, h in hyps] for hyps, r in zip(nbest, refs)]

    def shared() -> list[list[float]]:
        scorer = SentenceBleu()
        return [scorer.scores([h for _, h in hyps], r) for hyps, r in zip(nbest, refs)]

    ways = {"sacrebleu.sentence_bleu per hypothesis (before)": per_call, "SentenceBleu (mgkd now)": shared}
    times: dict[str, list[float]] = {k: [] for k in ways}
    scores = {}
    for _ in range(args.rounds):
        for name, fn in ways.items():
            t0 = time.perf_counter()
            scores[name] = fn()
            times[name].append(time.perf_counter() - t0)
    a, b = scores.values()
    if a != b:
        bad = sum(x != y for xs, ys in zip(a, b) for x, y in zip(xs, ys))
        raise SystemExit(f"FAILED: {bad} of {n} sentence BLEU scores differ between the two ways")
    chosen = select_hypotheses(nbest, refs, "inter")
    print(f"seq-inter selection: {len(refs)} references x 4 hypotheses = {n} sentence BLEU scores, all equal both "
          f"ways; {R.hardware_line()}, sacrebleu {sacrebleu.__version__}; best of {args.rounds} rounds\n")  # fmt: skip
    print("| way | s (best) | scores/s | time ratio to before |")
    print("|---|---:|---:|---:|")
    base = min(next(iter(times.values())))
    for name, ts in times.items():
        print(f"| {name} | {min(ts):.2f} | {n / min(ts):,.0f} | {min(ts) / base:.2f} |")
    picked = sum(c != hyps[0][1] for c, hyps in zip(chosen, nbest))
    print(f"\n{picked} of {len(refs)} choices differ from the first hypothesis.")


if __name__ == "__main__":
    main()
