"""Frozen classification heads: CLIP's prompt-ensemble text head, fitted linear heads, pooled map heads.

- ``CosineHead``: CLIP's zero-shot head, ``logit_factor * normalise(f) @ W`` with ``W`` from
  ``prompt_ensemble_weights`` (per class, the mean of the normalised template embeddings).
- ``fit_linear_head``: multinomial logistic regression on frozen embeddings, the small profile's stand-in for
  the text head (fitted on upright images only).
- ``linear_text_head``: the text head as an ``nn.Linear`` on normalised embeddings (the training engine's head).
- ``PooledHead``: a pooling module (CLIP's attnpool; finetuned or frozen) then a linear head, for feature maps.
- ``prototype_head``: a few-shot head with no preferred orientation (the small profile's stand-in for CLIP's text
  head on a task it knows little about).
- ``frozen_head`` / ``load_frozen_model``: the head of a backbone on a dataset, cached on disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .backbones import Backbone, cpu_chunks, load_backbone
from .cache import cache_dir as default_cache_dir
from .cache import cache_key, data_root as default_root, load_or_compute, module_fingerprint, package_code_fingerprint
from .data import dataset_classes, dataset_spec, image_batches
from .prompts import templates_for

__all__ = ["CosineHead", "prompt_ensemble_weights", "fit_linear_head", "linear_text_head", "PooledHead",
           "prototype_head", "frozen_head", "load_frozen_model"]

Tensor = torch.Tensor


class CosineHead(nn.Module):
    """CLIP's zero-shot head: ``logit_factor * normalise(f) @ W``.

    Shapes: embeddings [B, D] -> logits [B, C]; ``weights`` W [D, C] with unit-norm columns.
    """

    def __init__(self, weights: torch.Tensor, logit_factor: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("weights", weights)
        self.logit_factor = float(logit_factor)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        feats = feats / feats.norm(dim=-1, keepdim=True)
        return self.logit_factor * feats.to(self.weights.dtype) @ self.weights


@torch.no_grad()
def prompt_ensemble_weights(clip_model: nn.Module, classnames: Sequence[str], templates: Sequence[str],
                            device: str | torch.device = "cpu", batch_size: int = 1000) -> torch.Tensor:
    """CLIP's prompt-ensemble text head: per class, mean of normalised template embeddings, renormalised.

    Shapes: -> W [D, C] (columns unit norm, the model's dtype).
    """
    import clip  # lazily: ``import equinb`` must not import clip

    columns = []
    for name in classnames:
        texts = clip.tokenize([t.format(name) for t in templates]).to(device)
        emb = torch.cat([clip_model.encode_text(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)])
        emb = emb / emb.norm(dim=-1, keepdim=True)
        mean = emb.mean(dim=0)
        columns.append(mean / mean.norm())
    return torch.stack(columns, dim=1)


def fit_linear_head(feats: torch.Tensor, labels: torch.Tensor, weight_decay: float = 1e-3,
                    steps: int = 200) -> nn.Linear:
    """Multinomial logistic regression on frozen embeddings (the small profile's stand-in text head).

    Full-batch L-BFGS in float64 with an L2 penalty on the raw (non-negative, pooled) features:
    deterministic on the CPU and done in seconds for a few thousand embeddings. (Standardising the
    features first gives the same upright accuracy but over-weights rarely active channels, which makes
    the head less calibrated on rotated inputs and hurts equizero's confidence proxy.)

    Shapes: feats [N, D], labels [N] -> Linear(D, C).
    """
    x = feats.double()
    n_classes = int(labels.max()) + 1
    weight = torch.zeros(n_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(x @ weight.T + bias, labels) + weight_decay * weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    head = nn.Linear(x.shape[1], n_classes)
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    return head.requires_grad_(False)


def linear_text_head(text_head: CosineHead) -> nn.Linear:
    """The text head as a frozen ``nn.Linear`` on already normalised embeddings (logit factor 1, as in the
    article). Shapes: W [D, C] -> Linear(D, C) without bias."""
    head = nn.Linear(text_head.weights.shape[0], text_head.weights.shape[1], bias=False)
    with torch.no_grad():
        head.weight.copy_(text_head.weights.float().T)  # logits = f_hat @ W
    return head.to(text_head.weights.device).requires_grad_(False)


class PooledHead(nn.Module):
    """The feature-map head: a pooling module (CLIP's attnpool) then the fixed linear text head.

    ``finetune_pool``: finetuning trains the pooling module with the trunk (``equinb.engine.finetuned_part``), as
    the article's code finetunes all of CLIP's image encoder, attnpool included; each run then trains its own copy.
    Otherwise, and always before finetuning, the pool is frozen.

    Shapes: maps [B, C, h, w] (any float dtype; cast to the pool's) -> logits [B, K] (float32).
    """

    def __init__(self, pool: nn.Module, linear: nn.Linear, finetune_pool: bool = False) -> None:
        super().__init__()
        self.pool, self.linear = pool.requires_grad_(False), linear
        self.finetune_pool = bool(finetune_pool)

    def forward(self, maps: Tensor) -> Tensor:
        dtype = next(self.pool.parameters()).dtype
        return self.linear(self.pool(maps.to(dtype)).float())


def prototype_head(embeddings: Tensor, labels: Tensor, shots: int, n_classes: int, seed: int = 0) -> nn.Linear:
    """A few-shot cosine head with no preferred orientation, like CLIP's zero-shot head on a task it barely knows.

    Per class, ``shots`` training images are drawn (seeded); the class's weight is the normalised mean of their
    normalised embeddings over *every view* of their orbit, so no orientation of the prototypes is favoured. No
    bias: on normalised embeddings the logits are cosine similarities (logit factor 1, as the article's CLIP).

    Shapes: embeddings [N, G, D] (all views of each image), labels [N] -> Linear(D, n_classes).
    """
    if embeddings.ndim != 3 or embeddings.shape[0] != labels.shape[0]:
        raise ValueError(f"prototype_head needs embeddings [N, G, D] and labels [N], got {tuple(embeddings.shape)} "
                         f"and {tuple(labels.shape)}")
    gen = torch.Generator().manual_seed(seed)
    normalised = nn.functional.normalize(embeddings.double(), dim=-1)
    rows = []
    for c in range(n_classes):
        members = torch.nonzero(labels == c).flatten()
        if len(members) < shots:
            raise ValueError(f"class {c} has {len(members)} training images; prototype_head needs {shots}")
        pick = members[torch.randperm(len(members), generator=gen)[:shots]]
        rows.append(nn.functional.normalize(normalised[pick].reshape(-1, embeddings.shape[-1]).mean(0), dim=0))
    head = nn.Linear(embeddings.shape[-1], n_classes, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.stack(rows))
    return head.requires_grad_(False)


def frozen_head(backbone: Backbone, dataset: str, cache_dir: str | Path, *, batch_size: int = 256,
                data_root: str | None = None, num_workers: int = 0, dataset_options: dict | None = None) -> nn.Module:
    """The frozen classification head of a backbone on a dataset, cached on disk.

    CLIP: the prompt-ensemble text head (``CosineHead``, logit factor 1 as in the article).
    Other backbones (the small profile's MobileNetV2): a linear head fitted once on the embeddings of
    the *upright* training images, which stands in for the text head and never sees a transformed image.
    """
    if backbone.text_model is not None:
        classes, templates = dataset_classes(dataset), templates_for(dataset)
        key = cache_key(kind="text_head", model=module_fingerprint(backbone.text_model), classes=classes,
                        templates=templates, code=package_code_fingerprint("heads", "prompts"))
        weights = load_or_compute(Path(cache_dir) / f"text_head_{key}.pt", lambda: prompt_ensemble_weights(
            backbone.text_model, classes, templates, backbone.device).cpu())
        return CosineHead(weights.to(backbone.device))
    loader, ident = image_batches(backbone, dataset, "train", batch_size, data_root, num_workers, dataset_options)
    # the code that loads the images, embeds and fits them is in the key: a change of any refits
    key = cache_key(kind="linear_head", encoder=module_fingerprint(backbone.encoder), data=ident,
                    code=package_code_fingerprint("heads", "data", "backbones"))

    def fit() -> dict:
        with torch.no_grad():
            feats, labels = zip(*[(torch.cat([backbone.encoder(part).float().cpu()
                                              for part in cpu_chunks(x.to(backbone.device))]), y) for x, y in loader])
        head = fit_linear_head(torch.cat(feats), torch.cat(labels))
        return head.state_dict()

    state = load_or_compute(Path(cache_dir) / f"linear_head_{key}.pt", fit)
    head = nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
    head.load_state_dict(state)
    return head.requires_grad_(False).to(backbone.device)


def load_frozen_model(backbone_name: str, dataset: str, *, device: str = "cpu", image_size: int | None = None,
                        data_root: str | None = None, cache_dir: str | Path | None = None,
                        clip_path: str | None = None, clip_download_root: str | None = None, batch_size: int = 256,
                        num_workers: int = 0, dataset_options: dict | None = None
                        ) -> tuple[Backbone, nn.Module, Path, Path]:
    """The frozen backbone and its zero-shot head (see ``frozen_head``) for one dataset.

    Returns ``(backbone, head, root, cache_dir)``; ``head(backbone.encoder(x))`` gives logits [B, C].
    """
    dataset_spec(dataset)  # an unknown dataset fails here, before the backbone loads (a download for CLIP)
    root = Path(data_root) if data_root else default_root()
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir(root)
    size = image_size if backbone_name == "mobilenet_v2" else None
    backbone = load_backbone(backbone_name, device, path=clip_path, download_root=clip_download_root,
                             input_size=size)
    backbone.model.requires_grad_(False)  # frozen: no autograd through the encoder
    head = frozen_head(backbone, dataset, cache_dir, batch_size=batch_size, data_root=str(root),
                         num_workers=num_workers, dataset_options=dataset_options)
    return backbone, head, root, cache_dir
