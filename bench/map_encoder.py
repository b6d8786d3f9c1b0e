"""The feature-map weighting networks' per-channel convolution: Conv2d (the article's code) vs a matrix product.

The article's lambda network and equiattention run ``Conv2d(1 -> 32, 3x3)`` on every channel map of every
view separately: a batch of B*G*C one-channel maps (163,840 maps of 3x3 in the small profile, 262,144 maps
of 7x7 at the article's sizes). ``equinb.weighting.MapEncoder`` computes the same numbers as one matrix
product over unfolded 3x3 patches. This script times a training step (forward and backward) of both
formulations on the CPU (median of interleaved repeats), checks that they agree, and prints the ratio.

    .venv/bin/python bench/map_encoder.py          # last line: step_ratio=<x> (small-profile sizes)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from equinb.weighting import FeatureMapWeightNet


def conv_reference(net: FeatureMapWeightNet, maps: torch.Tensor) -> torch.Tensor:
    """The article's formulation, with the same parameters. Shapes: [B, G, C, h, w] -> [B, G]."""
    enc = net.encoder
    b, g, c, h, w = maps.shape
    x = torch.relu(enc.conv(maps.reshape(b * g * c, 1, h, w))).flatten(1)
    x = torch.relu(enc.pre_proj(x)).reshape(b, g, -1)
    return net.out(torch.relu(enc.mlp(x))).squeeze(-1)


def time_steps(forwards: dict, maps: torch.Tensor, net: torch.nn.Module, repeats: int) -> dict[str, float]:
    """Median seconds of a training step per formulation, interleaved so that machine noise hits both alike."""
    times: dict[str, list[float]] = {name: [] for name in forwards}
    for r in range(repeats + 1):
        for name, forward in forwards.items():
            net.zero_grad(set_to_none=True)
            start = time.perf_counter()
            forward(maps).sum().backward()
            if r:  # the first round warms up
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ratio = float("nan")
    # (label, batch of images, channels, map side); the small profile's batch is the article's 32 images
    for label, batch, channels, side in (("article sizes, 2048x7x7, batch 8", 8, 2048, 7),
                                         ("small profile, 1280x3x3, batch 32", 32, 1280, 3)):
        net = FeatureMapWeightNet(channels, (side, side))
        maps = torch.randn(batch, 4, channels, side, side)
        with torch.no_grad():
            err = (net(maps) - conv_reference(net, maps)).abs().max().item()
        times = time_steps({"conv": lambda m: conv_reference(net, m), "ours": net}, maps, net, args.repeats)
        t_conv, t_ours = times["conv"], times["ours"]
        ratio = t_conv / t_ours
        print(f"{label}: Conv2d {1000 * t_conv:.1f} ms/step, matrix product {1000 * t_ours:.1f} ms/step, "
              f"ratio {ratio:.2f}, max difference {err:.1e}")
    print(f"step_ratio={ratio:.2f}")


if __name__ == "__main__":
    main()
