"""The small profile's frozen pass (MobileNetV2 blocks 0-17 on every rotated view of the digits) at two chunk sizes.

Run: .venv/bin/python bench/frozen_pass.py [--images 512] [--size 96]

Both chunk sizes must give the same bits (the cache does not depend on it); the last line is the wall-time ratio
of 256-image chunks (the default of ``extract_view_features``) to the small profile's chunks of
``equinb.backbones.CPU_PASS_IMAGES`` images (the frozen passes of the small profile and of the zero-shot
chapter on a CPU), measured in this one run.
"""

from __future__ import annotations

import argparse
import time

import torch

from equinb import get_group
from equinb.backbones import CPU_PASS_IMAGES, load_backbone
from equinb.data import load_digits
from equinb.engine import ViewData, extract_view_features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", type=int, default=96)
    args = parser.parse_args()
    group = get_group("rot90")
    backbone = load_backbone("mobilenet_v2", input_size=args.size)
    prefix = backbone.model.eval().requires_grad_(False).features[:18]
    digits = load_digits("train", args.size, backbone.mean, backbone.std)
    data = ViewData(group.orbit(digits.tensors[0][:args.images]), digits.tensors[1][:args.images])
    extract_view_features(prefix, ViewData(data.inputs[:8], data.labels[:8]), batch_size=8)  # warm-up
    timings, outputs = {}, {}
    for batch in (256, CPU_PASS_IMAGES):
        start = time.perf_counter()
        outputs[batch] = extract_view_features(prefix, data, batch_size=batch)
        timings[batch] = time.perf_counter() - start
    same = torch.equal(outputs[256], outputs[CPU_PASS_IMAGES])
    print(f"machine: {torch.get_num_threads()} CPU threads, torch {torch.__version__}; {args.images} digits x "
          f"{group.order} views at {args.size} px")
    for batch, seconds in timings.items():
        print(f"chunks of {batch} images: {seconds:.1f} s")
    print(f"identical outputs: {same}")
    print(f"wall_ratio={timings[256] / timings[CPU_PASS_IMAGES]:.1f}")


if __name__ == "__main__":
    main()
