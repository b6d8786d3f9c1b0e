"""equinb's Equitune on a user's model against a plain per-transform loop and ttach, on the CPU.

Run: .venv/bin/python bench/own_model.py [--repeats 9] [--batch 8] [--size 224] [--chunk-sizes 8 16]

Cases: torchvision resnet18 and MobileNetV2 (random weights: the time does not depend on them) x the groups rot90
and D4, a batch of 8 images of 224 px, evaluation mode, no gradients. Per case it times, interleaved in one run
(the order rotates every repeat, so a machine loaded by other work slows every method alike):

- ``loop``: one forward per transform of the whole batch, then the mean (what one writes by hand);
- ``ttach``: ``ttach.ClassificationTTAWrapper`` with the same transforms and ``merge_mode="mean"``;
- ``equinb``: ``Equitune(model, group)`` with its default ``chunk_size="auto"`` (on a CPU, forwards of about
  ``equinb.CPU_CHUNK_PIXELS`` input pixels: 4 images of 224 px);
- ``equinb one pass``: ``chunk_size=None``, the whole orbit of the batch in one forward (the GPU default);
- ``equinb chunk N``: any further ``--chunk-sizes``.

It checks that every method gives the same outputs (to float rounding) and prints, per case, the median wall
times and the ratio of equinb's default to ttach: the median over repeats of the ratio within each repeat (the
two ran one after the other, so a slow spell of the machine slows both). The line before the last gives the largest
of the four cases' ratios. The last line is ``ttach_ratio=<x>``, the aggregate: the four cases' median times of
equinb's default summed, over ttach's summed, so below 1.0 means equinb took less time than ttach over the four.
On the 2-core build machine MobileNetV2 gains (0.7-0.96: its depthwise convolutions run faster per image in
forwards of 4 images than of ttach's 8) and resnet18 is at parity (0.97-1.04 between runs: the same work, and
run-to-run noise of a few percent).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision
import ttach

from equinb import CPU_CHUNK_PIXELS, Equitune, get_group

TTACH_TRANSFORMS = {
    "rot90": lambda: ttach.Compose([ttach.Rotate90(angles=[0, 90, 180, 270])]),
    "d4": lambda: ttach.Compose([ttach.HorizontalFlip(), ttach.Rotate90(angles=[0, 90, 180, 270])]),
}
MODELS = {"resnet18": torchvision.models.resnet18, "mobilenet_v2": torchvision.models.mobilenet_v2}


def plain_loop(model: torch.nn.Module, group_name: str):
    """One forward of the batch per group element, outputs averaged: the hand-written baseline."""
    group = get_group(group_name)

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([model(group.act(x, k)) for k in range(group.order)]).mean(0)
    return run


def time_case(model: torch.nn.Module, group_name: str, x: torch.Tensor, repeats: int,
              chunk_sizes: list[int]) -> tuple[dict[str, float], float, float]:
    """Median seconds per method (interleaved, rotating order), the median of the per-repeat ratios equinb / ttach,
    and the largest output difference to the loop."""
    group = get_group(group_name)
    methods = {
        "loop": plain_loop(model, group_name),
        "ttach": ttach.ClassificationTTAWrapper(model, TTACH_TRANSFORMS[group_name](), merge_mode="mean"),
        "equinb": Equitune(model, group).eval(),
        "equinb one pass": Equitune(model, group, chunk_size=None).eval(),
    }
    methods.update({f"equinb chunk {n}": Equitune(model, group, chunk_size=n).eval() for n in chunk_sizes})
    names = list(methods)
    times: dict[str, list[float]] = {name: [] for name in names}
    with torch.no_grad():
        reference = methods["loop"](x)
        difference = max(float((methods[name](x) - reference).abs().max()) for name in names)  # also warms up
        for r in range(repeats):
            for name in names[r % len(names):] + names[:r % len(names)]:
                start = time.perf_counter()
                methods[name](x)
                times[name].append(time.perf_counter() - start)
    ratio = statistics.median(e / t for e, t in zip(times["equinb"], times["ttach"]))
    return {name: statistics.median(t) for name, t in times.items()}, ratio, difference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--chunk-sizes", type=int, nargs="*", default=[], help="further chunk sizes to time")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--groups", nargs="+", default=list(TTACH_TRANSFORMS), choices=list(TTACH_TRANSFORMS))
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size)
    print(f"machine: {torch.get_num_threads()} CPU threads, torch {torch.__version__}; "
          f"batch {args.batch} x {args.size} px, {args.repeats} interleaved repeats, medians; "
          f"equinb default chunk: {max(1, CPU_CHUNK_PIXELS // args.size ** 2)} images")
    ratios, totals = [], {"equinb": 0.0, "ttach": 0.0}
    for model_name in args.models:
        model = MODELS[model_name]().eval().requires_grad_(False)
        for group_name in args.groups:
            medians, ratio, difference = time_case(model, group_name, x, args.repeats, args.chunk_sizes)
            ratios.append(ratio)
            totals = {name: total + medians[name] for name, total in totals.items()}
            cells = ", ".join(f"{name} {1000 * seconds:.0f} ms" for name, seconds in medians.items())
            print(f"{model_name:>12} {group_name:>5}: {cells}; max |difference| {difference:.1e}; "
                  f"equinb / ttach {ratio:.2f}, equinb / loop {medians['equinb'] / medians['loop']:.2f}", flush=True)
    print(f"largest per-case ratio equinb / ttach: {max(ratios):.2f}")
    print(f"ttach_ratio={totals['equinb'] / totals['ttach']:.2f}")


if __name__ == "__main__":
    main()
