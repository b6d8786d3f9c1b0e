"""Exact symmetry properties of every wrapper, at every level, for every image group (float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from equinb.checks import check_equivariance, check_invariance
from equinb.groups import get_group
from equinb.heads import CosineHead
from equinb.weighting import EmbeddingWeightNet, FeatureMapWeightNet, ViewAttention
from equinb.wrappers import (
    EquiAttention,
    EquiZero,
    Equitune,
    LambdaEquitune,
    OrbitWrapper,
    proxy_scores,
)

IMAGE_GROUPS = ["trivial", "rot90", "rot180", "hflip", "vflip", "d4"]
SIZE, K, D, C, MAP = 12, 5, 6, 4, 6  # image size, classes, embedding dim, map channels, map size
TOL = dict(rtol=1e-9, atol=1e-10)


def _trunk_maps(seed: int) -> nn.Module:
    """A random CNN with no symmetry of its own: [B, 3, 12, 12] -> maps [B, 4, 6, 6]."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 5, 3, padding=1), nn.Tanh(), nn.Conv2d(5, C, 3, stride=2, padding=1), nn.Tanh(),
    ).double()


def _head_maps(seed: int) -> nn.Module:
    """Position-sensitive head (like attnpool's absolute positional embedding): maps -> [B, K]."""
    torch.manual_seed(seed + 100)
    return nn.Sequential(nn.Flatten(), nn.Linear(C * MAP * MAP, K)).double()


def _trunk_embed(seed: int) -> nn.Module:
    return nn.Sequential(_trunk_maps(seed), nn.Flatten(), nn.Linear(C * MAP * MAP, D).double())


def _model(seed: int) -> nn.Module:
    """The simplest contract: images -> outputs [B, K]."""
    return nn.Sequential(_trunk_embed(seed), nn.Linear(D, K).double())


def _images(seed: int = 0, b: int = 3) -> torch.Tensor:
    return torch.randn(b, 3, SIZE, SIZE, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _build(method: str, level: str, group_name: str, *, align: bool = False, **options) -> OrbitWrapper:
    """One wrapper per (method, level). Levels: model (simplest contract), embedding, feature_map."""
    group = get_group(group_name)
    if level == "model":
        trunk, head, views_dim = _model(0), None, K
    elif level == "embedding":
        trunk, head, views_dim = _trunk_embed(0), nn.Linear(D, K).double(), D
    else:
        trunk, head, views_dim = _trunk_maps(0), _head_maps(0), C
    torch.manual_seed(1)
    spatial = level == "feature_map"
    common = dict(head=head, align_views=align, **options)
    if method == "equitune":
        return Equitune(trunk, group, **common)
    if method.startswith("equizero"):
        proxy = method.split(":")[1] if ":" in method else "max_prob"
        return EquiZero(trunk, group, proxy=proxy, **common)
    if method.startswith("lambda"):
        normalisation = method.split(":")[1]
        net = FeatureMapWeightNet(C, (MAP, MAP), conv_channels=3, per_channel=2, hidden=8) if spatial \
            else EmbeddingWeightNet(views_dim, hidden=7)
        return LambdaEquitune(trunk, group, net.double(), normalisation=normalisation, **common).eval()
    if method == "attention":
        att = ViewAttention(C, (MAP, MAP), hidden=8, out_dim=8, conv_channels=3, per_channel=2) if spatial \
            else ViewAttention(views_dim, None, hidden=8, out_dim=8)
        return EquiAttention(trunk, group, att.double(), **common)
    raise AssertionError(method)


METHODS = ["equitune", "equizero:max_prob", "equizero:entropy", "equizero:max_logit",
           "lambda:none", "lambda:softmax", "lambda:sum", "attention"]


@pytest.mark.parametrize("group_name", IMAGE_GROUPS)
@pytest.mark.parametrize("level", ["model", "embedding", "feature_map"])
@pytest.mark.parametrize("method", METHODS)
def test_invariance(method: str, level: str, group_name: str) -> None:
    wrapper = _build(method, level, group_name)
    group, x = wrapper.group, _images()
    with torch.no_grad():
        out, weights = wrapper(x, return_weights=True)
        assert out.shape == (3, K) and weights.shape == (3, group.order)
        if group.order == 1 and method != "lambda:none":  # one view, weight 1: the model itself (no test of symmetry)
            head = wrapper.head if wrapper.head is not None else nn.Identity()
            torch.testing.assert_close(out, head(wrapper.trunk(x)), **TOL)
        for k in range(group.order):
            moved, moved_w = wrapper(group.act(x, k), return_weights=True)
            torch.testing.assert_close(moved, out, **TOL)
            # the weights travel with their views: weight of view j for g_k x = weight of view j*g_k for x
            torch.testing.assert_close(moved_w, weights[:, group.view_permutation(k)], **TOL)


@pytest.mark.parametrize("level", ["model", "embedding", "feature_map"])
def test_negative_control_bare_model_is_not_invariant(level: str) -> None:
    wrapper = _build("equitune", level, "rot90")
    x = _images()
    with torch.no_grad():
        bare = lambda z: wrapper.head(wrapper.trunk(z))  # noqa: E731
        assert (bare(get_group("rot90").act(x, 1)) - bare(x)).abs().max() > 1e-3


def _combined_map(wrapper: OrbitWrapper, x: torch.Tensor) -> torch.Tensor:
    """Z, the combined feature map before the head. Shapes: x [B, 3, H, W] -> [B, C, h, w]."""
    views = wrapper.views(x)
    return wrapper.combine(views, wrapper.view_weights(views)) if isinstance(wrapper.head, nn.Identity) else None


@pytest.mark.parametrize("group_name", ["rot90", "rot180", "hflip", "d4"])
@pytest.mark.parametrize("method", ["equitune", "equizero:max_prob", "lambda:softmax", "lambda:sum", "attention"])
def test_feature_map_alignment(method: str, group_name: str) -> None:
    """Aligned: Z(g x) = g Z(x) (equivariant). As published (no-op inverse): Z(g x) = Z(x) (invariant)."""
    x = _images(1)
    for align in (True, False):
        wrapper = _build(method, "feature_map", group_name, align=align)
        head = wrapper.head
        wrapper.head = nn.Identity()  # expose Z; the weights and selections still use the real head
        if isinstance(wrapper, EquiZero):  # the proxy needs class outputs: score views through the real head
            wrapper.per_view_outputs = lambda values, scales=None, h=head: h(values.flatten(0, 1)).reshape(
                *values.shape[:2], -1)
        group = wrapper.group
        with torch.no_grad():
            z = _combined_map(wrapper, x)
            assert z.shape == (3, C, MAP, MAP)
            for k in range(1, group.order):
                z_moved = _combined_map(wrapper, group.act(x, k))
                if align:
                    torch.testing.assert_close(z_moved, group.act(z, k), **TOL)
                    assert (z_moved - z).abs().max() > 1e-3  # equivariant, hence not invariant
                else:
                    torch.testing.assert_close(z_moved, z, **TOL)
                    if not torch.equal(group.act(z, k), z):
                        assert (z_moved - group.act(z, k)).abs().max() > 1e-3


@pytest.mark.parametrize("method", ["equitune", "lambda:softmax", "lambda:sum", "attention"])
def test_the_aligned_forward_pass_is_equivariant_end_to_end(method: str) -> None:
    """The wrapper's own forward (weights from the views, the views aligned, combined), not its parts: the combined
    map of g x is g applied to that of x, for every element of d4, and the bare trunk is not equivariant."""
    wrapper = _build(method, "feature_map", "d4", align=True).eval()
    wrapper.head = nn.Identity()  # the output is the combined map Z
    x = _images(1)
    assert check_equivariance(wrapper, x, "d4", atol=1e-10) < 1e-10
    assert check_equivariance(wrapper.trunk, x, "d4") > 1e-3


def test_aligned_views_break_logit_invariance_through_a_positional_head() -> None:
    """As described (aligned) + a position-sensitive head: the logits are no longer invariant."""
    wrapper = _build("lambda:softmax", "feature_map", "rot90", align=True)
    x = _images()
    with torch.no_grad():
        assert (wrapper(get_group("rot90").act(x, 1)) - wrapper(x)).abs().max() > 1e-3


@pytest.mark.parametrize("level", ["model", "embedding", "feature_map"])
def test_lambda_special_cases(level: str) -> None:
    x = _images(2)
    equitune = _build("equitune", level, "d4")
    equizero = _build("equizero:max_prob", level, "d4")

    class Constant(nn.Module):
        def __init__(self, value: float = 2.5) -> None:
            super().__init__()
            self.value = value

        def forward(self, views: torch.Tensor) -> torch.Tensor:
            return torch.full(views.shape[:2], self.value, dtype=views.dtype)

    class OneHotOfTheMostConfidentView(nn.Module):  # equizero's choice, recomputed here from the head's outputs
        def forward(self, views: torch.Tensor) -> torch.Tensor:
            logits = torch.stack([equizero.apply_head(views[:, k]) for k in range(views.shape[1])], dim=1)
            best = torch.softmax(logits, dim=-1).amax(-1).argmax(dim=1)
            return nn.functional.one_hot(best, views.shape[1]).to(views.dtype)

    with torch.no_grad():
        for normalisation in ("softmax", "sum"):
            lam = LambdaEquitune(equitune.trunk, equitune.group, Constant(), head=equitune.head,
                                 normalisation=normalisation)
            torch.testing.assert_close(lam(x), equitune(x), **TOL)
        # unnormalised lambda = 1 on every view is the plain mean, i.e. equitune
        ones = LambdaEquitune(equitune.trunk, equitune.group, Constant(1.0), head=equitune.head, normalisation="none")
        torch.testing.assert_close(ones(x), equitune(x), **TOL)
        one_hot = LambdaEquitune(equizero.trunk, equizero.group, OneHotOfTheMostConfidentView(), head=equizero.head,
                                 normalisation="sum")
        torch.testing.assert_close(one_hot(x), equizero(x), **TOL)


def test_equizero_picks_the_view_its_proxy_names() -> None:
    for proxy in ("max_prob", "entropy", "max_logit"):
        wrapper = _build(f"equizero:{proxy}", "model", "d4")
        x = _images(3, b=6)
        with torch.no_grad():
            per_view = wrapper.trunk(wrapper.group.orbit(x).flatten(0, 1)).reshape(6, 8, K)
            scores = proxy_scores(per_view, proxy)
            chosen = scores.argmax(dim=1)
            out, weights = wrapper(x, return_weights=True)
            assert torch.equal(weights.argmax(dim=1), chosen)
            torch.testing.assert_close(out, per_view[torch.arange(6), chosen], **TOL)
            # the chosen view is the one the proxy's definition names, computed here from the logits directly
            probs = torch.softmax(per_view, dim=-1)
            by_hand = {"max_prob": probs.amax(-1), "entropy": (probs * probs.log()).sum(-1),
                       "max_logit": per_view.amax(-1)}[proxy]
            assert torch.equal(chosen, by_hand.argmax(dim=1))
    # max_prob picks the most confident view; entropy the least uncertain
    logits = torch.tensor([[[0.0, 0.0, 0.0], [3.0, 0.0, 0.0], [1.0, 1.0, -5.0]]])
    assert proxy_scores(logits, "max_prob").argmax() == 1
    assert proxy_scores(logits, "entropy").argmax() == 1
    assert proxy_scores(logits, "max_logit").argmax() == 1


def test_output_softmax_and_elementwise_max_as_published() -> None:
    x = _images(4)
    eq = _build("equitune", "model", "rot90", output_softmax=True, logit_factor=1.0)
    with torch.no_grad():
        per_view = eq.trunk(eq.group.orbit(x).flatten(0, 1)).reshape(3, 4, K)
        torch.testing.assert_close(eq(x), torch.softmax(per_view, -1).mean(1), **TOL)
        ez = _build("equizero", "model", "rot90", output_softmax=True, elementwise_max=True)
        elementwise = ez(x)
        torch.testing.assert_close(elementwise, torch.softmax(per_view, -1).amax(1), **TOL)
        # its top-1 equals selection by max_prob
        assert torch.equal(elementwise.argmax(1), _build("equizero", "model", "rot90")(x).argmax(1))
    with pytest.raises(ValueError, match="output_softmax"):
        _build("equizero", "model", "rot90", elementwise_max=True)


def test_logit_factor_scales_the_head_output_before_any_softmax() -> None:
    """out = logit_factor * head(sum_k w_k U_k), or sum_k w_k softmax(logit_factor * head(U_k)): a factor of 3 is
    3x the logits in the first form and a sharper softmax per view in the second (1.0, the published value,
    leaves a missing factor unseen)."""
    x = _images(4)
    plain, tripled = (_build("equitune", "model", "rot90", logit_factor=f) for f in (1.0, 3.0))
    soft = _build("equitune", "model", "rot90", output_softmax=True, logit_factor=3.0)
    with torch.no_grad():
        per_view = soft.trunk(soft.group.orbit(x).flatten(0, 1)).reshape(3, 4, K)
        torch.testing.assert_close(tripled(x), 3.0 * plain(x), **TOL)
        torch.testing.assert_close(soft(x), torch.softmax(3.0 * per_view, -1).mean(1), **TOL)


def test_lambda_none_is_the_article_code() -> None:
    """normalisation='none': mean_k head(lambda_k f_k), i.e. lambda is a per-view factor on the logits."""
    wrapper = _build("lambda:none", "embedding", "rot90")
    x = _images(5)
    with torch.no_grad():
        views = wrapper.views(x)
        lam = wrapper.weight_net(views)
        head = wrapper.head
        expected = torch.stack([head(lam[:, k, None] * views[:, k]) for k in range(4)], 1).mean(1)
        out, weights = wrapper(x, return_weights=True)
        torch.testing.assert_close(out, expected, **TOL)
        torch.testing.assert_close(weights, lam, **TOL)
        wrapper.output_softmax = True
        expected = torch.stack([torch.softmax(head(lam[:, k, None] * views[:, k]), -1) for k in range(4)], 1).mean(1)
        torch.testing.assert_close(wrapper(x), expected, **TOL)


def test_attention_weights_are_permutation_equivariant() -> None:
    torch.manual_seed(0)
    att = ViewAttention(C, (MAP, MAP), hidden=8, out_dim=8, conv_channels=3, per_channel=2).double()
    views = torch.randn(2, 5, C, MAP, MAP, dtype=torch.float64)
    perm = torch.tensor([3, 0, 4, 1, 2])
    a, a_perm = att.attention(views), att.attention(views[:, perm])
    torch.testing.assert_close(a_perm, a[:, perm][:, :, perm], **TOL)
    torch.testing.assert_close(att(views[:, perm]), att(views)[:, perm], **TOL)
    torch.testing.assert_close(att(views).sum(1), torch.ones(2, dtype=torch.float64), **TOL)
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 5, dtype=torch.float64), **TOL)  # each view's row sums to 1
    torch.testing.assert_close(att(views), a.mean(1), **TOL)  # the weights are the columns' means
    assert (att(views) - 1 / 5).abs().max() > 1e-6  # not uniform (exactly 1/5 in float64), not plain equitune
    # scaled dot-product attention: softmax(q k^T / sqrt(out_dim)) over the keys
    q, k = att.q_net(views), att.k_net(views)
    torch.testing.assert_close(a, torch.softmax(q @ k.transpose(1, 2) / 8 ** 0.5, dim=-1), **TOL)


def test_cosine_head_normalises_each_embedding_on_its_own() -> None:
    w = nn.functional.normalize(torch.randn(6, 3, dtype=torch.float64), dim=0)
    f = torch.randn(4, 6, dtype=torch.float64)
    out = CosineHead(w)(f)
    torch.testing.assert_close(out, nn.functional.normalize(f, dim=-1) @ w, **TOL)
    torch.testing.assert_close(CosineHead(w)(f[:1]), out[:1], **TOL)  # a row's logits do not depend on the batch


def test_dropout_in_eval_and_frozen_copy() -> None:
    group = get_group("rot90")
    trunk, frozen = _trunk_embed(0), _trunk_embed(7)
    net = EmbeddingWeightNet(D, hidden=7).double()
    wrapper = LambdaEquitune(trunk, group, net, head=nn.Linear(D, K).double(), normalisation="none",
                             dropout_in_eval=True, frozen_copy=frozen).eval()
    assert net.training and not frozen.training and not trunk.training
    assert not any(p.requires_grad for p in frozen.parameters())
    x = _images(6)
    torch.manual_seed(0)
    a = wrapper(x)
    torch.manual_seed(1)
    assert not torch.allclose(a, wrapper(x))  # dropout active at evaluation, as published
    wrapper.dropout_in_eval = False
    wrapper.eval()
    assert not net.training
    with torch.no_grad():  # lambda comes from the frozen copy's views, not the trainable trunk's
        _, weights = wrapper(x, return_weights=True)
        torch.testing.assert_close(weights, net(wrapper.views(x, trunk=frozen)), **TOL)
        assert not torch.allclose(weights, net(wrapper.views(x)))


def test_straight_through_gradient() -> None:
    wrapper = _build("equizero", "model", "rot90", straight_through=True).train()
    x = _images(7)
    out = wrapper(x)
    with torch.no_grad():
        torch.testing.assert_close(out, wrapper.eval()(x), **TOL)  # forward value = the selected view
    wrapper.train()
    out = wrapper(x)
    out.sum().backward()
    grads = [p.grad for p in wrapper.trunk.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_bad_inputs() -> None:
    wrapper = _build("equitune", "model", "rot90")
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        wrapper(torch.zeros(3, SIZE, SIZE, dtype=torch.float64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        wrapper([[0.0]])
    with pytest.raises(TypeError, match="nn.Module"):
        Equitune(lambda z: z, get_group("rot90"))
    with pytest.raises(TypeError, match="get_group"):
        Equitune(nn.Identity(), 90)
    with pytest.raises(ValueError, match="unknown group .rot45.; valid: "):
        Equitune(nn.Identity(), "rot45")
    with pytest.raises(ValueError, match="unknown proxy .variance.; valid: .max_prob., .entropy."):
        EquiZero(nn.Identity(), get_group("rot90"), proxy="variance")
    with pytest.raises(ValueError, match="valid: .none., .softmax., .sum."):
        LambdaEquitune(nn.Identity(), get_group("rot90"), nn.Identity(), normalisation="l2")
    aligned = _build("equitune", "embedding", "rot90", align=True)
    with pytest.raises(ValueError, match="spatial trunk outputs"):
        aligned(_images())
    with pytest.raises(ValueError, match="smaller than the 3x3 kernel"):
        FeatureMapWeightNet(8, (2, 2))
    with pytest.raises(ValueError, match="rank 5"):
        FeatureMapWeightNet(C, (MAP, MAP))(torch.zeros(2, C, MAP, MAP))
    views = wrapper.views(_images())  # [3, 4, K]
    with pytest.raises(ValueError, match=r"views must be \[B, G, \.\.\.\] with G = 4, one per element of rot90"):
        wrapper.forward_views(views=views.transpose(0, 1))  # images and views swapped: 3 "views" of 4 images
    with pytest.raises(ValueError, match=r"weight_views must be \[B, G, \.\.\.\] with G = 4"):
        wrapper.forward_views(views=views, weight_views=views[:, :2])


@pytest.mark.parametrize("option, value", [("align_views", "False"), ("output_softmax", "no"), ("trunk_eval", None),
                                           ("normalise_views", torch.ones(2, dtype=torch.bool))])
def test_a_flag_that_is_not_a_bool_is_refused(option: str, value: object) -> None:
    """``bool("False")`` is True: a flag read from text would turn an option on silently."""
    with pytest.raises(TypeError, match=f"{option} must be True or False, got"):
        Equitune(nn.Identity(), "rot90", **{option: value})
    with pytest.raises(TypeError, match="dropout_in_eval must be True or False"):
        LambdaEquitune(nn.Identity(), "rot90", nn.Identity(), dropout_in_eval="True")
    flags = Equitune(nn.Identity(), "rot90", align_views=1, output_softmax=torch.tensor(False))
    assert flags.align_views is True and flags.output_softmax is False  # 0/1 and 0-d bool tensors are flags


def test_a_head_class_or_a_text_logit_factor_is_refused() -> None:
    with pytest.raises(TypeError, match=r"got the class Linear; build it first, e.g. head=Linear\(\.\.\.\)"):
        Equitune(nn.Identity(), "rot90", head=nn.Linear)
    for factor in ("2", True, float("nan")):
        with pytest.raises(TypeError, match="logit_factor must be a finite number"):
            Equitune(nn.Identity(), "rot90", logit_factor=factor)
    assert Equitune(nn.Identity(), "rot90", logit_factor=2).logit_factor == 2.0
    for factor in (0, -1.0):  # 0: every view's softmax uniform; < 0: the softmax inverted
        with pytest.raises(ValueError, match="logit_factor must be > 0"):
            Equitune(nn.Identity(), "rot90", logit_factor=factor)
    assert Equitune(nn.Identity(), "rot90", chunk_size=np.int64(2)).chunk_size == 2  # a NumPy integer is one
    # CLIP's scale, a one-element tensor (a learned parameter's exp), is a number
    assert Equitune(nn.Identity(), "rot90", logit_factor=torch.tensor(4.6).exp()).logit_factor == pytest.approx(99.48,
                                                                                                             abs=0.01)
    with pytest.raises(TypeError, match="elementwise_max must be True or False"):  # before the option's own check
        EquiZero(nn.Identity(), "rot90", elementwise_max="False")


@pytest.mark.parametrize("group_name", IMAGE_GROUPS)
def test_invariance_on_a_tiny_random_clip(group_name: str) -> None:
    """Every wrapper, at the embedding level (encoder -> cosine text head) and the feature-map level
    (ModifiedResNet stem..layer4 -> attnpool), is exactly invariant on a random CLIP in float64."""
    from equinb.backbones import load_backbone
    from equinb.heads import CosineHead

    backbone = load_backbone("tiny-clip-rn")
    backbone.model.double()
    trunk, pool = backbone.feature_split()
    channels, h, w = backbone.feature_map_shape()
    torch.manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(backbone.embed_dim, K, dtype=torch.float64), dim=0)
    head = CosineHead(text)
    group = get_group(group_name)
    s = backbone.input_size
    x = torch.randn(2, 3, s, s, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    small = dict(conv_channels=2, kernel=1, per_channel=2, hidden=8)
    wrappers = [
        Equitune(backbone.encoder, group, head=head),
        EquiZero(backbone.encoder, group, head=head, output_softmax=True),
        LambdaEquitune(backbone.encoder, group, EmbeddingWeightNet(backbone.embed_dim, 7).double(), head=head,
                       normalisation="none").eval(),
        EquiAttention(backbone.encoder, group, ViewAttention(backbone.embed_dim, None, 8, 8).double(), head=head),
        Equitune(trunk, group, head=nn.Sequential(pool, head)),
        LambdaEquitune(trunk, group, FeatureMapWeightNet(channels, (h, w), **small).double(),
                       head=nn.Sequential(pool, head), normalisation="softmax"),
        EquiAttention(trunk, group, ViewAttention(channels, (h, w), 8, 8, conv_channels=2, kernel=1,
                                                  per_channel=2).double(), head=nn.Sequential(pool, head)),
    ]
    with torch.no_grad():
        bare = head(backbone.encoder(x))
        if group.order > 1:  # negative control: CLIP itself is not invariant
            assert (head(backbone.encoder(group.act(x, 1))) - bare).abs().max() > 1e-6
        for wrapper in wrappers:
            out = wrapper(x)
            for k in range(group.order):
                torch.testing.assert_close(wrapper(group.act(x, k)), out, **TOL)


def test_weighting_modules_have_the_article_sizes() -> None:
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(FeatureMapWeightNet(2048, (7, 7))) == 2_120_649
    assert count(ViewAttention(2048, (7, 7))) == 4_241_040


@pytest.mark.parametrize("map_size", [None, (3, 3)])
def test_view_attention_draws_its_first_mlp_layers_kaiming_uniform(map_size: tuple[int, int] | None) -> None:
    """The article's code draws the first Linear of the query and key MLPs Kaiming-uniform (fan-in, ReLU gain):
    bound sqrt(6 / fan_in), about 2.45 times PyTorch's default 1 / sqrt(fan_in); the later Linear keeps the default."""
    torch.manual_seed(0)
    att = ViewAttention(64, map_size, hidden=128, out_dim=128, **({} if map_size is None else {"per_channel": 1}))
    for net in (att.q_net, att.k_net):
        first, last = (net[0], net[2]) if map_size is None else (net.mlp[0], net.mlp[2])
        fan_in = first.weight.shape[1]
        largest = float(first.weight.detach().abs().max())
        assert 0.95 * math.sqrt(6 / fan_in) < largest <= math.sqrt(6 / fan_in)
        assert float(last.weight.detach().abs().max()) <= 1 / math.sqrt(last.weight.shape[1])


@pytest.mark.parametrize("map_size", [(3, 3), (5, 4), (7, 7)])
def test_map_encoder_matches_a_per_channel_convolution(map_size: tuple[int, int]) -> None:
    """The matrix-product convolution equals Conv2d(1 -> k) per channel, flattened channel-major."""
    from equinb.weighting import MapEncoder

    torch.manual_seed(0)
    enc = MapEncoder(3, map_size, conv_channels=4, per_channel=2, hidden=8, out_dim=5).double()
    maps = torch.randn(2, 4, 3, *map_size, dtype=torch.float64)
    x = torch.relu(enc.conv(maps.reshape(-1, 1, *map_size))).flatten(1)  # the article's formulation
    x = torch.relu(enc.pre_proj(x)).reshape(2, 4, -1)
    torch.testing.assert_close(enc(maps), enc.mlp(x), **TOL)


@pytest.mark.parametrize("proxy", ["max_prob", "entropy", "max_logit"])
def test_equizero_stays_invariant_for_confident_models(proxy: str) -> None:
    # top logits leading by hundreds: softmax rounds to exactly one-hot in float32, so a proxy read from the
    # probabilities would tie across confident views and pick the lowest index, a different view after a turn
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    with torch.no_grad():
        model[2].weight.mul_(200)
    x = torch.randn(64, 3, 8, 8)
    assert check_invariance(EquiZero(model, "rot90", proxy=proxy), x, "rot90") < 1e-4  # rounding; a tie gave 120
    # the max_prob score orders views as the float64 probability does
    logits = torch.randn(6, 4, 7) * 3
    scores = proxy_scores(logits, "max_prob")
    assert torch.equal(scores.argmax(1), torch.softmax(logits.double(), -1).amax(-1).argmax(1))


def test_option_names_take_any_case() -> None:
    assert EquiZero(nn.Identity(), "rot90", proxy="MAX_PROB").proxy == "max_prob"
    assert Equitune(nn.Identity(), "rot90", chunk_size="Auto").chunk_size == "auto"
    assert LambdaEquitune(nn.Identity(), "rot90", nn.Identity(), normalisation="Softmax").normalisation == "softmax"


# ---------------------------------------------------------------------------------------------------------------
# Each combination rule exactly as stated, on inputs that tell the rules apart.

class _PerViewScore(nn.Module):
    """lambda_k = 3 * (first entry of view k) + 1: one weight per view, from that view alone. [B, G, D] -> [B, G]."""

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        return 3 * views[..., 0] + 1


def test_lambda_weights_are_exactly_the_stated_normalisation_of_the_raw_values() -> None:
    """softmax(lambda) over the views (not a tempered softmax), lambda / sum(lambda), lambda / G; the output is the
    weighted sum of the views with those weights ("none" reports lambda itself as the views' weights, as
    ``test_lambda_none_is_the_article_code`` states)."""
    from equinb.wrappers import normalise_weights

    views = torch.randn(3, 4, K, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    raw = 3 * views[..., 0] + 1
    expected = {"softmax": torch.softmax(raw, -1), "sum": raw / raw.sum(-1, keepdim=True), "none": raw / 4}
    for normalisation, weights in expected.items():
        torch.testing.assert_close(normalise_weights(raw, normalisation), weights, **TOL)
        wrapper = LambdaEquitune(nn.Identity(), "rot90", _PerViewScore(), normalisation=normalisation).eval()
        out, got = wrapper.forward_views(views=views, return_weights=True)
        torch.testing.assert_close(got, raw if normalisation == "none" else weights, **TOL)
        torch.testing.assert_close(out, (weights[..., None] * views).sum(1), **TOL)


def test_each_images_weights_come_from_its_own_orbit() -> None:
    """A batch gives every image the output and weights it has alone: no weight is computed across images."""
    for method in ("lambda:softmax", "attention", "equizero:max_prob"):
        wrapper, x = _build(method, "embedding", "rot90"), _images(b=4)
        with torch.no_grad():
            out, weights = wrapper(x, return_weights=True)
            for i in range(4):
                alone, alone_w = wrapper(x[i:i + 1], return_weights=True)
                torch.testing.assert_close(out[i:i + 1], alone, **TOL)
                torch.testing.assert_close(weights[i:i + 1], alone_w, **TOL)


def test_elementwise_max_takes_the_max_over_the_aligned_views() -> None:
    """With align_views the element-wise max of the class probabilities runs over g_k^-1 V_k, per pixel."""
    wrapper = _build("equizero", "feature_map", "rot90", align=True, output_softmax=True, elementwise_max=True)
    x = _images(b=2)
    with torch.no_grad():
        views = wrapper.views(x)  # [B, G, C, h, w]
        aligned = wrapper.group.invert_orbit(views)
        per_view = torch.stack([wrapper.apply_head(aligned[:, k]) for k in range(4)], dim=1)
        torch.testing.assert_close(wrapper(x), torch.softmax(per_view, dim=2).amax(dim=1), **TOL)


def test_straight_through_passes_the_mean_gradient_to_every_view() -> None:
    """In training mode the output is the selected view's value, and its gradient is the mean's: 1/G to each view."""
    wrapper = EquiZero(nn.Identity(), "rot90", straight_through=True).train()
    views = torch.randn(2, 4, K, dtype=torch.float64, generator=torch.Generator().manual_seed(2), requires_grad=True)
    out = wrapper.forward_views(views=views)
    selected = views.detach()[torch.arange(2), wrapper.view_weights(views.detach()).argmax(1)]
    torch.testing.assert_close(out.detach(), selected, **TOL)
    out.sum().backward()
    torch.testing.assert_close(views.grad, torch.full_like(views, 0.25), **TOL)


@pytest.mark.parametrize("proxy, logits", [("max_prob", [[20.0, 0.0, 0.0], [30.0, 0.0, 0.0]]),
                                           ("entropy", [[110.0, 0.0, 0.0], [150.0, 0.0, 0.0]])])
def test_confident_float32_views_are_ranked_in_full_precision(proxy: str, logits: list) -> None:
    """Two very confident float32 views whose probabilities round to the same float32 value: the proxy still ranks
    the more confident one first (a float32 softmax or entropy would tie them, and the tie would share the weight)."""
    views = torch.tensor([logits], dtype=torch.float32)  # [1, G=2, K=3]
    weights = EquiZero(nn.Identity(), "rot180", proxy=proxy).view_weights(views)
    assert torch.equal(weights, torch.tensor([[0.0, 1.0]]))


def test_an_argument_that_would_be_ignored_is_refused() -> None:
    net = EmbeddingWeightNet(4)
    with pytest.raises(ValueError, match="give weight_net= or example_input=.*not both"):
        LambdaEquitune(nn.Identity(), "rot90", net, example_input=torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="give weight_net= or example_input=.*not both"):
        EquiAttention(nn.Identity(), "rot90", ViewAttention(4), example_input=torch.zeros(1, 3, 8, 8))
    assert LambdaEquitune(nn.Identity(), "rot90", net).weight_net is net
    with pytest.raises(ValueError, match=r"\['conv_channels'\] apply to feature maps only"):
        ViewAttention(4, conv_channels=8)
    with pytest.raises(ValueError, match="elementwise_max=True selects none"):
        EquiZero(nn.Identity(), "rot90", output_softmax=True, elementwise_max=True, straight_through=True)
