"""Networks that give each view of an orbit a weight: the lambda networks and the view attention.

All modules take the per-view features of one orbit and return one score per view, computed
from each view independently (lambda networks) or permutation-equivariantly (attention), so that
permuting the views permutes the scores. That is what makes the wrappers invariant.

Sizes are derived from the arguments (channels, map size), never from a backbone's name. The
article's CLIP-RN50 sizes are the defaults where the article fixes them.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["EmbeddingWeightNet", "FeatureMapWeightNet", "ViewAttention", "MapEncoder", "default_weight_net",
           "default_view_attention"]


def _check_rank(x: torch.Tensor, rank: int, what: str) -> None:
    if x.ndim != rank:
        raise ValueError(f"{what} expects a tensor of rank {rank}, got shape {tuple(x.shape)}")


def _check_dim(x: torch.Tensor, dim: int, what: str) -> None:
    """A clear message, before any matrix product, when embeddings [B, G, D] do not have the D a net was built for."""
    if x.shape[-1] != dim:
        raise ValueError(f"{what} was built for views of dimension {dim} ([B, G, {dim}]) but got views of shape "
                         f"{tuple(x.shape)}; build it with {what}({x.shape[-1]}), or let the wrapper size it "
                         "(weight_net=None, example_input=<a few images>)")


def _view_shape(view_shape: tuple[int, ...]) -> tuple[int, ...]:
    shape = tuple(int(n) for n in view_shape)
    if len(shape) not in (1, 3):
        raise ValueError(f"a default weighting network needs views that are embeddings [D] or feature maps "
                         f"[C, h, w], got one view of shape {shape}; pass weight_net= yourself")
    return shape


def default_weight_net(view_shape: tuple[int, ...]) -> nn.Module:
    """The article's lambda network for views of this shape: ``EmbeddingWeightNet(D)`` for embeddings [D],
    ``FeatureMapWeightNet(C, (h, w))`` for maps [C, h, w]."""
    shape = _view_shape(view_shape)
    return EmbeddingWeightNet(shape[0]) if len(shape) == 1 else FeatureMapWeightNet(shape[0], shape[1:])


def default_view_attention(view_shape: tuple[int, ...]) -> nn.Module:
    """The article's view attention for views of this shape: ``ViewAttention(D)`` or ``ViewAttention(C, (h, w))``."""
    shape = _view_shape(view_shape)
    return ViewAttention(shape[0]) if len(shape) == 1 else ViewAttention(shape[0], shape[1:])


class EmbeddingWeightNet(nn.Module):
    """The article's invariant lambda network: one raw scalar per view embedding.

    ``Linear(D, h) -> ReLU -> Dropout -> Linear(h, h) -> Dropout -> Linear(h, 1)`` (no ReLU after the
    second layer, as in the article's code). h = 100 and dropout 0.5 by default.

    Shapes: feats [B, G, D] -> lambda [B, G].
    """

    def __init__(self, dim: int, hidden: int = 100, dropout: float = 0.5) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.Dropout(dropout),
            nn.Linear(hidden, 1),
        )

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        _check_rank(feats, 3, "EmbeddingWeightNet")
        _check_dim(feats, self.net[0].in_features, "EmbeddingWeightNet")
        dtype = self.net[0].weight.dtype
        return self.net(feats.to(dtype)).squeeze(-1)


class MapEncoder(nn.Module):
    """Encodes each view's feature map into a vector, channel by channel.

    Every channel map is processed on its own by ``Conv2d(1 -> conv_channels, k) -> ReLU`` and
    ``Linear(conv_channels * (h-k+1) * (w-k+1) -> per_channel) -> ReLU``; the C results are
    concatenated and passed through ``Linear(C * per_channel -> hidden) -> ReLU -> Linear(hidden ->
    out_dim)``. Article sizes (CLIP-RN50 layer4, C = 2048, 7x7): 32 conv channels, k = 3,
    800 -> 8, 16384 -> 128 -> 128.

    Shapes: maps [B, G, C, h, w] -> [B, G, out_dim].
    """

    def __init__(self, channels: int, map_size: tuple[int, int], conv_channels: int = 32, kernel: int = 3,
                 per_channel: int = 8, hidden: int = 128, out_dim: int = 128) -> None:
        super().__init__()
        h, w = map_size
        if h < kernel or w < kernel:
            raise ValueError(
                f"feature maps of size {h}x{w} are smaller than the {kernel}x{kernel} kernel; use a larger input "
                f"so the map is at least {kernel}x{kernel}, or, for a trunk that pools its maps, end it with "
                "nn.Flatten() so that its views are embeddings [D], or pass your own weight_net= (a module from "
                "[B, G, C, h, w] maps to [B, G] weights)"
            )
        self.channels, self.map_size = int(channels), (int(h), int(w))
        self.conv = nn.Conv2d(1, conv_channels, kernel)
        self.pre_proj = nn.Linear(conv_channels * (h - kernel + 1) * (w - kernel + 1), per_channel)
        self.mlp = nn.Sequential(
            nn.Linear(channels * per_channel, hidden), nn.ReLU(), nn.Linear(hidden, out_dim),
        )

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        _check_rank(maps, 5, "MapEncoder")
        b, g, c, h, w = maps.shape
        if (c, (h, w)) != (self.channels, self.map_size):
            raise ValueError(f"MapEncoder was built for [*, *, {self.channels}, {self.map_size[0]}, "
                             f"{self.map_size[1]}] maps, got {tuple(maps.shape)}: its sizes are fixed when it is "
                             "built (a wrapper's default one from example_input), so build it, or the wrapper, with "
                             "images of this size, or resize the images to the size it was built for")
        x = self._per_channel_features(maps.to(self.conv.weight.dtype).reshape(b * g * c, h, w))
        return self.mlp(x.reshape(b, g, c * self.pre_proj.out_features))

    def _per_channel_features(self, x: torch.Tensor) -> torch.Tensor:
        """``relu(pre_proj(flatten(relu(conv(x)))))`` of every one-channel map, as two matrix products.

        Millions of one-channel maps make a poor batch for a convolution kernel. Here the convolution is a
        product with the unfolded k x k patches, and its output stays position-major ([M, h'w', K]): the
        columns of ``pre_proj``'s weight are permuted to match (a small copy) instead of transposing the
        large activation. Same parameters and same numbers as Conv2d's channel-major flatten
        (``tests/test_wrappers.py``), faster on a CPU (``bench/map_encoder.py``).

        Shapes: x [M, h, w] -> [M, per_channel].
        """
        k, channels = self.conv.kernel_size[0], self.conv.out_channels
        patches = x.unfold(1, k, 1).unfold(2, k, 1)  # [M, h', w', k, k]
        m, hh, ww = patches.shape[:3]
        conv = torch.relu(patches.reshape(m, hh * ww, k * k) @ self.conv.weight.reshape(channels, -1).T
                          + self.conv.bias)  # [M, h'w', K]
        weight = self.pre_proj.weight.reshape(-1, channels, hh * ww).transpose(1, 2).reshape(-1, hh * ww * channels)
        return torch.relu(nn.functional.linear(conv.reshape(m, -1), weight, self.pre_proj.bias))


class FeatureMapWeightNet(nn.Module):
    """The article's feature-map lambda network: ``MapEncoder`` then ``ReLU -> Linear(hidden, 1)``.

    Article sizes: 2,120,649 parameters for C = 2048 and 7x7 maps. No dropout.

    Shapes: maps [B, G, C, h, w] -> lambda [B, G] (raw; the wrapper normalises, softmax in the article).
    """

    def __init__(self, channels: int, map_size: tuple[int, int], conv_channels: int = 32, kernel: int = 3,
                 per_channel: int = 8, hidden: int = 128) -> None:
        super().__init__()
        self.encoder = MapEncoder(channels, map_size, conv_channels, kernel, per_channel, hidden, out_dim=hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.encoder(maps))).squeeze(-1)


class ViewAttention(nn.Module):
    """Equiattention's aggregator: one-head attention between the views, values are the views.

    ``A = softmax(Q K^T / sqrt(d))`` with ``Q = q_net(views)``, ``K = k_net(views)`` ([B, G, G]; row i
    is query view i). The output ``mean_i (A V)_i = sum_j w_j V_j`` with ``w_j = mean_i A_ij``: the
    column means of A are the effective view weights (they sum to 1). Permuting the views gives
    ``A -> P A P^T``, so the weights permute with the views.

    ``q_net``/``k_net`` are ``MapEncoder``s for feature maps (article sizes by default) or MLPs
    ``D -> hidden -> out_dim`` for embeddings (``map_size=None``). The first ``Linear`` of each one's MLP is
    drawn Kaiming-uniform (fan-in, ReLU gain), about 2.4 times PyTorch's default range, as the article's code does
    for its feature-map attention (the embedding variant is this library's and follows it): the initial attention
    is less uniform, which changes how the module trains.

    Shapes: views [B, G, C, h, w] or [B, G, D] -> weights [B, G] (and attention [B, G, G]).
    """

    def __init__(self, channels: int, map_size: tuple[int, int] | None = None, hidden: int = 128,
                 out_dim: int = 128, **map_kwargs: int) -> None:
        super().__init__()
        if map_size is None and map_kwargs:  # they size the map encoder, which embeddings do not have
            raise ValueError(f"ViewAttention: {sorted(map_kwargs)} apply to feature maps only; give map_size= too, "
                             "or leave them out for embeddings")

        def make() -> nn.Module:
            if map_size is None:
                net = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))
                first = net[0]
            else:
                net = MapEncoder(channels, map_size, hidden=hidden, out_dim=out_dim, **map_kwargs)
                first = net.mlp[0]
            nn.init.kaiming_uniform_(first.weight, mode="fan_in", nonlinearity="relu")  # the bias keeps its default
            return net

        self.q_net = make()  # the query network is built and initialised before the key network, as in the article
        self.k_net = make()
        self.scale = 1.0 / math.sqrt(out_dim)
        self.channels, self.map_size = int(channels), map_size

    def attention(self, views: torch.Tensor) -> torch.Tensor:
        """Shapes: views [B, G, ...] -> A [B, G, G] (rows sum to 1)."""
        if self.map_size is None:
            _check_rank(views, 3, "ViewAttention (embeddings)")
            _check_dim(views, self.channels, "ViewAttention")
            views = views.to(self.q_net[0].weight.dtype)  # the wrapper hands views over in float32 (MapEncoder casts)
        q, k = self.q_net(views), self.k_net(views)
        return torch.softmax(q @ k.transpose(1, 2) * self.scale, dim=-1)

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        """Effective per-view weights, the column means of A. Shapes: [B, G, ...] -> [B, G]."""
        return self.attention(views).mean(dim=1)
