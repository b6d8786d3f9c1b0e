"""Measure how far the trained numbers of the chapters move between seeds and numerical modes.

Usage (from the repository root, after `make notebooks` refreshed the committed reference outputs):

    .venv/bin/python tools/measure_noise.py [--seeds 1 2 3] [--modes MODE ...] [--chapters ID ...] [--reuse]
                                            [--classes NAME ...]
    .venv/bin/python tools/measure_noise.py --matrix     # the recorded spreads as a table (for the README)

Each variant (another seed on this machine, for the training chapters, or seed 0 under another numerical mode of
`tools/numerical_modes.py`, for every chapter; by default the modes of its `MEASURED`) executes the chapters
with papermill into `_build/noise/<variant>/`. A
mode gets its own data folder (`_build/noise/data-<mode>`), since the cached features depend on it too; seeds
share `$EQUINB_DATA`. The outputs are paired with the committed `notebooks/<id>.ipynb` (native mode, seed 0),
and every number of a cell tagged `tolerance-<class>` adds to that class's spread. Then, per class,

    tolerance = max(floor, FACTOR * largest difference seen under a numerical mode)   (absolute, or relative)

rounded up to two significant digits, and `equinb/noise_measured.json` is rewritten with the tolerances, the
spreads per variant and the command. With `--classes`, only those classes are measured and rewritten (from the
chapters whose cells carry them); the other classes keep their recorded measurement. With `--merge`, the spreads
recorded for variants this run does not measure are kept, and the tolerances come from every recorded mode (a
mode is added without re-running the others). Cells compared exactly
whose output moved are listed: a result that must be exact but is not, which the chapter has to fix.

The seeds' differences are recorded beside them (`--matrix` prints both) but set no tolerance: the regression
always runs seed 0 and only the CPU changes, while a seed may make a stable run diverge.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import json
import math
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_book import ROOT, execute  # noqa: E402
from notebook_numbers import diff_notebooks  # noqa: E402
from numerical_modes import MEASURED as MEASURED_MODES  # noqa: E402
from numerical_modes import mode_env  # noqa: E402

from equinb.cache import atomic_write_text  # noqa: E402
from equinb.chapter import RUN_PARAMETERS_ENV  # noqa: E402
from equinb.noise import MEASURED  # noqa: E402

TRAINING_CHAPTERS = ("tab1_original_vs_updated", "tab2_featuremap", "tab3_equiattention", "fig2_3_lambda_weights",
                     "tab4_isic2018")
# chapters without training: another seed changes what they compute (draws, samples), not how a CPU computes it,
# so only the numerical modes measure them
FROZEN_CHAPTERS = ("own_model", "fig4_zeroshot", "fig6_nlg_fairness")
FACTOR = 1.5
SEED_VARIANT = re.compile(r"seed\d+")  # a variant named so is another seed; every other is a numerical mode
# kind: "absolute" in the printed unit, or "relative" to the value; floor: the smallest tolerance allowed
CLASSES = {
    "top1": dict(kind="absolute", unit="pp", floor=0.5, what="top-1 accuracy of a trained run, in %"),
    "top1_chaotic": dict(kind="absolute", unit="pp", floor=0.5,
                         what="top-1 accuracy of a run whose loss may run away, depending on the seed, in %"),
    "share": dict(kind="absolute", unit="pp", floor=0.5, what="share of test images, in %"),
    "weight": dict(kind="absolute", unit="", floor=0.01, what="mean view weight or share, as a fraction"),
    # printed with two significant digits, so a value near 4 moves in steps of 2.5%: the floor leaves room
    "logit": dict(kind="relative", unit="", floor=0.15, what="logit or map change of a trained module"),
    "loss": dict(kind="relative", unit="", floor=0.05, what="largest training loss of a bounded run"),
    # one test image of the stand-in's rarest class moves balanced accuracy and macro F1 by 100/7 pp
    "imbalanced": dict(kind="absolute", unit="pp", floor=0.5,
                       what="top-1, balanced accuracy or macro F1 (%) of a trained run on the small imbalanced "
                            "stand-in of ISIC 2018"),
    # a frozen model's score moves when a test image flips: one image of the digits' 719 is 0.14 pp
    "frozen": dict(kind="absolute", unit="pp", floor=0.3,
                   what="top-1, top-5 or a difference of them (%) of a frozen model, or of its random draws"),
    # a sample changes when a sampled token does: one of 25 samples is 0.04 of a share
    "sampled": dict(kind="absolute", unit="", floor=0.04,
                    what="a label share, fairness gap or difference of them (fraction) of sampled text"),
}


def round_up(x: float) -> float:
    """Round up to two significant digits (a tolerance never shrinks by rounding)."""
    if x <= 0:
        return 0.0
    scale = 10 ** (math.floor(math.log10(x)) - 1)
    return round(math.ceil(x / scale - 1e-9) * scale, 12)


def seed_parameters(nb_id: str, seed: int) -> dict:
    """Parameters that run a chapter under ``seed``: a chapter with seed repeats keeps the same set of seeds, its
    default ``noise_seeds`` with ``seed`` swapped for 0 (a chapter refuses a noise seed equal to its own)."""
    text = (ROOT / "notebooks" / f"{nb_id}.py").read_text()
    found = re.search(r"^noise_seeds: list = (\[[0-9, ]*\])", text, flags=re.M)
    if found is None:
        return {"seed": seed}
    default = ast.literal_eval(found.group(1))
    return {"seed": seed, "noise_seeds": [0 if s == seed else s for s in default]}


def run_variant(name: str, chapters: list[str], parameters: dict, env: dict, reuse: bool) -> dict[str, Path]:
    out = {}
    for nb_id in chapters:
        path = ROOT / "_build" / "noise" / name / f"{nb_id}.ipynb"
        source = ROOT / "notebooks" / f"{nb_id}.py"
        if not (reuse and path.is_file() and path.stat().st_mtime > source.stat().st_mtime):
            seed = parameters.get("seed")
            # a seed variant is the profile's run under another seed: its captions must pair with the reference's,
            # so it is not labelled as a run with changed parameters
            execute(nb_id, "small", path, parameters=parameters if seed is None else seed_parameters(nb_id, seed),
                    env={**(env or {}), RUN_PARAMETERS_ENV: ""})
        out[nb_id] = path
    return out


def matrix(record: dict) -> str:
    """The measured spreads as a Markdown table: one row per variant (seed or numerical mode), one column per
    class, each cell the largest change seen (absolute, or relative for a relative class) and how many numbers."""
    classes = [c for c in record["classes"] if record["classes"][c].get("spread")]
    variants = list(dict.fromkeys(v for c in classes for v in record["classes"][c]["spread"]))
    lines = ["| variant | " + " | ".join(classes) + " |", "|" + "---|" * (len(classes) + 1)]
    for variant in variants:
        cells = []
        for name in classes:
            s = record["classes"][name]["spread"].get(variant)
            relative = record["classes"][name].get("relative", 0.0) > 0
            cells.append("—" if not s or not s["numbers"] else
                         f"{s['max_rel' if relative else 'max_abs']:.3g}{' rel.' if relative else ''} ({s['numbers']})")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    tolerance = ["±" + (f"{100 * t['relative']:g}%" if t.get("relative") else f"{t['absolute']:g}")
                 for t in (record["classes"][c] for c in classes)]
    lines.append("| **tolerance** | " + " | ".join(tolerance) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="*", default=[1, 2, 3], help="other seeds, native mode")
    parser.add_argument("--modes", nargs="*", default=list(MEASURED_MODES), help="other numerical modes, seed 0")
    parser.add_argument("--chapters", nargs="*", default=list(TRAINING_CHAPTERS + FROZEN_CHAPTERS))
    parser.add_argument("--reuse", action="store_true", help="reuse executed variants newer than their source")
    parser.add_argument("--classes", nargs="*", default=list(CLASSES), choices=list(CLASSES),
                        help="measure and rewrite only these classes; the others keep their recorded values")
    parser.add_argument("--merge", action="store_true",
                        help="keep the recorded spreads of variants this run does not measure, and set each "
                             "tolerance from every recorded numerical mode (add a mode without re-running the "
                             "others)")
    parser.add_argument("--matrix", action="store_true", help="print the recorded spreads (variant x class) as a "
                                                                  "Markdown table and measure nothing")
    args = parser.parse_args(argv)
    if args.matrix:
        print(matrix(json.loads(MEASURED.read_text())))
        return
    measured = set(args.classes)

    variants: dict[str, dict[str, Path]] = {}
    for seed in args.seeds:
        trained = [c for c in args.chapters if c not in FROZEN_CHAPTERS]
        variants[f"seed{seed}"] = run_variant(f"seed{seed}", trained, {"seed": seed}, {}, args.reuse)
    for mode in args.modes:
        data = ROOT / "_build" / "noise" / f"data-{mode}"
        variants[mode] = run_variant(mode, args.chapters, {}, dict(mode_env(mode), EQUINB_DATA=str(data),
                                                                   EQUINB_CACHE=str(data / "cache")), args.reuse)

    spread = {c: {v: dict(max_abs=0.0, max_rel=0.0, numbers=0) for v in variants} for c in CLASSES}
    moved_exact, moved_text = [], []
    for variant, paths in variants.items():
        is_mode = variant in args.modes
        for nb_id, path in paths.items():
            for d in diff_notebooks(ROOT / "notebooks" / f"{nb_id}.ipynb", path):
                if d.tolerance_class == "exact":
                    if not is_mode:  # another seed may change a seeded check (a random λ network's error)
                        continue
                    moved_exact.append(f"{variant}: {nb_id} cell {d.index} ({d.first_line[:50]})")
                    continue
                if d.tolerance_class not in CLASSES:
                    raise SystemExit(f"{nb_id} cell {d.index}: unknown tolerance class {d.tolerance_class!r}")
                if d.tolerance_class not in measured:
                    continue
                if d.text_differs:
                    moved_text.append(f"{variant}: {nb_id} cell {d.index} ({d.first_line[:50]})")
                s = spread[d.tolerance_class][variant]
                s["max_abs"] = max(s["max_abs"], d.max_abs)
                s["max_rel"] = max(s["max_rel"], d.max_rel)
                s["numbers"] += len(d.pairs)

    command = "tools/measure_noise.py " + " ".join(sys.argv[1:] if argv is None else argv)
    previous = json.loads(MEASURED.read_text()) if MEASURED.is_file() else {}
    if args.merge:  # earlier variants first, this run's replace any of the same name
        for name in measured:
            spread[name] = {**previous.get("classes", {}).get(name, {}).get("spread", {}), **spread[name]}
    all_variants = list(dict.fromkeys(v for name in measured for v in spread[name]))
    modes = [v for v in all_variants if not SEED_VARIANT.fullmatch(v)]
    seeds = [v.removeprefix("seed") for v in all_variants if SEED_VARIANT.fullmatch(v)]
    described = ", ".join(f"mode {m}" for m in modes) + (
        f" (seeds {', '.join(seeds)} recorded, not counted)" if seeds else "")
    classes = {name: c for name, c in previous.get("classes", {}).items() if name not in measured}
    for name, spec in CLASSES.items():
        if name not in measured:
            continue
        key = "max_abs" if spec["kind"] == "absolute" else "max_rel"
        # the regression always runs seed 0 and only the CPU changes, so the numerical modes set the tolerance; the
        # seeds' spreads are recorded beside them (a seed may make a stable run diverge, a CPU path so far has not)
        seen = max((s[key] for v, s in spread[name].items() if v in modes), default=0.0)
        value = max(spec["floor"], round_up(FACTOR * seen))
        shown = f"{seen:.3g}{' ' + spec['unit'] if spec['unit'] else ''}" if spec["kind"] == "absolute" \
            else f"{100 * seen:.3g}%"
        basis = (f"{FACTOR:g} x the largest change measured against the reference build, {shown}, over "
                 f"{described}" + (f"; floor {spec['floor']:g}" if value == spec["floor"] else ""))
        classes[name] = dict(absolute=value if spec["kind"] == "absolute" else 0.0,
                             relative=value if spec["kind"] == "relative" else 0.0,
                             unit=spec["unit"], what=spec["what"], basis=basis, spread=spread[name],
                             measured_by=dict(command=command, date=datetime.date.today().isoformat(),
                                              chapters=args.chapters,
                                              **({"merged_with": previous["classes"][name]["measured_by"]}
                                                 if args.merge and name in previous.get("classes", {}) else {})))
    classes = {name: classes[name] for name in CLASSES if name in classes}  # in CLASSES' order, however measured
    if args.merge and previous.get("command"):
        command = f"{previous['command']}; then {command}"
    record = dict(command=command if measured == set(CLASSES) else previous.get("command", command),
                  date=datetime.date.today().isoformat(), profile="small",
                  reference="notebooks/<id>.ipynb (native mode, seed 0)",
                  factor=FACTOR, chapters=sorted(set(args.chapters) | set(previous.get("chapters", []))),
                  classes=classes)
    atomic_write_text(MEASURED, json.dumps(record, indent=1) + "\n")
    print(f"measure_noise: wrote {MEASURED.relative_to(ROOT)}")
    for name, c in classes.items():
        print(f"  {name:7s} tolerance abs {c['absolute']:g} rel {c['relative']:g}   ({c['basis']})")
    for title, rows in (("cells compared exactly whose output moved under another numerical mode (make them exact, "
                         "or tag them)", moved_exact),
                        ("tagged cells whose text moved, not only numbers", moved_text)):
        if rows:
            print(f"measure_noise: {title}:")
            print("\n".join(f"  {r}" for r in rows))


if __name__ == "__main__":
    main()
