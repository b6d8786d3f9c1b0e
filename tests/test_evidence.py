"""Trained runs as verdict evidence: stages, the checks that rule a comparison out, seeds paired by index."""

from __future__ import annotations

import pytest
import torch

from equinb import evidence
from equinb.engine import ViewData
from equinb.evidence import (compare_runs, diverged_seeds, finetune_changed, ran_away_note, stage_losses,
                             stage_problems, stage_runs, top1_cell, trained_minus_frozen)
from equinb.groups import get_group
from equinb.setups import TrainingRun, TrainingSetup

N, K = 200, 4
LABELS = torch.arange(N) % K


def _setup() -> TrainingSetup:
    data = ViewData(torch.zeros(N, 4, 1), LABELS)
    return TrainingSetup(get_group("rot90"), lambda: None, None, data, data, torch.zeros(N, 4, 1), torch.zeros(N, 4, 1))


def _run(right: float, finetuned_right: float | None = None, losses=(1.0, 0.5), seed: int = 0) -> TrainingRun:
    """A run whose prefinetune predictions are right on the first ``right`` share of the items."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(N, generator=gen)

    def predictions(share):
        wrong = (LABELS + 1) % K
        out = wrong.clone()
        out[order[:int(share * N)]] = LABELS[order[:int(share * N)]]
        return out

    history = [dict(stage="prefinetune", loss=loss) for loss in losses]
    predicted = {"prefinetune": predictions(right)}
    if finetuned_right is not None:
        history += [dict(stage="finetune", loss=loss) for loss in losses]
        predicted["finetune"] = predictions(finetuned_right)
    else:
        predicted["finetune"] = predicted["prefinetune"]
    return TrainingRun({}, history, {}, predicted, [])


def test_stages_and_changed_predictions() -> None:
    full, short = _run(0.8, 0.9), _run(0.8)
    assert stage_runs([full, short], "prefinetune") == [full, short] and stage_runs([full, short], "finetune") == [full]
    assert finetune_changed(full) == 20 and finetune_changed(short) == 0
    with pytest.raises(ValueError, match="unknown stage"):
        stage_runs([full], "test")


def test_problems_are_computed_per_stage() -> None:
    setup = _setup()
    assert not any(stage_problems([_run(0.8, 0.9)], "finetune", setup, "run"))
    assert "changed no test prediction of run" in stage_problems([_run(0.8, 0.8)], "finetune", setup, "run")[0]
    diverged = stage_problems([_run(0.8, 0.9, losses=(1.0, 1e9))], "finetune", setup, "run")
    assert any(r and "diverged" in r for r in diverged)
    # prefinetuning keeps the best λ it saw, but a run-away loss is no basis for a verdict either: one rule
    run_away = stage_problems([_run(0.8, losses=(1e9, 1.0))], "prefinetune", setup, "run")
    assert any(r and "diverged in 1 of 1 seeds" in r and "a prefinetune training loss" in r for r in run_away)
    assert not any(stage_problems([_run(0.8, losses=(1.0, 0.5))], "prefinetune", setup, "run"))
    assert any(r and "at chance" in r for r in stage_problems([_run(0.25)], "prefinetune", setup, "run"))


def test_the_ran_away_note_names_each_run_and_stage_once() -> None:
    sound, away = _run(0.8, 0.9)._replace(seed=0), _run(0.8, 0.9, losses=(1.0, 1e9))._replace(seed=2)
    assert ran_away_note({"a": [sound], "b": [sound]}) == "no run's training loss ran away in any seed"
    assert ran_away_note({"a": [sound], "b": [sound, away]}) == (
        "b diverged in 1 of 2 seeds (seed 2: a prefinetune training loss above 1e+06) and in 1 of 2 seeds (seed 2: "
        "a finetune training loss above 1e+06)")


def test_a_table_cell_marks_a_number_that_is_no_result_of_its_stage() -> None:
    """A top-1 beside the article's says where finetuning changed nothing or a loss (this stage's or the
    prefinetuning it starts from) ran away; a sound number is the number alone."""
    sound, unchanged = _run(0.8, 0.9), _run(0.8)
    away = _run(0.8, losses=(1e9, 1.0))  # its prefinetuning ran away, and it was never finetuned
    assert top1_cell(80.0, [sound], "prefinetune") == "80.00" and top1_cell(90.0, [sound], "finetune") == "90.00"
    assert top1_cell(80.0, [unchanged], "finetune") == "80.00 (= prefinetune: unchanged)"
    assert top1_cell(80.0, [unchanged, sound], "finetune") == (
        "80.00 (its first seed alone, = prefinetune: unchanged)")
    assert top1_cell(80.0, [unchanged._replace(seed=3), sound], "finetune").startswith("80.00 (seed 3 alone, ")
    assert top1_cell(80.0, [away], "prefinetune") == "80.00 (its prefinetune loss ran away)"
    assert top1_cell(80.0, [sound, away, sound], "prefinetune") == (
        "80.00 (prefinetune loss ran away in 1/3 seeds)")
    finetuned_away = _run(0.8, 0.9, losses=(1.0, 1e9))  # both stages log the run-away loss
    assert top1_cell(90.0, [finetuned_away], "finetune") == (
        "90.00 (its prefinetune loss ran away; its finetune loss ran away)")
    with pytest.raises(ValueError, match="unknown stage"):
        top1_cell(80.0, [sound], "test")


def test_an_unchanged_finetune_stage_says_it_was_decided_on_the_first_seed_and_what_the_others_ran() -> None:
    """A chapter finetunes the other seeds only where the first seed's finetuning changed a prediction: the reason
    says so, rather than reading as a property of every seed."""
    setup = _setup()
    repeats = [_run(0.8, 0.8), _run(0.8, seed=1), _run(0.8, seed=2)]  # seeds 1 and 2: prefinetuning only
    assert stage_problems(repeats, "finetune", setup, "updated")[0] == (
        "finetuning changed no test prediction of updated in the first seed's run, so the other 2 seeds ran "
        "prefinetuning only")
    all_finetuned = [_run(0.8, 0.8), _run(0.8, 0.8, seed=1)]
    assert stage_problems(all_finetuned, "finetune", setup, "updated")[0] == (
        "finetuning changed no test prediction of updated in the first seed's run")


def test_compare_runs_pairs_seeds_and_needs_five() -> None:
    setup = _setup()
    a = [_run(0.6, seed=s) for s in range(5)]
    b = [_run(0.8, seed=s) for s in range(5)]
    comparison, reasons, changed = compare_runs(a, "prefinetune", b, "prefinetune", setup, ("a", "b"))
    assert comparison.seeds == 5 and comparison.difference == pytest.approx(20.0)
    assert not any(reasons) and changed == {}
    comparison, reasons, _ = compare_runs(a[:2], "prefinetune", b, "prefinetune", setup, ("a", "b"))
    assert comparison.seeds == 2 and "a and b ran 2 seeds (a verdict needs 5)" in reasons
    _, reasons, changed = compare_runs([_run(0.6, 0.6)], "prefinetune", [_run(0.6, 0.6)], "finetune", setup,
                                       ("x", "x"))
    assert changed == {"x": 0} and any(r and "changed no test prediction" in r for r in reasons)
    # a finetune that changed nothing is the first reason, before a prefinetune loss that ran away
    before = _run(0.6, 0.6, losses=(1e9, 1.0))
    _, reasons, _ = compare_runs([before], "prefinetune", [before], "finetune", setup, ("x", "x"))
    named = [r for r in reasons if r]
    assert "changed no test prediction" in named[0] and any("diverged" in r for r in named[1:])


@pytest.mark.parametrize("side, expected", [(1, "reversed"), (-1, "agrees")])
def test_compare_runs_through_judge_can_come_out_reversed(side: int, expected: str) -> None:
    """Five seeds of run b clearly below run a: against a claimed gain (side +1) the verdict is reversed."""
    from equinb.verdicts import judge

    setup = _setup()
    a = [_run(0.8, seed=s) for s in range(5)]
    b = [_run(0.5, seed=s) for s in range(5)]
    comparison, reasons, _ = compare_runs(a, "prefinetune", b, "prefinetune", setup, ("a", "b"))
    assert comparison.interval[1] < 0 and judge(comparison, side, reasons) == expected


def test_every_trained_run_is_set_against_the_best_frozen_baseline(monkeypatch) -> None:
    frozen = {"equitune": torch.zeros(N, dtype=torch.float64), "equizero": torch.zeros(N, dtype=torch.float64)}
    frozen["equizero"][:int(0.9 * N)] = 1  # the frozen model's best: 90%
    monkeypatch.setattr(evidence, "no_training_scores", lambda setup: frozen)
    repeats = {"low": [_run(0.5, 0.5, seed=s) for s in range(3)], "high": [_run(0.7, 0.8, seed=s) for s in range(3)]}
    rows = trained_minus_frozen([_setup()], repeats)
    halves = "each half of the items scored by the best on the other half"
    assert [text for text, _, _ in rows] == [
        f"low at prefinetune (50.00%, 3 seeds) minus zero-shot equizero (90.00%; {halves})",
        f"low at finetune (50.00%, 3 seeds) minus zero-shot equizero (90.00%; {halves})",
        f"high at prefinetune (70.00%, 3 seeds) minus zero-shot equizero (90.00%; {halves})",
        f"high at finetune (80.00%, 3 seeds) minus zero-shot equizero (90.00%; {halves})"]
    high_finetune = rows[3][1]
    assert high_finetune.difference == pytest.approx(-10.0) and high_finetune.interval[1] < 0  # below the frozen
    assert any(r and "changed no test prediction of low" in r for r in rows[1][2])  # a stage that did nothing
    frozen["equizero"][:] = 0  # a frozen model that gets nothing right: then training adds
    assert trained_minus_frozen([_setup()], repeats)[3][1].interval[0] > 0


def test_the_baseline_is_cross_fitted_on_halves_of_the_test_items(monkeypatch) -> None:
    """Three baselines with the same expected score, each lucky on other items: the best of them on all items is
    above what any scores in expectation; cross-fitted, each half is scored by the pick of the other half, so
    the baseline's score is an unbiased draw, and every item keeps its pair."""
    even, odd = torch.arange(0, N, 2), torch.arange(1, N, 2)
    a, b = torch.zeros(N, dtype=torch.float64), torch.zeros(N, dtype=torch.float64)
    a[even[:60]], a[odd[:40]] = 1, 1  # best on the even items, 50% overall
    b[even[:40]], b[odd[:60]] = 1, 1  # best on the odd items, 50% overall
    monkeypatch.setattr(evidence, "no_training_scores", lambda setup: {"a": a, "b": b})
    name, score = evidence.best_without_training([_setup()], chosen_on="halves")
    # the even items are scored by b (best on the odd ones), the odd items by a: 40 + 40 of 200 right
    assert name == "zero-shot b (even items) / zero-shot a (odd items)" and float(score.mean()) == pytest.approx(0.4)
    assert torch.equal(score[even], b[even]) and torch.equal(score[odd], a[odd])
    name, score = evidence.best_without_training([_setup()])  # the no-training check: the best on all items
    assert float(score.mean()) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="chosen_on must be"):
        evidence.best_without_training([_setup()], chosen_on="train")


def test_on_unequal_classes_the_baseline_is_picked_and_compared_in_balanced_accuracy(monkeypatch) -> None:
    """A baseline that answers the largest class is the best in top-1 (80%) and a coin in balanced accuracy (50%);
    one right on 60% of every class is the better baseline for a balanced comparison."""
    labels = (torch.arange(N) >= 160).long()  # 160 items of class 0, 40 of class 1
    data = ViewData(torch.zeros(N, 4, 1), labels)
    setup = TrainingSetup(get_group("rot90"), lambda: None, None, data, data, torch.zeros(N, 4, 1),
                          torch.zeros(N, 4, 1))
    majority = (labels == 0).double()
    fair = (torch.arange(N) % 5 < 3).double()  # 60% of each class, and of each half of the items
    monkeypatch.setattr(evidence, "no_training_scores", lambda setup: {"majority": majority, "fair": fair})
    assert evidence.best_without_training([setup], chosen_on="halves")[0] == "zero-shot majority"
    name, score = evidence.best_without_training([setup], chosen_on="halves", balanced=True)
    assert name == "zero-shot fair" and torch.equal(score, fair)
    perfect = TrainingRun({}, [dict(stage="prefinetune", loss=1.0), dict(stage="finetune", loss=1.0)], {},
                          {"prefinetune": labels.clone(), "finetune": labels.clone()}, [])
    (text, comparison, _), _ = trained_minus_frozen([setup], {"perfect": [perfect]}, balanced=True)
    assert text.startswith("perfect at prefinetune (100.00% balanced accuracy, 1 seed) minus zero-shot fair (60.00%;")
    assert comparison.difference == pytest.approx(40.0)  # 100% - 60%, both balanced
    # in top-1 the baseline is the majority answer: 100% - 80%
    assert trained_minus_frozen([setup], {"perfect": [perfect]})[0][1].difference == pytest.approx(20.0)


def test_a_divergence_names_the_seeds_whose_loss_ran_away() -> None:
    runs = [_run(0.8, 0.9)._replace(seed=0), _run(0.8, 0.9, losses=(1.0, 1e9))._replace(seed=3),
            _run(0.8, 0.9, losses=(float("nan"),))._replace(seed=4)]
    assert diverged_seeds(runs, "finetune", "run") == ("run diverged in 2 of 3 seeds (seeds 3, 4: a finetune training "
                                                       "loss above 1e+06)")
    assert diverged_seeds(runs[:1], "finetune", "run") is None and "seed ?:" in diverged_seeds([runs[1]._replace(
        seed=None)], "prefinetune", "run")
    assert any(r and "in 1 of 1 seeds (seed 3" in r for r in stage_problems(runs[1:2], "finetune", _setup(), "run"))


def test_stage_losses_are_the_stage_s_own() -> None:
    runs = [_run(0.8, 0.9, losses=(1.0, 2.0)), _run(0.8)]  # the second never finetuned
    assert stage_losses(runs, "finetune") == [1.0, 2.0] and stage_losses(runs, "prefinetune") == [1.0, 2.0, 1.0, 0.5]


def _finding_row(low: float, high: float, reasons: tuple = ()) -> tuple:
    """A row of ``trained_minus_frozen`` whose interval is [low, high] (pp), five seeds."""
    from equinb.verdicts import Comparison

    return ("run", Comparison((low + high) / 2, (low, high), 5, 100), list(reasons))


def test_the_no_training_finding_counts_judged_rows_by_the_sign_of_their_interval() -> None:
    from equinb.evidence import no_training_finding

    rows = [_finding_row(-15.0, -11.0), _finding_row(1.0, 3.0), _finding_row(-2.0, 1.0),
            _finding_row(-6.0, -3.0, ("the compared runs ran 1 seed (a verdict needs 5)",))]
    assert no_training_finding(rows) == ("of the 3 trained runs and stages that could be judged (1 more could "
                                         "not), 1 score below the best model without training and 1 above it, "
                                         "beyond the noise (each a 95% interval of its own, not corrected for the "
                                         "3 comparisons)")


def test_stage_spread_compares_the_stages_on_the_same_seeds_only() -> None:
    """A seed repeat that stopped after prefinetuning counts in the prefinetune mean, not in the change: the two
    stage means (55 over two seeds, 52 over one) would suggest finetuning lost 3 points; it gained 2."""
    from types import SimpleNamespace

    from equinb.evidence import STAGE_CHANGE, stage_spread

    finetuned = SimpleNamespace(row={"prefinetune_top1": 50.0, "finetune_top1": 52.0},
                                history=[{"stage": "prefinetune"}, {"stage": "finetune"}])
    stopped = SimpleNamespace(row={"prefinetune_top1": 60.0}, history=[{"stage": "prefinetune"}])
    pre, fine = stage_spread([finetuned, stopped])
    assert (pre["seeds"], pre["mean"], fine["seeds"], fine["mean"]) == (2, 55.0, 1, 52.0)
    assert fine[STAGE_CHANGE] == 2.0 and pre[STAGE_CHANGE] != pre[STAGE_CHANGE]  # NaN: no change on that row


def test_stage_spread_without_a_finetuned_run_gives_missing_numbers_not_an_error() -> None:
    from types import SimpleNamespace

    from equinb.evidence import STAGE_CHANGE, stage_spread

    stopped = SimpleNamespace(row={"prefinetune_top1": 60.0}, history=[{"stage": "prefinetune"}])
    pre, fine = stage_spread([stopped])
    assert pre["mean"] == 60.0 and fine["seeds"] == 0
    assert all(v != v for v in (pre["sd"], fine["mean"], fine[STAGE_CHANGE]))  # NaN, printed as "—"


def test_compare_runs_pairs_the_seeds_by_index() -> None:
    """Seeds of different levels, b ten points above a on each: pairing by index is the comparison of the matrices."""
    from equinb.setups import correct_by_seed
    from equinb.verdicts import compare

    a = [_run(0.5 + 0.05 * s, seed=s) for s in range(5)]
    b = [_run(0.6 + 0.05 * s, seed=s) for s in range(5)]
    comparison, _, _ = compare_runs(a, "prefinetune", b, "prefinetune", _setup(), ("a", "b"))
    assert comparison == compare(correct_by_seed(a, "prefinetune", LABELS), correct_by_seed(b, "prefinetune", LABELS))


def test_at_chance_is_read_over_the_seeds_that_ran_the_stage() -> None:
    """Only seed 0 finetuned (the others ran prefinetuning only, at chance): its finetune stage is not at chance."""
    repeats = [_run(0.8, 0.9), _run(0.25, seed=1), _run(0.25, seed=2)]
    assert not any(r and "at chance" in r for r in stage_problems(repeats, "finetune", _setup(), "r"))


def test_an_inconclusive_difference_counts_neither_below_nor_above() -> None:
    from equinb.evidence import no_training_finding

    assert "0 score below the best model without training and 0 above it, beyond the noise" in no_training_finding(
        [_finding_row(-0.5, 1.5)])
