"""Answer metrics (SQuAD-style normalisation) and bootstrap confidence intervals.

>>> exact_match("The Eiffel Tower.", ["eiffel tower"]), round(token_f1("in Paris", ["Paris"]), 2)
(1.0, 0.67)
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

import numpy as np

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans(dict.fromkeys(string.punctuation, " "))


def normalize_answer(text: str) -> str:
    """Lower case, punctuation and articles removed, whitespace collapsed.

    >>> normalize_answer("  The  Copper-Falcon, 42! ")
    'copper falcon 42'
    """
    text = str(text).lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals one normalised reference answer."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(a) for a in answers))


def token_f1(prediction: str, answers: Sequence[str]) -> float:
    """The best bag-of-tokens F1 between the prediction and any reference answer."""
    pred = normalize_answer(prediction).split()
    best = 0.0
    for ans in answers:
        gold = normalize_answer(ans).split()
        if not pred or not gold:
            best = max(best, float(pred == gold))
            continue
        common = sum((Counter(pred) & Counter(gold)).values())
        if common:
            p, r = common / len(pred), common / len(gold)
            best = max(best, 2 * p * r / (p + r))
    return best


def contains_answer(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when a normalised reference answer occurs in the normalised prediction (on word boundaries).

    >>> contains_answer("It was founded by Melka Trunn in 1873.", ["melka trunn"])
    1.0
    """
    pred = f" {normalize_answer(prediction)} "
    return float(any(normalize_answer(a) and f" {normalize_answer(a)} " in pred for a in answers))


METRICS = {"exact_match": exact_match, "f1": token_f1, "contains": contains_answer}


def score(prediction: str, answers: Sequence[str]) -> dict[str, float]:
    """Every metric for one prediction."""
    return {name: fn(prediction, answers) for name, fn in METRICS.items()}


def bootstrap_ci(
    values: Sequence[float], *, confidence: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean and its percentile-bootstrap confidence interval.

    >>> mean, low, high = bootstrap_ci([0, 1, 1, 0, 1, 1, 1, 0])
    >>> low <= mean <= high
    True
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, (n_boot, x.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    return float(x.mean()), float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> dict[str, float]:
    """Mean of ``b - a`` over the same items, its bootstrap CI, and how often a resample has ``b`` better.

    ``p_b_better`` is the share of resamples where the mean difference is > 0 (ties count half).

    >>> d = paired_bootstrap([0, 0, 1, 0], [1, 1, 1, 0])
    >>> d["diff"], d["low"] >= 0
    (0.5, True)
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired samples must have the same length, got {x.size} and {y.size}")
    if x.size == 0:
        return {"diff": float("nan"), "low": float("nan"), "high": float("nan"), "p_b_better": float("nan"), "n": 0}
    d = y - x
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, (n_boot, d.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    better = float(((means > 0).sum() + 0.5 * (means == 0).sum()) / n_boot)
    return {
        "diff": float(d.mean()),
        "low": float(np.quantile(means, alpha)),
        "high": float(np.quantile(means, 1 - alpha)),
        "p_b_better": better,
        "n": int(d.size),
    }


def unpaired_bootstrap(
    a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> dict[str, float]:
    """Difference of means ``mean(b) - mean(a)`` of two independent samples, with a bootstrap CI.

    >>> d = unpaired_bootstrap([0, 0, 0, 1], [1, 1, 1, 0])
    >>> d["diff"]
    0.5
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.size == 0 or y.size == 0:
        return {"diff": float("nan"), "low": float("nan"), "high": float("nan"), "p_b_better": float("nan")}
    rng = np.random.default_rng(seed)
    mx = x[rng.integers(0, x.size, (n_boot, x.size))].mean(axis=1)
    my = y[rng.integers(0, y.size, (n_boot, y.size))].mean(axis=1)
    diffs = my - mx
    alpha = (1 - confidence) / 2
    better = float(((diffs > 0).sum() + 0.5 * (diffs == 0).sum()) / n_boot)
    return {
        "diff": float(y.mean() - x.mean()),
        "low": float(np.quantile(diffs, alpha)),
        "high": float(np.quantile(diffs, 1 - alpha)),
        "p_b_better": better,
    }
