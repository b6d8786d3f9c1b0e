"""GPU throughput of the paper-profile zero-shot evaluation against the encoder's forward-only ceiling.

A random-init CLIP RN50 (fp16, no download) and synthetic CIFAR-shaped images held in GPU memory:
``per_view_logits`` (build the views, encode, cosine head) over the 5 views of Figure 4 (rot90 orbit +
mirror), against ``encoder`` alone on the same number of image-views, both with the tuned kernels of
``equinb.kernels``. Prints images/s for both and ``throughput_ratio=<x>`` last (target >= 0.9).

    .venv/bin/python bench/zeroshot_gpu.py [--images 10000] [--batch 256]
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/zeroshot_gpu.py needs a CUDA GPU; bench/zeroshot.py measures the CPU ratios")

    import clip

    from equinb.heads import CosineHead
    from equinb.kernels import tuned_kernels
    from equinb.zeroshot import TRANSFORMS, per_view_logits, view_elements

    device = torch.device("cuda")
    torch.manual_seed(0)
    model = clip.model.CLIP(1024, 224, (3, 4, 6, 3), 64, None, 77, 49408, 512, 8, 12)
    clip.model.convert_weights(model)
    model = model.to(device).eval().requires_grad_(False)
    encoder = model.visual
    head = CosineHead(torch.nn.functional.normalize(torch.randn(1024, 100, device=device).half(), dim=0))
    raw = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, device=device)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711], device=device).view(1, 3, 1, 1)

    def batches():  # CIFAR-sized images resized on the GPU, as the paper profile can do
        for i in range(0, args.images, args.batch):
            x = torch.nn.functional.interpolate(raw[i:i + args.batch].float() / 255, size=224, mode="bicubic")
            yield ((x - mean) / std).half(), torch.zeros(x.shape[0], dtype=torch.long)

    elements = view_elements(TRANSFORMS)
    per_view_logits(encoder, head, batches(), elements, device)  # warm-up (cudnn autotuning)
    torch.cuda.synchronize()
    start = time.perf_counter()
    per_view_logits(encoder, head, batches(), elements, device)
    torch.cuda.synchronize()
    ours = args.images * len(elements) / (time.perf_counter() - start)

    x = torch.randn(args.batch, 3, 224, 224, device=device).half()
    steps = args.images * len(elements) // args.batch
    # The ceiling gets the kernels per_view_logits uses (equinb.kernels: cuDNN autotuning, channels-last).
    with torch.no_grad(), tuned_kernels(encoder, device):
        encoder(x)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            encoder(x)
        torch.cuda.synchronize()
    ceiling = steps * args.batch / (time.perf_counter() - start)
    print(f"device: {torch.cuda.get_device_name()}; RN50 fp16 random init; batch {args.batch}; cuDNN autotuner and "
          "channels-last weights (equinb.kernels)")
    print(f"per-view evaluation: {ours:.0f} image-views/s; encoder forward only: {ceiling:.0f} images/s")
    print(f"throughput_ratio={ours / ceiling:.2f}")


if __name__ == "__main__":
    main()
