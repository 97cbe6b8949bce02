"""Evaluation: the paper's Tables 1–4 in miniature on a held-out toy split, their metrics, and the
ablations the paper does not report.

    tables.py     Tables 1–4 (QA, captioning, generation, safety); python -m nanog4v.eval
    metrics.py    exact answers, a 0–5 rubric, BLEU-4, METEOR, safety precision/recall/F1
    ablations.py  Eq. 4 with one stream, N queries, T frames, LoRA rank; python -m nanog4v.eval.ablations
"""
