"""Paired intervals, seed spreads and verdicts: each rule checked on a case where it decides."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from equinb.verdicts import VERDICT_COLUMN, VERDICTS, claim_row, judge, paired_interval, verdict_table


def test_paired_interval_holds_the_difference_and_narrows_with_pairing():
    rng = np.random.default_rng(1)
    a = (rng.random(200) < 0.8).astype(float)
    b = a.copy()
    b[np.flatnonzero(a == 0)[:10]] = 1  # b fixes 10 of a's errors: +5 pp exactly, no new errors
    low, high = paired_interval(a, b)
    assert low < 5.0 < high and low > 0, (low, high)  # pairing: the shared items cancel, so 0 is excluded
    shuffled = rng.permutation(b)  # same accuracy, pairs broken: a wide interval that holds 0
    low_u, high_u = paired_interval(a, shuffled)
    assert low_u < 0 < high_u and high_u - low_u > high - low


def test_paired_interval_is_seeded_and_checks_its_input():
    a, b = np.ones(50), np.r_[np.ones(45), np.zeros(5)]
    assert paired_interval(a, b) == paired_interval(a, b)
    assert paired_interval(a, a) == (0.0, 0.0)
    with pytest.raises(ValueError, match="one length"):
        paired_interval(a, b[:-1])


@pytest.mark.parametrize("difference, article, kwargs, expected", [
    (3.0, 1.0, {}, "agrees"),
    (-3.0, 1.0, {}, "reversed"),
    (3.0, None, {}, "no article direction"),
    (3.0, 1.0, {"interval": (-0.5, 6.0)}, "within noise"),  # the test set cannot tell
    (3.0, 1.0, {"interval": (1.0, 5.0), "seed_sd": 2.0}, "within noise"),  # 3 <= 2 x 2: the seeds cannot
    (3.0, 1.0, {"interval": (1.0, 5.0), "seed_sd": 1.0}, "agrees"),
    (3.0, -1.0, {"interval": (1.0, 5.0), "tolerance": 2.5}, "reversed"),
    (2.0, -1.0, {"interval": (1.0, 5.0), "tolerance": 2.5}, "within noise"),
    (3.0, 1.0, {"seed_sd": 1.0, "tolerance": 10.0}, "agrees"),  # seeds, when run, replace the tolerance
    (float("nan"), 1.0, {}, "within noise"),
])
def test_judge(difference, article, kwargs, expected):
    assert judge(difference, article, **kwargs) == expected
    assert expected in VERDICTS


def test_claim_row_reports_the_seed_spread_and_never_nan():
    row = claim_row("Table 1", "updated > original", None, 1.234, interval=(0.5, 2.0),
                    seed_differences=[1.2, 1.0, 1.4])
    assert row["article"] == "—" and row["ours"] == "+1.23" and row["95% interval"] == "[+0.50, +2.00]"
    assert row["seeds"] == "+1.20 ± 0.20 (n=3)" and row["verdict"] == "no article direction"
    with pytest.raises(ValueError, match="at least 2"):
        claim_row("x", "y", 1.0, 1.0, seed_differences=[1.0])
    table = verdict_table([row, claim_row("x", "y", 2.0, 0.1, tolerance=5.9)], "small")
    assert list(table.columns[:3]) == ["profile", "artifact", "claim"]
    assert table.loc[1, "seeds"] == "tolerance ±5.90" and table.loc[1, VERDICT_COLUMN] == "within noise"
    assert len(VERDICT_COLUMN) >= max(map(len, VERDICTS))  # the header fixes the printed column's width
    assert not any(isinstance(v, float) and math.isnan(v) for v in table.to_numpy().ravel())


def test_stratified_interval_is_the_balanced_accuracy_difference():
    from equinb.metrics import balanced_accuracy

    gen = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], [60, 8, 2])  # imbalanced, as ISIC
    majority = np.zeros(70, dtype=int)
    good = np.where(gen.random(70) < 0.8, labels, (labels + 1) % 3)
    correct = lambda p: (p == labels).astype(float)  # noqa: E731
    low, high = paired_interval(correct(majority), correct(good), strata=labels)
    gain = balanced_accuracy(torch.tensor(good), torch.tensor(labels), 3) - 100 / 3
    assert low <= gain <= high and low > 0
    # the unstratified interval is about plain top-1, which the majority class nearly matches here
    plain = paired_interval(correct(majority), correct(good))
    assert plain[0] < gain - 20
    # one stratum is the plain interval exactly, and strata need one value per item
    assert paired_interval(correct(majority), correct(good), strata=np.zeros(70)) == plain
    with pytest.raises(ValueError, match="one value per item"):
        paired_interval(correct(majority), correct(good), strata=labels[:5])
