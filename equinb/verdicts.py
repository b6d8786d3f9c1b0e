"""Computed verdicts: does a difference in this build point the article's way, against its statistical noise?

A claim of the article is a signed difference ("updated minus original, prefinetune top-1, rot90": +3.70 pp),
or a direction without a number. Ours is the same difference in this build, measured on per-item scores of
the two runs it compares, under every seed that was run:

    scores_a, scores_b [S, N]: seed s of run a and of run b (paired by seed index), item i of the test set.

``compare`` turns them into the mean difference over seeds and one 95% t interval, with the seeds (the training
noise) and the test items (the test-set noise) as crossed random effects: the variance of the mean from the
spread of the per-seed differences, the spread of the per-item differences and their interaction, each counted
once, with Satterthwaite's degrees of freedom (4 when five seeds dominate). One seed gives the items-only
interval; with per-item 1/0 scores it rests on McNemar's exact test, which a few differing items cannot pass by
chance: the share of differing items where b is right and the share of items that differ, each within its exact
(Clopper-Pearson) interval. A deterministic statistic (no random step, such as a frozen model's
zero-shot scores) needs no seeds. The interval's basis is printed beside it.

``judge`` gives one of:

- ``agrees`` / ``reversed``: the interval excludes 0, on the article's side of it or the other;
- ``inconclusive``: the interval holds 0 (for a claim of *no* difference, only ``reversed`` or this: without a
  stated margin, a claim of no difference can be refuted, never confirmed);
- ``reversed: <reason>``, where the code's exact symmetry refutes the claim whatever the data (a claim that the
  published code is equivariant, where its construction makes it invariant);
- ``not tested here: <reason>``, where a computed check says the comparison cannot test the claim: a stage that
  changed no prediction, a run that diverged or sits at chance, two runs compared in top-1 that both score below
  answering the majority class of an imbalanced test set, scores that are not finite, a statistic that a
  control which cannot carry the effect matches, one the code's exact symmetry decides for the claim, a task the
  no-training baseline already solves, too few seeds, no article value, a setting this profile does not run, a
  stand-in without the property the claim assumes, or an outcome out of reach: with run a as measured, even run b
  at the end of the score scale on every item (every image right, say) could not give the verdict on one side, so
  the verdict could not come out that way (where no real run reaches an end of the scale, the statistic's own best
  case stands in: for a gap between demographics, a fair model, ``equinb.nlg.fair_draws_interval``, which must
  show the narrowing in half of its simulated draws). A measured reversal is reported all the same. Each reason is
  made by a function below from the numbers, never typed.

A regression tolerance (how far a number may move between CPUs, ``equinb.noise``) never enters a verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

__all__ = ["VERDICTS", "EFFECTS", "NOT_TESTED", "VERDICT_COLUMN", "EFFECT_COLUMN", "NEEDS_OTHER_SETTING", "MIN_SEEDS",
           "LOSS_BOUND", "VERDICT_RULE", "Comparison", "compare", "stratified_mean", "paired_interval", "judge",
           "effect", "verdict_row", "effect_row", "unchanged_stage", "diverged", "at_chance", "below_majority",
           "solved_without_training", "by_construction", "difference_of_intervals", "zero_by_construction",
           "symmetry_by_construction", "orientation_kept", "too_few_seeds", "not_in_this_run", "out_of_reach",
           "not_finite", "verdict_kind", "verdict_counts", "Reason", "MARGINS_KEY"]

ArrayLike = torch.Tensor | np.ndarray | Sequence[float]

VERDICTS = ("agrees", "reversed", "inconclusive")
EFFECTS = ("non-zero", "inconclusive")  # the book's own comparisons, which have no article side
NOT_TESTED = "not tested here"
# a verdict row's trained numbers that its checks compared with a threshold (``Reason.margins``), kept, not shown
MARGINS_KEY = "numbers its checks compared"
# Printed headers at least as wide as any short verdict, so that a verdict turning into an adjacent one on
# another CPU does not re-flow the printed table.
VERDICT_COLUMN = "verdict vs the article"
EFFECT_COLUMN = "effect of the change"
NEEDS_OTHER_SETTING = "needs "  # how not_in_this_run's reasons start (the summary page leaves those claims out)
MIN_SEEDS = 5  # a trained run's verdict needs at least this many seeds of every run it compares
LOSS_BOUND = 1e6  # a training loss above this (or not finite) marks a diverged run
CHANGED_NOTHING = "changed no test prediction"  # the reason of a stage that changed nothing (``unchanged_stage``)
# in the reason of a claim the code's own construction contradicts (reversed: no data could decide otherwise)
FAILS_BY_CONSTRUCTION = "the claim fails for this code"
VERDICT_RULE = ("ours is the mean difference over the seeds; its 95% interval is a t interval with the seeds and the "
                "test items as crossed random effects (each noise counted once; with one seed and right/wrong "
                "scores, McNemar's exact test, its interval widened for how many items differ; the noise column "
                "names the items, such as images within each class or seeded (template, sample) units). A claim "
                "'agrees' "
                "or is 'reversed' when the interval excludes 0, on the article's side or the other; 'inconclusive' "
                "when it holds 0 (a claim of no difference can only come out 'reversed' or 'inconclusive': the "
                "articles give no margin within which a difference counts as none); 'reversed' with its reason when "
                "the code's exact symmetry refutes the claim whatever the data; "
                "'not tested here' with the computed reason when the comparison cannot test the claim (a stage "
                f"that changed no prediction, a run that diverged or sits at chance, two runs compared in top-1 that "
                "both score below answering the majority class of an imbalanced test set, fewer than "
                f"{MIN_SEEDS} seeds "
                "of a trained run, a statistic that a control which cannot carry the effect matches, a statistic "
                "the code's exact symmetry decides for the claim, a task solved without training, a "
                "stand-in without the property the claim assumes, a setting this profile does not run, a verdict "
                "that could not come out one way even with every item of the compared run, the first term of the "
                "difference, at the end of the score scale, or, for a narrower fairness gap, that a fair model would "
                "show in fewer than half of simulated draws; a measured reversal is still reported)")


class Reason(str):
    """A computed reason (its text) that rests on trained numbers compared with a threshold: ``margins``, each
    (number, threshold, kind), the number in the unit it is printed in. ``kind`` says what the number is:
    ``"statistic"`` (the claim's own statistic), ``"top-1"`` (a run's accuracy, top-1 or balanced, in %) or
    ``"share"`` (a share of test images, pp). A trained number moves a little between CPUs, so where one lies that
    near its threshold the reason might not apply on another CPU; the claim list says which (``equinb.noise``: a
    reason never reads a tolerance itself). A reason with no margins rests on exact facts (counts, settings).

    A check that compared a trained number and found it on the other side of its threshold returns an empty
    ``Reason`` (``nothing(margins)``): false, as no reason, so that every caller skips it, but it keeps the number,
    since on another CPU the number could cross and the check apply (the claim list names those too)."""

    margins: tuple[tuple[float, float, str], ...]

    @classmethod
    def nothing(cls, margins: Sequence[tuple[float, float, str]]) -> Reason:
        """No reason (an empty, false string) that keeps the numbers its check compared: a near miss."""
        return cls("", margins)

    def __new__(cls, text: str, margins: Sequence[tuple[float, float, str]] = ()) -> Reason:
        reason = super().__new__(cls, text)
        reason.margins = tuple((float(value), float(threshold), kind) for value, threshold, kind in margins)
        return reason


@dataclass(frozen=True)
class Comparison:
    """Run b minus run a on the same items: the mean difference over seeds and its 95% interval.

    ``seeds``: how many seeds entered (1: items only); ``deterministic``: the scores have no random step, so
    the interval over items is the whole noise; ``basis``: the interval's basis, for printing. ``reach``: run a's
    mean score and the intervals the difference would have with every score of run b at the top and at the
    bottom of the scale (None when the scores have no known scale): what the verdict could come out as at all;
    ``reach_how`` says what gives each end (a statistic with its own model of its best case names it there).
    """

    difference: float
    interval: tuple[float, float]
    seeds: int
    items: int
    deterministic: bool = False
    paired: bool = True
    unit: str = "items"
    reach: tuple[float, tuple[float, float], tuple[float, float]] | None = None
    sizes: tuple[int, int] | None = None  # unpaired: the items of each test set (``items`` is the smaller)
    # what gives the two ends of ``reach`` (top, bottom), for the reason that cites them
    reach_how: tuple[str, str] = ("every item of the first term at the top of the score scale",
                                  "every item of the first term at the bottom of the score scale")

    @property
    def basis(self) -> str:
        if self.sizes is not None:
            text = f"{self.sizes[0]} and {self.sizes[1]} {self.unit}"
        else:  # "1 item", not "1 items"
            text = f"{self.items} {self.unit[:-1] if self.items == 1 and self.unit.endswith('s') else self.unit}"
        if self.seeds > 1:
            text = f"{self.seeds} seeds × {text}"
        elif self.deterministic:
            text += " (no random step)" if self.unit == "items" else ""
        else:
            text += ", 1 seed"
        return text if self.paired else f"{text}, two test sets"

    @property
    def excludes_zero(self) -> bool:
        return self.interval[0] > 0 or self.interval[1] < 0


def _as_matrix(scores: ArrayLike) -> np.ndarray:
    x = np.asarray(scores.detach().cpu() if isinstance(scores, torch.Tensor) else scores, dtype=np.float64)
    return x.reshape(1, -1) if x.ndim <= 1 else x


def _groups(n_items: int, strata: ArrayLike | None) -> list[np.ndarray]:
    if strata is None:
        return [np.arange(n_items)]
    keys = _as_matrix(strata).reshape(-1)
    if keys.shape != (n_items,):
        raise ValueError(f"strata needs one value per item, got {keys.shape} for {n_items} items")
    return [np.flatnonzero(keys == k) for k in np.unique(keys)]


def _point(x: np.ndarray, groups: list[np.ndarray]) -> float:
    return float(np.mean([np.mean([x[s, m].mean() for m in groups]) for s in range(x.shape[0])]))


def stratified_mean(scores: ArrayLike, strata: ArrayLike | None = None) -> float:
    """The statistic ``compare`` differences: the mean of per-item scores [S, N] or [N] over seeds and items, or with
    ``strata`` [N] the mean over strata of each stratum's mean (of 1/0 scores with the classes as strata: the
    balanced accuracy)."""
    x = _as_matrix(scores)
    return _point(x, _groups(x.shape[1], strata))


def _t_quantile(level: float, df: float) -> float:
    from scipy.stats import t

    return float(t.ppf((1 + level) / 2, df))  # df = inf: the normal quantile


def _clopper_pearson(k: int, n: int, level: float) -> tuple[float, float]:
    """Exact ``level`` interval of a binomial share from k successes in n trials."""
    from scipy.stats import beta

    tail = (1 - level) / 2
    return (float(beta.ppf(tail, k, n - k + 1)) if k > 0 else 0.0,
            float(beta.ppf(1 - tail, k + 1, n - k)) if k < n else 1.0)


def _mean_variance(x: np.ndarray, groups: list[np.ndarray]) -> tuple[float, float]:
    """The variance of ``_point(x)`` with seeds and items as crossed random effects, and the sum of (term^2 / its
    degrees of freedom) that Satterthwaite's degrees of freedom divide into. Shapes: x [S, N].

    Seed term: the spread of the per-seed means over S - 1 degrees of freedom; item term: the spread of the
    per-item means (within each stratum, strata weighted equally; a stratum of one item takes the strata's pooled
    spread, as the interaction term assumes one spread for all); both hold the seed-by-item noise once, so it is
    taken out once (the interaction mean square). Where that difference falls below the larger of the two terms,
    that term alone is the variance, with its own degrees of freedom. NaN where nothing estimates it: one seed and
    no stratum of two items or more (one item, say), where a variance of 0 would print a zero-width interval."""
    n_seeds = x.shape[0]
    k = len(groups)
    item_means = x.mean(axis=0)
    within = [(float(item_means[m].var(ddof=1)), m.size - 1, m.size) for m in groups if m.size > 1]
    pooled_df = sum(df for _, df, _ in within)
    item_terms = [(v / (k ** 2 * size), df) for v, df, size in within]
    singles = sum(1 for m in groups if m.size == 1)
    if singles and pooled_df:
        item_terms.append((sum(v * df for v, df, _ in within) / pooled_df * singles / k ** 2, pooled_df))
    item = sum(v for v, _ in item_terms)
    item_spread = sum(v ** 2 / df for v, df in item_terms)
    if n_seeds == 1:
        return (item, item_spread) if pooled_df else (math.nan, 0.0)
    seed_points = np.array([_point(x[s:s + 1], groups) for s in range(n_seeds)])
    seed = float(seed_points.var(ddof=1)) / n_seeds
    residual = x - x.mean(axis=1, keepdims=True) - item_means + x.mean()
    interaction_df = max((n_seeds - 1) * (x.shape[1] - 1), 1)
    weights = sum(1.0 / (k ** 2 * m.size) for m in groups)  # the sum of the items' squared weights in _point
    interaction = float((residual ** 2).sum()) / interaction_df * weights / n_seeds
    if seed + item - interaction >= max(seed, item):
        return seed + item - interaction, item_spread + seed ** 2 / (n_seeds - 1) + interaction ** 2 / interaction_df
    return (seed, seed ** 2 / (n_seeds - 1)) if seed >= item else (item, item_spread)


def _mcnemar(a: np.ndarray, b: np.ndarray, level: float) -> tuple[float, float]:
    """Interval of mean(b - a) for paired 1/0 scores of one seed [1, N], as r (2 theta - 1): theta, the share of
    the differing items where b is right, within its Clopper-Pearson interval given how many differ (so the
    interval excludes 0 exactly when McNemar's exact test rejects at 1 - ``level``), and r, the share of items that
    differ, within its own Clopper-Pearson interval: every r theta pair of the two intervals. How many items differ
    is itself random; with r fixed at its measured value an end sat at the measured difference whenever every
    differing item went one way, and such intervals held the true difference in about 55% of the draws of
    ``tests/test_verdicts.py``'s simulation (+0.4 pp over 719 items), which asks for at least 93%."""
    up, down, n = int((b > a).sum()), int((b < a).sum()), a.size
    m = up + down
    rate_low, rate_high = _clopper_pearson(m, n, level)
    share_low, share_high = _clopper_pearson(up, m, level) if m else (0.0, 1.0)
    ends = [rate * (2 * share - 1) for rate in (rate_low, rate_high) for share in (share_low, share_high)]
    return min(ends), max(ends)


def _binary(*xs: np.ndarray) -> bool:
    return all(np.isin(x, (0.0, 1.0)).all() for x in xs)


def _difference_interval(a: np.ndarray, b: np.ndarray, groups: list[np.ndarray] | None,
                         level: float) -> tuple[float, float, float]:
    """(point, low, high) of mean(b) - mean(a): paired (``groups``: the strata of the items) or, with ``groups``
    None, two independent score matrices."""
    if groups is not None:
        point = _point(b - a, groups)
        if a.shape[0] > 1 and ((b - a) == (b[:1] - a[:1])).all():  # the seeds agree item by item: one seed's worth
            a, b = a[:1], b[:1]
        if a.shape[0] == 1 and len(groups) == 1 and _binary(a, b):
            return (point, *_mcnemar(a, b, level))
        variance, spread = _mean_variance(b - a, groups)
    else:
        point = float(b.mean() - a.mean())
        whole = lambda x: _mean_variance(x, [np.arange(x.shape[1])])  # noqa: E731
        (va, sa), (vb, sb) = whole(a), whole(b)
        variance, spread = va + vb, sa + sb
    if math.isnan(variance):  # no degrees of freedom: the interval is unknown, not of zero width
        return point, -math.inf, math.inf
    if variance <= 0:
        return point, point, point
    half = _t_quantile(level, variance ** 2 / spread if spread > 0 else math.inf) * math.sqrt(variance)
    return point, point - half, point + half


def compare(scores_a: ArrayLike, scores_b: ArrayLike, *, scale: float = 100.0, strata: ArrayLike | None = None,
            deterministic: bool = False, paired: bool = True, unit: str = "items", level: float = 0.95,
            bounds: tuple[float, float] | None = (0.0, 1.0)) -> Comparison:
    """Run b minus run a: ``scale * (mean b - mean a)`` averaged over seeds, with its ``level`` interval.

    Shapes: ``scores_*`` [S, N] (seed s, item i; the runs paired by seed index) or [N] (one seed). Scores are
    per-item numbers (1/0 for correct/wrong, a weight, a share). The interval is a t interval with seeds and items
    as crossed random effects (``_mean_variance``); one seed of paired 1/0 scores without strata gives the interval
    of ``_mcnemar`` (McNemar's exact test). ``strata`` [N] (for example the true classes): the statistic is the mean
    over strata of the stratum means, so that with 1/0 scores and the classes as strata it is the difference of
    balanced accuracies. ``paired=False``: the two runs were scored on different items (two test sets), so their
    variances add (shapes [S_a, N_a] and [S_b, N_b]; no strata). ``unit`` names the items in the printed basis.
    ``bounds``: the ends of the score scale (default 0 and 1: correct/wrong, weights, shares; None for a statistic
    without fixed ends); when every score lies within them, the interval is cut to the differences the scale
    allows (a t interval over a few seeds can reach past them: a share of +120 pp), and ``reach`` holds the
    intervals of run b at either end against run a as measured. Run a is the reference the claim is about (the
    baseline, the earlier stage): ``reach`` holds it fixed.
    """
    a, b = _as_matrix(scores_a), _as_matrix(scores_b)
    if a.size == 0 or b.size == 0 or (paired and a.shape != b.shape):
        raise ValueError(f"compare needs two non-empty score arrays of one shape [seeds, items], got {a.shape} and "
                         f"{b.shape}")
    if not paired and strata is not None:
        raise ValueError("strata need paired items")
    groups = _groups(a.shape[1], strata) if paired else None
    point, low, high = _difference_interval(a, b, groups, level)
    reach = None
    if bounds is not None and all(bounds[0] <= x.min() and x.max() <= bounds[1] for x in (a, b)):
        span = bounds[1] - bounds[0]  # no difference of two means on the scale lies beyond +-span
        if math.isfinite(low) and math.isfinite(high):  # an unknown interval stays unknown (not_finite)
            low, high = max(low, -span), min(high, span)
        # b at either end of the scale on every item, against a as measured
        ends = [_difference_interval(a, np.full_like(b, end), groups, level) for end in bounds[::-1]]
        reference = _point(a, groups) if paired else float(a.mean())
        reach = (scale * reference, *((scale * e[1], scale * e[2]) for e in ends))
    return Comparison(scale * point, (scale * low, scale * high), min(a.shape[0], b.shape[0]),
                      min(a.shape[1], b.shape[1]), deterministic, paired, unit, reach,
                      None if paired else (a.shape[1], b.shape[1]))


def paired_interval(scores_a: ArrayLike, scores_b: ArrayLike, **options: Any) -> tuple[float, float]:
    """The 95% interval of ``compare`` alone (pp by default); see ``compare`` for the shapes and options."""
    return compare(scores_a, scores_b, **options).interval


# -- computed reasons: each returns None (the check passes) or the reason a comparison cannot test its claim --

def unchanged_stage(before: ArrayLike, after: ArrayLike, run: str, stage: str = "finetuning") -> str | None:
    """``"<stage> changed no test prediction of <run>"`` when the predictions [N] (or [S, N]) are equal."""
    if np.array_equal(_as_matrix(before), _as_matrix(after)):
        return f"{stage} {CHANGED_NOTHING} of {run}"
    return None


def diverged(losses: Sequence[float], run: str, bound: float = LOSS_BOUND) -> str | None:
    """``"<run> diverged ..."`` when a training loss is not finite (NaN included) or exceeds ``bound``; ``None``
    entries are steps that logged no loss."""
    values = [float(v) for v in losses if v is not None]
    if any(not math.isfinite(v) or v > bound for v in values):
        return f"{run} diverged (training loss above {bound:.0e})"
    return None


def _accuracy_interval(correct: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The ``level`` interval of an accuracy in %, from per-item 1/0 scores [S, N]: Clopper-Pearson for one seed,
    else the crossed seeds-and-items t interval of ``compare`` (seeds that agree item by item count as one: against
    a constant, ``compare`` would read them as one seed's paired differences)."""
    if (correct == correct[:1]).all():
        low, high = _clopper_pearson(int(correct[0].sum()), correct.shape[1], level)
        return 100 * low, 100 * high
    return compare(np.zeros_like(correct), correct, deterministic=True, bounds=None).interval


def at_chance(correct: ArrayLike, n_classes: int, run: str, labels: ArrayLike | None = None) -> Reason:
    """``"<run> is at chance ..."`` when the 95% interval of its accuracy (per-item 1/0 [N] or [S, N]) holds the
    chance rate 1/n_classes, else ``Reason.nothing`` with the interval's ends. With the true ``labels`` [N] of a
    test set whose classes are unequal in size, its balanced accuracy is read instead (the mean of the per-class
    accuracies, which a run that answers one class for every item scores at exactly 1/n_classes, whatever that
    class's share of the top-1)."""
    x = _as_matrix(correct)
    chance = 100.0 / n_classes
    counts = None if labels is None else np.unique(_as_matrix(labels).reshape(-1), return_counts=True)[1]
    if counts is not None and counts.min() != counts.max():
        level = compare(np.full_like(x, 1.0 / n_classes), x, strata=labels)
        ends = [(chance + end, chance, "top-1") for end in level.interval]
        # the interval holds chance (1e-9: the float rounding of an interval that ends exactly at it)
        if level.interval[0] <= 1e-9 and level.interval[1] >= -1e-9:
            return Reason(f"{run} is at chance in balanced accuracy ({chance + level.difference:.2f}%, chance "
                          f"{chance:.2f}% on {len(counts)} classes of unequal size; top-1 {100 * x.mean():.2f}%)", ends)
        return Reason.nothing(ends)
    low, high = _accuracy_interval(x)
    ends = [(low, chance, "top-1"), (high, chance, "top-1")]
    if low <= chance <= high:
        return Reason(f"{run} is at chance (top-1 {100 * x.mean():.2f}%, chance {chance:.2f}%)", ends)
    return Reason.nothing(ends)


def below_majority(correct_a: ArrayLike, correct_b: ArrayLike, labels: ArrayLike,
                   names: tuple[str, str]) -> Reason | None:
    """``"both below the majority class: ..."`` when two runs compared in top-1 (per-item 1/0 scores [S, N] each, on
    a test set whose true ``labels`` [N] fall in classes of unequal size) both score below the top-1 of answering the
    largest class for every item. There a top-1 difference can come from answering that class more or less often
    rather than from what either run learned; the reason gives the difference in balanced accuracy, which the
    largest class cannot lift. Else ``Reason.nothing`` with the higher top-1 where one reaches the majority rate,
    or None where the classes are equal in size (an exact fact: no number could make it apply)."""
    a, b = _as_matrix(correct_a), _as_matrix(correct_b)
    counts = np.unique(_as_matrix(labels).reshape(-1), return_counts=True)[1]
    majority = 100.0 * counts.max() / counts.sum()
    top_a, top_b = 100.0 * a.mean(), 100.0 * b.mean()
    if counts.min() == counts.max():
        return None
    if max(top_a, top_b) >= majority:
        return Reason.nothing([(max(top_a, top_b), majority, "top-1")])
    balanced = compare(a, b, strata=labels)
    low, high = balanced.interval
    return Reason(f"both below the majority class: {names[0]} ({top_a:.2f}%) and {names[1]} ({top_b:.2f}%) score "
                  f"under the {majority:.2f}% top-1 of answering the largest class for every item, where a top-1 "
                  f"difference can come from answering that class more or less often; in balanced accuracy the "
                  f"difference is {balanced.difference:+.2f} pp [{low:+.2f}, {high:+.2f}]",
                  [(max(top_a, top_b), majority, "top-1")])


def solved_without_training(baseline_correct: ArrayLike, baseline: str) -> str | None:
    """``"solved without training: ..."`` when the no-training ``baseline`` (per-item 1/0 scores [N]) leaves no
    room: even a run that got every test item right could not score measurably above it (the interval of that
    run minus the baseline holds 0). No trained run can then improve on the frozen model measurably, and a gain
    the claims attribute to training cannot be seen."""
    b = _as_matrix(baseline_correct).reshape(1, -1)
    room = compare(b, np.ones_like(b), deterministic=True)
    if room.interval[0] <= 0:
        return (f"solved without training: the no-training baseline {baseline} gets {100 * b.mean():.2f}% of the test "
                f"items, so even a run with every item right could not score measurably above it "
                f"({room.difference:+.2f} pp, [{room.interval[0]:+.2f}, {room.interval[1]:+.2f}])")
    return None


def by_construction(control: Comparison, observed: Comparison, what: str,
                    difference: Comparison | None = None) -> Reason:
    """``"indistinguishable from a control: ..."`` when the observed statistic cannot be told apart from a control that
    cannot carry the effect (an untrained module, a permutation null): the 95% interval of observed minus control
    holds 0, so the run cannot separate what the module learned from what the construction gives (two intervals
    that merely overlap do not show that). ``difference``: that interval computed from the scores, where the
    caller can (terms the two share then cancel); else the two are taken as independent estimates and their
    intervals combined end by end in quadrature (``difference_of_intervals``, Zou and Donner's MOVER). Else
    ``Reason.nothing`` with that interval's ends."""
    if difference is None:
        point, (low, high) = observed.difference - control.difference, difference_of_intervals(observed, control)
    else:
        point, (low, high) = difference.difference, difference.interval
    ends = [(low, 0.0, "statistic"), (high, 0.0, "statistic")]
    if low <= 0 <= high:
        return Reason(f"indistinguishable from a control: {what}, which cannot carry the effect, gives "
                      f"{control.difference:+.3g} [{control.interval[0]:+.3g}, {control.interval[1]:+.3g}], and the "
                      f"observed minus it, {point:+.3g} [{low:+.3g}, {high:+.3g}], holds 0", ends)
    return Reason.nothing(ends)


def difference_of_intervals(a: Comparison, b: Comparison) -> tuple[float, float]:
    """The 95% interval of ``a.difference - b.difference`` for two independent estimates, from their own intervals
    (MOVER: each end moves by the two nearer half-widths combined in quadrature), so asymmetric intervals keep
    their shape."""
    point = a.difference - b.difference
    low = point - math.hypot(a.difference - a.interval[0], b.interval[1] - b.difference)
    high = point + math.hypot(a.interval[1] - a.difference, b.difference - b.interval[0])
    return low, high


def symmetry_by_construction(errors: ArrayLike, symmetry: str, code: str, rtol: float = 1e-5, *,
                             claimed: str | None = None) -> str | None:
    """The reason a claim about ``code``'s symmetry is not tested here, when its output has ``symmetry``
    ("invariant" or "equivariant") to float rounding on every test item (``errors``: per-item errors relative to
    the output's scale, [N]); else None. The sign of a difference against the other symmetry's error is then fixed
    by how the output is built (which the unit tests prove), not by the sample, so no verdict could come out
    otherwise; the reason names the symmetry the code has and, given the ``claimed`` one, what that means for the
    claim (an invariant output is not equivariant: the claim then fails for this code, whatever the data)."""
    worst = float(np.max(np.asarray(errors, dtype=float)))
    if not worst < rtol:  # NaN is no proof
        return None
    answer = ("" if claimed is None else f", so the claim that it is {claimed} holds for this code whatever the data"
              if claimed == symmetry else f", so it is not {claimed}: {FAILS_BY_CONSTRUCTION} whatever the data")
    return (f"decided by construction: {code} is {symmetry} on every test image (largest relative error < "
            f"{rtol:.0e}, float rounding), by how it combines the views{answer}")


def orientation_kept(hits: dict[str, ArrayLike], n_views: int) -> Reason:
    """The reason claims about data without a natural orientation are not tested on a stand-in made by turning
    upright images at random, where its data show they keep one: some module's largest weight falls on the view
    that undoes the turn on more test images than chance, 1 / ``n_views``, the interval of the excess above 0.
    ``hits``: per module, 1/0 per image ([S, N] or [N]). ``Reason.nothing`` (the highest lower end) where no
    module finds the orientation: the stand-in then behaves, for these modules, as data without one, and the claims
    are tested on it. The modules decide together (one that finds the orientation shows that the data have it,
    whatever another learned), and the reason names every module with its share and interval, so that its words
    stay the same where a module's interval end near 0 falls on the other side on another CPU (only its numbers
    move)."""
    shown, lows = [], []
    for module, on_original in hits.items():
        x = _as_matrix(on_original)
        low, high = compare(np.full_like(x, 1.0 / n_views), x).interval
        lows.append(low)
        shown.append(f"{module}: {100 * x.mean():.1f}% of the test images, excess over chance [{low:+.1f}, "
                     f"{high:+.1f}] pp")
    # it applies while any module's lower end lies above 0: the highest one is the margin, either way
    highest = max(lows, default=0.0)
    margin = [(highest, 0.0, "share")]
    if not highest > 0:
        return Reason.nothing(margin)
    return Reason(f"the stand-in turns upright images at random, and its images keep the orientation they had: the "
                  f"largest weight of at least one of this run's modules undoes the turn more often than chance, "
                  f"{100 / n_views:.0f}% ({'; '.join(shown)}), so it is not data without an orientation", margin)


def zero_by_construction(alike: float, model: str, copies: float = 0.0, what: str = "gap") -> str | None:
    """``"decided by construction: ..."`` when in every paired unit of ``model`` the groups compared get the same
    label (``alike`` = 1.0, ``equinb.nlg.alike_unit_share``): its ``what`` is then 0 in every resample, and a
    difference against it can take one sign only. ``copies``: the share of units whose samples are permuted
    copies across the groups (``equinb.nlg.permuted_copy_share``), named as the cause when it is 1.0. Alike texts
    alone do not decide: a scorer that reads the demographic word can label copies differently."""
    if not alike >= 1.0:  # NaN (no units) is not "every unit"
        return None
    cause = " (its samples are permuted copies, paired seeds)" if copies >= 1.0 else ""
    return (f"decided by construction: every unit of {model} is labelled alike across the demographics{cause}, so "
            f"its {what} is 0 on every unit and the difference has one possible sign")


def too_few_seeds(seeds: int, run: str, minimum: int = MIN_SEEDS) -> str | None:
    """``"<run> ran n seeds; a verdict needs <minimum>"`` for a trained run with fewer seeds."""
    return f"{run} ran {seeds} seed{'s' if seeds != 1 else ''} (a verdict needs {minimum})" if seeds < minimum else None


def not_in_this_run(needed: dict[str, str], present: dict[str, Sequence[str]]) -> str | None:
    """``"needs backbone RN101; this run has backbone RN50"`` when a setting the claim is about was not run:
    ``needed`` maps a setting's name to the value the claim needs, ``present`` to the values this run had (an empty
    name prints the values alone)."""
    missing = [key for key, value in needed.items() if value not in present.get(key, ())]
    if not missing:
        return None
    name = lambda key, text: f"{key} {text}" if key else text  # noqa: E731
    wanted = ", ".join(name(key, needed[key]) for key in missing)
    had = "; ".join(name(key, ", ".join(map(str, present.get(key, ()))) or "none") for key in missing)
    return f"{NEEDS_OTHER_SETTING}{wanted}; this run has {had}"


# -- verdicts and rows --

def not_finite(comparison: Comparison | None) -> str | None:
    """``"the compared scores are not all finite ..."`` when the difference or its interval is NaN or infinite
    (a diverged run's NaN weights, say): such an interval neither holds nor excludes 0, and would otherwise read
    as a tested "inconclusive"."""
    if comparison is None or all(math.isfinite(v) for v in (comparison.difference, *comparison.interval)):
        return None
    if math.isfinite(comparison.difference) and all(math.isinf(v) for v in comparison.interval):
        return (f"no interval can be estimated from {comparison.basis}: one seed and no two items of one stratum "
                f"leave the noise without degrees of freedom")
    return (f"the compared scores are not all finite (difference {comparison.difference}, interval "
            f"[{comparison.interval[0]}, {comparison.interval[1]}]): a run gave NaN or infinite scores")


def _seeds_reason(comparison: Comparison | None) -> str | None:
    """The seed rule, applied to every comparison a verdict or an effect reads: a comparison of trained runs (any
    random step) with fewer than ``MIN_SEEDS`` seeds has an items-only interval that leaves out the seeds' noise,
    which can move a trained run by more than the interval is wide."""
    if comparison is None or comparison.deterministic:
        return None
    return too_few_seeds(comparison.seeds, "the compared runs")


def out_of_reach(comparison: Comparison | None, side: int | None) -> str | None:
    """``"out of reach: ..."`` when the verdict could not come out one of its ways: with run a as measured, run b at
    the end of the score scale on every item still gives an interval that holds 0 on the article's ``side`` (the
    claim could never agree), or on the other side (never be reversed). ``side`` 0 (a claim of no difference, or
    an effect without a side): when neither sign is reachable. None when the comparison has no ``reach``, and
    where the measured interval already excludes 0 against the claim: a reversal is evidence against the claim
    whether or not it could have agreed (a claim that cannot agree then reads *reversed* or not tested, as a claim
    of no difference reads *reversed* or *inconclusive*)."""
    if comparison is None or comparison.reach is None or side is None:
        return None
    reference, top, bottom = comparison.reach
    # a sign the measured interval shows is reachable, whatever the ends give (their spread is run a's alone)
    can = {1: top[0] > 0 or comparison.interval[0] > 0, -1: bottom[1] < 0 or comparison.interval[1] < 0}
    if side and comparison.interval[0 if side < 0 else 1] * side < 0:
        return None  # measured on the other side of 0: reversed, whether or not the claim could have agreed

    def needs(sign: int) -> str:
        low, high = top if sign > 0 else bottom
        how = comparison.reach_how[0 if sign > 0 else 1]
        return (f"the first term of the difference {'above' if sign > 0 else 'below'} the second ({reference:.2f} "
                f"as measured): even with {how}, "
                f"the difference would be [{_end(low)}, {_end(high)}], which holds 0")

    if side == 0:
        return None if can[1] or can[-1] else f"out of reach: neither sign could come out; {needs(1)}"
    if not can[side]:
        return f"out of reach: the claim could not agree; it needs {needs(side)}"
    if not can[-side]:
        return f"out of reach: the claim could not be reversed; that needs {needs(-side)}"
    return None


def _end(value: float) -> str:
    """An interval end with a sign and two decimals, or two significant digits where two decimals would print a
    number that is not zero as 0.00 (an end of -0.004 is below zero, which "-0.00" hides)."""
    if value == 0:
        return "+0.00"  # also -0.0, which would print as "-0.00"
    return f"{value:+.2f}" if abs(value) >= 0.005 else f"{value:+.2g}"


def _first_reason(comparison: Comparison | None, side: int | None, reasons: Sequence[str | None]) -> str | None:
    """The first reason, in the order ``judge`` and ``effect`` weigh them, that the comparison gives no verdict:
    the chapter's own ``reasons``, then non-finite numbers, the seed rule and ``out_of_reach``; None if none."""
    return next((r for r in (*reasons, not_finite(comparison), _seeds_reason(comparison),
                             out_of_reach(comparison, side)) if r), None)


def judge(comparison: Comparison | None, side: int | None, reasons: Sequence[str | None] = ()) -> str:
    """The verdict on one claim: the first computed reason that applies (``reasons``, the seed rule, then
    ``out_of_reach``), else the interval against the article's ``side`` of 0 (+1, -1, or 0 for a claim of no
    difference; None: the article gives neither a value nor a direction). A reason that the code's construction
    refutes the claim (``symmetry_by_construction``) gives ``reversed: <reason>``; every other reason gives
    ``not tested here: <reason>``. See the module docstring."""
    reason = _first_reason(comparison, side, reasons)
    if reason and FAILS_BY_CONSTRUCTION in reason:  # the code refutes the claim for any data: no noise to weigh
        return f"reversed: {reason}"
    if reason:
        return f"{NOT_TESTED}: {reason}"
    if comparison is None:
        return f"{NOT_TESTED}: nothing was measured"
    if side is None:
        return f"{NOT_TESTED}: no article value"
    if not comparison.excludes_zero:
        return "inconclusive"
    if side == 0:
        return "reversed"
    return "agrees" if (comparison.interval[0] > 0) == (side > 0) else "reversed"


def effect(comparison: Comparison | None, reasons: Sequence[str | None] = ()) -> str:
    """The effect of one of the book's own changes (no article side): ``non-zero`` when the interval excludes 0,
    ``inconclusive`` when it holds 0, or ``not tested here: <reason>`` (the same seed rule as ``judge``, and
    ``out_of_reach`` when neither sign could come out)."""
    reason = _first_reason(comparison, 0, reasons)
    if reason:
        return f"{NOT_TESTED}: {reason}"
    if comparison is None:
        return f"{NOT_TESTED}: nothing was measured"
    return "non-zero" if comparison.excludes_zero else "inconclusive"


def _numbers(comparison: Comparison | None, decimals: int) -> dict[str, str]:
    d = decimals
    if comparison is None:
        return {"ours": "—", "95% interval": "—", "noise": "—"}
    low, high = comparison.interval
    return {"ours": f"{comparison.difference:+.{d}f}", "95% interval": f"[{low:+.{d}f}, {high:+.{d}f}]",
            "noise": comparison.basis}


def verdict_row(claim_id: str, comparison: Comparison | None, *, reasons: Sequence[str | None] = (),
                decimals: int = 2, note: str = "", changed: dict[str, int] | None = None) -> dict:
    """One row of a verdict table for the registered claim ``claim_id`` (``equinb.claims``): its full text, what
    this build computed (the claim's statistic, and ``note`` where the chapter had to choose, e.g. a baseline),
    the article's value, ours with its interval and basis, and the verdict. A missing number prints as "—".
    ``changed``: per compared finetune stage, the test predictions it changed (kept, not shown: the book's tests
    check that a stage that changed none is never given a verdict). ``MARGINS_KEY``: the margins of the reason
    that decided a *not tested here* verdict, or of a tested one the near misses of its ``reasons`` (the checks
    that compared a trained number and did not apply, ``Reason.nothing``): kept, not shown; the claim list reads
    them to name the verdicts another CPU could turn."""
    from .claims import claim

    c = claim(claim_id)
    article = "—" if c.article_value is None else f"{c.article_value:+.{decimals}f}"
    if c.article_value is None and c.side is not None:
        article = {1: "> 0", -1: "< 0", 0: "= 0"}[c.side]
    tested = f"{c.statistic} ({note})" if note else c.statistic
    numbers = _numbers(comparison, decimals)  # the verdict right after the interval it reads, so it stays in view
    reason = _first_reason(comparison, c.side, reasons)
    margins = getattr(reason, "margins", ()) if reason else [m for r in reasons for m in getattr(r, "margins", ())]
    return {"claim": c.text, "article": article, "ours": numbers["ours"], "95% interval": numbers["95% interval"],
            VERDICT_COLUMN: judge(comparison, c.side, reasons), "noise": numbers["noise"], "tested as": tested,
            "id": c.id, "changed": dict(changed or {}),
            MARGINS_KEY: [[round(value, 4), round(threshold, 4), kind]
                          for value, threshold, kind in margins]}


def effect_row(change: str, comparison: Comparison | None, *, reasons: Sequence[str | None] = (),
               decimals: int = 2) -> dict:
    """One row of a table of the book's own comparisons (no article value): ``change``, ours, the effect."""
    return {"change": change, **_numbers(comparison, decimals), EFFECT_COLUMN: effect(comparison, reasons)}


def verdict_kind(verdict: str) -> str | None:
    """The kind of a verdict ``judge`` gave: agrees, reversed (with or without its reason by construction),
    inconclusive or not tested here; None for text of no such kind."""
    kind = str(verdict).split(":", 1)[0]
    if kind == NOT_TESTED and ":" in str(verdict):
        return NOT_TESTED
    if kind in VERDICTS and (kind == verdict or kind == "reversed"):
        return kind
    return None


def verdict_counts(verdicts: Sequence[str]) -> dict[str, int]:
    """How many verdicts are of each kind (``verdict_kind``): tested, agrees, reversed, inconclusive, not tested
    here, and of the reversed, how many because the code's construction refutes the claim whatever the data
    (``symmetry_by_construction``). A verdict of none of these kinds (a claim no chapter published, a missing
    value) is a ValueError, so the kinds always add up to the claims."""
    kinds = list(VERDICTS)
    found = [verdict_kind(v) for v in verdicts]
    unknown = [v for v, kind in zip(verdicts, found) if kind is None]
    if unknown:
        raise ValueError(f"{len(unknown)} verdict(s) of no known kind ({kinds}, 'reversed: <reason>' or "
                         f"'{NOT_TESTED}: <reason>'): {unknown[:3]}")
    counts = {k: found.count(k) for k in (*kinds, NOT_TESTED)}
    against = sum(kind == "reversed" and FAILS_BY_CONSTRUCTION in str(v) for v, kind in zip(verdicts, found))
    return {"claims": len(verdicts), "tested": sum(counts[k] for k in kinds), **counts,
            "of which reversed by construction": against}
