"""A training run that is stopped goes on from its last save and ends exactly as a run that was never stopped."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

import equinb.cache
import equinb.progress
import equinb.setups
from equinb.engine import TrainConfig, finetune, finetuned_part
from equinb.setups import run_training

from test_engine import SMALL, _model, _setup

# three finetuning rounds, so that a stop can fall between two of them; shuffled data continue across rounds,
# so a resumed run that restarted the data stream would see other batches
CONFIGS = {
    "original": TrainConfig.original(**{**SMALL, "finetune_rounds": 3}),
    "updated, shuffled, BatchNorm trained": TrainConfig.updated(**{**SMALL, "finetune_rounds": 3},
                                                               data_order="shuffle", trunk_mode="train"),
}


def _finetune(config: TrainConfig, **options) -> tuple[torch.nn.Module, list[dict], torch.Tensor | None]:
    setup = _setup(batchnorm=True)
    model = _model(setup, config)
    history, predicted = finetune(model, setup.train, setup.test, config, train_lambda_feats=setup.train_feats,
                                  test_lambda_feats=setup.test_feats, **options)
    return model, history, predicted


def _trained_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {**{f"part.{k}": v for k, v in finetuned_part(model).state_dict().items()},
            **{f"weight_net.{k}": v for k, v in model.weight_net.state_dict().items()}}


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("name", list(CONFIGS))
def test_finetuning_resumed_after_any_round_ends_as_the_unstopped_run(name: str) -> None:
    """Weights, BatchNorm statistics, momenta (CLIP's fp16 storage emulated), dropout, data order and the random
    group element of each batch all carry over: every resumed run ends bit for bit where the whole run ended, and
    trains only the rounds after its state."""
    config = CONFIGS[name]
    states = []
    whole, history, predicted = _finetune(config, checkpoint=lambda capture: states.append(capture()))
    assert [s["next_round"] for s in states] == [1, 2, 3]
    for state in states:
        clock = []
        resumed, resumed_history, resumed_predicted = _finetune(config, resume=state, clock=clock)
        assert [c["round"] for c in clock] == list(range(state["next_round"], 3))  # only the rounds left
        assert resumed_history == history
        assert torch.equal(resumed_predicted, predicted)
        _assert_same_state(_trained_state(resumed), _trained_state(whole))


def test_a_state_is_a_copy_that_later_steps_do_not_change() -> None:
    config = CONFIGS["original"]
    states = []
    _finetune(config, checkpoint=lambda capture: states.append(capture()))
    first = _trained_state(_finetune(config, resume=states[0])[0])
    again = _trained_state(_finetune(config, resume=states[0])[0])
    _assert_same_state(first, again)
    assert not all(torch.equal(a, b) for a, b in zip(states[0]["part"].values(), states[-1]["part"].values()))


def test_a_state_of_another_schedule_is_refused() -> None:
    states = []
    _finetune(CONFIGS["original"], checkpoint=lambda capture: states.append(capture()))
    shorter = dataclasses.replace(CONFIGS["original"], finetune_rounds=2)
    with pytest.raises(ValueError, match="cannot resume finetuning: the state is of round 2"):
        _finetune(shorter, resume=states[-1])


class Stop(Exception):
    """Stands for a kernel interrupted or a machine lost in the middle of a run."""


def _stop_after_saves(monkeypatch: pytest.MonkeyPatch, saves: int) -> list[Path]:
    """Make the run's ``saves``-th save of its partial state the last thing it does."""
    written, save = [], equinb.cache.atomic_save

    def save_then_stop(obj, path, **options):
        save(obj, path, **options)
        written.append(Path(path))
        if len(written) == saves:
            raise Stop

    monkeypatch.setattr(equinb.cache, "atomic_save", save_then_stop)
    return written


def _compare_runs(a: equinb.setups.TrainingRun, b: equinb.setups.TrainingRun) -> None:
    assert a.row == b.row and a.history == b.history and a.drift == b.drift
    assert a.predictions.keys() == b.predictions.keys()
    for k in a.predictions:
        assert torch.equal(a.predictions[k], b.predictions[k]), k
    for stage in a.states:
        _assert_same_state(a.states[stage], b.states[stage])


@pytest.mark.parametrize("saves", [1, 2, 4])
def test_a_stopped_run_goes_on_from_its_last_save(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 saves: int) -> None:
    """Stopped after prefinetuning (1 save), after finetuning's first round (2) or after its last, before the
    ablations (4): started again, the run does not prefinetune again, trains only the rounds left and is saved
    exactly as the run that was never stopped, clock rows of every round included; its partial file is removed."""
    setup = dataclasses.replace(_setup(batchnorm=True), key="toy")
    config = CONFIGS["updated, shuffled, BatchNorm trained"]
    whole = run_training(setup, config, cache_dir=tmp_path / "whole", ablate=True)
    assert not list((tmp_path / "whole").glob("partial_*"))  # the default saves nothing of a run this short

    save = equinb.cache.atomic_save
    written = _stop_after_saves(monkeypatch, saves)
    with pytest.raises(Stop):
        run_training(setup, config, cache_dir=tmp_path / "stopped", ablate=True, checkpoint_every_s=0)
    assert [p.name.startswith("partial_") for p in written] == [True] * saves
    assert not list((tmp_path / "stopped").glob("run_*"))

    monkeypatch.setattr(equinb.cache, "atomic_save", save)
    monkeypatch.setattr(equinb.setups, "prefinetune", lambda *a, **k: pytest.fail("prefinetuned again"))
    trained_rounds = []
    engine_finetune = equinb.setups.finetune

    def counting_finetune(*args, **options):
        history, predicted = engine_finetune(*args, **options)
        trained_rounds.append(len([c for c in options["clock"] if c["stage"] == "finetune"]))
        return history, predicted

    monkeypatch.setattr(equinb.setups, "finetune", counting_finetune)
    log = tmp_path / "progress.log"
    monkeypatch.setenv(equinb.progress.PROGRESS_ENV, str(log))
    resumed = run_training(setup, config, cache_dir=tmp_path / "stopped", ablate=True, checkpoint_every_s=0)
    _compare_runs(resumed, whole)
    # one clock row per round: those restored from the save and those trained after it, none twice
    assert trained_rounds == [3]
    # the progress file says that the run went on, from where, and counts the rounds' time before the stop
    lines = log.read_text()
    pre, done = config.prefinetune_rounds, {1: 0, 2: 1, 4: 3}[saves]
    assert re.search(rf": resumed from partial_run_\w+\.pt \(rounds done: prefinetune {pre} of {pre}, finetune {done} "
                     r"of 3; [0-9.]+ s of rounds before the stop\)", lines)
    assert re.search(r": trained in [0-9.]+ s, [0-9.]+ s with its rounds before the stop\n", lines)
    saved = {p.name: torch.load(p, weights_only=True) for p in (tmp_path / "stopped").glob("run_*")}
    reference = {p.name: torch.load(p, weights_only=True) for p in (tmp_path / "whole").glob("run_*")}
    assert saved.keys() == reference.keys()
    name = next(iter(saved))
    assert [(c["stage"], c["round"]) for c in saved[name]["clock"]] == [
        (c["stage"], c["round"]) for c in reference[name]["clock"]]
    # the first round the new process trains warms up again, so no rate is read from it
    first_after = {1: None, 2: 1, 4: None}[saves]
    assert [c["warm"] for c in saved[name]["clock"] if c["stage"] == "finetune"] == [
        r > 0 and r != first_after for r in range(3)]
    assert not list((tmp_path / "stopped").glob("partial_*"))


def test_runs_stopped_in_one_folder_each_go_on_from_their_own_save(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    setup = dataclasses.replace(_setup(batchnorm=True), key="toy")
    configs = list(CONFIGS.values())
    wholes = [run_training(setup, c, cache_dir=tmp_path / "whole") for c in configs]
    save = equinb.cache.atomic_save
    for config, saves in zip(configs, (2, 3)):
        _stop_after_saves(monkeypatch, saves)
        with pytest.raises(Stop):
            run_training(setup, config, cache_dir=tmp_path / "stopped", checkpoint_every_s=0)
    assert len(list((tmp_path / "stopped").glob("partial_*"))) == 2
    monkeypatch.setattr(equinb.cache, "atomic_save", save)
    for config, whole in zip(configs, wholes):
        _compare_runs(run_training(setup, config, cache_dir=tmp_path / "stopped", checkpoint_every_s=0), whole)
    assert not list((tmp_path / "stopped").glob("partial_*"))


def test_a_save_that_fails_for_the_machine_warns_and_the_run_goes_on(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk while saving progress must not cost the run: it warns once, stops saving and ends as usual."""
    import errno

    setup = dataclasses.replace(_setup(), key="toy")
    config = TrainConfig.updated(**SMALL)
    whole = run_training(setup, config, cache_dir=tmp_path / "whole")
    save, tries = equinb.cache.atomic_save, []

    def full_disk(obj, path, **options):
        if Path(path).name.startswith("partial_"):
            tries.append(path)
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(obj, path, **options)

    monkeypatch.setattr(equinb.cache, "atomic_save", full_disk)
    with pytest.warns(RuntimeWarning, match="could not save progress .* going on without saving it"):
        again = run_training(setup, config, cache_dir=tmp_path / "full", checkpoint_every_s=0)
    _compare_runs(again, whole)
    assert len(tries) == 1 and len(list((tmp_path / "full").glob("run_*.pt"))) == 1


def test_a_damaged_partial_file_is_set_aside_and_the_run_starts_over(tmp_path: Path) -> None:
    setup = dataclasses.replace(_setup(), key="toy")
    config = TrainConfig.updated(**SMALL)
    whole = run_training(setup, config, cache_dir=tmp_path / "whole")
    name = next((tmp_path / "whole").glob("run_*.pt")).name
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / f"partial_{name}").write_bytes(b"not a torch file")
    with pytest.warns(RuntimeWarning, match="could not be read"):
        again = run_training(setup, config, cache_dir=tmp_path / "damaged")
    _compare_runs(again, whole)
    assert (tmp_path / "damaged" / f"partial_{name}.damaged").exists()


@pytest.mark.parametrize("every", [-1.0, float("nan")])
def test_a_negative_save_interval_is_refused(every: float) -> None:
    with pytest.raises(ValueError, match="checkpoint_every_s must be a number of seconds >= 0"):
        run_training(_setup(), TrainConfig.updated(**SMALL), checkpoint_every_s=every)


def test_a_run_leaves_the_callers_random_stream_as_it_found_it(tmp_path: Path) -> None:
    """Training seeds torch's generators for its own draws; the caller's next draw is the same whether the run
    trained, was read from the cache or did not happen (it used to depend on the cache)."""
    setup = dataclasses.replace(_setup(), key="toy")
    config = TrainConfig.updated(**SMALL)
    torch.manual_seed(123)
    untouched = torch.rand(3)
    draws = []
    for _ in ("trained", "read from the cache"):
        torch.manual_seed(123)
        run_training(setup, config, cache_dir=tmp_path)
        draws.append(torch.rand(3))
    assert len(list(tmp_path.glob("run_*.pt"))) == 1  # the second call loaded the first's run
    assert torch.equal(draws[0], untouched) and torch.equal(draws[1], untouched)


def test_a_stopped_frozen_pass_keeps_the_splits_it_finished(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The paper setup's frozen pass (a tiny random CLIP on a fake CIFAR100) saves one file per split: stopped
    during the test split, the next call reads the training split's file and passes over the test split alone,
    and the features are those of a pass never stopped."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import paper_fakes

    from equinb.groups import get_group

    paper_fakes.cifar100(tmp_path / "data", n_train=6, n_test=4)
    group = get_group("rot90")

    def setup(cache: Path):
        return equinb.setups.clip_lambda_setup(group, "tiny-clip-rn", "cifar100", data_root=tmp_path / "data",
                                               cache_dir=cache, batch_size=4, dataset_options={"verify_md5": False})

    whole = setup(tmp_path / "whole")
    assert sorted(p.name.rsplit("_", 1)[1] for p in (tmp_path / "whole").glob("lambda_clip_*.pt")) == [
        "test.pt", "train.pt"]
    passes = []
    extract = equinb.setups.extract_view_features

    def stopped_at_test(embed, data, *args, **kwargs):
        passes.append(len(data))
        if len(passes) == 2:
            raise Stop
        return extract(embed, data, *args, **kwargs)

    monkeypatch.setattr(equinb.setups, "extract_view_features", stopped_at_test)
    with pytest.raises(Stop):
        setup(tmp_path / "stopped")
    assert [p.name.rsplit("_", 1)[1] for p in (tmp_path / "stopped").glob("lambda_clip_*.pt")] == ["train.pt"]
    passes.clear()
    monkeypatch.setattr(equinb.setups, "extract_view_features", lambda *a, **k: passes.append(len(a[1])) or extract(
        *a, **k))
    resumed = setup(tmp_path / "stopped")
    assert passes == [4]  # the test split alone
    assert torch.equal(resumed.train_feats, whole.train_feats) and torch.equal(resumed.test_feats, whole.test_feats)

