"""A synthetic sentiment task whose label a model can learn from one cue word.

What the shipped tiny model's tokenizer is trained on, and what quick-starts, the tutorial and
the tests train it on: seconds per run, no data set to download.
"""

from __future__ import annotations

import numpy as np

WORDS = (
    "profit",
    "rose",
    "fell",
    "sales",
    "loss",
    "growth",
    "market",
    "shares",
    "quarter",
    "company",
    "stable",
)
LABELS = ("positive", "negative", "neutral")
CUES = {"positive": "rose", "negative": "fell", "neutral": "stable"}
TASK = "sentiment"


def sentences(count: int, seed: int) -> list[dict]:
    """`count` records {"taskname", "sentence", "label"}: labels cycle, each sentence holds
    its label's cue word among 3-8 random others."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(count):
        label = LABELS[i % 3]
        words = list(rng.choice(WORDS, size=int(rng.integers(3, 9))))
        words.insert(int(rng.integers(0, len(words))), CUES[label])
        records.append({"taskname": TASK, "sentence": " ".join(words), "label": label})
    return records


def splits(train: int = 48, validation: int = 12, test: int = 12) -> dict[str, list[dict]]:
    """Disjoint-seed train / val / test record lists (the names `prepare` writes)."""
    return {
        "train": sentences(train, 1),
        "val": sentences(validation, 2),
        "test": sentences(test, 3),
    }
