"""Evaluation metrics (paper §5, Tables 1–4), hand-written in pure Python so that every number is
reproducible offline and readable in one file.

**Text normalisation.** `normalize_answer` (nanog4v/data.py) ignores case, surrounding space, repeated
space and one final full stop. Word-level metrics then also drop the punctuation `.,!?;:` and split on
whitespace (`tokenize`): "The cat, on the mat!" -> ["the", "cat", "on", "the", "mat"]. Articles are
kept (unlike SQuAD's normaliser): in toy-world captions "a" and "the" are part of the answer.

**Exact match** — `normalize_answer(prediction) == normalize_answer(reference)`.

**Token F1** (SQuAD, Rajpurkar et al. 2016) — on the bags of words of prediction and reference,
with `common` = the size of their multiset intersection:

    P = common / |pred|    R = common / |ref|    F1 = 2PR / (P + R) = 2·common / (|pred| + |ref|)

(1.0 when both are empty, 0.0 when only one is).

**Rubric score** (Table 1, 0–5). The paper has GPT grade each answer against the reference on a 0–5
scale. We do not: a GPT judge needs network access, is not deterministic and changes under us, so
its scores cannot be reproduced. The stand-in is a fixed rule: 5 for an exact match, otherwise
round(4·F1) rounded half up and capped at 4 (a reordered but complete answer gets 4, not 5).

**BLEU** (Papineni et al. 2002), corpus level. For n = 1..N the modified precision p_n clips each
hypothesis n-gram count by its largest count in any one reference and sums over the corpus:

    p_n = Σ_sentences Σ_ngram min(count_hyp, max_ref count_ref) / Σ_sentences #hypothesis n-grams
    BP  = 1 if c > r else exp(1 − r/c)     c = total hypothesis length, r = Σ over sentences of the
                                            reference length closest to the hypothesis (ties: shorter)
    BLEU = BP · exp(Σ_n (1/N) log p_n)

No smoothing: if any p_n is 0 (or there are no n-grams at all), BLEU is 0.0 (coco-caption adds
1e-15 / 1e-9 to the counts instead, which gives a tiny positive number rather than 0). BLEU-4 is N = 4.
(A hypothesis shorter than n adds no n-grams; nltk's corpus_bleu counts it as one, so the two agree
exactly when every hypothesis has at least N words.)

**METEOR** (Banerjee & Lavie 2005, original parameters α = 0.9, β = 3, γ = 0.5), exact-match module
only: no stemming, no WordNet synonyms. Hypothesis unigrams are aligned one-to-one to identical
reference unigrams by greedy tiling: repeatedly align the longest run of consecutive words that the
still-unaligned parts of hypothesis and reference share (earliest on ties), until no word is left to
match. This keeps m maximal (every word matches min(#hyp, #ref) times) and approximates the paper's
choice among maximal alignments (fewest crossing mappings) by seeking the fewest chunks. With m
matches in `chunks` contiguous, same-order runs:

    P = m/|hyp|   R = m/|ref|   Fmean = 10PR / (R + 9P)   Penalty = 0.5·(chunks/m)³
    METEOR = Fmean · (1 − Penalty)

per sentence the best over its references; the corpus score is the mean over sentences.

**Refusal scores** (Table 4). Positive = refusal. From the confusion matrix (tp, fp, tn, fn):
accuracy, precision tp/(tp+fp), recall tp/(tp+fn), F1, and over-refusal fp/(fp+tn), the fraction of
benign requests refused. A zero denominator gives 0.0.
"""
from __future__ import annotations

import math
from collections import Counter

from ..data import normalize_answer

PUNCTUATION = ".,!?;:"
_NO_PUNCTUATION = str.maketrans(PUNCTUATION, " " * len(PUNCTUATION))


def tokenize(text: str) -> list[str]:
    """Lower-cased words of `text`, the punctuation `.,!?;:` dropped."""
    return normalize_answer(text).translate(_NO_PUNCTUATION).split()


def exact_match(prediction: str, reference: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(reference)


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = tokenize(prediction), tokenize(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    return 2 * common / (len(pred) + len(ref))


def rubric_score(prediction: str, reference: str) -> int:
    """0..5: 5 for an exact match, else round-half-up(4·F1) capped at 4."""
    if exact_match(prediction, reference):
        return 5
    return min(4, math.floor(4 * token_f1(prediction, reference) + 0.5))


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def _clipped_counts(hyp: list[str], refs: list[list[str]], n: int) -> tuple[int, int]:
    """(clipped n-gram matches, hypothesis n-grams) of one sentence."""
    counts = _ngrams(hyp, n)
    max_ref = Counter()
    for ref in refs:
        max_ref |= _ngrams(ref, n)                   # element-wise max over references
    return sum((counts & max_ref).values()), sum(counts.values())


def ngram_precision(hypothesis: str, references: list[str], n: int = 1) -> float:
    """Modified n-gram precision p_n of one sentence (0.0 when it has no n-grams)."""
    matches, total = _clipped_counts(tokenize(hypothesis), [tokenize(r) for r in references], n)
    return matches / total if total else 0.0


def _check_corpus(hypotheses: list[str], references: list[list[str]]) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    if any(len(refs) == 0 for refs in references):
        raise ValueError("every hypothesis needs at least one reference")


def bleu(hypotheses: list[str], references: list[list[str]], max_n: int = 4) -> float:
    """Corpus BLEU with uniform weights over n = 1..max_n; references[i] are hypotheses[i]'s."""
    _check_corpus(hypotheses, references)
    matches, totals = [0] * max_n, [0] * max_n
    c = r = 0
    for hypothesis, refs in zip(hypotheses, references):
        hyp, toks = tokenize(hypothesis), [tokenize(ref) for ref in refs]
        for n in range(1, max_n + 1):
            m, t = _clipped_counts(hyp, toks, n)
            matches[n - 1] += m
            totals[n - 1] += t
        c += len(hyp)
        r += min((abs(len(ref) - len(hyp)), len(ref)) for ref in toks)[1]
    if c == 0 or 0 in matches:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals)) / max_n
    brevity = 1.0 if c > r else math.exp(1 - r / c)
    return brevity * math.exp(log_precision)


def bleu4(hypotheses: list[str], references: list[list[str]]) -> float:
    return bleu(hypotheses, references, max_n=4)


def align(hyp: list[str], ref: list[str]) -> list[tuple[int, int]]:
    """METEOR's exact-match alignment: one-to-one (hyp index, ref index) pairs, in hyp order."""
    free_hyp, free_ref = set(range(len(hyp))), set(range(len(ref)))
    pairs: list[tuple[int, int]] = []

    def run(i: int, j: int) -> int:                  # free words shared by hyp[i:] and ref[j:]
        k = 0
        while i + k in free_hyp and j + k in free_ref and hyp[i + k] == ref[j + k]:
            k += 1
        return k

    while True:                                      # max() keeps the earliest of equal runs
        i, j = max(((i, j) for i in sorted(free_hyp) for j in sorted(free_ref)),
                   key=lambda ij: run(*ij), default=(0, 0))
        k = run(i, j)
        if k == 0:
            return sorted(pairs)
        for d in range(k):
            free_hyp.remove(i + d)
            free_ref.remove(j + d)
            pairs.append((i + d, j + d))


def count_chunks(pairs: list[tuple[int, int]]) -> int:
    """Runs of matches adjacent, in the same order, in both hypothesis and reference."""
    return sum(1 for k, (i, j) in enumerate(pairs)
               if k == 0 or (i, j) != (pairs[k - 1][0] + 1, pairs[k - 1][1] + 1))


def meteor_sentence(hypothesis: str, reference: str) -> float:
    hyp, ref = tokenize(hypothesis), tokenize(reference)
    pairs = align(hyp, ref)
    m = len(pairs)
    if m == 0:
        return 0.0
    p, r = m / len(hyp), m / len(ref)
    fmean = 10 * p * r / (r + 9 * p)
    penalty = 0.5 * (count_chunks(pairs) / m) ** 3
    return fmean * (1 - penalty)


def meteor(hypotheses: list[str], references: list[list[str]]) -> float:
    """Mean over sentences of the best METEOR against each sentence's references."""
    _check_corpus(hypotheses, references)
    if not hypotheses:
        return 0.0
    scores = [max(meteor_sentence(h, ref) for ref in refs) for h, refs in zip(hypotheses, references)]
    return sum(scores) / len(scores)


def binary_scores(predicted: list[bool], actual: list[bool]) -> dict:
    """Refusal detection scores; positive = refusal (predicted: the model refused, actual: it should)."""
    if len(predicted) != len(actual):
        raise ValueError(f"{len(predicted)} predictions but {len(actual)} labels")
    pairs = [(bool(p), bool(a)) for p, a in zip(predicted, actual)]
    tp, fp = pairs.count((True, True)), pairs.count((True, False))
    tn, fn = pairs.count((False, False)), pairs.count((False, True))

    def ratio(a: float, b: float) -> float:
        return a / b if b else 0.0

    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    return {"accuracy": ratio(tp + tn, len(pairs)), "precision": precision, "recall": recall,
            "f1": ratio(2 * precision * recall, precision + recall),
            "over_refusal": ratio(fp, fp + tn), "tp": tp, "fp": fp, "tn": tn, "fn": fn, "n": len(pairs)}
