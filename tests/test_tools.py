"""The command-line tools: the paper-setup check and the per-chapter build's parameter checks."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import build_book  # noqa: E402
import check_paper_setup as cps  # noqa: E402


@pytest.fixture(autouse=True)
def _offline(monkeypatch) -> None:
    """No test here reaches the network: a download server counts as unreachable unless a test says otherwise."""
    monkeypatch.setattr(cps, "_reachable", lambda host: False)


def test_paper_check_names_each_missing_piece_with_its_fix(tmp_path: Path) -> None:
    from test_data import _one_hot, _write_isic

    params = dict(profile="paper", backbone="RN50", dataset="digits", orientation_free="isic2018", device="cpu",
                  data_root=str(tmp_path), clip_paths={"RN50": str(tmp_path / "missing.pt")})
    items = {item.what: item for item in cps.chapter_needs("fig2_3_lambda_weights", params)}
    assert not items["CLIP RN50 weights"].ok and "does not exist" in items["CLIP RN50 weights"].note
    assert not items["dataset isic2018"].ok and "challenge.isic-archive.com" in items["dataset isic2018"].note
    assert items["dataset digits"].ok and items["GPU"].ok  # bundled digits; device cpu needs no GPU
    for part, n in (("Training", 3), ("Validation", 2)):
        _write_isic(tmp_path, part, [(f"ISIC_{part[0]}{i:06d}", _one_hot(i % 7)) for i in range(n)])
    (tmp_path / "missing.pt").write_bytes(b"weights")
    items = {item.what: item for item in cps.chapter_needs("fig2_3_lambda_weights", params)}
    assert items["dataset isic2018"].ok and items["CLIP RN50 weights"].ok


@pytest.mark.parametrize("online", [True, False])
def test_paper_check_counts_a_download_only_where_its_server_answers(tmp_path: Path, monkeypatch, online: bool):
    monkeypatch.setattr(cps, "_reachable", lambda host: online)
    params = dict(profile="paper", backbone="RN50", dataset="cifar100", device="cpu", data_root=str(tmp_path),
                  clip_download_root=str(tmp_path / "clip"), dataset_options={"cifar100": {"download": True}})
    items = {item.what: item for item in cps.chapter_needs("tab1_original_vs_updated", params)}
    for what in ("CLIP RN50 weights", "dataset cifar100"):
        assert items[what].ok == online, items[what]
        assert ("downloads on first run" if online else "cannot be reached from this machine") in items[what].note
    assert online or "put RN50.pt into" in items["CLIP RN50 weights"].note


def test_paper_check_honours_hf_hub_offline(monkeypatch) -> None:
    monkeypatch.setattr(cps, "_reachable", lambda host: True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    item = cps._hub_model("language model", "some-org/some-model", "lm_name")
    assert not item.ok and "HF_HUB_OFFLINE" in item.note and "set lm_name to its path" in item.note


def test_paper_check_wants_regard_classifiers() -> None:
    items = cps.chapter_needs("fig6_nlg_fairness", dict(profile="paper", lm_name="gpt2", scorer="regard",
                                                        regard_classifiers=[], device="cpu"))
    assert any(not i.ok and "regard_classifiers is empty" in i.note for i in items)


def test_paper_check_of_the_own_model_guide_needs_no_clip() -> None:
    items = {item.what: item for item in cps.chapter_needs("own_model", dict(profile="paper", device="cpu"))}
    assert set(items) == {"GPU", "python package ttach", "MobileNetV2 ImageNet weights"}
    assert all(item.ok for item in items.values())


def test_paper_check_adds_up_the_disk_and_ends_with_one_line_per_missing_piece(monkeypatch, capsys) -> None:
    """Seven chapters that each fit the free disk can overflow it together; a piece six chapters miss (RN50's
    weights) is one line of the to-do list, not six; the claim list needs nothing of its own."""
    monkeypatch.setattr(cps, "_gpu", lambda device: cps.Item("CUDA GPU", False, "no GPU"))
    # weights in this machine's CLIP cache would make the test depend on it
    monkeypatch.setattr(cps, "_clip_weights", lambda name, params: cps.Item(f"CLIP {name} weights", False, "absent"))
    seen = []
    monkeypatch.setattr(cps, "disk", lambda root, need: seen.append(need) or cps.Item("disk", need < 1, "full"))
    assert cps.main([]) == 1
    out = capsys.readouterr().out
    todo = out[out.index("to do ("):].splitlines()[1:]
    assert seen == [pytest.approx(sum(cps.DISK_GB.values()))]  # one data folder: every chapter's caches at once
    assert sum(line.startswith("  - CUDA GPU (needed by ") for line in todo) == 1
    assert sum(line.startswith("  - CLIP RN50 weights (needed by ") for line in todo) == 1
    assert any(line.startswith(f"  - disk (needed by {', '.join(cps.DISK_GB)})") for line in todo)
    assert not any("claim_list" in line for line in todo)
    assert "claim_list (notebooks/params/claim_list.paper.yaml)\n  needs nothing of its own" in out


def test_chapter_parameters_are_read_from_the_parameters_cell() -> None:
    assert build_book.chapter_parameters("fig4_zeroshot")[:3] == ["profile", "backbones", "datasets"]
    assert "clip_paths" in build_book.chapter_parameters("tab1_original_vs_updated")


def test_an_undeclared_parameter_is_refused_before_anything_runs(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        build_book.main(["--only", "fig4_zeroshot", "-p", "backbone", "RN50"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "notebooks/fig4_zeroshot has no parameter 'backbone'" in err and "backbones" in err
    with pytest.raises(SystemExit):
        build_book.main(["--only", "fig4_zeroshot_typo"])
    assert "unknown chapter 'fig4_zeroshot_typo'" in capsys.readouterr().err


def test_a_negative_value_in_any_notation_is_a_value_and_the_profile_is_no_parameter(capsys) -> None:
    assert build_book.take_parameters(["--only", "x", "-p", "lr", "-5e-8", "--parameter", "seed", "-1", "--jobs", "1"]
                                      ) == (["--only", "x", "--jobs", "1"], [("lr", "-5e-8"), ("seed", "-1")])
    with pytest.raises(SystemExit):
        build_book.take_parameters(["--only", "x", "-p", "lr"])
    assert "-p needs a NAME and a VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # an abbreviation would reach argparse past take_parameters
        build_book.main(["--only", "fig4_zeroshot", "--param", "seed", "5"])
    assert "unrecognized arguments: --param" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_book.main(["--only", "fig4_zeroshot", "-p", "profile", "paper"])
    assert "set the profile with PROFILE=paper (make) or --profile paper, not -p profile" in capsys.readouterr().err


def test_a_run_with_changed_parameters_is_kept_apart_from_the_profiles_own(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(build_book, "EXECUTED", tmp_path / "executed")
    monkeypatch.setattr(build_book, "VARIANTS", tmp_path / "variants")
    (tmp_path / "executed" / "notebooks").mkdir(parents=True)
    (tmp_path / "executed" / "notebooks" / "fig4_zeroshot.ipynb").write_text("{}")
    kept = build_book.keep_variant("fig4_zeroshot", {"seed": 5, "noise_seeds": [1, 2]})
    assert kept == tmp_path / "variants" / "fig4_zeroshot.seed=5,noise_seeds=_1,2_.ipynb" and kept.read_text() == "{}"


def test_a_value_the_profile_runs_with_is_no_change(capsys) -> None:
    """``-p seed 0`` on the small profile is its own run (labelled and reused as such); a value only one of the
    chapters runs with stays a change for all of them."""
    small, paper = (build_book.profile_values("fig4_zeroshot", profile) for profile in ("small", "paper"))
    assert (small["seed"], small["device"], paper["seed"], paper["device"]) == (0, "cpu", 0, "cuda")
    assert paper["backbones"] != small["backbones"]
    given = {"seed": 0, "transforms": ["none"], "backbones": paper["backbones"]}
    assert build_book.without_own_values(["fig4_zeroshot"], "small", given) == {
        "transforms": ["none"], "backbones": paper["backbones"]}
    assert "build_book: seed=0: the profile's own value(s), not a change" in capsys.readouterr().out
    assert build_book.without_own_values(["fig4_zeroshot"], "paper", given) == {"transforms": ["none"]}
    both = ["fig4_zeroshot", "tab1_original_vs_updated"]  # tab1 has no batch_size
    assert build_book.without_own_values(both, "small", {"seed": 0, "device": "cpu", "batch_size": 256}) == {
        "batch_size": 256}


def test_parameter_values_read_numbers_in_any_notation_and_label_the_run() -> None:
    assert build_book.parameter_value("1e-3") == 0.001 and build_book.parameter_value("-2E+2") == -200.0
    assert build_book.parameter_value("0.1") == 0.1 and build_book.parameter_value("[a, b]") == ["a", "b"]
    assert build_book.parameter_value("e5") == "e5"  # a word stays a word
    assert build_book.run_label("small", {}) == "small"
    assert build_book.run_label("paper", {"seed": 5, "chapters_dir": "/x"}) == "paper (seed=5)"
    assert "SIGKILL" in build_book._papermill_failure(-9) and "message above" in build_book._papermill_failure(1)


def test_papermill_past_its_time_is_interrupted_then_killed() -> None:
    """The stop of ``execute``'s ``timeout_s``: SIGINT first (papermill then saves the partial notebook and stops
    its kernel), SIGKILL after the grace for a process that ignores it."""
    import subprocess
    import time

    stubborn = [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                                      "print('ready', flush=True); time.sleep(120)"]
    began = time.perf_counter()
    with pytest.raises(subprocess.TimeoutExpired):
        build_book._run_child(stubborn, subprocess.DEVNULL, dict(os.environ), timeout_s=1, grace_s=2)
    assert 3 < time.perf_counter() - began < 30  # killed after the grace, not left running for 120 s
    began = time.perf_counter()
    with pytest.raises(subprocess.TimeoutExpired):
        build_book._run_child([sys.executable, "-c", "import time; time.sleep(120)"], subprocess.DEVNULL,
                                  dict(os.environ), timeout_s=1)
    assert time.perf_counter() - began < 15  # SIGINT alone stops a process that handles it


def _fake_papermill(returncode: int):
    """A stand-in for papermill's process (``build_book._run_child``): it writes the notebook and one table, as
    a chapter would, then exits with ``returncode``."""
    def run(cmd, stdin, env, timeout_s, output=None):
        stdin.read()  # jupytext's notebook, as papermill reads it
        Path(cmd[cmd.index("-") + 1]).write_text('{"cells": []}')  # the notebook papermill writes
        tables = Path(env["EQUINB_DATA_OUT"]) / "own_model"
        tables.mkdir(parents=True)
        (tables / "table-2.csv").write_text("b\n2\n")
        with open(env["EQUINB_PROGRESS_LOG"], "a") as progress:  # where a training run reports (equinb.progress)
            progress.write("12:00:00 run A: training\n12:00:09 run A: finetune round 3 of 8\n")
        return returncode
    return run


def _timed_papermill(spans: dict, failing: str = "", seconds: float = 0.4):
    """A stand-in for papermill that records when each chapter ran and with what threads, and fails ``failing``."""
    def run(cmd, stdin, env, timeout_s, output=None):
        stdin.read()
        out = Path(cmd[cmd.index("-") + 1])
        nb_id = out.name.split(".")[0]
        begun = time.monotonic()
        if output is not None:
            output.write(f"Executing {nb_id}\nPapermillExecutionError: {nb_id} broke\n" if nb_id == failing else "")
        time.sleep(0.05 if nb_id == failing else seconds)
        out.write_text('{"cells": []}')
        spans[nb_id] = (begun, time.monotonic(), env.get("OMP_NUM_THREADS"))
        return 1 if nb_id == failing else 0
    return run


def test_chapters_run_two_at_a_time_each_on_its_share_of_the_cores(tmp_path: Path, monkeypatch) -> None:
    spans: dict = {}
    monkeypatch.setattr(build_book, "EXECUTED", tmp_path)
    monkeypatch.setattr(build_book, "available_cores", lambda: 4)
    monkeypatch.setattr(build_book, "_run_child", _timed_papermill(spans))
    ids = ["own_model", "fig4_zeroshot", "tab4_isic2018", "tab2_featuremap", "claim_list"]
    build_book.execute_all(ids, "small", {}, keep_going=False, jobs=2)
    chapters = ["fig4_zeroshot", "tab4_isic2018", "tab2_featuremap"]
    most_at_once = max(sum(spans[o][0] <= spans[c][0] < spans[o][1] for o in chapters) for c in chapters)
    assert most_at_once == 2  # never three: two workers
    assert {spans[c][2] for c in chapters} == {"2"}  # 4 cores shared by 2 kernels
    assert spans["own_model"][1] <= min(spans[c][0] for c in chapters)  # it times code: alone, first
    assert spans["claim_list"][0] >= max(spans[c][1] for c in chapters)  # it reads them all: after them
    assert spans["own_model"][2] != "2" and spans["claim_list"][2] != "2"
    record = json.loads((tmp_path / "notebooks" / "fig4_zeroshot.run.json").read_text())
    assert record["threads"] == "2 (2 chapters at a time)"
    assert (tmp_path / "notebooks" / "fig4_zeroshot.log").is_file()
    assert json.loads((tmp_path / "notebooks" / "own_model.run.json").read_text())["threads"] != record["threads"]


def test_a_failed_chapter_among_two_at_a_time_starts_no_other_and_quotes_its_log(tmp_path: Path, monkeypatch) -> None:
    spans: dict = {}
    monkeypatch.setattr(build_book, "EXECUTED", tmp_path)
    monkeypatch.setattr(build_book, "available_cores", lambda: 2)
    monkeypatch.setattr(build_book, "_run_child", _timed_papermill(spans, failing="fig4_zeroshot"))
    ids = ["fig4_zeroshot", "tab4_isic2018", "tab2_featuremap", "claim_list"]
    with pytest.raises(SystemExit):
        build_book.execute_all(ids, "small", {}, keep_going=False, jobs=2)
    assert set(spans) == {"fig4_zeroshot", "tab4_isic2018"}  # the one running beside it finished; none started after
    spans.clear()
    with pytest.raises(SystemExit):
        build_book.execute_all(ids, "small", {}, keep_going=True, jobs=2)
    assert set(spans) == set(ids)


def test_a_failure_quotes_the_end_of_the_chapters_log(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(build_book, "_run_child", _timed_papermill({}, failing="own_model"))
    with pytest.raises(build_book.ChapterFailed, match=r"own_model.log, which ends:\n    Executing own_model\n"
                                                      r"    PapermillExecutionError: own_model broke"):
        build_book.execute("own_model", "small", tmp_path / "own_model.ipynb", log=tmp_path / "own_model.log")


def test_an_interrupt_among_chapters_run_together_reports_no_failure_of_theirs(monkeypatch, capsys) -> None:
    """Ctrl-C reaches every child: a chapter whose child then exits is not reported as failed ("going on with the
    other chapters" would be false), and the interrupt goes on."""
    monkeypatch.setattr(build_book, "available_cores", lambda: 2)
    started = []

    def run_one(nb_id: str, at_once: int, env) -> None:
        started.append(nb_id)
        if nb_id == "tab1_original_vs_updated":
            raise KeyboardInterrupt  # as the interrupt reaches this chapter's thread first
        time.sleep(0.3)  # this child stops on the same interrupt a moment later
        raise build_book.ChapterFailed(f"{nb_id}: papermill was killed by signal SIGINT")

    with pytest.raises(KeyboardInterrupt):
        build_book.run_chapters(["tab1_original_vs_updated", "tab2_featuremap", "tab3_equiattention"], 2,
                                keep_going=True, run_one=run_one)
    err = capsys.readouterr().err
    assert "failed" not in err and "going on" not in err
    assert "tab3_equiattention" not in started  # no chapter starts after the interrupt


def _printing_notebook(path: Path, printed: str, committed: str) -> None:
    """A one-cell notebook that prints ``printed``, with ``committed`` as its reference output."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = nbformat.v4.new_code_cell(f"print({printed!r})", execution_count=1)
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=committed + "\n")]
    nb.cells.append(cell)
    nbformat.write(nb, path)


def test_nbval_runs_every_chapter_two_at_a_time_and_fails_on_one_that_differs(tmp_path: Path, monkeypatch,
                                                                              capsys) -> None:
    """``make test``'s notebook regression: real nbval runs, two at a time; a chapter whose output differs from its
    committed one fails the whole (exit 1, its log printed), and the others still run."""
    import nbval_chapters

    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    _printing_notebook(notebooks / "a_same.ipynb", "top-1 91.5", "top-1 91.5")
    _printing_notebook(notebooks / "b_differs.ipynb", "top-1 12.0", "top-1 91.5")
    _printing_notebook(notebooks / "c_same.ipynb", "3 views", "3 views")
    monkeypatch.setattr(nbval_chapters, "NOTEBOOKS", notebooks)
    monkeypatch.setattr(nbval_chapters, "LOGS", tmp_path / "logs")
    monkeypatch.setattr(build_book, "available_cores", lambda: 2)
    assert nbval_chapters.main(["--jobs", "2"]) == 1
    out, err = capsys.readouterr()
    assert "a_same.ipynb passed" in out and "c_same.ipynb passed" in out and "b_differs.ipynb passed" not in out
    assert "nbval failed on notebooks/b_differs.ipynb" in err and "top-1 12.0" in err  # its log, quoted
    assert "1 of 3 chapter(s) failed" in err and (tmp_path / "logs" / "b_differs.log").is_file()
    assert nbval_chapters.main(["a_same", "c_same"]) == 0
    with pytest.raises(SystemExit, match="no notebooks/<id>.ipynb for d_missing"):
        nbval_chapters.main(["d_missing"])


def test_nbval_checks_the_chapters_in_reading_order_and_skips_none() -> None:
    import nbval_chapters

    ids = nbval_chapters.chapter_ids([])
    committed = sorted(p.stem for p in nbval_chapters.NOTEBOOKS.glob("*.ipynb"))
    assert sorted(ids) == committed  # every committed chapter, once
    listed = [i for i in build_book.notebook_ids() if i in committed]
    assert ids[:len(listed)] == listed


def test_two_chapters_at_a_time_only_on_the_small_profile_with_cores_to_share() -> None:
    assert build_book.default_jobs("small", cores=2, environ={}) == 2
    assert build_book.default_jobs("small", cores=1, environ={}) == 1
    assert build_book.default_jobs("paper", cores=16, environ={}) == 1  # one GPU
    assert build_book.default_jobs("small", cores=2, environ={"OMP_NUM_THREADS": "1"}) == 1  # a numerical mode


@pytest.mark.parametrize("returncode", [1, -9])
def test_a_failed_run_keeps_the_last_good_chapter_and_its_numbers(tmp_path: Path, monkeypatch, returncode: int):
    out, data = tmp_path / "notebooks" / "own_model.ipynb", tmp_path / "data"
    out.parent.mkdir()
    out.write_text("the last good run")
    build_book.profile_marker(out).write_text("small\n")
    (data / "own_model").mkdir(parents=True)
    (data / "own_model" / "table-1.csv").write_text("a\n1\n")
    monkeypatch.setattr(build_book, "_run_child", _fake_papermill(returncode))
    with pytest.raises(build_book.ChapterFailed, match="is the last good run, kept") as info:
        build_book.execute("own_model", "small", out, data_out=data)
    assert returncode > 0 or "killed by signal SIGKILL" in str(info.value)
    # where its training had got, from the progress file build_book gave the kernel (one per chapter, beside it)
    assert "; its last progress line: 12:00:09 run A: finetune round 3 of 8" in str(info.value)
    assert out.with_suffix(".progress.log").read_text().count("\n") == 2
    assert out.read_text() == "the last good run" and build_book.profile_marker(out).read_text() == "small\n"
    assert out.with_suffix(".failed.ipynb").is_file()  # the partial run, beside it
    assert [p.name for p in data.iterdir()] == ["own_model"]  # the failed run's table is not left to be published
    assert [p.name for p in (data / "own_model").iterdir()] == ["table-1.csv"]


def test_a_run_that_succeeds_replaces_the_chapter_its_numbers_and_says_what_it_ran(tmp_path: Path, monkeypatch):
    out, data = tmp_path / "notebooks" / "own_model.ipynb", tmp_path / "data"
    out.parent.mkdir()
    out.write_text("an older run")
    out.with_suffix(".failed.ipynb").write_text("an older failure")
    (data / "own_model").mkdir(parents=True)
    (data / "own_model" / "table-1.csv").write_text("a\n1\n")  # a table this run no longer writes
    monkeypatch.setattr(build_book, "_run_child", _fake_papermill(0))
    build_book.execute("own_model", "small", out, {"seed": 5}, data_out=data)
    assert out.read_text() == '{"cells": []}' and not out.with_suffix(".failed.ipynb").exists()
    assert [p.name for p in data.iterdir()] == ["own_model"]
    assert [p.name for p in (data / "own_model").iterdir()] == ["table-2.csv"]
    assert build_book.profile_marker(out).read_text() == "small (seed=5)\n"  # never reused as the small run
    assert '"profile": "small (seed=5)"' in out.with_suffix(".run.json").read_text()
    assert not list(out.parent.glob(".*.tmp"))  # marker and record written atomically, no temporary file left


def test_a_run_interrupted_while_publishing_leaves_no_marker_of_another_run(tmp_path: Path, monkeypatch):
    """Killed after its notebook is in place but before its marker is written, a run with overrides leaves the
    chapter unmarked: never beside the last run's marker, which --reuse and --no-execute would trust."""
    monkeypatch.setattr(build_book, "EXECUTED", tmp_path)
    out, data = tmp_path / "notebooks" / "own_model.ipynb", tmp_path / "data"
    out.parent.mkdir()
    out.write_text("the last small run")
    build_book.profile_marker(out).write_text("small\n")
    out.with_suffix(".run.json").write_text('{"profile": "small"}\n')
    assert build_book.executed_profile("own_model") == "small"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(build_book, "_run_child", _fake_papermill(0))
    monkeypatch.setattr(build_book.provenance, "record", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_book.execute("own_model", "small", out, {"seed": 5}, data_out=data)
    assert out.read_text() == '{"cells": []}'  # the seed-5 run is in place ...
    assert build_book.executed_profile("own_model") is None  # ... and not taken for the small profile's run
    assert not out.with_suffix(".run.json").exists()  # nor recorded as the last run
    assert not list(out.parent.glob(".*.tmp"))


def test_a_full_build_keeps_every_chapter_until_its_new_run_succeeds(tmp_path: Path, monkeypatch):
    """`make book` (no --reuse) does not empty _build/executed first: a failure or Ctrl-C in one chapter leaves
    the others' last good copies; chapters that _toc.yml no longer lists are removed before the book is staged."""
    monkeypatch.setattr(build_book, "EXECUTED", tmp_path)
    ids = build_book.notebook_ids()
    notebooks, data = tmp_path / "notebooks", tmp_path / "data"
    notebooks.mkdir()
    for nb_id in [*ids, "dropped_chapter"]:
        (notebooks / f"{nb_id}.ipynb").write_text("a good run")
        build_book.profile_marker(notebooks / f"{nb_id}.ipynb").write_text("small\n")
        (data / nb_id).mkdir(parents=True)

    def first_fails(chapters, profile, parameters, keep_going, jobs):
        build_book.fail(f"{chapters[0]} failed")

    monkeypatch.setattr(build_book, "execute_all", first_fails)
    with pytest.raises(SystemExit):
        build_book.main([])
    assert all((notebooks / f"{nb_id}.ipynb").read_text() == "a good run" for nb_id in ids)
    monkeypatch.setattr(build_book, "execute_all", lambda *args: None)
    monkeypatch.setattr(build_book, "stage", lambda chapters: None)
    monkeypatch.setattr(build_book, "build_html", lambda: None)
    build_book.main([])
    kept = sorted(f"{nb_id}.{ext}" for nb_id in ids for ext in ("ipynb", "profile"))
    assert sorted(p.name for p in notebooks.iterdir()) == kept
    assert sorted(p.name for p in data.iterdir()) == sorted(ids)


def test_noise_variants_keep_a_chapters_set_of_seeds() -> None:
    """Another seed swaps places with 0 among the noise seeds: the chapter's own check refuses a noise seed
    equal to its seed, and the seed tables keep the same rows."""
    import measure_noise

    assert measure_noise.seed_parameters("tab1_original_vs_updated", 2) == {"seed": 2, "noise_seeds": [1, 0, 3, 4]}
    assert measure_noise.seed_parameters("tab3_equiattention", 1) == {"seed": 1, "noise_seeds": [0, 2, 3, 4]}
    assert measure_noise.seed_parameters("fig6_nlg_fairness", 1) == {"seed": 1}  # no noise seeds to keep
    assert "tab4_isic2018" in measure_noise.TRAINING_CHAPTERS and "imbalanced" in measure_noise.CLASSES


@pytest.mark.parametrize("merge, tolerance", [(True, 3.0), (False, 1.5)])
def test_measuring_one_more_mode_keeps_or_replaces_the_recorded_ones(tmp_path: Path, monkeypatch, merge: bool,
                                                                     tolerance: float) -> None:
    """--merge: a recorded mode's larger change (2.0) still sets the tolerance (1.5 x 2.0) beside the new mode's
    (1.0); without it, only this run's modes count (1.5 x 1.0)."""
    import json
    from types import SimpleNamespace

    import measure_noise

    record = tmp_path / "noise_measured.json"
    old = dict(max_abs=2.0, max_rel=0.0, numbers=3)
    record.write_text(json.dumps(dict(command="tools/measure_noise.py --modes modeA", classes=dict(top1=dict(
        absolute=3.0, relative=0.0, spread=dict(modeA=old, seed1=dict(max_abs=9.0, max_rel=0.0, numbers=1)),
        measured_by=dict(command="tools/measure_noise.py --modes modeA"))))))
    moved = SimpleNamespace(tolerance_class="top1", max_abs=1.0, max_rel=0.0, pairs=[(1.0, 2.0)], text_differs=False,
                            index=3, first_line="x")
    monkeypatch.setattr(measure_noise, "MEASURED", record)
    monkeypatch.setattr(measure_noise, "ROOT", tmp_path)
    monkeypatch.setattr(measure_noise, "mode_env", lambda mode: {})
    monkeypatch.setattr(measure_noise, "run_variant", lambda name, chapters, *rest: {"tab1_original_vs_updated": None})
    monkeypatch.setattr(measure_noise, "diff_notebooks", lambda reference, path: [moved])
    measure_noise.main(["--seeds", "--modes", "modeB", "--chapters", "tab1_original_vs_updated", "--classes", "top1"]
                       + (["--merge"] if merge else []))
    top1 = json.loads(record.read_text())["classes"]["top1"]
    assert top1["absolute"] == tolerance  # the seed's 9.0 is recorded but never counted
    assert set(top1["spread"]) == ({"modeA", "seed1", "modeB"} if merge else {"modeB"})
    assert ("mode modeA" in top1["basis"]) == merge


def test_method_diagrams_are_valid_svg_at_the_column_width_with_equinb_names(tmp_path: Path) -> None:
    import xml.dom.minidom

    import diagrams

    paths = diagrams.write_all(tmp_path)
    assert {p.name for p in paths} == {"lambda_equitune.svg", "feature_map.svg"}
    for path in paths:
        svg = xml.dom.minidom.parse(str(path)).documentElement
        assert int(svg.getAttribute("width")) <= 670  # shown 1:1 in the text column
        assert svg.getElementsByTagName("title") and svg.getElementsByTagName("desc")  # for screen readers
    text = (tmp_path / "lambda_equitune.svg").read_text()
    assert "LambdaEquitune" in text and "EmbeddingWeightNet" in text and "270°" in text  # the rot90 orbit
    assert "ViewAttention" in (tmp_path / "feature_map.svg").read_text()


def test_method_diagrams_refuse_a_name_equinb_does_not_have(monkeypatch: pytest.MonkeyPatch) -> None:
    import diagrams

    monkeypatch.setitem(diagrams.CODE_NAMES, "LambdaEquituneV2", None)
    with pytest.raises(SystemExit, match="equinb has no 'LambdaEquituneV2'"):
        diagrams.check_vocabulary()


def test_execution_page_lists_every_recorded_chapter() -> None:
    import provenance

    entry = provenance.record("fig4_zeroshot", "small", 0.0, 17.4, "cpu")
    assert entry["wall (s)"] == 17 and entry["started (UTC)"] == "1970-01-01 00:00" and entry["torch"]
    assert "cores" in entry["hardware"] and entry["commit"]
    page = provenance.execution_page([entry, {**entry, "chapter": "tab1_original_vs_updated", "wall (s)": 43}])
    assert "| fig4_zeroshot | small | 17 |" in page and "Total wall time of the chapters: 60 s" in page
    assert "No chapter" in provenance.execution_page([])
    assert entry["threads"] == "all cores" and "overlap" not in page
    together = provenance.record("fig4_zeroshot", "small", 0.0, 17.4, "cpu", threads=1, at_once=2)
    assert together["threads"] == "1 (2 chapters at a time)"
    assert "| fig4_zeroshot | small | 17 | 1970‑01‑01 00:00 | cpu | 1 (2 chapters at a time) |" in \
        provenance.execution_page([together]) and "overlap" in provenance.execution_page([together])


def test_the_measured_modes_cover_every_path_a_cpu_picks_and_the_holdouts_are_new() -> None:
    import numerical_modes as nm

    seen = {key: {nm.MODES[m].get(key) for m in nm.MEASURED} for key in
            ("MKL_CBWR", "ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "OMP_NUM_THREADS")}
    assert seen["MKL_CBWR"] >= {"SSE4_2", "AVX", "AVX2", "AVX512"}
    assert seen["ONEDNN_MAX_CPU_ISA"] >= {"SSE41", "AVX", "AVX2", "AVX512_CORE"}
    assert seen["ATEN_CPU_CAPABILITY"] >= {"default", "avx2"} and seen["OMP_NUM_THREADS"] >= {"1", "2", "4"}
    assert len(nm.PORTABLE) >= 4 and set(nm.PORTABLE) <= set(nm.MEASURED)
    assert not set(nm.HOLDOUT) & set(nm.MEASURED)
    assert not {tuple(sorted(nm.MODES[h].items())) for h in nm.HOLDOUT} & {
        tuple(sorted(nm.MODES[m].items())) for m in nm.MEASURED}


def test_the_claim_list_runs_after_the_chapters_it_reads_wherever_the_toc_lists_it() -> None:
    ids = build_book.notebook_ids()
    ordered = build_book.in_execution_order(ids)
    assert sorted(ordered) == sorted(ids) and ordered[-len(build_book.AGGREGATES):] == list(build_book.AGGREGATES)
    chapters = [i for i in ids if i not in build_book.AGGREGATES]
    assert [i for i in ordered if i not in build_book.AGGREGATES] == chapters  # the rest keep the reader's order


def test_the_index_lists_every_numbered_chapter_once_in_order() -> None:
    """The first page's table of what each chapter asks numbers them as the book does (``_toc.yml``)."""
    import re

    from equinb.tables import chapter_number

    rows = re.findall(r"^\| (\d+) \| \[[^]|]+\]\(\.\./notebooks/(\w+)\.ipynb\) \|",
                      (ROOT / "book" / "index.md").read_text(), flags=re.M)
    numbered = sorted(n for n in map(chapter_number, build_book.notebook_ids()) if n is not None)
    assert [int(n) for n, _ in rows] == numbered == list(range(1, len(numbered) + 1))
    assert all(chapter_number(nb_id) == int(n) for n, nb_id in rows), rows  # each row links the chapter it numbers
