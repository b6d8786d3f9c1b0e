"""A long chapter reports how far its training runs have got to a file of the user's, never into the notebook."""

from __future__ import annotations

import dataclasses
import re
import warnings
from pathlib import Path

import pytest
import torch

import equinb.progress
from equinb.engine import TrainConfig
from equinb.progress import PROGRESS_ENV, RoundClock, counted, report
from equinb.setups import run_training

from test_engine import SMALL, _setup


def _lines(path: Path) -> list[str]:
    """The lines without their time of day (each must start with one)."""
    lines = path.read_text().splitlines()
    assert all(re.match(r"\d\d:\d\d:\d\d ", line) for line in lines), lines
    return [line[9:] for line in lines]


def test_nothing_is_written_without_the_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    report("a line")
    assert not list(tmp_path.iterdir())


def test_a_file_that_cannot_be_written_warns_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(equinb.progress, "_failed_paths", set())
    monkeypatch.setenv(PROGRESS_ENV, str(tmp_path))  # a folder: open() fails
    with pytest.warns(UserWarning, match="cannot be written"):
        report("first")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report("second")  # no second warning, no error


def test_a_round_line_says_the_time_left_at_the_stage_mean_pace(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "progress.log"
    monkeypatch.setenv(PROGRESS_ENV, str(log))
    clock = RoundClock("run A", dict(finetune=4))
    clock.append(dict(stage="finetune", round=0, steps=5, seconds=2.0, evaluation_seconds=1.0, warm=False))
    clock.append(dict(stage="finetune", round=1, steps=5, seconds=4.0, evaluation_seconds=0.0, warm=True))
    clock.append(dict(stage="finetune", round=3, steps=5, seconds=1.0, evaluation_seconds=0.0, warm=True))
    assert _lines(log) == [
        "run A: finetune round 1 of 4, 5 steps in 2.0 s (+1.0 s evaluating); about 9 s left in finetune",
        "run A: finetune round 2 of 4, 5 steps in 4.0 s (+0.0 s evaluating); about 7 s left in finetune",
        "run A: finetune round 4 of 4, 5 steps in 1.0 s (+0.0 s evaluating)",
    ]
    assert len(clock) == 3 and type(list(clock)[0]) is dict


def test_a_training_run_reports_each_round_then_its_cached_copy(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "progress.log"
    setup = dataclasses.replace(_setup(), key="toy")  # its frozen pass, before the log is set, reports nothing
    monkeypatch.setenv(PROGRESS_ENV, str(log))
    config = TrainConfig.updated(**SMALL)  # 3 prefinetuning rounds, 2 finetuning rounds
    run_training(setup, config, cache_dir=tmp_path / "runs")
    run_training(setup, config, cache_dir=tmp_path / "runs")
    lines = _lines(log)
    label = lines[0].removesuffix(": training")
    assert re.fullmatch(r"lambda_equitune on rot90, seed 0 \(run [0-9a-f]{8}\)", label), lines[0]
    stages = [re.match(re.escape(label) + r": (\w+ round \d of \d),", line) for line in lines[1:-2]]
    assert [m and m.group(1) for m in stages] == ["prefinetune round 1 of 3", "prefinetune round 2 of 3",
                                                  "prefinetune round 3 of 3", "finetune round 1 of 2",
                                                  "finetune round 2 of 2"]
    assert re.fullmatch(re.escape(label) + r": trained in \d+\.\d s", lines[-2])
    assert lines[-1] == f"{label}: read from the cache"
    # the saved run holds plain rows, which a weights-only load accepts
    saved = torch.load(next((tmp_path / "runs").glob("run_*")), weights_only=True)
    assert type(saved["clock"]) is list and len(saved["clock"]) == 5


def test_only_a_result_actually_loaded_is_reported_as_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A damaged file is recomputed, not 'read from the cache'; the next call reads what was saved."""
    from equinb.cache import load_or_compute

    log = tmp_path / "progress.log"
    monkeypatch.setenv(PROGRESS_ENV, str(log))
    path = tmp_path / "result.pt"
    path.write_bytes(b"not a torch file")
    with pytest.warns(RuntimeWarning, match="could not be read"):
        assert load_or_compute(path, lambda: {"a": 1}, progress_label="result") == {"a": 1}
    assert not log.exists()
    assert load_or_compute(path, lambda: pytest.fail("computed again"), progress_label="result") == {"a": 1}
    assert _lines(log) == ["result: read from the cache"]


def test_a_counted_pass_reports_at_most_every_interval_and_when_it_ends(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "progress.log"
    monkeypatch.setenv(PROGRESS_ENV, str(log))
    ticks = iter([0.0, 10.0, 40.0, 50.0, 100.0, 130.0, 131.0])  # the clock at start and after each item
    monkeypatch.setattr(equinb.progress.time, "perf_counter", lambda: next(ticks))
    assert list(counted("abcde", "pass P", total=5)) == list("abcde")
    lines = _lines(log)
    assert lines == ["pass P: 2 of 5 batches; about 60 s left", "pass P: 4 of 5 batches; about 25 s left",
                     "pass P: 5 batches in 131.0 s"]


def test_a_frozen_feature_pass_reports_its_label(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from equinb.engine import ViewData, extract_view_features

    log = tmp_path / "progress.log"
    monkeypatch.setenv(PROGRESS_ENV, str(log))
    views = ViewData(torch.randn(5, 4, 3), torch.zeros(5, dtype=torch.long))
    out = extract_view_features(lambda v: 2 * v, views, batch_size=2, label="toy views")
    assert torch.equal(out, 2 * views.inputs)
    assert re.fullmatch(r"toy views: 3 batches in \d+\.\d s", _lines(log)[-1])
