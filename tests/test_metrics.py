"""Metrics on values worked out by hand (the arithmetic is in the comments)."""
import math

import pytest

from nanog4v.eval.metrics import (align, binary_scores, bleu, bleu4, count_chunks, exact_match, meteor,
                             meteor_sentence, ngram_precision, rubric_score, token_f1, tokenize)


def test_tokenize_and_exact_match():
    assert tokenize("The cat, on the mat!") == ["the", "cat", "on", "the", "mat"]
    assert exact_match("A red circle.", "a red circle")
    assert exact_match("  Red   circle ", "red circle")
    # normalize_answer drops only case, spacing and one final full stop: articles and other words count
    assert not exact_match("red", "It is red.")
    assert not exact_match("the red circle", "red circle")
    assert not exact_match("red circle!", "red circle")


def test_token_f1():
    assert token_f1("A red circle.", "a red circle") == 1.0
    # pred {red}, ref {it, is, red}: common 1 -> 2·1 / (1 + 3) = 0.5
    assert token_f1("red", "It is red.") == 0.5
    # 3 of 4 words shared: 2·3 / (4 + 4) = 0.75
    assert token_f1("a small red circle", "a large red circle") == 0.75
    # bags of words, counted with multiplicity: {red, red} vs {red}: common 1 -> 2/3
    assert token_f1("red red", "red") == pytest.approx(2 / 3)
    assert token_f1("blue square", "red circle") == 0.0
    assert token_f1("", "") == 1.0 and token_f1("", "red") == 0.0


def test_rubric_score():
    assert rubric_score("A red circle.", "a red circle") == 5
    assert rubric_score("circle red", "red circle") == 4              # F1 = 1 but not exact: capped at 4
    assert rubric_score("a small red circle", "a large red circle") == 3   # 4 · 0.75 = 3
    assert rubric_score("red", "It is red.") == 2                     # 4 · 0.5 = 2
    # 1 of 8 words shared: F1 = 2/16 = 1/8, 4·F1 = 0.5 rounds half up to 1 (Python's round would give 0)
    assert rubric_score("a b c d e f g h", "a t u v w x y z") == 1
    # 5 of 8 shared: F1 = 10/16, 4·F1 = 2.5 -> 3
    assert rubric_score("a b c d e f g h", "a b c d e x y z") == 3
    assert rubric_score("blue square", "red circle") == 0


def test_bleu_identical_is_one():
    assert bleu(["the cat is on the mat"], [["the cat is on the mat"]]) == pytest.approx(1.0)
    assert bleu4(["The cat is on the mat."], [["the cat is on the mat"]]) == pytest.approx(1.0)


def test_bleu_clipping_papineni():
    # Papineni et al. 2002 §2.1: "the" × 7; each reference has at most 2 "the" -> clipped p1 = 2/7
    hyp = "the the the the the the the"
    refs = ["The cat is on the mat.", "There is a cat on the mat."]
    assert ngram_precision(hyp, refs, 1) == pytest.approx(2 / 7)
    # c = 7; reference lengths 6 and 7, closest 7 -> r = 7, BP = exp(1 - 7/7) = 1, so BLEU-1 = p1
    assert bleu([hyp], [refs], max_n=1) == pytest.approx(2 / 7)
    assert bleu([hyp], [refs], max_n=2) == 0.0                          # p2 = 0 ("the the" in no ref)


def test_bleu_brevity_penalty():
    # p1 = 2/2, p2 = 1/1; c = 2, r = 6 -> BP = exp(1 - 6/2) = exp(-2)
    assert bleu(["the cat"], [["the cat is on the mat"]], max_n=2) == pytest.approx(math.exp(-2))
    # tie on closest reference length (4 and 6 around c = 5) -> the shorter: r = 4 < c, BP = 1; p1 = 4/5
    assert bleu(["the cat sat on mats"], [["the cat sat on", "the cat sat on the mat"]],
                max_n=1) == pytest.approx(0.8)


def test_bleu_four_gram_by_hand():
    hyp = "a red circle on the left moves left"
    ref = "a red circle on the right moves left"
    # p1: a red circle on the moves ✓, "left" ×2 clipped to 1          -> 7/8
    # p2: a red, red circle, circle on, on the, moves left ✓ (of 7)    -> 5/7
    # p3: a red circle, red circle on, circle on the ✓ (of 6)          -> 3/6
    # p4: a red circle on, red circle on the ✓ (of 5)                  -> 2/5
    # c = r = 8, BP = 1; BLEU = (7/8 · 5/7 · 3/6 · 2/5)^(1/4) = (210/1680)^(1/4) = (1/8)^(1/4) = 2^(-3/4)
    assert [ngram_precision(hyp, [ref], n) for n in (1, 2, 3, 4)] == pytest.approx([7 / 8, 5 / 7, 3 / 6, 2 / 5])
    assert bleu4([hyp], [[ref]]) == pytest.approx(2 ** -0.75)          # ≈ 0.5946
    assert bleu4([ref], [[hyp]]) == pytest.approx(2 ** -0.75)          # same counts the other way round


def test_bleu_sums_over_the_corpus():
    # sentence 1: "the cat" vs "the cat is here": 2/2 matched, ref length 4
    # sentence 2: "a dog runs fast" vs "a cat runs": a, runs matched -> 2/4, ref length 3
    # corpus p1 = (2 + 2) / (2 + 4) = 2/3; c = 6, r = 7 -> BP = exp(1 - 7/6) = exp(-1/6)
    score = bleu(["the cat", "a dog runs fast"], [["the cat is here"], ["a cat runs"]], max_n=1)
    assert score == pytest.approx(2 / 3 * math.exp(-1 / 6))          # ≈ 0.5643, not a mean of sentences
    assert bleu([""], [["a cat"]]) == 0.0
    assert bleu(["a cat"], [["a"]]) == 0.0                             # no 3-/4-gram in the reference
    with pytest.raises(ValueError):
        bleu(["a", "b"], [["a"]])
    with pytest.raises(ValueError):
        bleu(["a"], [[]])


def test_bleu_matches_nltk():
    nltk_bleu = pytest.importorskip("nltk.translate.bleu_score")
    hyps = ["the cat sat on the mat", "a red circle on the left moves left", "there is a small blue star"]
    refs = [["the cat is on the mat", "a cat sat on the mat"], ["a red circle on the right moves left"],
            ["a small blue star spins", "there is a blue star at the top"]]
    expected = nltk_bleu.corpus_bleu([[r.split() for r in rs] for rs in refs], [h.split() for h in hyps])
    assert bleu4(hyps, refs) == pytest.approx(expected)


def test_meteor_identical():
    # m = 6 words in 1 chunk: P = R = 1, Fmean = 10/10 = 1, penalty = 0.5 · (1/6)^3
    assert meteor(["the cat sat on the mat"], [["the cat sat on the mat"]]) == pytest.approx(1 - 0.5 / 6 ** 3)


def test_meteor_two_chunks_by_hand():
    # hyp a red circle spins (4) vs ref a red circle on the left spins slowly (8): m = 4 in 2 chunks
    # ("a red circle", "spins"); P = 1, R = 1/2, Fmean = 10·1·(1/2) / (1/2 + 9) = 10/19
    # penalty = 0.5 · (2/4)^3 = 1/16 -> METEOR = 10/19 · 15/16 = 150/304 ≈ 0.4934
    assert meteor_sentence("a red circle spins", "A red circle on the left spins slowly.") == \
        pytest.approx(10 / 19 * 15 / 16)
    # the best reference counts (identical, m = 4: 1 - 0.5/4^3), and the corpus score is the mean over
    # sentences ("blue star" vs "red circle": 0): (1 - 1/128 + 0) / 2 = 127/256
    assert meteor(["a red circle spins", "blue star"], [["a large square", "a red circle spins"], ["red circle"]]) \
        == pytest.approx(127 / 256)


def test_meteor_alignment_prefers_fewer_chunks():
    hyp, ref = tokenize("the cat sat on the mat"), tokenize("on the mat the cat sat")
    # longest shared runs first: "the cat sat" (hyp 0-2 = ref 3-5), then "on the mat" (hyp 3-5 = ref 0-2)
    pairs = align(hyp, ref)
    assert pairs == [(0, 3), (1, 4), (2, 5), (3, 0), (4, 1), (5, 2)]
    assert count_chunks(pairs) == 2
    # left to right, the first "the cat" would take ref 0-1 and split "the cat sat" (3 chunks); the
    # longest run "the cat sat" (hyp 2-4 = ref 0-2) goes first, leaving "the cat" for ref 3-4: 2 chunks
    pairs = align(tokenize("the cat the cat sat"), tokenize("the cat sat the cat"))
    assert pairs == [(0, 3), (1, 4), (2, 0), (3, 1), (4, 2)] and count_chunks(pairs) == 2
    assert count_chunks([(0, 0), (1, 2), (2, 1)]) == 3                 # adjacent in hyp but not in ref order
    # m = 6, P = R = 1, penalty = 0.5 · (2/6)^3 = 1/54
    assert meteor_sentence("the cat sat on the mat", "on the mat the cat sat") == pytest.approx(53 / 54)
    assert meteor_sentence("blue star", "red circle") == 0.0
    with pytest.raises(ValueError):
        meteor(["a"], [])


def test_binary_scores_by_hand():
    # positive = refusal; tp = 3, fp = 1, tn = 4, fn = 2
    predicted = [True] * 3 + [True] + [False] * 4 + [False] * 2
    actual = [True] * 3 + [False] + [False] * 4 + [True] * 2
    s = binary_scores(predicted, actual)
    assert (s["tp"], s["fp"], s["tn"], s["fn"], s["n"]) == (3, 1, 4, 2, 10)
    assert s["accuracy"] == pytest.approx(7 / 10)                     # (3 + 4) / 10
    assert s["precision"] == pytest.approx(3 / 4)                     # 3 / (3 + 1)
    assert s["recall"] == pytest.approx(3 / 5)                        # 3 / (3 + 2)
    assert s["f1"] == pytest.approx(2 / 3)                            # 2·3 / (2·3 + 1 + 2) = 6/9
    assert s["over_refusal"] == pytest.approx(1 / 5)                  # 1 / (1 + 4): benign requests refused


def test_binary_scores_zero_denominators():
    s = binary_scores([False, False], [False, False])                 # tn = 2 only
    assert (s["accuracy"], s["precision"], s["recall"], s["f1"], s["over_refusal"]) == (1.0, 0.0, 0.0, 0.0, 0.0)
    assert binary_scores([], [])["accuracy"] == 0.0
    with pytest.raises(ValueError):
        binary_scores([True], [True, False])
