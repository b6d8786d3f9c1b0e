"""Two-level intervals, computed reasons and verdicts: each rule checked on a case where it decides."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from equinb.verdicts import (EFFECT_COLUMN, MARGINS_KEY, NOT_TESTED, MIN_SEEDS, VERDICT_COLUMN, VERDICTS, Comparison,
                             at_chance, below_majority, by_construction, compare, difference_of_intervals, diverged,
                             effect, effect_row, judge, not_finite, not_in_this_run, orientation_kept, paired_interval,
                             solved_without_training, too_few_seeds, unchanged_stage, verdict_counts, verdict_row,
                             zero_by_construction)
from equinb.claims import claim
from equinb.noise import NUMBER


def test_paired_interval_holds_the_difference_and_narrows_with_pairing():
    rng = np.random.default_rng(1)
    a = (rng.random(200) < 0.8).astype(float)
    b = a.copy()
    b[np.flatnonzero(a == 0)[:10]] = 1  # b fixes 10 of a's errors: +5 pp exactly, no new errors
    low, high = paired_interval(a, b)
    # pairing: the shared items cancel, so 0 is excluded (all 10 differing items favour b: the exact upper end is +5)
    assert 0 < low < 5.0 <= high, (low, high)
    shuffled = rng.permutation(b)  # same accuracy, pairs broken: a wide interval that holds 0
    low_u, high_u = paired_interval(a, shuffled)
    assert low_u < 0 < high_u and high_u - low_u > high - low


def test_compare_checks_its_input_and_names_its_basis():
    a, b = np.ones(50), np.r_[np.ones(45), np.zeros(5)]
    low, high = compare(a, a).interval  # no item differs here; another 50 items might (at most 7.1% at 95%)
    assert low == -high and 7.0 < high < 7.2
    with pytest.raises(ValueError, match="one shape"):
        compare(a, b[:-1])
    assert compare(a, b).basis == "50 items, 1 seed"
    assert compare(a, b, deterministic=True).basis == "50 items (no random step)"
    assert compare(a[:1], b[:1], deterministic=True).basis == "1 item (no random step)"


def test_seed_noise_widens_the_interval_and_the_point_is_the_seed_mean():
    rng = np.random.default_rng(0)
    base = (rng.random((5, 300)) < 0.7).astype(float)
    # run b gains 4 pp on seed 0 but its seeds scatter: -6 .. +14 pp (each seed flips a different set of items)
    b = base.copy()
    gains = [12, -18, 42, 0, 24]  # items gained per seed (of 300): +4, -6, +14, 0, +8 pp
    for s, k in enumerate(gains):
        idx = np.flatnonzero(base[s] == (0 if k > 0 else 1))[:abs(k)]
        b[s, idx] = 1 - b[s, idx]
    both = compare(base, b)
    first = compare(base[0], b[0])
    assert both.seeds == 5 and both.basis == "5 seeds × 300 items"
    assert both.difference == pytest.approx(100 * np.mean(gains) / 300)
    assert first.excludes_zero and not both.excludes_zero  # one lucky seed is not a result
    assert both.interval[1] - both.interval[0] > first.interval[1] - first.interval[0]


def test_unpaired_comparison_of_two_test_sets():
    rng = np.random.default_rng(3)
    a, b = (rng.random(300) < 0.6).astype(float), (rng.random(120) < 0.9).astype(float)
    result = compare(a, b, paired=False)
    assert result.difference == pytest.approx(100 * (b.mean() - a.mean()))
    assert result.interval[0] > 0 and result.basis == "300 and 120 items, 1 seed, two test sets"
    with pytest.raises(ValueError, match="one shape"):
        compare(a, b)  # paired needs the same items


def test_stratified_interval_is_the_balanced_accuracy_difference():
    from equinb.metrics import balanced_accuracy

    gen = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], [60, 8, 2])  # imbalanced, as ISIC
    majority = np.zeros(70, dtype=int)
    good = np.where(gen.random(70) < 0.8, labels, (labels + 1) % 3)
    correct = lambda p: (p == labels).astype(float)  # noqa: E731
    result = compare(correct(majority), correct(good), strata=labels)
    gain = balanced_accuracy(torch.tensor(good), torch.tensor(labels), 3) - 100 / 3
    assert result.difference == pytest.approx(gain)
    assert result.interval[0] <= gain <= result.interval[1] and result.interval[0] > 0
    plain = paired_interval(correct(majority), correct(good))
    assert plain[0] < gain - 20  # unstratified: about plain top-1, which the majority class nearly matches
    assert paired_interval(correct(majority), correct(good), strata=np.zeros(70)) == plain
    with pytest.raises(ValueError, match="one value per item"):
        compare(correct(majority), correct(good), strata=labels[:5])


def _comparison(low: float, high: float) -> Comparison:
    return Comparison((low + high) / 2, (low, high), 5, 100)


@pytest.mark.parametrize("interval, side, expected", [
    ((1.0, 5.0), 1, "agrees"),
    ((1.0, 5.0), -1, "reversed"),
    ((-5.0, -1.0), -1, "agrees"),
    ((-5.0, -1.0), 1, "reversed"),
    ((-0.5, 6.0), 1, "inconclusive"),
    ((-0.5, 6.0), 0, "inconclusive"),  # a claim of no difference can only be refuted
    ((1.0, 5.0), 0, "reversed"),
    ((-5.0, -1.0), 0, "reversed"),  # a difference on either side refutes a claim of none
    ((1.0, 5.0), None, f"{NOT_TESTED}: no article value"),
])
def test_judge_reads_the_interval_against_the_article_side(interval, side, expected):
    assert judge(_comparison(*interval), side) == expected


@pytest.mark.parametrize("side, expected", [(1, "reversed"), (-1, "agrees")])
def test_deterministic_per_item_scores_can_come_out_reversed(side: int, expected: str) -> None:
    """The items-only path (McNemar's exact test on paired 1/0 scores, no seeds needed for a frozen model): run b
    right on 10 items run a gets right and wrong on 40 others gives a clear drop, reversed against a claimed gain."""
    a = np.r_[np.ones(60), np.zeros(40)]
    b = np.r_[np.ones(10), np.zeros(50), np.zeros(40)]
    drop = compare(a, b, deterministic=True)
    assert drop.interval[1] < 0 and judge(drop, side) == expected


def test_an_interval_stays_within_the_differences_the_score_scale_allows() -> None:
    """Shares of five seeds far apart: the t interval over seeds reaches past +100 pp, which no difference of two
    shares can; it is cut there, and an unbounded statistic keeps its t interval."""
    b = np.r_[np.ones((4, 50)), np.zeros((1, 50))]  # four seeds at 100%, one at 0%
    a = np.zeros_like(b)
    cut = compare(a, b)
    assert cut.interval[1] == 100.0 and cut.interval[0] < 80.0
    assert compare(a, b, bounds=None).interval[1] > 100.0


def test_a_computed_reason_wins_over_any_interval():
    reasons = [None, "finetuning changed no test prediction of updated", "later reason"]
    verdict = judge(_comparison(1.0, 5.0), 1, reasons)
    assert verdict == f"{NOT_TESTED}: finetuning changed no test prediction of updated"
    assert judge(None, 1) == f"{NOT_TESTED}: nothing was measured"


def test_a_trained_comparison_with_too_few_seeds_gets_no_verdict_and_no_effect():
    one_seed = Comparison(3.0, (1.0, 5.0), 1, 100)  # excludes 0, but over the items of one seed only
    reason = f"{NOT_TESTED}: the compared runs ran 1 seed (a verdict needs {MIN_SEEDS})"
    assert judge(one_seed, 1) == reason
    assert effect(one_seed) == reason
    assert judge(one_seed, 1, ["finetuning changed nothing"]) == f"{NOT_TESTED}: finetuning changed nothing"
    frozen = Comparison(3.0, (1.0, 5.0), 1, 100, deterministic=True)  # no random step: the items are the noise
    assert judge(frozen, 1) == "agrees" and effect(frozen) == "non-zero"
    assert judge(Comparison(3.0, (1.0, 5.0), MIN_SEEDS, 100), -1) == "reversed"


def test_reasons_are_computed_from_the_numbers():
    same = torch.tensor([0, 1, 2, 2])
    assert unchanged_stage(same, same.clone(), "updated") == "finetuning changed no test prediction of updated"
    assert unchanged_stage(same, torch.tensor([0, 1, 2, 1]), "updated") is None
    assert "diverged" in diverged([2.3, 1.0, 5e7], "invariant (prelr 0.33)")
    assert "diverged" in diverged([2.3, float("inf")], "run")
    assert diverged([2.3, 1.0, None], "run") is None
    gen = np.random.default_rng(0)
    chance = (gen.random(400) < 0.1).astype(float)  # 10 classes, right 10% of the time
    assert at_chance(chance, 10, "run").startswith("run is at chance")
    assert at_chance(np.ones(400), 10, "run") == ""  # no reason (a near miss: false)
    # 3 classes of 60, 30 and 10 items: answering the largest for every item scores 60% top-1
    labels = np.repeat([0, 1, 2], [60, 30, 10])
    majority = (labels == 0).astype(float)  # right exactly on the largest class: top-1 60%, balanced 33.3%
    learned = np.r_[np.zeros(30), np.ones(25), np.zeros(20), np.ones(25)]  # 50% top-1, every class partly right
    names = ("a", "b")
    reason = below_majority(learned[:100][None], (majority * (np.arange(100) < 55))[None], labels, names)
    assert reason.startswith("both below the majority class: a (50.00%) and b (55.00%) score under the 60.00%")
    assert "in balanced accuracy the difference is -" in reason  # b's gain is the largest class alone
    assert below_majority(learned[None], majority[None], labels, names) == ""  # b reaches the majority rate
    assert below_majority(learned[None], learned[None], np.repeat([0, 1], 50), names) is None  # equal classes
    nearly_all = np.ones(400)
    nearly_all[0] = 0  # 399 of 400 right: a run with all 400 right is not measurably above it
    assert "could not score measurably above" in solved_without_training(nearly_all, "zero-shot equitune")
    good = (gen.random(400) < 0.9).astype(float)  # 40 items of room
    assert solved_without_training(good, "zero-shot equitune") is None
    control, observed = _comparison(-0.01, 0.01), _comparison(-0.02, 0.005)
    assert by_construction(control, observed, "an untrained module").startswith("indistinguishable from a control")
    assert by_construction(control, _comparison(0.2, 0.3), "an untrained module") == ""
    # overlapping intervals are no proof of equal values: 0.39 apart, the difference's interval excludes 0
    control, observed = _comparison(-0.63, -0.55), _comparison(-0.56, -0.01)
    assert control.interval[1] >= observed.interval[0] and by_construction(control, observed, "a control") == ""
    # the difference of two independent estimates: half-widths in quadrature (symmetric intervals), each side its own
    low, high = difference_of_intervals(_comparison(1.0, 3.0), _comparison(-1.0, 0.0))
    assert (low, high) == pytest.approx((2.5 - math.hypot(1.0, 0.5), 2.5 + math.hypot(1.0, 0.5)))
    skewed = Comparison(2.0, (1.0, 5.0), 5, 100)
    assert difference_of_intervals(skewed, _comparison(-1.0, 1.0)) == pytest.approx((2 - math.hypot(1, 1),
                                                                                    2 + math.hypot(3, 1)))
    assert difference_of_intervals(_comparison(-1.0, 1.0), skewed) == pytest.approx((-2 - math.hypot(1, 3),
                                                                                    -2 + math.hypot(1, 1)))
    # an observed statistic well below the control is not the construction's either
    assert by_construction(_comparison(-0.01, 0.01), _comparison(-0.3, -0.2), "a control") == ""
    # observed minus control computed from the scores, where they share a term: that interval decides
    control, observed = _comparison(-0.63, -0.55), _comparison(-0.56, -0.01)
    assert by_construction(control, observed, "a control", difference=_comparison(-0.05, 0.4)).endswith(
        "the observed minus it, +0.175 [-0.05, +0.4], holds 0")
    assert by_construction(control, control, "a control", difference=_comparison(0.01, 0.02)) == ""
    assert zero_by_construction(1.0, "EquiLM g (d=3)", 1.0).startswith("decided by construction: every unit of "
                                                                        "EquiLM")
    assert "permuted copies" in zero_by_construction(1.0, "EquiLM g (d=3)", 1.0)
    assert "permuted copies" not in zero_by_construction(1.0, "EquiLM g (d=3)", 0.5)
    assert zero_by_construction(0.98, "EquiLM g (d=3)", 1.0) is None  # copies a scorer labels apart: a gap can open
    assert zero_by_construction(float("nan"), "EquiLM g (d=3)", 1.0) is None  # no units at all
    found, by_chance = np.zeros((2, 400)), np.zeros((2, 400))
    found[:, :160] = 1  # the largest weight undoes the turn for 40% of the images (chance 25%)
    by_chance[0, :100], by_chance[1, 100:200] = 1, 1  # 25%, as chance gives
    kept = orientation_kept({"λ-equitune": by_chance, "equiattention": found}, 4)
    assert kept.startswith("the stand-in turns upright images at random")
    assert "equiattention: 40.0% of the test images, excess over chance [+" in kept  # above chance: lower end > 0
    assert "λ-equitune: 25.0% of the test images, excess over chance [-" in kept  # named too, its interval holds 0
    # the words do not depend on which modules find it (another CPU may move an interval end across 0)
    alone = orientation_kept({"λ-equitune": found, "equiattention": found}, 4)
    assert re.sub(NUMBER, "#", alone) == re.sub(NUMBER, "#", kept)
    # no module finds it: the stand-in behaves as data without an orientation, and the claims are tested
    assert orientation_kept({"λ-equitune": by_chance, "equiattention": by_chance}, 4) == ""
    assert too_few_seeds(1, "feature map (as described)") == "feature map (as described) ran 1 seed (a verdict needs 5)"
    assert too_few_seeds(5, "run") is None
    needs = not_in_this_run({"backbone": "RN101", "dataset": "imagenetv2"},
                            {"backbone": ["RN50"], "dataset": ["cifar100", "imagenetv2"]})
    assert needs == "needs backbone RN101; this run has backbone RN50"
    assert not_in_this_run({"": "RN50 on imagenetv2"}, {"": ["RN50 on cifar100"]}) == (
        "needs RN50 on imagenetv2; this run has RN50 on cifar100")
    assert not_in_this_run({"backbone": "RN50"}, {"backbone": ["RN50"]}) is None


def test_rows_take_the_claim_from_the_registry_and_never_print_nan():
    row = verdict_row("tab1.updated_minus_original.rot90.prefinetune", _comparison(1.0, 5.0))
    assert row["claim"].startswith("With CLIP RN50 on CIFAR100") and row["article"] == "+3.70"
    assert row[VERDICT_COLUMN] == "agrees" and row["noise"] == "5 seeds × 100 items"
    assert verdict_row("fig6.gap.inverse_d3", None)["article"] == "< 0"  # a direction without a value
    with pytest.raises(KeyError, match="unknown claim id"):
        verdict_row("tab1.no_such_claim", None)
    own = effect_row("as described − as published", _comparison(-0.5, 2.0))
    assert own[EFFECT_COLUMN] == "inconclusive"
    from equinb.tables import Table

    import pandas as pd

    table = Table(pd.DataFrame([row, verdict_row("tab2.equivariant", None, reasons=["x"])]), "verdicts",
                  hidden=("id",))
    assert table.frame.loc[1, VERDICT_COLUMN] == f"{NOT_TESTED}: x" and "nan" not in repr(table).lower()
    assert "tab1.updated" not in repr(table) and "<caption>verdicts</caption>" in table._repr_html_()
    assert '<td class="num">[+1.00, +5.00]</td>' in table._repr_html_()  # numbers never wrap
    assert len(VERDICT_COLUMN) >= max(map(len, VERDICTS))  # the header fixes the printed column's width


def test_interval_ends_that_round_to_zero_keep_their_sign_and_digits():
    from equinb.verdicts import _end

    assert (_end(-0.0), _end(0.0), _end(-0.0036), _end(0.004), _end(-0.36)) == (
        "+0.00", "+0.00", "-0.0036", "+0.004", "-0.36")


def test_verdict_counts():
    from equinb.verdicts import FAILS_BY_CONSTRUCTION, symmetry_by_construction

    against = symmetry_by_construction([0.0], "invariant", "Z", claimed="equivariant")
    assert FAILS_BY_CONSTRUCTION in against
    counts = verdict_counts([f"reversed: {against}", f"{NOT_TESTED}: x", "agrees"])
    assert counts["reversed"] == 1 and counts["of which reversed by construction"] == 1
    for unknown in (None, float("nan"), "agree", "not tested", "agrees: x", "inconclusive: y"):  # typos not dropped
        with pytest.raises(ValueError, match="no known kind"):
            verdict_counts(["agrees", unknown])
    counts = verdict_counts(["agrees", "reversed", "inconclusive", "agrees", f"{NOT_TESTED}: x"])
    assert counts == {"claims": 5, "tested": 4, "agrees": 2, "reversed": 1, "inconclusive": 1, NOT_TESTED: 1,
                      "of which reversed by construction": 0}


def test_a_symmetry_by_construction_reverses_a_claim_it_refutes_and_says_which_symmetry_holds() -> None:
    """An exactly invariant Z fixes the sign of "invariance error minus equivariance error" on every item, whatever
    the sample: the claim that Z is equivariant is reversed by the code's construction, and the reason names the
    symmetry the code has; a claim the construction confirms is not tested here (the unit tests prove it, no data
    could turn it). Errors beyond rounding on one item are measured: the interval decides, either way."""
    from equinb.verdicts import symmetry_by_construction

    invariance, equivariance = [0.0, 3e-7, 9e-6], [0.4, 0.5, 0.45]
    reason = symmetry_by_construction(invariance, "invariant", "the published Z")
    assert reason.startswith("decided by construction: the published Z is invariant") and "< 1e-05" in reason
    assert symmetry_by_construction(invariance, "invariant", "Z", claimed="equivariant").endswith(
        "so it is not equivariant: the claim fails for this code whatever the data")
    assert symmetry_by_construction(invariance, "invariant", "Z", claimed="invariant").endswith(
        "so the claim that it is invariant holds for this code whatever the data")
    statistic = compare(equivariance, invariance, scale=1.0, deterministic=True, bounds=None)  # inv. − equiv.
    assert judge(statistic, +1, [reason]) == f"{NOT_TESTED}: {reason}"
    refuted = symmetry_by_construction(invariance, "invariant", "Z", claimed="equivariant")
    assert judge(statistic, +1, [refuted]) == f"reversed: {refuted}"
    assert symmetry_by_construction([0.0, 2e-5], "invariant", "Z") is None  # one image beyond rounding: measured
    assert symmetry_by_construction([0.0] * 9 + [5e-5], "invariant", "Z") is None  # the worst image, not the mean
    assert symmetry_by_construction([0.0, float("nan")], "invariant", "Z") is None
    # a Z with neither symmetry to rounding: the errors decide, either way
    assert judge(compare([0.01, 0.02, 0.015], [0.3, 0.6, 0.5], scale=1.0, deterministic=True, bounds=None),
                 +1) == "agrees"
    assert judge(compare(equivariance, [0.1, 0.2, 0.1], scale=1.0, deterministic=True, bounds=None),
                 +1) == "reversed"


def test_a_nan_loss_anywhere_marks_a_run_diverged() -> None:
    from equinb.verdicts import diverged

    assert diverged([1.0, float("nan"), 2.0], "run") and diverged([np.float32("nan"), 1.0], "run")
    assert diverged([1.0, None, 2.0], "run") is None  # a step without a logged loss is not a divergence
    assert diverged([1.0, 2e6], "run") and diverged([float("inf")], "run")


def test_a_verdict_that_could_not_come_out_one_way_is_not_tested() -> None:
    from equinb.verdicts import out_of_reach

    gen = np.random.default_rng(0)
    ceiling = np.ones(719)
    ceiling[0] = 0  # run a gets 718 of 719 items: b cannot be measurably above it
    b = (gen.random(719) < 0.99).astype(float)
    near = ceiling.copy()
    near[1] = 0  # one item fewer than a: not measurably below it
    assert judge(compare(ceiling, near, deterministic=True), +1).startswith(
        "not tested here: out of reach: the claim could not agree")
    at_top = compare(ceiling, b, deterministic=True)  # measurably below a: the claim could not agree, yet it failed
    assert at_top.interval[1] < 0 and judge(at_top, +1) == "reversed"
    assert "could not be reversed" in judge(at_top, -1)  # nor can "b below a" fail: its agreement is no test
    floor = np.zeros(719)
    floor[0] = 1  # a claim that b scores above a run with 1 item right can never be reversed
    assert "could not be reversed" in judge(compare(floor, b, deterministic=True), +1)
    four = np.array([0.0, 1.0, 0.0, 1.0])  # four items: no b can differ from a measurably, either way
    assert "neither sign" in judge(compare(four, four, deterministic=True), 0)  # a claim of no difference
    assert effect(compare(four, four, deterministic=True)).startswith("not tested here: out of reach")
    assert effect(compare(ceiling, ceiling, deterministic=True)) == "inconclusive"  # b could still fall below a
    room = (gen.random(719) < 0.7).astype(float)
    assert out_of_reach(compare(room, b, deterministic=True), +1) is None
    assert judge(compare(room, b, deterministic=True), +1) == "agrees"
    # scores without a known scale (outside [0, 1]) have no reach; the interval is the same with or without it
    wide = compare(room * 5, b * 5, deterministic=True)
    assert wide.reach is None and out_of_reach(wide, +1) is None
    assert compare(room, b, bounds=None).interval == compare(room, b).interval


def test_reach_never_contradicts_the_measured_interval() -> None:
    """A sign the measured interval shows is never called out of reach, whatever the reach at the ends gives (it
    holds run a's spread alone): for paired and unpaired scores, one seed or five."""
    gen = np.random.default_rng(1)
    for _ in range(60):
        seeds, misses = int(gen.choice([1, 5])), int(gen.integers(4, 12))
        a = np.ones((seeds, 719))
        a[:, gen.choice(719, misses, replace=False)] = 0  # run a misses some items; b gets every item right
        b = np.ones_like(a)
        for paired in (True, False):
            for first, second, side in ((a, b, +1), (b, a, -1)):
                comparison = compare(first, second, deterministic=True, paired=paired)
                if comparison.excludes_zero:  # the measured sign is +side: a claim on that side could agree, ...
                    assert "could not agree" not in judge(comparison, side)
                    assert "could not be reversed" not in judge(comparison, -side)  # ... one on the other, reverse


def test_five_seeds_whose_differences_vary_by_seed_give_the_nominal_false_positive_rate() -> None:
    """No true difference, and each seed's run moves on its own (a trained run's seed-to-seed spread) far more
    than the items' noise: 5 seeds carry 4 degrees of freedom, so the interval must be a t_4 one. (Resampling the
    5 seeds with replacement gave a normal-width interval on 0.8 of the variance: about 17% false positives.)"""
    rng = np.random.default_rng(0)
    trials, rejections = 400, 0
    for _ in range(trials):
        a = np.full((5, 300), 0.5)
        b = a + rng.normal(0, 0.02, size=(5, 1)) + rng.normal(0, 0.002, size=(5, 300))
        rejections += compare(a, b, bounds=None).excludes_zero
    assert rejections / trials < 0.09, rejections  # 5% nominal; binomial sd 1.1 pp at 400 trials


def test_crossed_noise_is_counted_once_so_items_that_differ_by_chance_keep_the_nominal_rate() -> None:
    """No true difference, 5 seeds, items that flip between runs at random: the rate stays near 5% rather than
    far below it (counting the item-by-seed noise twice made the interval about 1.6 times too wide)."""
    rng = np.random.default_rng(1)
    trials, rejections = 300, 0
    for _ in range(trials):
        p = 1 / (1 + np.exp(-rng.normal(1, 3, size=360)))  # item difficulty
        a, b = (rng.random((2, 5, 360)) < p).astype(float)
        rejections += compare(a, b).excludes_zero
    assert 0.015 < rejections / trials < 0.09, rejections


@pytest.mark.parametrize("differing", [1, 4, 5])
def test_one_seed_with_a_few_differing_items_all_one_way_is_no_evidence(differing: int) -> None:
    """McNemar's exact test needs 6 differing items, all one way, to reject at 5%: with 4 or 5 the percentile
    bootstrap excluded 0 (it rarely drew none of them)."""
    a = np.zeros(500)
    b = a.copy()
    b[:differing] = 1
    assert not compare(a, b, deterministic=True).excludes_zero
    b[:6] = 1
    assert compare(a, b, deterministic=True).interval[0] > 0


def test_a_class_of_one_image_counts_in_the_balanced_interval() -> None:
    """Balanced accuracy weights every class equally, so a class of one image moves it by 1/k alone; its noise
    takes the other classes' pooled spread (left out, four such classes gave an interval that missed 0 in most
    draws of two equal runs)."""
    rng = np.random.default_rng(2)
    strata = np.r_[0, 1, 2, 3, np.full(96, 4)]
    trials, rejections = 300, 0
    for _ in range(trials):
        a, b = (rng.random((2, 100)) < 0.6).astype(float)
        comparison = compare(a, b, strata=strata, deterministic=True)
        assert np.isfinite(comparison.interval).all() and comparison.interval[1] - comparison.interval[0] < 400
        rejections += comparison.excludes_zero
    assert rejections / trials < 0.12, rejections


def test_seeds_that_agree_item_by_item_count_as_one() -> None:
    """A baseline repeated over five seeds against runs that differ from it on the same 4 items in every seed:
    that is 4 differing items, as with one seed, not 20 independent ones."""
    a = np.zeros((5, 500))
    b = a.copy()
    b[:, :4] = 1
    assert not compare(a, b).excludes_zero
    b[:, :6] = 1
    assert compare(a, b).interval[0] > 0


def test_at_chance_reads_five_identical_seeds_as_one_accuracy() -> None:
    """A run at chance repeated over seeds that agree item by item is still at chance (read as paired differences
    against zero, the exact test gave an interval with its upper end at the accuracy itself)."""
    from equinb.verdicts import at_chance

    correct = np.zeros((5, 100))
    correct[:, :9] = 1  # 9% on 10 classes: the upper end must reach above the measured 9%
    assert at_chance(correct, 10, "the run") and at_chance(correct[0], 10, "the run")
    correct[:, :40] = 1
    assert at_chance(correct, 10, "the run") == ""


def test_one_seeds_interval_counts_how_many_items_differ_as_random() -> None:
    """One seed, a true difference made of a few items that differ, all one way: the exact interval given how many
    differ ended at the measured difference and held the true one in about 55% of draws. Taking the share of
    differing items within its own interval keeps McNemar's decision and covers the truth at least nominally."""
    rng = np.random.default_rng(3)
    trials, covered = 400, 0
    for _ in range(trials):
        a = np.zeros(719)
        b = (rng.random(719) < 0.004).astype(float)  # true difference +0.4 pp
        low, high = compare(a, b, deterministic=True).interval
        covered += low <= 0.4 <= high
        if b.sum():
            assert high > 100 * b.mean()  # no end at the measured value
    assert covered / trials >= 0.93, covered


# ---------------------------------------------------------------------------------------------------------------
# The interval's parts and the verdict's edges, each on an input where a wrong rule gives another number.

def test_seed_means_that_differ_get_a_t_interval_on_seeds_minus_one_degrees_of_freedom() -> None:
    from scipy.stats import t as student

    means = np.array([0.40, 0.45, 0.50, 0.55, 0.62])  # per seed, every item alike: only the seeds vary
    b = np.repeat(means[:, None], 10, axis=1)
    low, high = compare(np.zeros_like(b), b, bounds=None).interval
    assert (high - low) / 2 == pytest.approx(100 * student.ppf(0.975, 4) * means.std(ddof=1) / 5 ** 0.5)


def test_two_test_sets_add_their_variances_whichever_run_comes_first() -> None:
    a, b = np.r_[np.ones(150), np.zeros(150)], np.ones(120)  # b alone has no variance: the width is a's
    width = lambda c: c.interval[1] - c.interval[0]  # noqa: E731
    ab, ba = width(compare(a, b, paired=False)), width(compare(b, a, paired=False))
    assert ab == pytest.approx(ba) and ab > 10


def _satterthwaite_half(terms: list[tuple[float, float]]) -> float:
    """The 95% half-width of a sum of independent variance terms [(variance, df)], by hand (tests only)."""
    from scipy.stats import t as student

    variance = sum(v for v, _ in terms)
    df = variance ** 2 / sum(v ** 2 / d for v, d in terms)
    return float(student.ppf(0.975, df)) * variance ** 0.5


def test_two_test_sets_with_spread_each_add_their_variance() -> None:
    a, b = np.r_[np.ones(150), np.zeros(150)], np.r_[np.ones(60), np.zeros(60)]
    result = compare(a, b, paired=False, scale=1.0, bounds=None)
    half = _satterthwaite_half([(a.var(ddof=1) / 300, 299), (b.var(ddof=1) / 120, 119)])
    assert (result.interval[1] - result.interval[0]) / 2 == pytest.approx(half, rel=1e-12)
    alone = max(_satterthwaite_half([(a.var(ddof=1) / 300, 299)]), _satterthwaite_half([(b.var(ddof=1) / 120, 119)]))
    assert half > alone * 1.1  # not the larger of the two alone


def test_one_seed_in_strata_weighs_each_stratum_by_one_over_k_squared_n() -> None:
    """Balanced accuracy's interval with one seed: the variance of the mean of k stratum means is
    sum_m var_m / (k^2 n_m), with Satterthwaite's degrees of freedom over the strata."""
    rng = np.random.default_rng(11)
    strata = np.repeat([0, 1, 2], 4)
    a, b = rng.random(12), rng.random(12) + strata * 0.3  # not 1/0: the t interval, not McNemar's
    d = b - a
    result = compare(a, b, strata=strata, scale=1.0, bounds=None)
    terms = [(d[strata == m].var(ddof=1) / (9 * 4), 3) for m in range(3)]
    assert result.difference == pytest.approx(np.mean([d[strata == m].mean() for m in range(3)]), rel=1e-12)
    assert (result.interval[1] - result.interval[0]) / 2 == pytest.approx(_satterthwaite_half(terms), rel=1e-12)


def _crossed_terms(x: np.ndarray, strata: np.ndarray) -> tuple[float, float, float, list[tuple[float, float]]]:
    """Seed, item and interaction variance terms of the strata-weighted mean of x [S, N], by hand (tests only):
    the seed term from the per-seed points, the item term stratum by stratum, the interaction mean square times
    the sum of the items' squared weights."""
    n_seeds, n_items = x.shape
    labels = np.unique(strata)
    k = len(labels)
    point = lambda row: np.mean([row[strata == m].mean() for m in labels])  # noqa: E731
    seed = np.var([point(x[s]) for s in range(n_seeds)], ddof=1) / n_seeds
    item_means = x.mean(axis=0)
    item_terms = [(item_means[strata == m].var(ddof=1) / (k ** 2 * (strata == m).sum()), (strata == m).sum() - 1)
                  for m in labels]
    residual = x - x.mean(axis=1, keepdims=True) - item_means + x.mean()
    weights = sum(1 / (k ** 2 * (strata == m).sum()) for m in labels)
    interaction = (residual ** 2).sum() / ((n_seeds - 1) * (n_items - 1)) * weights / n_seeds
    return seed, sum(v for v, _ in item_terms), interaction, item_terms


def test_crossed_seeds_and_items_count_the_interaction_once_with_its_degrees_of_freedom() -> None:
    """Strong seed and item effects: variance = seed + item - interaction (the interaction sits in both), and
    Satterthwaite's degrees of freedom add each term's square over its own degrees of freedom, the subtracted one
    included; unequal strata weigh the item term and the interaction alike."""
    from scipy.stats import t as student

    rng = np.random.default_rng(5)
    strata = np.r_[np.zeros(3), np.ones(4), 2 * np.ones(5)].astype(int)
    x = rng.normal(0, 1.0, (5, 1)) + rng.normal(0, 1.0, (1, 12)) + rng.normal(0, 0.3, (5, 12))
    seed, item, interaction, item_terms = _crossed_terms(x, strata)
    variance = seed + item - interaction
    assert variance >= max(seed, item)  # the combined branch
    df = variance ** 2 / (sum(v ** 2 / d for v, d in item_terms) + seed ** 2 / 4 + interaction ** 2 / (4 * 11))
    result = compare(np.zeros_like(x), x, strata=strata, scale=1.0, bounds=None)
    half = float(student.ppf(0.975, df)) * variance ** 0.5
    assert (result.interval[1] - result.interval[0]) / 2 == pytest.approx(half, rel=1e-10)


def test_where_the_interaction_outweighs_the_items_the_seed_term_stands_alone_on_s_minus_one_df() -> None:
    """Item means all equal (every column of the noise sums to 0) and seeds that differ: the combined variance
    falls below the seed term, so the seed term alone is the variance, on S - 1 degrees of freedom."""
    from scipy.stats import t as student

    rng = np.random.default_rng(8)
    noise = rng.normal(0, 0.5, (5, 20))
    x = rng.normal(0, 1.0, (5, 1)) + noise - noise.mean(axis=0)
    seed, item, interaction, _ = _crossed_terms(x, np.zeros(20, dtype=int))
    assert item == pytest.approx(0, abs=1e-20) and interaction > 0 and seed + item - interaction < seed
    result = compare(np.zeros_like(x), x, scale=1.0, bounds=None)
    half = float(student.ppf(0.975, 4)) * seed ** 0.5
    assert (result.interval[1] - result.interval[0]) / 2 == pytest.approx(half, rel=1e-10)


def test_four_seeds_are_one_too_few() -> None:
    assert too_few_seeds(MIN_SEEDS - 1, "run") is not None and too_few_seeds(MIN_SEEDS, "run") is None
    assert judge(Comparison(3.0, (1.0, 5.0), MIN_SEEDS - 1, 100), 1).startswith(NOT_TESTED)


def test_a_sign_the_measured_interval_shows_is_never_out_of_reach() -> None:
    """Run a's seed 4 is wrong on most items, so b at the top of the scale has a wide reach interval; the measured
    interval of b (a with ten items right) excludes 0 all the same, and the verdict reads it."""
    a = np.ones((5, 100))
    a[:4, :10], a[4, :90] = 0, 0
    b = a.copy()
    b[:, :10] = 1
    measured = compare(a, b)
    assert measured.interval[0] > 0 and judge(measured, +1) == "agrees"


def test_an_interval_that_touches_zero_does_not_exclude_it() -> None:
    flat = compare(np.full((5, 10), 0.5), np.full((5, 10), 0.5), bounds=None)
    assert flat.interval == (0.0, 0.0) and effect(flat) == "inconclusive"
    assert judge(Comparison(2.5, (0.0, 5.0), 5, 100), 1) == "inconclusive"


def test_the_cut_is_the_span_of_the_scale_not_its_upper_end() -> None:
    a = -np.ones((5, 50))
    b = np.r_[np.ones((4, 50)), -np.ones((1, 50))]
    assert compare(a, b, bounds=(-1.0, 1.0)).interval[1] == 200.0


def test_a_row_keeps_its_note_and_the_changed_predictions_the_table_test_reads() -> None:
    claim_id = "tab1.updated_minus_original.rot90.prefinetune"
    row = verdict_row(claim_id, Comparison(3.0, (1.0, 5.0), 5, 100), note="baseline: X", changed={"updated": 0})
    assert row["tested as"] == f"{claim(claim_id).statistic} (baseline: X)" and row["changed"] == {"updated": 0}
    assert row[MARGINS_KEY] == []  # tested: no reason, so no margins


def test_a_reason_on_trained_numbers_keeps_the_number_its_check_compared() -> None:
    """The margins another CPU could move across (the claim list reads them): each check's decisive number and its
    threshold, in the unit the reason prints; they reach the verdict row only from the reason that decided it."""
    labels = np.repeat([0, 1, 2], [60, 30, 10])
    majority = (labels == 0).astype(float)
    learned = np.r_[np.zeros(30), np.ones(25), np.zeros(20), np.ones(25)]
    reason = below_majority(learned[None], (majority * (np.arange(100) < 55))[None], labels, ("a", "b"))
    assert reason.margins == ((pytest.approx(55.0), 60.0, "top-1"),)  # the higher top-1 against the majority rate
    chance = np.r_[np.ones(40), np.zeros(360)]  # 10% right on 10 classes
    low, high = at_chance(chance, 10, "run").margins
    assert low[0] < 10.0 < high[0] and low[1:] == high[1:] == (10.0, "top-1")
    control = _comparison(-0.01, 0.01)
    ends = by_construction(control, control, "a control", difference=_comparison(-0.05, 0.4)).margins
    assert ends == ((-0.05, 0.0, "statistic"), (0.4, 0.0, "statistic"))
    found, by_chance = np.zeros((2, 400)), np.zeros((2, 400))
    found[:, :160], by_chance[:, :100] = 1, 1
    kept = orientation_kept({"a": by_chance, "b": found}, 4)
    (value, threshold, kind), = kept.margins  # the highest lower end: the reason holds while it stays above 0
    assert threshold == 0.0 and kind == "share" and f"[{value:+.1f}," in kept
    row = verdict_row("tab4.finetune_gain.original", _comparison(-1.0, 1.0), reasons=[None, kept, reason])
    assert row[VERDICT_COLUMN] == f"{NOT_TESTED}: {kept}" and row[MARGINS_KEY] == [[round(value, 4), 0.0, "share"]]
    untouched = verdict_row("tab4.finetune_gain.original", _comparison(-1.0, 1.0), reasons=["a setting"])
    assert untouched[MARGINS_KEY] == []  # a reason on exact facts has none


def test_a_check_that_did_not_apply_keeps_its_number_for_a_tested_verdict() -> None:
    """The converse: a check that compared a trained number and did not apply returns a false, empty reason that
    keeps the number (another CPU could move it across its threshold and make the check apply). A tested verdict's
    row keeps every such near miss; a not-tested one only its deciding reason's numbers; an exact fact keeps none."""
    labels = np.repeat([0, 1, 2], [60, 30, 10])
    learned = np.r_[np.zeros(30), np.ones(25), np.zeros(20), np.ones(25)]  # 50% top-1
    reaches = np.r_[np.ones(62), np.zeros(38)]  # 62% top-1, above the 60% majority rate
    near = below_majority(learned[None], reaches[None], labels, ("a", "b"))
    assert not near and near.margins == ((pytest.approx(62.0), pytest.approx(60.0), "top-1"),)
    assert below_majority(learned[None], learned[None], np.repeat([0, 1], 50), ("a", "b")) is None  # equal classes
    far = at_chance(np.r_[np.ones(300), np.zeros(100)], 10, "run")  # 75% on 10 classes
    assert not far and [m[1:] for m in far.margins] == [(10.0, "top-1")] * 2 and far.margins[0][0] > 60
    by_chance = np.zeros((2, 400))
    by_chance[0, :100], by_chance[1, 100:200] = 1, 1
    kept = orientation_kept({"a": by_chance, "b": by_chance}, 4)
    (low, threshold, kind), = kept.margins
    assert not kept and low < 0 and (threshold, kind) == (0.0, "share")
    control = by_construction(_comparison(-0.01, 0.01), _comparison(0.2, 0.3), "a control")
    assert not control and control.margins[0][1:] == (0.0, "statistic") and control.margins[0][0] > 0
    # a tested verdict: every near miss of its reasons, in order; judge and effect skip them as no reason
    row = verdict_row("tab4.finetune_gain.original", _comparison(0.5, 1.5), reasons=[None, near, far, "", kept])
    assert row[VERDICT_COLUMN] == "agrees" and judge(_comparison(0.5, 1.5), 1, [near, far, kept]) == "agrees"
    assert row[MARGINS_KEY] == [[round(v, 4), round(t, 4), k] for r in (near, far, kept) for v, t, k in r.margins]
    # not tested: the deciding reason's numbers only, not the near misses beside it
    at = at_chance(np.r_[np.ones(40), np.zeros(360)], 10, "run")
    row = verdict_row("tab4.finetune_gain.original", _comparison(0.5, 1.5), reasons=[near, at, kept])
    assert row[VERDICT_COLUMN] == f"{NOT_TESTED}: {at}"
    assert row[MARGINS_KEY] == [[round(v, 4), round(t, 4), k] for v, t, k in at.margins]


def test_at_chance_reads_every_seed() -> None:
    correct = np.zeros((5, 100))
    correct[0, :10], correct[1:, :60] = 1, 1  # one seed at chance (10 classes), four far above it
    assert at_chance(correct, 10, "run") == ""


def test_a_run_that_answers_the_majority_class_is_at_chance_on_unequal_classes() -> None:
    # ISIC-like proportions: class 0 holds two thirds of the items; a run answering 0 everywhere scores 66.7% top-1
    labels = np.repeat(np.arange(7), [200, 20, 20, 20, 20, 10, 10])
    majority_only = np.stack([(labels == 0).astype(float)] * 5)  # [S, N], five seeds that collapsed alike
    reason = at_chance(majority_only, 7, "the finetuned run", labels=labels)
    assert reason.startswith("the finetuned run is at chance in balanced accuracy (14.29%, chance 14.29%")
    assert at_chance(majority_only, 7, "run") == ""  # top-1 alone (the old rule) let it pass
    gen = np.random.default_rng(1)
    skilled = np.stack([(gen.random(len(labels)) < 0.7).astype(float) for _ in range(5)])  # right 70% in every class
    assert at_chance(skilled, 7, "run", labels=labels) == ""
    # a verdict on such a run is not given: agrees without the reason, not tested with it
    prefinetuned = np.stack([(gen.random(len(labels)) < 0.47).astype(float) for _ in range(5)])
    assert judge(compare(prefinetuned, majority_only), 1) == "agrees"
    assert judge(compare(prefinetuned, majority_only), 1, [reason]).startswith("not tested here: the finetuned run")


def test_scores_that_are_not_finite_get_no_verdict() -> None:
    a, b = np.zeros((5, 50)), np.ones((5, 50))
    b[2, 3] = np.nan  # a diverged seed's NaN weight
    comparison = compare(a, b, scale=1.0, bounds=None)
    assert judge(comparison, 1).startswith("not tested here: the compared scores are not all finite")
    assert effect(comparison).startswith("not tested here: the compared scores are not all finite")
    assert not_finite(compare(a, np.ones((5, 50)), scale=1.0)) is None


def test_one_seed_without_two_items_of_a_stratum_has_no_interval_and_no_verdict() -> None:
    """One item and one seed (or strata of one item each) leave the noise nothing to be estimated from: the
    interval is unknown, not of zero width, and the verdict is not tested (it used to agree on a single item)."""
    for a, b, options in (([0.5], [0.7], dict(deterministic=True)),
                          ([0.5, 0.2, 0.4], [0.7, 0.1, 0.5], dict(strata=[0, 1, 2], deterministic=True)),
                          ([0.5], [0.7], dict(paired=False, deterministic=True))):
        comparison = compare(a, b, **options)
        assert comparison.interval == (-math.inf, math.inf)
        for verdict in (judge(comparison, +1), judge(comparison, -1), effect(comparison)):
            assert verdict.startswith(f"{NOT_TESTED}: no interval can be estimated")
    # two items of one stratum estimate it, and binary scores of one item have McNemar's exact interval
    assert judge(compare([0.5, 0.2], [0.7, 0.5], deterministic=True, bounds=None), +1) in VERDICTS
    assert compare([1.0], [0.0], deterministic=True).interval == pytest.approx((-100.0, 95.0))
