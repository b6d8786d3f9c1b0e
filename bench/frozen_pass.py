"""The small profile's frozen pass (MobileNetV2 blocks 0-17 on every rotated view of the digits) at two chunk sizes.

Run: .venv/bin/python bench/frozen_pass.py [--images 512] [--size 96]

Both chunk sizes must give the same bits (the cache does not depend on it); the last line is the wall-time ratio
of 256-image chunks (the default of ``extract_view_features``) to the small profile's chunks of
``equinb.setups.SMALL_PASS_BATCH`` images, measured in this one run.
"""

from __future__ import annotations

import argparse
import time

import torch

from equinb import get_group
from equinb.backbones import load_backbone
from equinb.data import load_digits
from equinb.engine import ViewData, extract_view_features
from equinb.setups import SMALL_PASS_BATCH


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
    for batch in (256, SMALL_PASS_BATCH):
        start = time.perf_counter()
        outputs[batch] = extract_view_features(prefix, data, batch_size=batch)
        timings[batch] = time.perf_counter() - start
    same = torch.equal(outputs[256], outputs[SMALL_PASS_BATCH])
    print(f"machine: {torch.get_num_threads()} CPU threads, torch {torch.__version__}; {args.images} digits x "
          f"{group.order} views at {args.size} px")
    for batch, seconds in timings.items():
        print(f"chunks of {batch} images: {seconds:.1f} s")
    print(f"identical outputs: {same}")
    print(f"wall_ratio={timings[256] / timings[SMALL_PASS_BATCH]:.1f}")


if __name__ == "__main__":
    main()
