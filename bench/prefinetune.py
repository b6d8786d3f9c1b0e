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
from equinb.kernels import tuned_kernels
from equinb.engine import TrainConfig, ViewData, features, prefinetune, train_step_loss, weighted_model
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
        for key, value in measured_rates("cuda").items():
            print(f"GPU {key}: {value:.3g}")
    print(f"wall_ratio={full / cached:.1f}")


def measured_rates(device: str = "cuda", tiny: bool = False, steps: int = 60) -> dict[str, float]:
    """The paper profile's rates on ``device``, each after a warm-up: zero-shot image-views/s of CLIP RN50
    (``per_view_logits`` over the five views of Figure 4), cached prefinetune steps/s (32 images x 4 views), finetune
    steps/s as the engine runs them (forward and backward through the encoder, as published: CLIP's fp16 weights on
    CUDA; with ``equinb.kernels.tuned_kernels``), the same with the default kernels, the largest relative change of
    the embeddings the tuned kernels cause, and the peak GPU memory of the finetune steps (GB, 0 on a CPU). Random
    weights (``tiny``: ``equinb.backbones.tiny_clip``) and synthetic images."""
    import clip

    from equinb.backbones import tiny_clip
    from equinb.heads import CosineHead
    from equinb.precision import apply_clip_precision
    from equinb.zeroshot import TRANSFORMS, per_view_logits, view_elements

    device = torch.device(device)
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    model = tiny_clip("rn") if tiny else clip.model.CLIP(1024, 224, (3, 4, 6, 3), 64, None, 77, 49408, 512, 8, 12)
    encoder = model.visual.to(device).eval()
    apply_clip_precision(encoder, emulate=not cuda)
    size, dim = int(encoder.input_resolution), int(encoder.output_dim)
    dtype = torch.float16 if cuda else torch.float32
    head = CosineHead(nn.functional.normalize(torch.randn(dim, 100, device=device), dim=0).to(dtype))

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def timed(run, repeats: int, warmup: int = 1) -> float:  # seconds per call, after warm-up calls (cuDNN picks
        for _ in range(warmup):                                 # its kernels, the allocator grows)
            run()
        sync()
        start = time.perf_counter()
        for _ in range(repeats):
            run()
        sync()
        return (time.perf_counter() - start) / repeats

    images, batch = (64, 16) if tiny else (2_048, 256)
    raw = torch.randn(images, 3, size, size, device=device).to(dtype)
    elements = view_elements(TRANSFORMS)
    zeroshot = timed(lambda: per_view_logits(encoder, head, ((raw[i:i + batch], torch.zeros(len(raw[i:i + batch]),
                                                                                            dtype=torch.long))
                                                             for i in range(0, images, batch)), elements, device), 2)
    lam = weighted_model(encoder, EmbeddingWeightNet(dim).to(device), nn.Linear(dim, 100, bias=False).to(device),
                         get_group("rot90"), TrainConfig.updated())
    labels = torch.randint(0, 100, (32,), device=device)
    feats = nn.functional.normalize(torch.randn(32, 4, dim, device=device), dim=-1)
    opt = torch.optim.SGD(lam.weight_net.parameters(), lr=0.33, momentum=0.9)

    def step(optimiser: torch.optim.Optimizer, views: torch.Tensor | None = None,
             inputs: torch.Tensor | None = None) -> None:
        # the engine's step: views from the trunk (finetune) or cached (prefinetune), its loss (the article's cross-
        # entropy, on probabilities where the configuration says so), the same optimiser calls
        computed = views if views is not None else features(lam, inputs)
        loss = train_step_loss(lam, computed, labels, weight_views=computed)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    prefinetune = timed(lambda: step(opt, views=feats), steps)
    views = torch.randn(32, 4, 3, size, size, device=device).to(dtype)
    opt = torch.optim.SGD(list(encoder.parameters()) + list(lam.weight_net.parameters()), lr=5e-8, momentum=0.9)
    default = timed(lambda: step(opt, inputs=views), max(3, steps // 3), warmup=3)
    flat = views.flatten(0, 1)  # the trunk's input; the λ network keeps dropout on in evaluation (as published)
    with torch.no_grad():
        before = encoder(flat).float()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    # As the engine finetunes (equinb.kernels: on CUDA cuDNN's autotuner and channels-last weights); the embeddings'
    # change says how far that moves the as-published numbers (0: the same bits; always 0 on a CPU).
    with tuned_kernels(encoder, device):
        with torch.no_grad():
            after = encoder(flat).float()
        # a new optimiser: momentum buffers made for contiguous weights would keep foreach SGD off its fast path
        opt = torch.optim.SGD(list(encoder.parameters()) + list(lam.weight_net.parameters()), lr=5e-8, momentum=0.9)
        finetune = timed(lambda: step(opt, inputs=views), max(3, steps // 3), warmup=3)
    peak = torch.cuda.max_memory_allocated() / 1e9 if cuda else 0.0
    return dict(zeroshot_views_per_s=images * len(elements) / zeroshot, prefinetune_steps_per_s=1 / prefinetune,
                finetune_steps_per_s=1 / finetune, finetune_default_kernels_steps_per_s=1 / default,
                tuned_embedding_change=float((after - before).abs().max() / before.abs().max().clamp_min(1e-12)),
                peak_memory_gb=peak)


if __name__ == "__main__":
    main()
