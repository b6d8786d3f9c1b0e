"""Computed verdicts: does a difference in this build point the article's way, against its own noise?

A claim of the article is a signed difference ("updated minus original, prefinetune top-1, rot90": +3.70 pp).
Ours is the same difference in this build, with two sources of noise:

- the **test set**: a paired bootstrap over test items (both runs scored on the same items, resampled
  together) gives a 95% interval of the difference (``paired_interval``);
- the **seed**: the difference re-measured under other seeds (lambda initialisation, data order, the random
  group element of each batch); where a chapter cannot afford seeds, the measured cross-seed tolerance of
  ``equinb.noise`` stands in for their spread.

``judge`` calls a difference "within noise" when its interval contains 0 or when it is not larger than twice
the seed spread (or the tolerance); otherwise "agrees" or "reversed" by comparing signs with the article's
("no article direction" when the article has none). ``claim_row`` builds one row of a chapter's verdict
table, ``verdict_table`` the table.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

__all__ = ["VERDICTS", "VERDICT_COLUMN", "paired_interval", "judge", "claim_row", "verdict_table", "VERDICT_RULE"]

VERDICTS = ("agrees", "reversed", "within noise", "no article direction")
# The printed column of the verdicts: a header at least as wide as the longest verdict fixes the column's
# width, so that a verdict turning into an adjacent one on another CPU does not re-flow the printed table.
VERDICT_COLUMN = "verdict vs the article"
SEED_FACTOR = 2.0  # a difference must exceed twice the seed spread (standard deviation over seeds)
VERDICT_RULE = ("a difference is 'within noise' when its 95% paired-bootstrap interval over test items contains 0, "
                "or when it is not larger than twice its standard deviation over seeds (or, where seeds were not "
                "run, than the measured tolerance of a trained top-1); otherwise it 'agrees' or is 'reversed' by "
                "the sign of the article's difference")


def paired_interval(scores_a: torch.Tensor | np.ndarray, scores_b: torch.Tensor | np.ndarray, *,
                    samples: int = 2000, level: float = 0.95, seed: int = 0, scale: float = 100.0,
                    strata: torch.Tensor | np.ndarray | None = None) -> tuple[float, float]:
    """Percentile interval of ``scale * (mean(b) - mean(a))`` over resampled test items (pp by default).

    ``scores_*``: per-item scores [N] of two runs on the same items (1/0 for correct/wrong, or a mean over
    draws). Items are resampled with replacement, the pair of scores together, so that what both runs get
    right or wrong cancels. ``strata`` [N] (for example the true classes): items are resampled within each
    stratum and the statistic is the mean over strata of the stratum means, so that with 1/0 scores and
    the classes as strata it is the difference of balanced accuracies. Seeded: the same scores give the
    same interval.
    """
    a, b = (np.asarray(s, dtype=np.float64).reshape(-1) for s in (scores_a, scores_b))
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired_interval needs two non-empty score vectors of one length, got {a.shape} and "
                         f"{b.shape}")
    diff = b - a
    groups = [diff] if strata is None else _strata(diff, strata)
    rng = np.random.default_rng(seed)
    means = np.zeros(samples)
    for part in groups:  # each stratum's resampled means, averaged with equal weight
        for start in range(0, samples, 500):  # chunks keep the index matrix small for large test sets
            stop = min(start + 500, samples)
            means[start:stop] += part[rng.integers(0, part.size, size=(stop - start, part.size))].mean(axis=1)
    means /= len(groups)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(scale * means, [tail, 100 - tail])
    return float(low), float(high)


def _strata(values: np.ndarray, strata: torch.Tensor | np.ndarray) -> list[np.ndarray]:
    keys = np.asarray(strata).reshape(-1)
    if keys.shape != values.shape:
        raise ValueError(f"strata needs one value per item, got {keys.shape} for {values.shape}")
    return [values[keys == k] for k in np.unique(keys)]


def judge(difference: float, article: float | None, *, interval: tuple[float, float] | None = None,
          seed_sd: float | None = None, tolerance: float | None = None) -> str:
    """The verdict on one claim (see the module docstring); ``seed_sd`` wins over ``tolerance``."""
    if not math.isfinite(difference):
        return "within noise"
    if interval is not None and interval[0] <= 0 <= interval[1]:
        return "within noise"
    spread = SEED_FACTOR * seed_sd if seed_sd is not None else tolerance
    if spread is not None and abs(difference) <= spread:
        return "within noise"
    if article is None or not math.isfinite(article) or article == 0:
        return "no article direction"
    return "agrees" if (difference > 0) == (article > 0) else "reversed"


def claim_row(artifact: str, claim: str, article: float | None, difference: float, *,
              interval: tuple[float, float] | None = None, seed_differences: Sequence[float] | None = None,
              tolerance: float | None = None, tolerance_label: str = "tolerance", decimals: int = 2) -> dict:
    """One row of a verdict table: the claim, the article's difference, ours with its noise, the verdict.

    ``difference``: ours in this build's run (seed 0); ``seed_differences``: the same difference under every
    seed run (seed 0 included, at least 2 values), whose mean and standard deviation are reported;
    ``tolerance``: the noise used when there are no seeds, printed as "<tolerance_label> ±<tolerance>".
    Numbers are in the claim's unit (pp for top-1)
    and printed with ``decimals`` decimals; a missing article value prints as "—", never as NaN.
    """
    seeds = [float(d) for d in seed_differences] if seed_differences is not None else []
    if seeds and len(seeds) < 2:
        raise ValueError("seed_differences needs at least 2 seeds to give a spread")
    seed_sd = float(np.std(seeds, ddof=1)) if seeds else None
    d = decimals
    return {
        "artifact": artifact, "claim": claim,
        "article": "—" if article is None or not math.isfinite(article) else f"{article:+.{d}f}",
        "ours": f"{difference:+.{d}f}",
        "95% interval": "—" if interval is None else f"[{interval[0]:+.{d}f}, {interval[1]:+.{d}f}]",
        "seeds": f"{np.mean(seeds):+.{d}f} ± {seed_sd:.{d}f} (n={len(seeds)})" if seeds else
                 ("—" if tolerance is None else f"{tolerance_label} ±{tolerance:.{d}f}"),
        "verdict": judge(difference, article, interval=interval, seed_sd=seed_sd, tolerance=tolerance),
    }


def verdict_table(rows: list[dict], profile: str):
    """The rows of ``claim_row`` as a DataFrame with the profile as its first column and the verdict under
    ``VERDICT_COLUMN`` (how the chapters show and glue their verdicts)."""
    import pandas as pd

    table = pd.DataFrame(rows).rename(columns={"verdict": VERDICT_COLUMN})
    table.insert(0, "profile", profile)
    return table
