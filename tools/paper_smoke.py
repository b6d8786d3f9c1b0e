"""Smoke test of the paper profile: every chapter's paper path on fakes, timed, with throughputs and a projection.

Usage (from the repository root):

    .venv/bin/python tools/paper_smoke.py                      # make paper-smoke: CUDA, full-size random CLIPs
    .venv/bin/python tools/paper_smoke.py --device cpu --tiny  # the same code paths on tiny models (make test)
    ... [--out _build/paper_smoke] [--chapters ID ...] [--rates bench/gpu_rates_h200.json]

No download: fakes of CIFAR100, ImageNetV2 and ISIC 2018 in their real formats (`tools/paper_fakes.py`; at the real
sizes that set the time with full-size models: CIFAR100's and ImageNetV2's 10,000 test images, ISIC's 193
validation images), random CLIPs for RN50, RN101, ViT-B/32 and ViT-B/16, a tiny random GPT-2 and regard
classifier. Each chapter then runs through papermill with its `notebooks/params/<id>.paper.yaml` and a reduced
schedule, on `--device`. Printed per chapter: pass or fail and wall time; then the measured throughputs (zero-shot
image-views/s, cached prefinetune steps/s, finetune steps/s after warm-up, peak GPU memory) and, from the params
files' settings and those rates, the projected GPU time of the full paper profile. With `--tiny` on a CPU the
rates and the projection only exercise the code; with `--rates FILE` the projection uses rates recorded on a GPU
(a counted estimate: this smoke's runs at those rates). Exit status 1 if any chapter failed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import paper_fakes  # noqa: E402
from build_book import AGGREGATES, ROOT, ChapterFailed, chapter_defaults, execute, notebook_ids  # noqa: E402

# Per chapter of the paper profile: its frozen passes over a dataset (dataset, views) and the backbones it runs them
# on. The trained runs are not stated but counted: the runs each chapter adds to the run cache during the smoke.
PASSES = {
    "fig4_zeroshot": dict(passes=[("cifar100", 5), ("imagenetv2", 5)], backbones=4),
    "tab1_original_vs_updated": dict(passes=[("cifar100", 4)], backbones=1),
    "tab2_featuremap": dict(passes=[("cifar100", 4)], backbones=1),
    "fig2_3_lambda_weights": dict(passes=[("isic2018", 4)], backbones=1),
    "tab4_isic2018": dict(passes=[("isic2018", 4)], backbones=1),
}
SMOKE_NOISE_SEEDS = [1]  # one seed repeat besides the main seed: the chapters' seed loops run, briefly
IMAGES = {"cifar100": (16_000, 10_000), "imagenetv2": (0, 10_000), "isic2018": (10_015, 193)}  # train, test


def make_fakes(out: Path, tiny: bool) -> dict:
    """Every fake under ``out``; returns the chapter parameters that point at them."""
    data = out / "data"
    if not (data / ".complete").is_file():
        paper_fakes.cifar100(data, *((40, 24) if tiny else (2_000, 10_000)))
        paper_fakes.imagenetv2(data, *((3, 3) if tiny else (1_000, 10)), size=(50, 40) if tiny else (500, 375))
        paper_fakes.isic2018(data, *((28, 14) if tiny else (600, 193)), size=(60, 45) if tiny else (600, 450))
        (data / ".complete").write_text("")
    from equinb.nlg import RESPECT_TEMPLATES

    weights = paper_fakes.clip_weights(out / "weights", tiny)
    lm, classifier = paper_fakes.language_models(out / "hub", list(RESPECT_TEMPLATES))
    return dict(data=str(data), clip_paths=weights, lm=lm, classifier=classifier)


def overrides(nb_id: str, fakes: dict, device: str, tiny: bool) -> dict:
    """The parameters that point a chapter's paper path at the fakes, with a reduced schedule."""
    steps = 2 if tiny else 50
    schedule = dict(prefinetune_rounds=2, prefinetune_steps=steps, finetune_rounds=1, finetune_steps=steps,
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


def rates(device: str, tiny: bool) -> dict[str, float]:
    """Throughputs on ``device``: zero-shot image-views/s of RN50, cached prefinetune and finetune steps/s (after a
    warm-up), peak GPU memory (GB); tiny models on a CPU exercise the same calls."""
    sys.path.insert(0, str(ROOT / "bench"))
    import prefinetune as bench

    return bench.measured_rates(device, tiny=tiny)


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


def trained_runs(runs: Path) -> dict[str, bool]:
    """Run files in the run cache -> whether the run was finetuned (its history has a finetune step)."""
    import torch

    return {path.name: any(row.get("stage") == "finetune" and "loss" in row
                           for row in torch.load(path, map_location="cpu", weights_only=True)["history"])
            for path in sorted(runs.glob("run_*.pt"))}


def projection(rate: dict[str, float], counted: dict[str, dict[str, int]], smoke_seeds: int) -> dict[str, float]:
    """Hours of GPU time per chapter of the full paper profile: its frozen passes (``PASSES``) and the runs it
    trained in the smoke (``counted``: runs and finetuned runs under ``smoke_seeds`` seeds), scaled to the params
    file's seeds, rounds and steps, at the measured ``rate``."""
    out = {}
    for nb_id in [i for i in counted if i in PASSES or counted[i]["runs"]]:
        params = {**chapter_defaults(nb_id),
                  **(yaml.safe_load((ROOT / "notebooks" / "params" / f"{nb_id}.paper.yaml").read_text()) or {})}
        per_seed = (1 + len(params.get("noise_seeds", []))) / smoke_seeds
        prefinetune = params.get("prefinetune_rounds", 0) * params.get("prefinetune_steps", 0)
        finetune = params.get("finetune_rounds", 0) * params.get("finetune_steps", 0)
        work = PASSES.get(nb_id, dict(passes=[], backbones=1))
        views = sum(sum(IMAGES[d]) * v for d, v in work["passes"]) * work["backbones"]
        seconds = (views / rate["zeroshot_views_per_s"]
                   + counted[nb_id]["runs"] * per_seed * prefinetune / rate["prefinetune_steps_per_s"]
                   + counted[nb_id]["finetuned"] * per_seed * finetune / rate["finetune_steps_per_s"])
        out[nb_id] = seconds / 3600
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny random models and small fakes (a CPU check)")
    parser.add_argument("--out", default=str(ROOT / "_build" / "paper_smoke"), help="fakes and executed notebooks")
    parser.add_argument("--chapters", nargs="*", default=notebook_ids(), help="default: every chapter of _toc.yml")
    parser.add_argument("--rates", help="project with the rates recorded in this JSON file (e.g. bench/"
                                        "gpu_rates_h200.json) instead of measuring them here; the runs are still "
                                        "counted from this smoke")
    args = parser.parse_args(argv)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("paper_smoke: no CUDA GPU here; run it on a GPU machine, or check the code paths with --device cpu "
              "--tiny", file=sys.stderr)
        return 2
    recorded = load_rates(Path(args.rates)) if args.rates else None
    out = Path(args.out)
    start = time.perf_counter()
    fakes = make_fakes(out, args.tiny)
    print(f"paper_smoke: fakes ready in {time.perf_counter() - start:.0f} s ({out})", flush=True)
    results, counted = {}, {}
    runs = Path(fakes["data"]) / "cache" / "runs"
    for nb_id in args.chapters:
        before, began = trained_runs(runs), time.perf_counter()
        parameters = overrides(nb_id, fakes, args.device, args.tiny)
        if nb_id in AGGREGATES:
            parameters["chapters_dir"] = str(out / "executed")
        try:
            execute(nb_id, "paper", out / "executed" / f"{nb_id}.ipynb", parameters)
            results[nb_id] = ("passed", time.perf_counter() - began)
        except ChapterFailed as err:
            results[nb_id] = (f"FAILED: {err}", time.perf_counter() - began)
        new = {name: tuned for name, tuned in trained_runs(runs).items() if name not in before}
        counted[nb_id] = dict(runs=len(new), finetuned=sum(new.values()))
    rate = recorded["rates"] if recorded else rates(args.device, args.tiny)
    hours = projection(rate, counted, smoke_seeds=1 + len(SMOKE_NOISE_SEEDS))
    print("\nchapter                     result   wall (s)  runs trained (finetuned)")
    for nb_id, (result, seconds) in results.items():
        print(f"{nb_id:27s} {result.split(':')[0]:8s} {seconds:8.0f}  {counted[nb_id]['runs']:4d} "
              f"({counted[nb_id]['finetuned']})")
    if recorded:
        print(f"\nrates recorded in {args.rates}: {recorded['device']}, {recorded['measured']}")
    else:
        print("\nmeasured on " + (torch.cuda.get_device_name() if args.device.startswith("cuda") else "the CPU")
              + (" (tiny models: a check of the code path, not a forecast)" if args.tiny else ""))
    for key, value in rate.items():
        print(f"  {key}: {value:.3g}")
    print("projected GPU time of the full paper profile at these rates (hours):")
    for nb_id, h in hours.items():
        print(f"  {nb_id:27s} {h:8.2f}")
    print(f"  {'total':27s} {sum(hours.values()):8.2f}")
    finetune_hours = sum(projection(dict(rate, zeroshot_views_per_s=math.inf, prefinetune_steps_per_s=math.inf),
                                    counted, smoke_seeds=1 + len(SMOKE_NOISE_SEEDS)).values())
    other_hours = sum(hours.values()) - finetune_hours
    needed = (rate["finetune_steps_per_s"] * finetune_hours / (TARGET_HOURS - other_hours)
              if other_hours < TARGET_HOURS else math.inf)
    print(f"  of which finetuning {finetune_hours:.2f}; the whole profile in {60 * TARGET_HOURS:.0f} min needs "
          f"{needed:.3g} finetune steps/s (these rates: {rate['finetune_steps_per_s']:.3g})")
    (out / "summary.json").write_text(json.dumps(dict(
        results={k: dict(result=r, seconds=s, **counted[k]) for k, (r, s) in results.items()}, rates=rate,
        hours=hours, finetune_hours=finetune_hours, target_hours=TARGET_HOURS,
        finetune_steps_per_s_needed=needed if math.isfinite(needed) else None,
        device=args.device, tiny=args.tiny, rates_from=args.rates), indent=1))
    failed = [nb_id for nb_id, (result, _) in results.items() if result != "passed"]
    for nb_id in failed:
        print(f"paper_smoke: {nb_id} {results[nb_id][0]}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
