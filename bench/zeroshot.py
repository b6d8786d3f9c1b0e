"""Zero-shot evaluation: the article's one-evaluation-per-setting loop vs one cached orbit pass.

Small profile (CPU): MobileNetV2 + the fitted digits head, transformations none / rot180 / rot90 / hflip,
methods vanilla / equitune / equizero, as published. Both sides run at the article's batch size of 32,
so the ratio measures the reuse of work, not a batch-size effect. The head is fitted once and shared.

    .venv/bin/python bench/zeroshot.py            # prints forward_ratio=<x> wall_ratio=<y> as the last line

Target: forward_ratio >= 3 and wall_ratio >= 2.5.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from equinb.data import group_transform_indices, image_batches
from equinb.groups import d4_act
from equinb.heads import load_frozen_model
from equinb.zeroshot import (TRANSFORMS, evaluate_views, per_view_logits, topk_accuracy, transform_group,
                             view_elements)


class CountingEncoder(torch.nn.Module):
    """Counts the images that go through the encoder."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder, self.images = encoder, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += x.shape[0]
        return self.encoder(x)


@torch.no_grad()
def article_style(encoder, head, loader, transforms, seed: int = 0) -> dict:
    """One full evaluation per (method, transformation), as the article's job file runs them."""
    results = {}
    for name in transforms:
        group = transform_group(name)
        for method in ("vanilla", "equitune", "equizero"):
            # every run re-seeds and redraws, as a fresh process of the article's code would
            draws = group_transform_indices(len(loader.dataset), group.order, "batch", loader.batch_size, seed)
            scores, labels, start = [], [], 0
            for images, y in loader:
                k = int(draws[start])
                start += len(y)
                x = d4_act(images, group.elements[k])  # the random test transformation of this batch
                if method == "vanilla":
                    probs = torch.softmax(head(encoder(x)), -1)
                else:
                    views = torch.cat([d4_act(x, e) for e in group.elements])
                    probs = torch.softmax(head(encoder(views)), -1).reshape(group.order, len(y), -1)
                    probs = probs.mean(0) if method == "equitune" else probs.amax(0)
                scores.append(probs)
                labels.append(y)
            results[(name, method)] = topk_accuracy(torch.cat(scores), torch.cat(labels), 1)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as cache:
        backbone, head, root, _ = load_frozen_model("mobilenet_v2", "digits", image_size=args.image_size,
                                                      cache_dir=cache)
        loader, _ = image_batches(backbone, "digits", "test", args.batch_size, str(root), 0)
        counted = CountingEncoder(backbone.encoder)
        n = len(loader.dataset)
        print(f"machine: {torch.get_num_threads()} CPU threads, torch {torch.__version__}; digits test N={n}, "
              f"MobileNetV2 at {args.image_size} px, batch {args.batch_size}")

        start = time.perf_counter()
        ref = article_style(counted, head, loader, TRANSFORMS)
        article_time, article_forwards = time.perf_counter() - start, counted.images

        counted.images = 0
        start = time.perf_counter()
        elements = view_elements(TRANSFORMS)
        logits, labels = per_view_logits(counted, head, loader, elements)
        rows = evaluate_views(logits, labels, elements, TRANSFORMS, batch_size=32, seed=0)
        ours_time, ours_forwards = time.perf_counter() - start, counted.images

    ours = {(r["transform"], r["method"]): r["top1"] for r in rows if r["reading"] == "as_published"}
    worst = max(abs(ours[k] - v) for k, v in ref.items())
    print(f"article-style: {article_forwards} image forwards ({article_forwards / n:.0f} per image), "
          f"{article_time:.1f} s")
    print(f"one orbit pass: {ours_forwards} image forwards ({ours_forwards / n:.0f} per image), {ours_time:.1f} s")
    print(f"largest top-1 difference between the two: {worst:.2e} pp (same numbers expected)")
    assert worst < 1e-6, "the two evaluations disagree"
    print(f"forward_ratio={article_forwards / ours_forwards:.2f} wall_ratio={article_time / ours_time:.2f}")


if __name__ == "__main__":
    main()
