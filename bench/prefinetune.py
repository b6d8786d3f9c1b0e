"""Prefinetuning on cached per-view features vs recomputing the frozen backbone every step (the article's code).

Small profile (CPU): MobileNetV2 at 64 px on digits, rot90, the updated code's settings. Both sides run the
same schedule (default 2 rounds of the restarted loader, 34 steps each, plus the selection evaluations) from
the same seed. The cache is built once per backbone, dataset and group and shared by every run of a chapter;
its cost is printed separately. The article-style side runs the whole frozen backbone on every step, with autograd
through
it (its code has no ``no_grad``), as the article's training loop does.

    .venv/bin/python bench/prefinetune.py          # last line: wall_ratio=<x>   (target >= 10)

It also prints the cache size the paper profile needs (CLIP RN50, CIFAR100, rot90), and on a CUDA machine
times a few hundred paper-profile steps on a random-init RN50 with synthetic data.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from torch import nn

from equinb.backbones import load_backbone
from equinb.data import load_digits
from equinb.groups import get_group
from equinb.engine import TrainConfig, ViewData, features, prefinetune, weighted_model
from equinb.setups import small_lambda_setup
from equinb.weighting import EmbeddingWeightNet


class FullForwardViews(ViewData):
    """Article-style training data: every batch runs the whole frozen backbone on the orbit, autograd on."""

    def __init__(self, images: ViewData, features) -> None:
        super().__init__(images.inputs, images.labels)
        self.features = features

    def batch(self, index, element=None, group=None):
        views, labels = super().batch(index, element, group)
        return self.features(views), labels


def article_style_prefinetune(setup, images: ViewData, config: TrainConfig) -> float:
    """``equinb.engine.prefinetune`` with every feature recomputed by a full forward, as the article does."""
    encoder = load_backbone("mobilenet_v2", input_size=images.inputs.shape[-1]).encoder.eval()
    encoder.requires_grad_(True)  # as in the article: "frozen" only by omission from the optimiser
    torch.manual_seed(config.seed)
    model = weighted_model(encoder, EmbeddingWeightNet(setup.embed_dim), setup.head, setup.group, config)
    data = FullForwardViews(images, lambda views: features(model, views))
    start = time.perf_counter()
    prefinetune(model, data, data, config)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    group = get_group("rot90")
    config = TrainConfig.updated(prefinetune_rounds=args.rounds, prefinetune_steps=args.steps)
    with tempfile.TemporaryDirectory() as cache:  # the one-time frozen pass that fills the cache, timed
        start = time.perf_counter()
        setup = small_lambda_setup(group, cache_dir=cache)
        cache_build = time.perf_counter() - start
    digits = load_digits("train", 64)
    images = ViewData(group.orbit(digits.tensors[0]), digits.tensors[1])
    print(f"machine: {torch.get_num_threads()} CPU threads, torch {torch.__version__}; digits train N={len(images)}, "
          f"rot90, {args.rounds} rounds x up to {args.steps} steps, batch 32")

    torch.manual_seed(config.seed)
    model = weighted_model(setup.make_trunk(), EmbeddingWeightNet(setup.embed_dim), setup.head, group, config)
    start = time.perf_counter()
    cached_data = ViewData(setup.train_feats, setup.train.labels)
    prefinetune(model, cached_data, cached_data, config)
    cached = time.perf_counter() - start
    full = article_style_prefinetune(setup, images, config)
    print(f"cached features: {cached:.2f} s (+ {cache_build:.1f} s once to build the cache, shared by every run "
          f"and group of a chapter); full forward every step: {full:.1f} s")
    print(f"ratio including the cache build in this one run: {full / (cached + cache_build):.1f}")

    d, n_pre, n_fine, n_test, g = 1024, 3_200, 16_000, 10_000, 4
    for label, n in (("prefinetune (first 3,200 train images)", n_pre), ("frozen-copy lambda input (16,000)", n_fine),
                     ("test set (10,000)", n_test)):
        print(f"paper-profile cache, CLIP RN50 CIFAR100 rot90, {label}: {n * g * d * 4 / 1e6:.0f} MB fp32 "
              f"({n * g * d * 2 / 1e6:.0f} MB fp16)")
    if torch.cuda.is_available():
        gpu_steps()
    print(f"wall_ratio={full / cached:.1f}")


def gpu_steps(steps: int = 300) -> None:
    """Paper-profile steps/s on a random-init CLIP RN50 (fp16) with synthetic data: cached vs full."""
    import clip

    device = torch.device("cuda")
    torch.manual_seed(0)
    model = clip.model.CLIP(1024, 224, (3, 4, 6, 3), 64, None, 77, 49408, 512, 8, 12)
    clip.model.convert_weights(model)
    encoder = model.visual.to(device).eval()
    head = nn.Linear(1024, 100, bias=False).to(device).requires_grad_(False)
    config = TrainConfig.updated()
    group = get_group("rot90")
    lam = weighted_model(encoder, EmbeddingWeightNet(1024).to(device), head, group, config)
    opt = torch.optim.SGD(lam.weight_net.parameters(), lr=0.33, momentum=0.9)
    feats = nn.functional.normalize(torch.randn(32, 4, 1024, device=device), dim=-1)
    labels = torch.randint(0, 100, (32,), device=device)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        loss = nn.functional.cross_entropy(lam.forward_views(views=feats), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.cuda.synchronize()
    print(f"GPU prefinetune, cached: {steps / (time.perf_counter() - start):.0f} steps/s")
    images = torch.randn(32, 4, 3, 224, 224, device=device).half()
    opt = torch.optim.SGD(list(encoder.parameters()) + list(lam.weight_net.parameters()), lr=5e-8, momentum=0.9)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps // 10):
        loss = nn.functional.cross_entropy(lam.forward_views(images), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.cuda.synchronize()
    print(f"GPU finetune, full forward + backward: {steps // 10 / (time.perf_counter() - start):.1f} steps/s")


if __name__ == "__main__":
    main()
