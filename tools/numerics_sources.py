"""Which numerical switch moves which result: frozen features, and a short training run on fixed features.

Usage (from the repository root):

    .venv/bin/python tools/numerics_sources.py [--images 128] [--steps 200]

Each switch below is one way two CPUs differ. For each, a fresh process (the switches act when torch loads)
1. computes the small profile's frozen MobileNetV2 maps (blocks 0-17 then 18, 96 px) of the first test digits
   in their four rotations, and
2. trains the article's feature-map λ network for a few hundred SGD steps on the maps computed *without* any
   switch, so that only the training arithmetic differs.
Printed per switch: the largest change of the maps (relative to their scale), and after training the change of
the loss, of the parameters and of the predictions, against the run without a switch. A change of the maps at
float-rounding level that grows to a change of predictions is the chaotic amplification that makes trained
numbers differ between machines.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SWITCHES: dict[str, dict[str, str]] = {
    "none (this CPU, all threads)": {},
    "1 thread": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    "ATen kernels AVX2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "ATen kernels not vectorised": {"ATEN_CPU_CAPABILITY": "default"},
    "oneDNN (convolutions) AVX2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "MKL (matrix products) AVX2": {"MKL_CBWR": "AVX2"},
}


def worker(out: Path, reference_maps: Path | None, images: int, steps: int) -> None:
    """Runs in the switched process: writes maps (and, given reference maps, a trained run) to ``out``."""
    import torch
    from torch import nn

    from equinb import get_group
    from equinb.backbones import load_backbone
    from equinb.data import load_digits
    from equinb.weighting import FeatureMapWeightNet
    from equinb.wrappers import LambdaEquitune

    group = get_group("rot90")
    backbone = load_backbone("mobilenet_v2", input_size=96)
    model = backbone.model.eval().requires_grad_(False)
    digits = load_digits("test", 96, backbone.mean, backbone.std)
    x, labels = digits.tensors[0][:images], digits.tensors[1][:images]
    with torch.no_grad():
        views = group.orbit(x).flatten(0, 1)  # [N*G, 3, 96, 96]
        maps = model.features[18:](model.features[:18](views))
        maps = maps.reshape(images, group.order, *maps.shape[1:])  # [N, G, C, h, w]
    result = {"maps": maps}
    if reference_maps is not None:
        maps = torch.load(reference_maps, weights_only=True)["maps"]
        torch.manual_seed(0)
        # the library's feature-map lambda-equitune (as published: softmax weights, views unaligned) on the
        # fixed maps: the trunk is never called, forward_views takes the views
        net = FeatureMapWeightNet(maps.shape[2], tuple(maps.shape[3:]))
        head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(maps.shape[2], 10))
        wrapper = LambdaEquitune(nn.Identity(), group, net, head=head, normalisation="softmax")
        opt = torch.optim.SGD(wrapper.parameters(), lr=0.1, momentum=0.9)
        losses = []
        for step in range(steps):
            index = torch.arange(step * 32, step * 32 + 32) % images
            loss = nn.functional.cross_entropy(wrapper.forward_views(views=maps[index]), labels[index])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        with torch.no_grad():
            logits = wrapper.forward_views(views=maps)
        result.update(losses=torch.tensor(losses), params=torch.cat([p.detach().flatten() for p in
                                                                     wrapper.parameters()]),
                      predictions=logits.argmax(-1))
    torch.save(result, out)


def run(env: dict, out: Path, reference: Path | None, images: int, steps: int) -> None:
    cmd = [sys.executable, __file__, "--worker", str(out), "--images", str(images), "--steps", str(steps)]
    if reference is not None:
        cmd += ["--reference", str(reference)]
    subprocess.run(cmd, env=dict(os.environ, **env), check=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128, help="images per measurement (default: 128)")
    parser.add_argument("--steps", type=int, default=200, help="training steps per measurement (default: 200)")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--reference", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.reference, args.images, args.steps)

    import torch

    with tempfile.TemporaryDirectory() as tmp:
        base_maps = Path(tmp) / "base_maps.pt"
        run({}, base_maps, None, args.images, args.steps)
        results = {}
        for name, env in SWITCHES.items():
            results[name] = Path(tmp) / f"{len(results)}.pt"
            run(env, results[name], base_maps, args.images, args.steps)
        loaded = {name: torch.load(path, weights_only=True) for name, path in results.items()}
    base = loaded["none (this CPU, all threads)"]
    scale = base["maps"].abs().max().item()
    print(f"{args.images} test digits x 4 rotations, maps {tuple(base['maps'].shape[2:])}; training: "
          f"{args.steps} SGD steps on the maps computed without a switch")
    print(f"{'switch':32s} {'maps: max rel change':>21s} {'loss change, step 10':>21s} {'final loss change':>18s} "
          f"{'params: max rel change':>23s} {'predictions changed':>20s}")
    for name, r in loaded.items():
        maps = (r["maps"] - base["maps"]).abs().max().item() / scale
        loss10 = abs(r["losses"][9] - base["losses"][9]).item()
        loss = abs(r["losses"][-1] - base["losses"][-1]).item()
        params = ((r["params"] - base["params"]).abs().max() / base["params"].abs().max()).item()
        changed = int((r["predictions"] != base["predictions"]).sum())
        print(f"{name:32s} {maps:21.2e} {loss10:21.2e} {loss:18.2e} {params:23.2e} {changed:14d} / {args.images}")


if __name__ == "__main__":
    main()
