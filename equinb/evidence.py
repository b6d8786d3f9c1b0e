"""Trained runs as evidence for a verdict: per-seed scores of a stage, and the checks that say when they cannot
test a claim.

A chapter compares two runs (or two stages of one run), each repeated under several seeds (``seed_repeats``).
``compare_runs`` pairs them seed by seed, scores every test item, and returns the ``Comparison`` of
``equinb.verdicts`` together with the computed reasons that apply: a run whose evaluated model is broken (its
finetuning loss diverged, or its accuracy sits at chance), a finetuning stage that changed no test prediction, and
fewer seeds than a verdict needs.
"""

from __future__ import annotations

from typing import Callable, Sequence

import pandas as pd
import torch

from .analysis import no_training_scores
from .setups import TrainingRun, TrainingSetup, correct_by_seed
from .verdicts import (LOSS_BOUND, NOT_TESTED, Comparison, at_chance, below_majority, compare,
                       diverged, effect, solved_without_training, stratified_mean, too_few_seeds, unchanged_stage)
from .validation import check_choice

__all__ = ["STAGES", "STAGE_CHANGE", "stage_runs", "stage_spread", "stage_losses", "ran_away", "diverged_seeds",
           "finetune_changed", "top1_cell", "ran_away_note", "stage_problems", "compare_runs", "no_training_check",
           "best_without_training", "trained_minus_frozen", "no_training_finding"]

STAGES = ("prefinetune", "finetune")


def stage_runs(runs: Sequence[TrainingRun], stage: str) -> list[TrainingRun]:
    """The runs that ran ``stage`` (seed repeats may be prefinetune-only; the first run always ran both)."""
    check_choice(stage, STAGES, "stage")
    return [r for r in runs if stage == "prefinetune" or any(h.get("stage") == "finetune" for h in r.history)]


STAGE_CHANGE = "finetune − prefinetune, same seeds"


def stage_spread(runs: Sequence[TrainingRun], score: Callable[[TrainingRun, str], float] | None = None
                 ) -> list[dict]:
    """Per stage of ``runs`` (one run's seed repeats): how many seeds ran it, the mean and sd of ``score(run,
    stage)`` (default: top-1 in %) over them, and, on the finetune row, the mean change from prefinetuning over
    the seeds that ran both (``STAGE_CHANGE``). A seed repeat stops after prefinetuning where the first run's
    finetuning changed no test prediction, so the two stage means can be over different seeds: only the change
    compares the stages."""
    score = score or (lambda run, stage: run.row[f"{stage}_top1"])
    rows = []
    for stage in STAGES:  # pandas' mean and sd: NaN for no values (no run finetuned), and NaN scores skipped
        values = pd.Series([score(r, stage) for r in stage_runs(runs, stage)], dtype=float)
        row = dict(stage=stage, seeds=len(values), mean=values.mean(), sd=values.std(), **{STAGE_CHANGE: float("nan")})
        if stage == "finetune":
            row[STAGE_CHANGE] = pd.Series([score(r, "finetune") - score(r, "prefinetune") for r in
                                           stage_runs(runs, "finetune")], dtype=float).mean()
        rows.append(row)
    return rows


def finetune_changed(run: TrainingRun) -> int:
    """How many test predictions finetuning changed (0: the stage did nothing a test could see)."""
    return int((run.predictions["finetune"] != run.predictions["prefinetune"]).sum())


def stage_losses(runs: Sequence[TrainingRun], stage: str) -> list[float | None]:
    """Every training loss logged in ``stage`` by the runs (seeds) that ran it."""
    return [h.get("loss") for run in stage_runs(runs, stage) for h in run.history if h.get("stage") == stage]


def ran_away(runs: Sequence[TrainingRun], stage: str) -> list[TrainingRun]:
    """The runs (seeds) that ran ``stage`` and logged a training loss there that ran away (``diverged``: not finite,
    or above ``LOSS_BOUND``)."""
    return [r for r in stage_runs(runs, stage) if diverged(stage_losses([r], stage), "")]


def diverged_seeds(runs: Sequence[TrainingRun], stage: str, name: str) -> str | None:
    """``"<name> diverged in k of n seeds (seed s, ...)"`` when a training loss of ``stage`` ran away (``diverged``:
    not finite, or above ``LOSS_BOUND``) in the runs of some seeds; None when it did in none. A seed's own tables
    may look sound where another seed diverged, so the reason names the seeds."""
    ran, bad = stage_runs(runs, stage), ran_away(runs, stage)
    if not bad:
        return None
    seeds = ", ".join("?" if r.seed is None else str(r.seed) for r in bad)
    return (f"{name} diverged in {len(bad)} of {len(ran)} seeds (seed{'s' if len(bad) > 1 else ''} {seeds}: a {stage} "
            f"training loss above {LOSS_BOUND:.0e})")


def top1_cell(top1: float, runs: Sequence[TrainingRun], stage: str) -> str:
    """A top-1 (%) of ``stage`` for a table beside the article's, ``runs`` the seeds it averages (the first run
    alone for a seed-0 table), marked where it is no result of that stage: "= prefinetune: unchanged" where
    finetuning changed no test prediction of the first run (the number then repeats that run's prefinetune one,
    and its seed repeats stopped before finetuning, so a mean over seeds is the first seed's alone), or "its ...
    loss ran away" where a training loss did, in this stage or in the prefinetuning it starts from. Marks stay
    under eight words, so that a table cell holding one is not squeezed."""
    check_choice(stage, STAGES, "stage")
    marks = []
    if stage == "finetune" and finetune_changed(runs[0]) == 0:
        first = "its first seed" if runs[0].seed is None else f"seed {runs[0].seed}"
        marks.append(("" if len(runs) == 1 else f"{first} alone, ") + "= prefinetune: unchanged")
    for earlier in STAGES[:STAGES.index(stage) + 1]:
        ran, away = len(stage_runs(runs, earlier)), len(ran_away(runs, earlier))
        if away:
            marks.append(f"{earlier} loss ran away in {away}/{ran} seeds" if ran > 1
                         else f"its {earlier} loss ran away")
    return f"{top1:.2f}" + (f" ({'; '.join(marks)})" if marks else "")


def ran_away_note(repeats: dict[str, Sequence[TrainingRun]]) -> str:
    """One sentence for the page beside a table of seeds: every run whose training loss ran away in some seed and
    stage (``diverged_seeds``, one clause per run), or that none did. A seed's own table can look sound where its
    own or another seed's training ran away."""
    clauses = []
    for name, runs in repeats.items():
        notes = [note.removeprefix(f"{name} diverged ") for stage in STAGES
                 if (note := diverged_seeds(runs, stage, name))]
        if notes:
            clauses.append(f"{name} diverged " + " and ".join(notes))
    return "; ".join(clauses) if clauses else "no run's training loss ran away in any seed"


def stage_problems(runs: Sequence[TrainingRun], stage: str, setup: TrainingSetup, name: str) -> list[str | None]:
    """Why ``stage`` of these runs cannot be compared: its finetuning changed no prediction (the first seed's run), a
    training loss of the stage ran away in some seed (prefinetuning keeps the best λ it saw, but a λ picked from a
    run-away loss is no basis for a verdict either), or its accuracy sits at chance. One rule for every chapter.
    ``None`` entries are checks that passed."""
    ran = stage_runs(runs, stage)
    reasons: list[str | None] = []
    if stage == "finetune":
        # decided on the first seed's run: a chapter finetunes the other seeds only where that one changed something
        skipped = len(runs) - len(ran)
        first = f"{name} in the first seed's run" + (
            f", so the other {skipped} seed{'s' if skipped > 1 else ''} ran prefinetuning only" if skipped else "")
        reasons.append(unchanged_stage(runs[0].predictions["prefinetune"], runs[0].predictions["finetune"], first))
    reasons.append(diverged_seeds(runs, stage, name))
    # balanced accuracy where the classes differ in size: a run that answers the majority class for every image
    # has no skill, whatever its top-1
    reasons.append(at_chance(correct_by_seed(ran, stage, setup.test.labels), setup.n_classes, name,
                             labels=setup.test.labels))
    return reasons


def compare_runs(runs_a: Sequence[TrainingRun], stage_a: str, runs_b: Sequence[TrainingRun], stage_b: str,
                 setup: TrainingSetup, names: tuple[str, str], *, balanced: bool = False,
                 scores: dict[str, torch.Tensor] | None = None
                 ) -> tuple[Comparison, list[str | None], dict[str, int]]:
    """Run b at ``stage_b`` minus run a at ``stage_a``, seed by seed (as many seeds as both ran), with the reasons of
    ``stage_problems`` for both, ``too_few_seeds`` and, for top-1, ``below_majority``, and, for each compared finetune
    stage, how many test predictions it changed (``{name: count}``; a verdict row records it). ``balanced``: the
    difference of balanced accuracies (items within classes, the classes weighted equally). ``scores``: per-item scores
    [S, N] to use instead of correctness (e.g. a weight), keyed "a" and "b"."""
    a, b = stage_runs(runs_a, stage_a), stage_runs(runs_b, stage_b)
    n = min(len(a), len(b))
    labels = setup.test.labels
    top1 = scores is None and not balanced  # a comparison of top-1, which the largest class of a test set can lift
    if scores is None:
        scores = {"a": correct_by_seed(a[:n], stage_a, labels), "b": correct_by_seed(b[:n], stage_b, labels)}
    comparison = compare(scores["a"][:n], scores["b"][:n], strata=labels if balanced else None)
    # a finetune stage that changed nothing comes first (``stage_problems`` lists it first): there is no effect to
    # judge, whatever else went wrong
    unchanged, reasons = [], []
    for runs, stage, name in ((runs_a, stage_a, names[0]), (runs_b, stage_b, names[1])):
        problems = stage_problems(runs, stage, setup, name)
        unchanged += problems[:1] if stage == "finetune" else []
        reasons += problems[1:] if stage == "finetune" else problems
    reasons = [*unchanged, *reasons]
    reasons.append(too_few_seeds(n, f"{names[0]} and {names[1]}" if names[0] != names[1] else names[0]))
    if top1:
        reasons.append(below_majority(scores["a"][:n], scores["b"][:n], labels,
                                      (f"{names[0]} {stage_a}", f"{names[1]} {stage_b}")))
    changed = {name: finetune_changed(runs[0]) for name, runs, stage in ((names[0], runs_a, stage_a),
                                                                         (names[1], runs_b, stage_b))
               if stage == "finetune"}
    return comparison, reasons, changed


def no_training_check(setups: Sequence[TrainingSetup]) -> str | None:
    """``solved_without_training`` for a chapter: whether the best no-training baseline of its ``setups`` (each
    head's ``no_training_scores``: vanilla, equitune, equizero, by mean score; the setups share their test set)
    leaves trained runs room to score measurably above it. A claim that compares trained runs is not tested where
    this gives a reason."""
    baseline, score = best_without_training(setups)
    return solved_without_training(score, baseline)


def best_without_training(setups: Sequence[TrainingSetup], chosen_on: str = "test", balanced: bool = False
                          ) -> tuple[str, torch.Tensor]:
    """The best no-training baseline of ``setups`` (each head's ``no_training_scores``, by mean score, or by
    balanced accuracy where ``balanced``) and its per-item test scores. Shapes: -> (name, [N]).

    ``chosen_on="test"``: the best on the test items themselves (the no-training check: is any baseline out of a
    trained run's reach?). ``chosen_on="halves"``: cross-fitted, each half of the test items (even and odd
    positions) scored by the baseline that is best on the other half, so that the pick does not favour the
    baseline the items it is scored on happen to suit (the best of three on the same items scores above its own
    expectation); the name gives both picks where they differ."""
    level = lambda setup: f" ({setup.level})"  # noqa: E731
    baselines = {f"zero-shot {name}" + (level(setup) if len(setups) > 1 else ""): score
                 for setup in setups for name, score in no_training_scores(setup).items()}
    labels = setups[0].test.labels if balanced else None
    if chosen_on == "test":
        baseline = max(baselines, key=lambda name: stratified_mean(baselines[name], labels))
        return baseline, baselines[baseline]
    if chosen_on != "halves":
        raise ValueError(f"chosen_on must be 'test' or 'halves', got {chosen_on!r}")
    n = len(next(iter(baselines.values())))
    halves = (torch.arange(0, n, 2), torch.arange(1, n, 2))
    picks = [max(baselines, key=lambda name: stratified_mean(baselines[name][other],
                                                             None if labels is None else labels[other]))
             for other in halves[::-1]]
    score = torch.empty_like(baselines[picks[0]])
    for half, pick in zip(halves, picks):
        score[half] = baselines[pick][half]
    name = picks[0] if picks[0] == picks[1] else f"{picks[0]} (even items) / {picks[1]} (odd items)"
    return name, score


def trained_minus_frozen(setups: Sequence[TrainingSetup], repeats: dict[str, Sequence[TrainingRun]],
                         balanced: bool = False) -> list[tuple[str, Comparison, list[str | None]]]:
    """Every run and stage of ``repeats`` minus the best no-training baseline of ``setups``, item by item, in pp
    (negative: the trained run does not do what the frozen model does with no training), each with the reasons
    of ``stage_problems``. The baseline is cross-fitted on halves of the test items (``best_without_training``),
    so that the pick does not lower every difference. No best run is picked: a pick between runs a few tenths
    apart would differ between CPUs. ``balanced``: balanced accuracy (picked and compared with the classes as
    strata), for test sets whose classes differ in size. Returns (description, comparison, reasons) per run and
    stage."""
    labels = setups[0].test.labels
    strata = labels if balanced else None
    baseline, score = best_without_training(setups, chosen_on="halves", balanced=balanced)
    metric = " balanced accuracy" if balanced else ""
    rows = []
    for name, runs in repeats.items():
        for stage in STAGES:
            scores = correct_by_seed(stage_runs(runs, stage), stage, labels)
            seeds = f"{scores.shape[0]} seed{'s' if scores.shape[0] != 1 else ''}"
            rows.append((f"{name} at {stage} ({100 * stratified_mean(scores, strata):.2f}%{metric}, {seeds}) minus "
                         f"{baseline} ({100 * stratified_mean(score, strata):.2f}%; each half of the items scored by "
                         "the best on the other half)", compare(score.expand_as(scores), scores, strata=strata),
                         stage_problems(runs, stage, setups[0], name)))
    return rows


def no_training_finding(rows: Sequence[tuple[str, Comparison | None, Sequence[str | None]]]) -> str:
    """One sentence on the rows of ``trained_minus_frozen`` (description, comparison, reasons): how many of the
    trained runs and stages that could be judged (``effect``) score below, and how many above, the best model
    without training. Each is its own 95% interval; the count is not corrected for how many there are."""
    effects = [(comparison, effect(comparison, reasons)) for _, comparison, reasons in rows]
    judged = [(comparison, kind) for comparison, kind in effects if not kind.startswith(NOT_TESTED)]
    below = sum(kind == "non-zero" and comparison.interval[1] < 0 for comparison, kind in judged)
    above = sum(kind == "non-zero" and comparison.interval[0] > 0 for comparison, kind in judged)
    return (f"of the {len(judged)} trained runs and stages that could be judged ({len(rows) - len(judged)} more "
            f"could not), {below} score below the best model without training and {above} above it, beyond the "
            f"noise (each a 95% interval of its own, not corrected for the {len(judged)} comparisons)")
