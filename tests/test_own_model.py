"""equinb on a user's own model, as a new user meets it: one test (or more) per finding of issue 24.

Outputs that are not tensors, groups by name, the check functions, chunked orbit passes (and the engine's calls
that must stay one pass), lambda-equitune's defaults, weighting networks sized from the model, repr, integer
images, and the compilation paths. Packaging findings are in ``tests/test_packaging.py``.
"""

from __future__ import annotations

import collections
import dataclasses
import re
import subprocess
import sys

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import equinb
from equinb import (
    CPU_CHUNK_PIXELS,
    EmbeddingWeightNet,
    EquiAttention,
    EquiZero,
    Equitune,
    FeatureMapWeightNet,
    LambdaEquitune,
    ViewAttention,
    check_equivariance,
    check_invariance,
    get_group,
)

K, TOL = 5, dict(rtol=1e-9, atol=1e-10)


class Recorder(nn.Module):
    """A random CNN (float64, no symmetry of its own) that records the batch size of every forward and returns its
    logits wrapped as ``wrap`` says. Shapes: [B, 3, 12, 12] -> logits [B, K] (or maps [B, 4, 6, 6])."""

    def __init__(self, wrap=lambda logits, maps: logits, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.maps = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 4, 3, stride=2, padding=1))
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(4 * 6 * 6, K))
        self.double()
        self.wrap, self.batches = wrap, []

    def forward(self, x: torch.Tensor):
        self.batches.append(x.shape[0])
        maps = self.maps(x)
        return self.wrap(self.fc(maps), maps)


def _images(b: int = 3, seed: int = 0, size: int = 12) -> torch.Tensor:
    return torch.randn(b, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------------------
# Models that return a dict, tuple, namedtuple or Hugging Face-style output: the tensor is found, on the first image.

Pair = collections.namedtuple("Pair", "scores maps")
WithLogits = collections.namedtuple("WithLogits", "logits maps")


@dataclasses.dataclass
class ModelOutput:  # the shape of Hugging Face's outputs: fields, and .logits
    loss: torch.Tensor | None
    logits: torch.Tensor


OUTPUTS = {
    "dict, key": (lambda lo, m: {"scores": lo, "maps": m}, "scores"),
    "tuple, index": (lambda lo, m: (m, lo), 1),
    "namedtuple, field": (lambda lo, m: Pair(lo, m), "scores"),
    "namedtuple, index": (lambda lo, m: Pair(lo, m), 0),
    "namedtuple with .logits": (lambda lo, m: WithLogits(lo, m), None),
    "object with .logits": (lambda lo, m: ModelOutput(None, lo), None),
    "dict with a logits key": (lambda lo, m: {"logits": lo, "maps": m}, None),
    "callable": (lambda lo, m: [{"deep": lo}], lambda out: out[0]["deep"]),
}


@pytest.mark.parametrize("kind", list(OUTPUTS))
def test_any_output_structure_with_a_selector_or_logits(kind: str) -> None:
    wrap, output = OUTPUTS[kind]
    x = _images()
    expected = Equitune(Recorder(), "rot90")(x)
    for cls in (Equitune, EquiZero):
        wrapper = cls(Recorder(wrap), "rot90", output=output)
        torch.testing.assert_close(wrapper(x), expected if cls is Equitune else cls(Recorder(), "rot90")(x), **TOL)
    assert check_invariance(Recorder(wrap), x, "rot90", output=output) > 1e-3  # the checks take it too


def test_hugging_face_model_outputs_are_recognised_by_their_logits() -> None:
    outputs = pytest.importorskip("transformers.modeling_outputs")
    x = _images()
    wrapper = Equitune(Recorder(lambda lo, m: outputs.ImageClassifierOutput(logits=lo)), "rot90")
    torch.testing.assert_close(wrapper(x), Equitune(Recorder(), "rot90")(x), **TOL)


@pytest.mark.parametrize(("output", "message"), [
    (None, r"returned a dict with keys \['scores', 'maps'\], not a tensor, and it has no \.logits; pass output= to "
           r"say which tensor to use, e\.g\. output='scores' \(its tensors: 'scores', 'maps'\)"),
    ("score", r"output='score' \(did you mean 'scores'\?\) selected nothing from the model's output, which is a "
              r"dict with keys"),
    ("logits", r"output='logits' selected nothing from the model's output, which is a dict with keys"),
    (lambda out: out["scores"].tolist(), r"output=<function .*> selected a list"),
])
def test_an_unselectable_output_fails_after_one_image_naming_the_selector(output, message: str) -> None:
    trunk = Recorder(lambda lo, m: {"scores": lo, "maps": m})
    with pytest.raises(TypeError, match=message):
        Equitune(trunk, "d4", output=output, chunk_size=None)(_images(b=6))
    assert trunk.batches == [1]  # one image, not the orbit of the batch (48 images)


def test_hugging_face_outputs_without_hidden_states_say_how_to_ask_for_them() -> None:
    """A Hugging Face model returns hidden_states only with output_hidden_states=True: a path that asks for them
    says so, and an output with no .logits names the tensors it has."""
    outputs = pytest.importorskip("transformers.modeling_outputs")
    model = Recorder(lambda lo, m: outputs.ImageClassifierOutput(logits=lo))
    with pytest.raises(TypeError, match=r"step 1, 'hidden_states', selected nothing .* set "
                                        r"model\.config\.output_hidden_states = True"):
        Equitune(model, "rot90", output=("hidden_states", -1))(_images())
    pooled = Recorder(lambda lo, m: outputs.BaseModelOutputWithPooling(last_hidden_state=m, pooler_output=lo))
    with pytest.raises(TypeError, match=r"e\.g\. output='last_hidden_state' \(its tensors: 'last_hidden_state', "
                                        r"'pooler_output'\)"):
        Equitune(pooled, "rot90")(_images())


def test_a_selector_of_the_wrong_type_is_refused_at_construction() -> None:
    with pytest.raises(TypeError, match=r"output=1\.5 is not a selector"):
        Equitune(Recorder(), "rot90", output=1.5)
    for bad in ((), ("hidden_states", 1.0), (True,), ("a", None)):
        with pytest.raises(TypeError, match=r"is not a selector; .* a path of those \(a non-empty tuple"):
            Equitune(Recorder(), "rot90", output=bad)


def test_a_function_or_other_non_module_as_the_model_is_refused_with_the_fix() -> None:
    with pytest.raises(TypeError, match=r"got function: wrap a function in a module first"):
        Equitune(lambda z: z.mean((2, 3)), "rot90")
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module, got str$"):
        Equitune("resnet18", "rot90")


@dataclasses.dataclass
class HiddenStates:  # Hugging Face's outputs with output_hidden_states=True: a tuple of every layer's states
    last_hidden_state: torch.Tensor
    hidden_states: tuple


def test_a_path_selector_picks_a_nested_tensor_shows_in_repr_and_is_saved() -> None:
    """``output=("hidden_states", -1)`` is the callable ``lambda out: out.hidden_states[-1]`` as a plain value: the
    same outputs, in repr and in the saved record; a path that finds no tensor names the step that failed."""
    model = Recorder(lambda logits, maps: HiddenStates(maps, (maps.mean((2, 3)), logits)))
    x = _images()
    path = Equitune(model, "rot90", output=("hidden_states", -1))
    torch.testing.assert_close(path(x), Equitune(model, "rot90", output=lambda out: out.hidden_states[-1])(x), **TOL)
    torch.testing.assert_close(path(x), Equitune(Recorder(), "rot90")(x), **TOL)
    assert "output=('hidden_states', -1)" in repr(path)
    assert path.state_dict()["_extra_state"]["options"]["output"] == "('hidden_states', -1)"
    assert check_invariance(model, x, "rot90", output=("hidden_states", 0)) > 1e-3  # the checks take it too
    for output, message in ((("hidden_state", -1), r"step 1, 'hidden_state' \(did you mean 'hidden_states'\?\), "
                                                     r"selected nothing from the model's output, which is a "
                                                     r"HiddenStates"),
                            (("hidden_states", 2), r"step 2, 2, selected nothing from what \('hidden_states',\) "
                                                   r"selected, which is a tuple of length 2 \(Tensor, Tensor\)"),
                            (("hidden_states",), r"step 1, 'hidden_states', selected a tuple"),
                            (("last_hidden_state", 0), r"step 2, 0, selected nothing .* a tensor of shape \(1, 4, 6, "
                                                       r"6\); end the path before this step")):
        with pytest.raises(TypeError, match=rf"output={re.escape(repr(output))}: {message}"):
            Equitune(model, "rot90", output=output)(x)


# ---------------------------------------------------------------------------------------------------------------
# Groups by name, in any case, wherever a group is taken.

def test_groups_by_name_in_any_case_everywhere() -> None:
    x = _images()
    for name in ("rot90", "ROT90", " Rot90 "):
        assert get_group(name).name == "rot90"
    assert get_group(get_group("d4")).name == "d4"
    flip = get_group("Flip")  # the article's "flip" is a 180-degree rotation, and is named so
    assert flip.name == "rot180" and torch.equal(flip.act(x, 1), torch.rot90(x, 2, dims=(-2, -1)))
    with pytest.raises(ValueError, match=r"valid: .*'flip' = 'rot180'.*mirror flip is 'hflip'"):
        get_group("mirror")
    weights = dict(weight_net=EmbeddingWeightNet(K).double())
    for wrapper in (Equitune(Recorder(), "D4"), EquiZero(Recorder(), "D4"),
                    LambdaEquitune(Recorder(), "D4", **weights), EquiAttention(Recorder(), "D4",
                                                                               ViewAttention(K).double())):
        assert wrapper.group.name == "d4" and check_invariance(wrapper, x, "D4") < 1e-9
    assert "group='rot180'" in repr(Equitune(Recorder(), "flip"))


# ---------------------------------------------------------------------------------------------------------------
# The checks at the top level of `import equinb`, and the trivial group.

def test_the_checks_are_at_the_top_level() -> None:
    code = ("import equinb; assert equinb.checks.invariance_error and equinb.check_invariance "
            "and equinb.check_equivariance and equinb.format_error")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_check_invariance_and_equivariance() -> None:
    x, model = _images(), Recorder()
    assert check_invariance(model, x, "rot90") > 1e-3  # the bare model: the check has power
    assert check_invariance(Equitune(model, "rot90"), x, "rot90") < 1e-9
    assert check_invariance(model, x, "trivial") == 0.0 == check_equivariance(model.maps, x, "trivial")
    assert equinb.checks.invariance_error(model, x, get_group("trivial")) == 0.0
    with pytest.raises(AssertionError, match="invariance error over rot90 is .* above atol=1e-06"):
        check_invariance(model, x, "rot90", atol=1e-6)
    aligned = Equitune(model.maps, "rot90", align_views=True)  # feature maps, mapped back: equivariant
    assert check_equivariance(aligned, x, "rot90", atol=1e-9) < 1e-9
    assert check_equivariance(model.maps, x, "rot90") > 1e-3
    published = Equitune(model.maps, "rot90", align_views=False)  # as published (no inverse): invariant maps
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said explicitly: no warning
        assert check_invariance(published, x, "rot90") < 1e-9 < 1e-3 < check_equivariance(published, x, "rot90")
    # left at its default, unaligned maps that the head keeps spatial (no head, or a segmentation head) warn once,
    # at the caller's line
    for head in (None, nn.Conv2d(model.maps(x[:1]).shape[1], 3, 1).double()):
        with pytest.warns(UserWarning, match="feature maps .* and the head keeps them spatial") as caught:
            unaligned = Equitune(model.maps, "rot90", head=head)
            unaligned(x)
        assert len(caught) == 1 and caught[0].filename == __file__
        assert check_equivariance(unaligned, x, "rot90") > 1e-3  # what the warning is about
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a pooling head, maps pooled to 1 x 1, the trivial group: nothing to warn of
        Equitune(model.maps, "rot90", head=nn.AdaptiveAvgPool2d(1))(x)
        Equitune(nn.Sequential(model.maps, nn.AdaptiveAvgPool2d(1)), "rot90")(x)
        Equitune(model.maps, "trivial")(x)


class PatchTokens(nn.Module):
    """A vision transformer's patch embedding: [B, 3, 12, 12] -> tokens [B, 9, 8] (3 x 3 patches), or with
    ``class_token`` one more token in front."""

    def __init__(self, class_token: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Conv2d(3, 8, 4, stride=4).double()
        self.class_token = nn.Parameter(torch.randn(1, 1, 8, dtype=torch.float64)) if class_token else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        if self.class_token is None:
            return tokens
        return torch.cat([self.class_token.expand(len(x), 1, 8) + tokens.mean(1, keepdim=True), tokens], dim=1)


def test_unaligned_token_sequences_warn_once_at_the_callers_line() -> None:
    """Patch tokens combined over unturned views: token t holds a different patch in each view. Left at its default,
    the wrapper says so (a user who wanted equivariant tokens sees only the shape); said explicitly, pooled by the
    head or taken as the class token, it does not."""
    x = _images()
    # no head, a head that keeps one output per token, 9 patch tokens behind a class token
    for trunk, head, prefix in ((PatchTokens(), None, 0), (PatchTokens(), nn.Linear(8, K).double(), 0),
                                (PatchTokens(class_token=True), None, 1)):
        t = 9 + prefix
        with pytest.warns(UserWarning, match=rf"patch tokens \[T, D\] = \[{t}, (8|{K})\] \({prefix} in front of 3 x 3 "
                                             r"patches\) and the head keeps them.* turn the patch tokens into maps "
                                             r"\[D, h, w\] \(output=lambda t: equinb\.outputs\.patch_tokens_to_map"
                                             rf"\(t, prefix_tokens={prefix}\)") as caught:
            unaligned = Equitune(trunk, "rot90", head=head)
            out = unaligned(x)
        assert len(caught) == 1 and caught[0].filename == __file__
        assert out.shape[1] in (9, 10)
        assert check_invariance(unaligned, x, "rot90") < 1e-9  # invariant as a whole, as the warning says
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Equitune(PatchTokens(), "rot90", align_views=False)(x)  # said explicitly
        Equitune(PatchTokens(), "rot90", head=lambda tokens: tokens.mean(1))(x)  # pooled
        Equitune(PatchTokens(class_token=True), "rot90", head=lambda tokens: tokens[:, 0])(x)  # the class token
        Equitune(PatchTokens(), "trivial")(x)  # one view: nothing is combined
        Equitune(nn.Sequential(Recorder(), nn.Unflatten(1, (K, 1))), "rot90")(x)  # logits [B, K, 1]: no tokens
        heads = nn.Sequential(Recorder(), nn.Linear(K, 2 * K).double(), nn.Unflatten(1, (2, K)))
        Equitune(heads, "rot90")(x)  # the logits of two heads [B, 2, K]: no tokens
    torch.manual_seed(0)
    one_channel = nn.Sequential(nn.Conv2d(3, 1, 3, padding=1).double(), nn.Flatten(1, 2))  # maps [B, 12, 12]
    with pytest.warns(UserWarning, match=r"one-channel maps \[h, w\] .* bring them to \[1, h, w\] in the trunk"):
        assert check_equivariance(Equitune(one_channel, "rot90"), x, "rot90") > 1e-3
    with pytest.raises(ValueError, match=r"align_views=True needs spatial trunk outputs .* patch tokens \[B, T, D\] "
                                         r"to maps \[B, D, h, w\] with output=lambda t: equinb\.outputs\."
                                         r"patch_tokens_to_map"):
        Equitune(PatchTokens(), "rot90", align_views=True)(x)


class TinyViT(nn.Module):
    """A vision transformer with nothing symmetric about it: patch embedding, learned positions, a class token and
    one attention layer. Shapes: [B, 3, 12, 12] -> tokens [B, 1 + 9, 8] (a class token, 3 x 3 patches)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.embed = nn.Conv2d(3, 8, 4, stride=4)
        self.positions = nn.Parameter(torch.randn(1, 10, 8))
        self.class_token = nn.Parameter(torch.randn(1, 1, 8))
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.embed(x).flatten(2).transpose(1, 2)  # row-major, as torchvision's and timm's
        tokens = torch.cat([self.class_token.expand(len(x), 1, 8), patches], dim=1) + self.positions
        return tokens + self.attention(tokens, tokens, tokens, need_weights=False)[0]


class RegisterViT(nn.Module):
    """A patch embedding with a class token and 4 register tokens in front, as DINOv2 with registers: [B, 3, 16, 16]
    -> tokens [B, 1 + 4 + 16, 8] (4 x 4 patches)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.embed = nn.Conv2d(3, 8, 4, stride=4).double()
        self.front = nn.Parameter(torch.randn(1, 5, 8, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2)
        return torch.cat([self.front.expand(len(x), 5, 8) + tokens.mean(1, keepdim=True), tokens], dim=1)


def test_tokens_behind_registers_warn_with_their_count_and_become_equivariant_maps() -> None:
    """A class token and registers in front of the patches: the unaligned-token warning counts them (T - 5 is 4 x 4)
    and its fix, with that count, gives equivariant maps."""
    from equinb.wrappers import patch_token_prefixes

    x = _images(size=16)
    with pytest.warns(UserWarning, match=r"patch tokens \[T, D\] = \[21, 8\] \(5 in front of 4 x 4 patches\).*"
                                         r"patch_tokens_to_map\(t, prefix_tokens=5\), counting the tokens in front "
                                         r"of the patches: the class token and any register tokens") as caught:
        Equitune(RegisterViT(), "rot90")(x)
    assert len(caught) == 1 and caught[0].filename == __file__

    def to_map(tokens: torch.Tensor) -> torch.Tensor:
        return equinb.outputs.patch_tokens_to_map(tokens, prefix_tokens=5)

    torch.testing.assert_close(to_map(RegisterViT()(x)), RegisterViT().embed(x), rtol=0, atol=0)
    assert check_equivariance(Equitune(RegisterViT(), "d4", output=to_map, align_views=True), x, "d4") < 1e-9
    # DINOv2 with registers and ViT-B/16 at 224 px, patch tokens alone or behind a class token, 4 registers without
    # one; 25 tokens fit two layouts (the smaller count first); 6 are 2 x 2 behind two only, too small a grid for
    # more than a class token in front (six heads' scores, more likely), and 23 fit none
    assert [patch_token_prefixes(t) for t in (261, 197, 9, 10, 20, 25)] == [[5], [1], [0], [1], [4], [0, 9]]
    assert patch_token_prefixes(6) == patch_token_prefixes(3) == patch_token_prefixes(23) == []


def test_patch_tokens_become_maps_that_the_group_turns_back() -> None:
    """``patch_tokens_to_map`` gives the patch embedding's own map (the class token dropped), and with it a vision
    transformer's patch features become equivariant under align_views=True; without alignment they are not."""
    x = _images()
    embedding = PatchTokens(class_token=True)
    maps = equinb.outputs.patch_tokens_to_map(embedding(x), prefix_tokens=1)
    # the conv's map itself, [B, 8, 3, 3]: the layout, which no equivariance check of the wrapper could catch
    torch.testing.assert_close(maps, embedding.embed(x), rtol=0, atol=0)

    def to_map(tokens: torch.Tensor) -> torch.Tensor:
        return equinb.outputs.patch_tokens_to_map(tokens, prefix_tokens=1)

    assert check_equivariance(TinyViT(), x, "rot90", output=to_map) > 1e-2  # the bare transformer is not
    for group in ("rot90", "d4", "hflip"):
        equivariant = Equitune(TinyViT(), group, output=to_map, align_views=True).eval()
        assert equivariant(x).shape == (3, 8, 3, 3)
        assert check_equivariance(equivariant, x, group) < 1e-9
    with pytest.warns(UserWarning, match="feature maps"):  # maps, but left unaligned
        assert check_equivariance(Equitune(TinyViT(), "rot90", output=to_map), x, "rot90") > 1e-3


def test_patch_tokens_with_registers_or_a_grid_that_is_not_square_or_wrong_arguments() -> None:
    tokens = torch.arange(2 * 11 * 3, dtype=torch.float64).reshape(2, 11, 3)  # 5 prefix tokens, 2 x 3 patches
    to_map = equinb.outputs.patch_tokens_to_map
    maps = to_map(tokens, prefix_tokens=5, grid=(2, 3))
    assert maps.shape == (2, 3, 2, 3)
    # row-major patches: token 5 + 3 i + j is at (i, j); a column-major layout would put token 5 + 2 j + i there
    torch.testing.assert_close(maps, tokens[:, 5:].reshape(2, 2, 3, 3).permute(0, 3, 1, 2), rtol=0, atol=0)
    assert maps[0, 0, 0, 1] == tokens[0, 6, 0] and maps[0, 0, 1, 0] == tokens[0, 8, 0]
    assert to_map(tokens, prefix_tokens=2).shape == (2, 3, 3, 3)  # 9 patches: square by default
    assert to_map(tokens, prefix_tokens=7).shape == (2, 3, 2, 2)
    assert to_map(tokens[:, :2], prefix_tokens=1).shape == (2, 3, 1, 1)  # one patch: a 1 x 1 map
    with pytest.raises(ValueError, match=r"11 tokens less prefix_tokens=0 leave 11 patch tokens, which fill no "
                                         r"square grid; pass grid=\(h, w\) .* check prefix_tokens"):
        to_map(tokens, prefix_tokens=0)
    with pytest.raises(ValueError, match=r"11 tokens less prefix_tokens=1 leave 10 patch tokens, but "
                                         r"grid=\(4, 3\) holds 12"):
        to_map(tokens, prefix_tokens=1, grid=(4, 3))
    for prefix in (11, 12):
        with pytest.raises(ValueError, match=rf"prefix_tokens={prefix} leaves no patch of the 11 tokens"):
            to_map(tokens, prefix_tokens=prefix)
    assert to_map(tokens, prefix_tokens=np.int64(2)).shape == (2, 3, 3, 3)  # NumPy's integers are integers
    with pytest.raises(TypeError, match=r"missing 1 required keyword-only argument: 'prefix_tokens'"):
        to_map(tokens)  # no guess: 9 tokens are 3 x 3 patches or a class token, 4 registers and 2 x 2 patches
    for bad in (1.0, True, -1, "1"):
        with pytest.raises(TypeError, match=r"prefix_tokens must be an integer >= 0"):
            to_map(tokens, prefix_tokens=bad)
    for bad in (3, (3,), (3.0, 3.0), (0, 9), (2, 3, 1)):
        with pytest.raises(TypeError, match=r"grid must be \(h, w\), two integers >= 1"):
            to_map(tokens, prefix_tokens=2, grid=bad)
    with pytest.raises(ValueError, match=r"takes tokens \[B, T, D\], got shape \(2, 3, 2, 3\): a channels-last "
                                         r"map \[B, h, w, C\], as torchvision's Swin gives, needs \.permute"):
        to_map(maps, prefix_tokens=0)
    with pytest.raises(TypeError, match=r"got a dict with keys \['last_hidden_state'\]: select the token tensor "
                                        r"first \(a Hugging Face model's out\.last_hidden_state"):
        to_map({"last_hidden_state": tokens}, prefix_tokens=1)


def test_two_maps_of_one_model_through_one_wrapper_are_each_equivariant() -> None:
    """The recipe of ``equinb.outputs``: a segmentation model's two maps concatenated by ``output=`` and split after
    the wrapper; each part is equivariant, and is the map a wrapper of that one map gives."""
    model = Recorder(lambda logits, maps: {"out": maps[:, :3], "aux": torch.tanh(maps)})
    x = _images()
    both = Equitune(model, "d4", output=lambda out: torch.cat([out["out"], out["aux"]], dim=1),
                    align_views=True).eval()
    out, aux = both(x).split([3, 4], dim=1)
    torch.testing.assert_close(out, Equitune(model, "d4", output="out", align_views=True)(x), **TOL)
    torch.testing.assert_close(aux, Equitune(model, "d4", output="aux", align_views=True)(x), **TOL)
    for part in (0, 1):
        split = lambda z, part=part: both(z).split([3, 4], dim=1)[part]  # noqa: E731
        assert check_equivariance(split, x, "d4") < 1e-9
        assert check_equivariance(model, x, "d4", output=("out", "aux")[part]) > 1e-3


def test_a_misspelt_field_or_attribute_is_named_with_the_nearest_one() -> None:
    Out = collections.namedtuple("Out", ["logits", "hidden"])
    x = _images(b=2)
    with pytest.raises(TypeError, match=r"output='logit' \(did you mean 'logits'\?\) selected nothing from the "
                                        r"model's output, which is a namedtuple Out"):
        Equitune(Recorder(lambda lo, m: Out(lo, m)), "rot90", output="logit")(x)

    @dataclasses.dataclass
    class Result:
        last_hidden_state: torch.Tensor

    with pytest.raises(TypeError, match=r"output='last_hidden_states' \(did you mean 'last_hidden_state'\?\)"):
        Equitune(Recorder(lambda lo, m: Result(m)), "rot90", output="last_hidden_states")(x)
    with pytest.raises(TypeError, match=r"output='xyz' selected nothing"):  # nothing near: no guess
        Equitune(Recorder(lambda lo, m: Out(lo, m)), "rot90", output="xyz")(x)
    with pytest.raises(TypeError, match=r"output='hidden' selected a tuple"):  # a key there, not a tensor: no guess
        Equitune(Recorder(lambda lo, m: {"logits": lo, "hidden": (m,), "hidden_": m}), "rot90", output="hidden")(x)

    class WithProperty:  # an attribute that is there, as a property, but holds no tensor
        def __init__(self, maps: torch.Tensor) -> None:
            self.hidden_ = maps

        @property
        def hidden(self) -> tuple:
            return (self.hidden_,)

    with pytest.raises(TypeError, match=r"output='hidden' selected a tuple"):
        Equitune(Recorder(lambda lo, m: WithProperty(m)), "rot90", output="hidden")(x)


def test_the_checks_run_modules_in_evaluation_mode_and_restore_them() -> None:
    model = nn.Sequential(Recorder(), nn.Dropout(0.5)).train()
    x = _images()
    with pytest.warns(UserWarning, match="measured in evaluation mode, but the model is in training mode, in which "
                                         "its Dropout layers change the outputs; call model.eval"):
        assert check_invariance(Equitune(model, "rot90"), x, "rot90") < 1e-9  # dropout off during the check
    assert all(m.training for m in model.modules())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # in evaluation mode, or in training mode without dropout or BatchNorm: none
        check_invariance(Equitune(model, "rot90").eval(), x, "rot90")
        check_invariance(Equitune(Recorder(), "rot90").train(), x, "rot90")
        # dropout kept on in evaluation, as the article's code: eval() cannot switch it off, the check measures it
        kept = LambdaEquitune(Recorder(), "rot90", example_input=x, dropout_in_eval=True).eval()
        check_invariance(kept, x, "rot90")
    with pytest.raises(TypeError, match="floating-point images, got torch.uint8"):
        check_invariance(model, x.to(torch.uint8), "rot90")


# ---------------------------------------------------------------------------------------------------------------
# Chunked orbit passes (`chunk_size`): the same outputs in any chunking.

def _wrappers(chunk_size, **kw) -> list:
    maps = dict(conv_channels=2, per_channel=2, hidden=4)
    return [
        Equitune(Recorder(), "d4", chunk_size=chunk_size, **kw),
        EquiZero(Recorder(), "d4", chunk_size=chunk_size, **kw),
        LambdaEquitune(Recorder(), "d4", EmbeddingWeightNet(K, 7).double(), chunk_size=chunk_size, **kw),
        EquiAttention(Recorder(), "d4", ViewAttention(K, None, 8, 8).double(), chunk_size=chunk_size, **kw),
        LambdaEquitune(Recorder(lambda lo, m: m), "d4", FeatureMapWeightNet(4, (6, 6), **maps).double(),
                       chunk_size=chunk_size, align_views=True, head=nn.Flatten(), **kw),
    ]


@pytest.mark.parametrize(("chunk_size", "forwards"), [
    (None, [40]), (8, [8] * 5), (16, [16, 16, 8]), (12, [8] * 5), (3, [3, 3, 2] * 5), (1, [1] * 40), (40, [40]),
])
def test_every_wrapper_takes_chunk_size(chunk_size, forwards: list[int]) -> None:
    """Forwards of at most chunk_size images: whole orbits (|G| = 8) when one fits, else pieces of one orbit; the
    same outputs as one batched pass."""
    x = _images(b=5)
    for one_pass, chunked in zip(_wrappers(None), _wrappers(chunk_size)):
        one_pass.eval(), chunked.eval()
        expected = one_pass(x)
        chunked.trunk.batches.clear()
        chunked.check_first_call(x)  # the one-image check runs once, before the first orbit pass
        # one image; the first image's orbit (|G| = 8, one forward) where learned weights must roll with the views
        assert chunked.trunk.batches == [8 if hasattr(chunked, "weight_net") else 1]
        chunked.trunk.batches.clear()
        torch.testing.assert_close(chunked(x), expected, **TOL)
        assert chunked.trunk.batches == forwards, type(chunked).__name__
        moved = chunked(get_group("d4").act(x, 5))
        if not chunked.align_views:
            torch.testing.assert_close(moved, expected, **TOL)


def test_auto_chunks_on_a_cpu_in_evaluation_mode_only() -> None:
    wrapper = Equitune(Recorder(), "rot90")
    assert wrapper.chunk_size == "auto"
    x = _images(b=6)
    per_pass = CPU_CHUNK_PIXELS // (12 * 12)
    assert wrapper.eval().images_per_pass(x) == per_pass  # 1393 images of 12 px: one pass for this batch
    assert wrapper.images_per_pass(torch.zeros(1, 3, 224, 224)) == 4  # 4 images of 224 px per forward
    assert wrapper.images_per_pass(torch.zeros(1, 3, 64, 64)) == 49
    assert wrapper.train().images_per_pass(x) is None  # training: BatchNorm's statistics stay those of one pass
    big = torch.randn(3, 3, 112, 112, dtype=torch.float64)  # 16 images of 112 px per forward: 4 orbits
    model = nn.Sequential(nn.Conv2d(3, 2, 5, stride=4), nn.Flatten(), nn.Linear(2 * 27 * 27, K)).double()
    recorder = Recorder(lambda lo, m: lo)
    recorder.maps, recorder.fc = model, nn.Identity()
    wrapper = Equitune(recorder, "rot90").eval()
    wrapper(big)
    assert recorder.batches == [1, 12]  # the first call's one-image check, then one forward of 3 orbits
    recorder.batches.clear()
    wrapper(torch.cat([big] * 3))
    assert recorder.batches == [16, 16, 4]
    with pytest.raises(ValueError, match="chunk_size must be 'auto', None"):
        Equitune(Recorder(), "rot90", chunk_size=0)


def test_the_engine_path_stays_one_pass_and_bit_identical() -> None:
    """forward_views and view_outputs (the training engine's and the chapters' calls on cached per-view tensors)
    never chunk unless asked: the same forwards and the same bits as before chunking existed."""
    x = _images(b=5)
    orbit = get_group("d4").orbit(x)
    for wrapper in _wrappers("auto"):
        wrapper.eval()
        wrapper.trunk.batches.clear()
        views = wrapper.view_outputs(orbit)
        assert wrapper.trunk.batches == [40]
        expected = wrapper.forward_views(views=views)
        assert wrapper.trunk.batches == [40]
        assert torch.equal(wrapper.forward_views(orbit), expected)
        assert torch.equal(expected, wrapper.combine(views, wrapper.view_weights(views)))
        wrapper.trunk.batches.clear()
        torch.testing.assert_close(wrapper.view_outputs(orbit, chunk_size=16), views, **TOL)
        assert wrapper.trunk.batches == [16, 16, 8]


# ---------------------------------------------------------------------------------------------------------------
# The default λ-equitune trains where the text's normalisation diverges; weight nets are sized or fail clearly.

@pytest.fixture(scope="module")
def mobilenet_views() -> tuple[torch.Tensor, torch.Tensor]:
    """MobileNetV2 (ImageNet weights) views of 16 random 64 px images under D4, and random labels."""
    from equinb.backbones import load_backbone

    model = load_backbone("mobilenet_v2", input_size=64).model.eval().requires_grad_(False)
    x = torch.randn(16, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        views = Equitune(model, "d4").views(x)
    return views, torch.randint(0, 1000, (16,), generator=torch.Generator().manual_seed(1))


def _train_lambda(views: torch.Tensor, labels: torch.Tensor, lr: float, **options) -> tuple[list, list]:
    """10 SGD steps (momentum 0.9, as the article) of the default lambda network on cached views."""
    torch.manual_seed(0)
    model = LambdaEquitune(nn.Identity(), "d4", EmbeddingWeightNet(views.shape[-1]), **options).train()
    optimiser = torch.optim.SGD(model.weight_net.parameters(), lr=lr, momentum=0.9)
    losses, weights = [], []
    for _ in range(10):
        out, w = model.forward_views(views=views, return_weights=True)
        loss = nn.functional.cross_entropy(out, labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
        weights.append(w.detach())
    return losses, weights


@pytest.mark.parametrize("lr", [0.33, 0.1])  # the article's lambda learning rates (embeddings, feature maps)
def test_the_default_lambda_equitune_trains_where_the_article_text_diverges(mobilenet_views, lr: float) -> None:
    """Softmax weights are a convex combination, so the loss can never exceed the worst single view's (cross-entropy
    is convex in the logits); lambda / sum(lambda), the article's text, leaves [0, 1], where no such bound holds
    (its sum can cross zero: the issue saw weights of -61.6 ... 83.2 and the loss grow from 5.61 to 418)."""
    views, labels = mobilenet_views
    assert LambdaEquitune(nn.Identity(), "d4", EmbeddingWeightNet(1000)).normalisation == "softmax"
    per_view = nn.functional.cross_entropy(views.flatten(0, 1), labels.repeat_interleave(8), reduction="none")
    bound = float(per_view.reshape(16, 8).amax(1).mean())
    losses, weights = _train_lambda(views, labels, lr)
    assert all(torch.isfinite(torch.tensor(losses))) and max(losses) <= bound + 1e-4
    assert all(float(w.min()) >= 0 and float(w.max()) <= 1 for w in weights)
    torch.testing.assert_close(weights[-1].sum(1), torch.ones(16))
    assert losses[-1] < losses[0]
    losses, weights = _train_lambda(views, labels, lr, normalisation="sum")  # as in the article's text
    assert max(float(w.abs().max()) for w in weights) > 1


def test_weight_nets_are_sized_from_the_model_or_fail_clearly_before_the_orbit() -> None:
    x = _images(b=4)
    embeddings = LambdaEquitune(Recorder(), "rot90", example_input=x)
    assert isinstance(embeddings.weight_net, EmbeddingWeightNet)
    assert embeddings.weight_net.net[0].in_features == K and embeddings.weight_net.net[0].weight.dtype == x.dtype
    maps = LambdaEquitune(Recorder(lambda lo, m: m), "rot90", example_input=x, align_views=True,
                          head=nn.Flatten())
    assert isinstance(maps.weight_net, FeatureMapWeightNet) and maps.weight_net.encoder.channels == 4
    attention = EquiAttention(Recorder(), "rot90", example_input=x)
    assert isinstance(attention.weight_net, ViewAttention)
    for wrapper in (embeddings, maps, attention):
        assert check_invariance(wrapper.eval(), x, "rot90") < 1e-9 if not wrapper.align_views else True
    with pytest.raises(ValueError, match="needs weight_net=, or example_input="):
        LambdaEquitune(Recorder(), "rot90")
    trunk = Recorder()
    wrong = LambdaEquitune(trunk, "d4", EmbeddingWeightNet(512).double())
    with pytest.raises(ValueError, match=r"built for views of dimension 512 .* EmbeddingWeightNet\(5\)"):
        wrong(_images(b=6))
    assert trunk.batches == [8]  # before the orbit pass of the batch (48 images): the first image's orbit
    with pytest.raises(ValueError, match=r"built for views of dimension 7"):
        EquiAttention(Recorder(), "d4", ViewAttention(7).double())(x)


# ---------------------------------------------------------------------------------------------------------------
# repr names group and method; integer images, another device and torch.jit.script are refused; trace, export.

def test_repr_shows_group_method_and_options_in_a_few_lines() -> None:
    torchvision = pytest.importorskip("torchvision")
    trunk = torchvision.models.mobilenet_v2()
    wrapper = LambdaEquitune(trunk, "d4", EmbeddingWeightNet(1000), chunk_size=8)
    text = repr(wrapper)
    assert len(text.splitlines()) <= 7, text
    for part in ("group='d4' (|G|=8)", "method='lambda_equitune'", "normalisation='softmax'", "chunk_size=8",
                 "align_views=False", "MobileNetV2 (3,504,872 parameters"):
        assert part in text, text
    assert "method='equitune'" in repr(Equitune(trunk, "rot90")) and len(repr(trunk).splitlines()) > 50


def test_integer_images_are_refused_with_a_message() -> None:
    wrapper = Equitune(Recorder(), "rot90")
    with pytest.raises(TypeError, match=r"floating-point images, got torch.uint8.*x.float\(\) / 255"):
        wrapper(torch.zeros(2, 3, 12, 12, dtype=torch.uint8))
    assert wrapper.trunk.batches == []


def test_a_model_on_another_device_than_the_input_is_refused_with_a_message() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 10 * 10, 5)).to("meta")
    with pytest.raises(ValueError, match=r"input is on cpu and the model on meta.*x.to\('meta'\)"):
        Equitune(model, "rot90")(_images(b=2))
    model.to_empty(device="cpu")  # one device again: it runs
    assert Equitune(model, "rot90")(_images(b=2)).shape == (2, 5)


def test_every_wrapper_runs_on_the_meta_device_for_a_shapes_only_dry_run() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 10 * 10, 5)).to("meta").eval()
    x = torch.randn(2, 3, 12, 12, device="meta")
    for wrapper in (Equitune(model, "d4"), EquiZero(model, "d4"), LambdaEquitune(model, "d4", example_input=x),
                    EquiAttention(model, "d4", example_input=x)):
        out = wrapper.eval()(x)
        assert out.shape == (2, 5) and out.device.type == "meta"


def test_example_input_the_model_cannot_take_is_named_in_the_error() -> None:
    with pytest.raises(RuntimeError, match=r"LambdaEquitune: the model failed on example_input \(2, 1, 12, 12\)"):
        LambdaEquitune(Recorder(), "rot90", example_input=_images(b=2)[:, :1])
    with pytest.raises(ValueError, match=r"end it with nn.Flatten\(\) so that its views are embeddings"):
        LambdaEquitune(nn.Sequential(Recorder().maps, nn.AdaptiveAvgPool2d(1)), "rot90", example_input=_images(b=2))
    sized = LambdaEquitune(Recorder().maps, "rot90", example_input=_images(b=2), normalisation="softmax").eval()
    with pytest.raises(ValueError, match=r"its sizes are fixed when it is built"):
        sized(_images(b=2, size=16))


def test_trace_export_state_dicts_and_batch_sizes_work_and_script_says_it_is_unsupported(tmp_path) -> None:
    x = _images(b=3)
    wrapper = LambdaEquitune(Recorder(), "rot90", example_input=x).eval()
    expected = wrapper(x)
    traced = torch.jit.trace(wrapper, x, check_trace=False)
    torch.testing.assert_close(traced(x), expected, **TOL)
    exported = torch.export.export(wrapper, (x,))
    torch.testing.assert_close(exported.module()(x), expected, **TOL)
    with pytest.raises(TypeError, match=r"torch.jit.script does not support .*torch.jit.trace.*torch.export"):
        torch.jit.script(wrapper)
    torch.save(wrapper.state_dict(), tmp_path / "wrapper.pt")
    loaded = LambdaEquitune(Recorder(seed=9), "rot90", example_input=x).eval()
    loaded.load_state_dict(torch.load(tmp_path / "wrapper.pt", weights_only=True))
    assert torch.equal(loaded(x), expected)
    assert wrapper(x[:1]).shape == (1, K) and wrapper(x[:0]).shape == (0, K)



# A saved state dict records the wrapper's class, group and options: loading it into a different wrapper warns.
@pytest.mark.parametrize("make", [lambda m, g, x: Equitune(m, g), lambda m, g, x: EquiZero(m, g, proxy="entropy"),
                                  lambda m, g, x: LambdaEquitune(m, g, example_input=x, normalisation="sum"),
                                  lambda m, g, x: EquiAttention(m, g, example_input=x)],
                         ids=["equitune", "equizero", "lambda", "attention"])
def test_a_saved_wrapper_names_its_group_and_options_and_loading_it_differently_warns(tmp_path, make) -> None:
    import warnings

    from equinb.cache import module_fingerprint
    from equinb.engine import snapshot

    x = _images(b=2)
    wrapper = make(Recorder(), "rot90", x).eval()
    torch.save(wrapper.state_dict(), tmp_path / "w.pt")
    saved = torch.load(tmp_path / "w.pt", weights_only=True)  # plain values: no pickle of equinb objects
    record = saved["_extra_state"]
    assert (record["wrapper"], record["group"], record["order"]) == (type(wrapper).__name__, "rot90", 4)
    assert record["format"] == equinb.wrappers.SAVED_FORMAT and "chunk_size" not in record["options"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same construction loads silently
        same = make(Recorder(seed=9), "rot90", x).eval()
        same.load_state_dict(saved)
    assert torch.equal(same(x), wrapper(x))
    other = make(Recorder(seed=9), "hflip", x).eval()
    with pytest.warns(equinb.WrapperMismatchWarning,
                      match=r"group: saved 'rot90', here 'hflip'; order: saved 4, here 2\)") as caught:
        other.load_state_dict(saved)
    assert caught[0].filename == __file__  # attributed to the line that loads, not to torch
    assert all(torch.equal(other.state_dict()[k], v) for k, v in saved.items() if isinstance(v, torch.Tensor))
    with pytest.raises(ValueError, match=r"'_extra_state' is not an equinb wrapper's record"):
        same.load_state_dict({**saved, "_extra_state": {"group": "rot90"}})
    # tools that hash or snapshot a module's tensors skip the plain entry
    assert module_fingerprint(wrapper) != module_fingerprint(other)
    assert all(isinstance(t, torch.Tensor) for t in snapshot(wrapper).values())


def test_saved_records_check_options_classes_prefixes_and_load_old_state_dicts() -> None:
    import warnings

    x = _images(b=2)
    saved = LambdaEquitune(Recorder(), "rot90", example_input=x, normalisation="sum").state_dict()
    with pytest.warns(equinb.WrapperMismatchWarning, match=r"normalisation: saved 'sum', here 'softmax'"):
        LambdaEquitune(Recorder(), "rot90", example_input=x).load_state_dict(saved)
    aligned = Equitune(Recorder(), "rot90", align_views=True).state_dict()
    with pytest.warns(equinb.WrapperMismatchWarning, match=r"wrapper: saved 'Equitune', here 'EquiZero'; "
                                                           r"align_views: saved True, here False"):
        EquiZero(Recorder(), "rot90").load_state_dict(aligned)  # the options only one class has are not listed
    nested = nn.Sequential(nn.Identity(), Equitune(Recorder(), "rot90"))
    with pytest.warns(equinb.WrapperMismatchWarning,
                      match=r"group: saved 'rot90', here 'd4'.*as '1\._extra_state' records"):
        nn.Sequential(nn.Identity(), Equitune(Recorder(), "d4")).load_state_dict(nested.state_dict())
    tensors = {k: v for k, v in saved.items() if isinstance(v, torch.Tensor)}  # saved before the record, or filtered
    fresh = LambdaEquitune(Recorder(seed=9), "rot90", example_input=x, normalisation="sum")
    with pytest.warns(equinb.WrapperMismatchWarning, match=r"no '_extra_state' record \(a state dict filtered to "
                                                           r"its tensors, .* not checked"):
        result = fresh.load_state_dict(tensors)  # strict: every tensor must still match
    assert not result.missing_keys and not result.unexpected_keys
    # the record under another prefix (a compiled wrapper's), and the bare model's keys: each named with its fix
    compiled = {f"_orig_mod.{k}": v for k, v in saved.items()}
    with pytest.raises(RuntimeError), pytest.warns(equinb.WrapperMismatchWarning,
                                                   match=r"there is one under '_orig_mod\._extra_state'.* strip it"):
        LambdaEquitune(Recorder(), "rot90", example_input=x).load_state_dict(compiled)
    with pytest.raises(RuntimeError), pytest.warns(equinb.WrapperMismatchWarning,
                                                   match=r"those of the bare model, without 'trunk\.': load them with "
                                                         r"wrapper\.trunk\.load_state_dict"):
        Equitune(Recorder(), "rot90").load_state_dict(Recorder(seed=3).state_dict())
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in tensors.items())
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*weight_net"), pytest.warns(
            equinb.WrapperMismatchWarning):  # strictness kept for the tensors
        fresh.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("weight_net")})
    class Tuned(Equitune):  # a user's subclass with an option that is no plain value: saved as its repr
        def _options(self):
            return dict(scale=torch.tensor(2.0), **super()._options())

    assert Tuned(Recorder(), "rot90").state_dict()["_extra_state"]["options"]["scale"] == "tensor(2.)"
    newer = {**saved, "_extra_state": {**saved["_extra_state"], "format": equinb.wrappers.SAVED_FORMAT + 1,
                                       "group": "d4"}}
    with pytest.warns(equinb.WrapperMismatchWarning, match=r"newer equinb .* not checked"):
        fresh.load_state_dict(newer)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an option a newer version added is not compared
        record = {**saved["_extra_state"], "options": {**saved["_extra_state"]["options"], "new_option": 1}}
        fresh.load_state_dict({**saved, "_extra_state": record})


# ---------------------------------------------------------------------------------------------------------------
# The guide (LIBRARY.md and the chapter) covers every method and align_views.

def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start:end if end > 0 else None]


@pytest.mark.parametrize(("path", "heading"), [("README.md", "## The library"), ("LIBRARY.md", "# equinb")])
def test_the_guides_run_and_name_every_option(path: str, heading: str) -> None:
    from pathlib import Path

    text = _section((Path(__file__).resolve().parents[1] / path).read_text(), heading)
    for word in ("align_views=True", "chunk_size=", "output=", "check_invariance", "check_equivariance", '"rot90"',
                 "LambdaEquitune", "hflip", "rot180", "own_model" if path == "README.md" else "Use\nequinb"):
        assert word in text, f"{path} does not mention {word}"
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, f"{path} has no Python example"
    for code in blocks:
        exec(compile(code, path, "exec"), {})


# ---------------------------------------------------------------------------------------------------------------
# Setups that cannot be made invariant fail on the first image instead of giving a non-invariant output.

def _classifier(k: int, dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 10 * 10, k)).to(dtype).eval()


@pytest.mark.parametrize("proxy", ["max_prob", "entropy"])
def test_equizero_refuses_one_logit_where_every_view_would_tie(proxy: str) -> None:
    x, model = _images(), _classifier(1)
    with pytest.raises(ValueError, match=r"K >= 2.*the most confident\), or proxy='max_logit' .*favours the positive"):
        EquiZero(model, "rot90", proxy=proxy)(x)
    two_class = EquiZero(model, "rot90", proxy=proxy, output=lambda z: torch.cat([-z, z], -1))  # the fix it gives
    assert check_invariance(two_class, x, "rot90") < 1e-9
    # the proxy that is defined on one logit still works, and is invariant
    assert check_invariance(EquiZero(model, "rot90", proxy="max_logit"), x, "rot90") < 1e-9 < check_invariance(
        model, x, "rot90")


def test_equizero_refuses_outputs_that_are_not_class_scores_on_the_first_image() -> None:
    torch.manual_seed(0)
    maps = nn.Conv2d(3, 4, 3, padding=1).double().eval()
    scalar = nn.Sequential(_classifier(1), nn.Flatten(0))  # [B]
    for model, kwargs in [(maps, dict(align_views=True)), (scalar, {})]:
        wrapper = EquiZero(model, "rot90", **kwargs)
        with pytest.raises(ValueError, match=r"class scores \[B, G, K\]"):
            wrapper(_images(b=16))  # B = 16 = the maps' width: once broadcast into a wrong output


class TrailingOne(nn.Module):
    """A weighting network as users write it: Linear(D, 1), giving [B, G, 1] instead of [B, G]."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.linear = nn.Linear(d, 1).double()

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        return self.linear(views)


def test_weights_of_the_wrong_shape_fail_on_the_first_image_naming_the_network() -> None:
    x = _images(b=4)  # B = G = 4: the [B, G, 1] weights broadcast without an error
    wrapper = LambdaEquitune(_classifier(K), "rot90", weight_net=TrailingOne(K)).eval()
    with pytest.raises(ValueError, match=r"TrailingOne must map views .* \[B, G\] = \[1, 4\], got \[1, 4, 1\]"):
        wrapper(x)
    fixed = LambdaEquitune(_classifier(K), "rot90", weight_net=nn.Sequential(TrailingOne(K), nn.Flatten(1))).eval()
    assert fixed(x).shape == (4, K) and check_invariance(fixed, x, "rot90") < 1e-9


def test_the_checks_refuse_inputs_that_are_not_image_batches_and_outputs_without_space() -> None:
    with pytest.raises(ValueError, match=r"image batch \[B, C, H, W\]"):
        check_invariance(nn.Linear(10, 3), torch.randn(10, 10), "rot90")  # would rotate a [B, D] matrix
    with pytest.raises(ValueError, match="use check_invariance"):
        check_equivariance(_classifier(K), _images(b=K), "rot90")  # would rotate [B, K] logits
    model = _classifier(K)  # with the group's action on the outputs said explicitly it is measured
    assert check_equivariance(model, _images(), "rot90", act_output=lambda y, k: y) > 1e-3


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_head_gets_its_own_dtype(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), nn.Flatten()).to(dtype).eval()
    head = nn.Linear(4 * 10 * 10, 3).to(dtype)
    x = _images().float()
    for wrapper in (Equitune(trunk, "rot90", head=head), EquiZero(trunk, "rot90", head=head),
                    Equitune(trunk, "rot90", head=head, output_softmax=True)):
        with torch.no_grad():
            out = wrapper(x)  # the head's dtype: as CLIP's fp16 heads, whose numerics stay as published
        assert out.dtype == dtype and out.shape == (3, 3)
        assert check_invariance(wrapper, x, "rot90") <= 4 * torch.finfo(dtype).eps * float(out.abs().max())


def test_a_frozen_copy_must_be_a_copy_and_a_head_callable() -> None:
    model = _classifier(K)
    with pytest.raises(ValueError, match="deepcopy"):
        LambdaEquitune(model, "rot90", example_input=_images(), frozen_copy=model)
    assert all(p.requires_grad for p in model.parameters())  # and the trunk was not frozen on the way
    with pytest.raises(TypeError, match="head must be"):
        Equitune(model, "rot90", head="linear")


def test_an_index_selects_from_a_hugging_face_style_output() -> None:
    class ImageClassifierOutput(collections.OrderedDict):  # Hugging Face's ModelOutput: a mapping with to_tuple()
        def to_tuple(self) -> tuple:
            return tuple(v for v in self.values() if v is not None)

    logits = torch.randn(2, 3)
    out = ImageClassifierOutput(loss=None, logits=logits, hidden=torch.zeros(2))
    assert equinb.outputs.select_output(out, 0) is logits  # the first field that is set, as out[0] in HF
    with pytest.raises(TypeError, match="an ImageClassifierOutput with keys"):
        equinb.outputs.select_output(out, 5)


def test_a_non_square_image_under_quarter_turns_is_refused_with_the_fix() -> None:
    maps = nn.Conv2d(3, 4, 3, padding=1)
    x = torch.randn(1, 3, 8, 12)
    for make in (lambda: Equitune(maps, "rot90", align_views=True)(x),
                 lambda: LambdaEquitune(maps, "d4", example_input=x),  # at construction, not at every call after
                 lambda: equinb.check_equivariance(maps, x, "rot90")):  # the images, not the model's padding
        with pytest.raises(ValueError, match=r"8 x 12 image 12 x 8: crop or pad .* \(rot180, hflip, vflip\)"):
            make()
    assert equinb.check_equivariance(Equitune(maps, "hflip", align_views=True), x, "hflip") < 1e-5


# ---------------------------------------------------------------------------------------------------------------
# Compilation paths, ties, partial training and extra inputs.

def test_output_softmax_on_maps_of_class_scores_takes_the_softmax_over_the_classes() -> None:
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    maps = nn.Conv2d(3, 5, 3, padding=1).double()  # per-pixel class scores [B, 5, 8, 8]
    for wrapper in (Equitune(maps, "rot90", align_views=True, output_softmax=True),
                    LambdaEquitune(maps, "d4", align_views=True, output_softmax=True, example_input=x).eval()):
        out = wrapper(x)
        torch.testing.assert_close(out.sum(1), torch.ones(2, 8, 8, dtype=torch.float64))  # per pixel, over classes
        assert check_equivariance(wrapper, x, wrapper.group) < 1e-12


class CornerSign(nn.Module):
    """Two-class logits ``[c, -c]`` from the top-left pixel c: on a checkerboard whose corners alternate in sign,
    every view has the same largest probability but views 0 and 1 predict different classes (an exact tie)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x[:, 0, 0, 0]
        return torch.stack([c, -c], dim=-1)


def test_equizero_averages_views_tied_at_the_top_score_so_a_tie_cannot_break_invariance() -> None:
    board = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)
    x = board.expand(1, 3, 2, 2).clone()
    for proxy in ("max_prob", "entropy", "max_logit"):
        wrapper = EquiZero(CornerSign(), "rot90", proxy=proxy)
        _, weights = wrapper(x, return_weights=True)
        assert torch.equal(weights, torch.full((1, 4), 0.25, dtype=torch.float64))  # lowest index: [1, 0, 0, 0]
        assert check_invariance(wrapper, x, "rot90") == 0.0


def test_a_trunk_in_eval_mode_with_one_block_training_is_passed_whole_orbits() -> None:
    trunk = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    wrapper = Equitune(trunk, "d4").train()
    trunk.eval()
    trunk[1].train()  # the usual pattern: BatchNorm frozen but for the block being finetuned
    x = torch.randn(2, 3, 160, 160)
    assert wrapper.images_per_pass(x) is None  # whole orbits, so BatchNorm sees every view of an image together
    trunk[1].eval()
    assert wrapper.images_per_pass(x) == CPU_CHUNK_PIXELS // (160 * 160)


def test_an_input_besides_the_images_is_refused_not_ignored() -> None:
    wrapper = Equitune(_classifier(K), "rot90")
    with pytest.raises(TypeError, match=r"takes one input, the images .* got 1 more.*functools.partial"):
        wrapper(_images(), torch.tensor(100.0))
    with pytest.raises(TypeError, match="got 1 more"):
        LambdaEquitune(_classifier(K), "rot90", example_input=_images())(_images(), True)


def test_a_model_that_drops_the_batch_dim_is_named_as_such() -> None:
    class Squeezing(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean((1, 2, 3), keepdim=True).expand(-1, K, 1, 1).squeeze()  # [B, K], but [K] at B = 1

    with pytest.raises(ValueError, match=r"maps 1 images to an output of shape \[5\].*drops the batch dim"):
        Equitune(Squeezing(), "rot90")(_images(b=2))


def test_trace_and_dynamic_export_take_one_pass_where_auto_would_split_the_orbits() -> None:
    x = torch.randn(2, 3, 224, 224)
    wrapper = Equitune(nn.Sequential(nn.Conv2d(3, 2, 8, stride=8), nn.Flatten(), nn.LazyLinear(K)), "rot90").eval()
    expected = wrapper(x)
    assert wrapper.images_per_pass(x) < 2 * 4  # eagerly, in pieces of the orbits
    torch.testing.assert_close(torch.jit.trace(wrapper, x, check_trace=False)(x), expected)
    batch = torch.export.Dim("batch", min=1, max=64)
    exported = torch.export.export(wrapper, (x,), dynamic_shapes={"x": {0: batch}}).module()
    torch.testing.assert_close(exported(x), expected)
    assert check_invariance(exported, torch.randn(3, 3, 224, 224), "rot90") < 1e-4  # no .eval() on an export


def test_compiling_keeps_no_guard_on_the_first_call_check() -> None:
    import torch._dynamo

    torch._dynamo.reset()
    wrapper = Equitune(_classifier(K, torch.float32), "rot90").eval()
    compiled = torch.compile(wrapper, backend="eager", dynamic=False)
    x = torch.randn(3, 3, 12, 12)
    before = compiled(x)
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    wrapper(x)  # an eager call runs the check and sets its flag
    torch.testing.assert_close(compiled(x), before)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == frames  # no recompilation


def test_a_wrapper_compiled_before_any_eager_call_skips_the_first_call_check() -> None:
    """What the README says: a graph keeps no first-call check, so its warnings come from an eager call only."""
    import torch._dynamo

    torch._dynamo.reset()
    wrapper, x = Equitune(RegisterViT(), "rot90").eval(), _images(size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the unaligned-token warning would raise here
        compiled = torch.compile(wrapper, backend="eager", dynamic=False)(x)
    with pytest.warns(UserWarning, match=r"look like patch tokens \[T, D\] = \[21, 8\]"):
        torch.testing.assert_close(wrapper(x), compiled)


def test_output_softmax_over_one_number_per_view_is_refused() -> None:
    scalar = nn.Sequential(nn.Flatten(), nn.LazyLinear(1), nn.Flatten(0))  # [B, 3, 12, 12] -> [B]
    with pytest.raises(ValueError, match=r"one number per view .* would run over the views"):
        Equitune(scalar, "rot90", output_softmax=True)(torch.randn(2, 3, 12, 12))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_every_weighted_wrapper_runs_a_model_cast_to_half_precision(dtype: torch.dtype) -> None:
    """``wrapper.to(dtype)`` casts the weighting network with the model; the wrapper hands its views over in
    float32, so each network takes them in its own dtype (equiattention's embedding MLPs did not: a dtype error,
    reported as a shape mismatch)."""
    x = _images(b=2).float()
    for make in (lambda m: LambdaEquitune(m, "rot90", example_input=x),
                 lambda m: EquiAttention(m, "rot90", example_input=x)):
        torch.manual_seed(0)
        wrapper = make(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 10 * 10, K)).float())
        wrapper = wrapper.to(dtype).eval()
        with torch.no_grad():
            out = wrapper(x)
        assert out.shape == (2, K) and torch.isfinite(out).all()
        assert check_invariance(wrapper, x, "rot90") <= 8 * torch.finfo(dtype).eps * float(out.abs().max())


def test_the_wrappers_run_on_a_torch_without_the_compiler_queries(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.compiler.is_compiling appeared in torch 2.3 and is_exporting in 2.6; the first-call probe asks
    for them only where they exist (torch itself calls them, so the test hides them from equinb alone)."""
    from types import SimpleNamespace

    from equinb import wrappers

    monkeypatch.setattr(wrappers, "torch", SimpleNamespace(jit=torch.jit, compiler=SimpleNamespace()))
    assert wrappers._tracing() is False
    monkeypatch.setattr(wrappers, "torch", SimpleNamespace(jit=torch.jit))
    assert wrappers._tracing() is False


def test_aligning_views_refuses_token_sequences_whose_last_axis_is_not_space() -> None:
    """Patch tokens [B, T, D] have no spatial last two dims: aligning them would flip or turn the embedding axis
    and still pass check_equivariance (which applies the same action)."""
    tokens = nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), nn.Flatten(2), Transpose())  # [B, 9, 8]
    with pytest.raises(ValueError, match=r"patch tokens \[B, T, D\] to maps \[B, D, h, w\] with output=lambda t"):
        Equitune(tokens.double(), "hflip", align_views=True)(_images())


class ChannelsLast(nn.Module):
    """A CNN whose maps come out channels-last, as torchvision's and timm's Swin give them: [B, 3, 12, 12] ->
    [B, 6, 6, 4]."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(x)).permute(0, 2, 3, 1)


def test_channels_last_maps_are_named_before_a_mirror_reverses_their_channels() -> None:
    """Aligned under a mirror, maps [h, w, C] raise nothing: the mirror reverses the channels instead of the
    rows, and check_equivariance, which moves the outputs the same way, passes. The wrapper and the check say
    what the layout looks like; with the permute they name, the maps are the model's own and equivariant."""
    x = _images()
    first_layout = lambda out: out.permute(0, 3, 1, 2)  # noqa: E731
    hint = r"look like channels-last maps \[\.\.\., h, w, C\] = \[1, 2, 6, 6, 4\].*out\.permute\(0, 3, 1, 2\)"
    for group in ("hflip", "vflip", "rot180"):
        wrong = Equitune(ChannelsLast(), group, align_views=True)
        with pytest.warns(UserWarning, match=rf"align_views=True turns each view back by {group} .*{hint}") as caught:
            y = wrong(x)
        assert caught[0].filename == __file__
        with pytest.warns(UserWarning, match=r"check_equivariance: the model's outputs look like channels-last"):
            assert check_equivariance(wrong, x, group) < 1e-9  # the same wrong action on both sides: it passes
        right = Equitune(ChannelsLast(), group, align_views=True, output=first_layout)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert check_equivariance(right, x, group) < 1e-9
            # the warned layout was wrong, not only differently laid out: its channels were mirrored
            assert (y.permute(0, 3, 1, 2) - right(x)).abs().max() > 1e-2
    with pytest.raises(ValueError, match=r"square maps; it gives maps of h x w = 6 x 4 \(views \(1, 4, 6, 6, 4\)\); "
                                         r"they look like channels-last maps"):
        Equitune(ChannelsLast(), "rot90", align_views=True)(x)
    with pytest.raises(ValueError, match=r"not square \(shape \(3, 6, 6, 4\)\); they look like channels-last maps"):
        check_equivariance(ChannelsLast(), x, "rot90")
    with pytest.warns(UserWarning, match=r"feature maps \[C, h, w\] .* pass align_views=True \(first: they look "
                                         r"like channels-last maps"):
        Equitune(ChannelsLast(), "rot90")(x)
    with warnings.catch_warnings():  # channels-first maps, square or not, get no layout hint
        warnings.simplefilter("error")
        Equitune(Recorder(lambda logits, maps: maps), "hflip", align_views=True)(x)
        Equitune(nn.Conv2d(3, 4, 3, padding=(1, 0)).double(), "hflip", align_views=True)(x)


def test_channels_last_maps_of_non_square_images_are_named_by_the_images_aspect_ratio() -> None:
    """Images of 12 x 16 give channels-last maps [6, 8, 4], whose dims before the last differ: they keep the images'
    aspect ratio, as a map's height and width do, and the channels do not, so the wrapper and the check name the
    layout. Channels-first maps [6, 6, 8] of the same images (C == h) keep it in their last two dims: no hint."""
    x = torch.randn(2, 3, 12, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with pytest.warns(UserWarning, match=r"look like channels-last maps \[\.\.\., h, w, C\] = \[1, 2, 6, 8, 4\]"):
        wrong = Equitune(ChannelsLast(), "hflip", align_views=True)
        y = wrong(x)
    right = Equitune(ChannelsLast(), "hflip", align_views=True, output=lambda out: out.permute(0, 3, 1, 2))
    assert (y.permute(0, 3, 1, 2) - right(x)).abs().max() > 1e-2  # the mirror reversed the channels
    with pytest.warns(UserWarning, match=r"check_equivariance: the model's outputs look like channels-last"):
        check_equivariance(ChannelsLast(), x, "hflip")
    assert equinb.checks.channels_last_maps_hint(torch.zeros(2, 6, 8, 4), (12, 16))
    assert not equinb.checks.channels_last_maps_hint(torch.zeros(2, 6, 6, 8), (12, 16))  # channels first, C == h
    assert equinb.checks.channels_last_maps_hint(torch.zeros(2, 6, 6, 8))  # without the images' size: square assumed
    assert not equinb.checks.channels_last_maps_hint(torch.zeros(2, 8, 6, 6))
    square_first = nn.Conv2d(3, 6, 3, stride=2, padding=1).double()  # [B, 6, 6, 8]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Equitune(square_first, "hflip", align_views=True)(x)
        assert check_equivariance(Equitune(square_first, "hflip", align_views=True), x, "hflip") < 1e-9


def test_tokens_are_refused_by_the_equivariance_check_under_every_group() -> None:
    """Outputs [B, T, D] that do not keep the images' aspect ratio are tokens, no map: under a mirror the check would
    flip D and report a number that means nothing, so it refuses them as under quarter turns; a one-channel map
    [B, h, w] is checked as a map, and so are maps [B, C, h, w] that a padding made one cell narrower."""
    x = _images()

    class Tokens(nn.Module):
        def forward(self, z: torch.Tensor) -> torch.Tensor:  # [B, 3, 12, 12] -> [B, 37, 5]: 1 + 36 patch tokens
            patches = z.unfold(2, 2, 2).unfold(3, 2, 2).mean((-1, -2)).flatten(2).transpose(1, 2)  # [B, 36, 3]
            return torch.cat([torch.zeros_like(patches[:, :1]), patches], 1) @ torch.ones(3, 5, dtype=z.dtype)

    for group in ("hflip", "rot180", "rot90"):
        with pytest.raises(ValueError, match=r"outputs \(3, 37, 5\) of images 12 x 12 do not keep the images' aspect "
                                             r"ratio: they look like tokens \[B, T, D\].*patch_tokens_to_map"):
            check_equivariance(Tokens(), x, group)
    assert check_equivariance(lambda z: z.mean(1), x, "d4") < 1e-12  # a one-channel map [B, h, w]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_equivariance(Equitune(nn.Conv2d(3, 4, 3, padding=(1, 0)).double(), "hflip", align_views=True), x,
                                  "hflip") < 1e-9  # [B, 4, 12, 10]


def test_the_first_call_leaves_the_callers_images_as_they_were() -> None:
    """A model that works in place (x.mul_) must not change the caller's images through the first call's check,
    which runs the first image alone: that image would then be scaled twice in the orbit pass."""
    class InPlace(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = Recorder()

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            z.mul_(2.0)
            return self.inner(z)

    x = _images()
    kept = x.clone()
    for make in (lambda m: Equitune(m, "rot90"), lambda m: LambdaEquitune(m, "rot90", EmbeddingWeightNet(K, 7))):
        wrapper = make(InPlace()).eval()
        y = wrapper(x)
        assert torch.equal(x, kept)
        torch.testing.assert_close(y, wrapper(x.clone()), **TOL)  # the first call gives what later calls give


def test_aligning_non_square_maps_under_quarter_turns_names_the_trunks_maps() -> None:
    """Square images, but a trunk whose padding makes 12 x 10 maps: the error names the maps, not the images."""
    trunk = nn.Conv2d(3, 4, 3, padding=(1, 0)).double()
    with pytest.raises(ValueError, match=r"square maps; it gives maps of h x w = 12 x 10"):
        Equitune(trunk, "rot90", align_views=True)(_images())
    assert check_equivariance(Equitune(trunk, "hflip", align_views=True), _images(), "hflip") < 1e-9


def test_wrapping_leaves_the_models_own_mode_as_it_was() -> None:
    """Building a wrapper never switches the user's model into training mode (its dropout would then be on and
    its BatchNorm statistics would move on a bare call)."""
    for make in (lambda m: Equitune(m, "rot90"), lambda m: EquiZero(m, "rot90"),
                 lambda m: LambdaEquitune(m, "rot90", example_input=_images()),
                 lambda m: LambdaEquitune(m, "rot90", example_input=_images(), frozen_copy=Recorder(seed=1).train()),
                 lambda m: EquiAttention(m, "rot90", example_input=_images())):
        model = nn.Sequential(Recorder(), nn.Dropout(0.5)).eval()
        wrapper = make(model)
        assert wrapper.training and not any(m.training for m in model.modules()), type(wrapper).__name__
        if isinstance(wrapper, LambdaEquitune):
            assert wrapper.weight_net.training  # in the wrapper's mode
            assert wrapper.frozen_copy is None or not wrapper.frozen_copy.training
    wrapper = LambdaEquitune(Recorder().eval(), "rot90", example_input=_images(), dropout_in_eval=True).eval()
    assert wrapper.weight_net.training and not wrapper.trunk.training  # as published: dropout on in evaluation


def test_the_models_error_on_the_first_call_names_the_one_image_check() -> None:
    """One-channel images into a three-channel model: PyTorch's error names the first call's batch of one, which the
    caller never passed; the wrapper says where it comes from."""
    gray = _images()[:, :1]
    for wrapper in (Equitune(Recorder(), "rot90"), LambdaEquitune(Recorder(), "rot90", EmbeddingWeightNet(K, 7))):
        with pytest.raises(RuntimeError, match=r"runs the first image of the batch \(3, 1, 12, 12\) alone .*"
                                               r"channels, size and dtype the model takes: .*channels"):
            wrapper(gray)


def test_out_of_memory_on_the_first_call_stays_out_of_memory() -> None:
    """A caller catching torch's out-of-memory error to shrink its batch still gets it, not advice on channels."""
    class Hungry(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    with pytest.raises(torch.cuda.OutOfMemoryError, match="simulated"):
        Equitune(Hungry(), "rot90")(_images())


def test_forward_views_refuses_inputs_without_the_views_axis_before_the_trunk() -> None:
    wrapper = Equitune(Recorder(), "rot90")
    with pytest.raises(ValueError, match=r"inputs must be the views \[B, G, C, H, W\] with G = 4 .*"
                                         r"got \(3, 3, 12, 12\)"):
        wrapper.forward_views(_images())
    two = Equitune(nn.Conv2d(2, 3, 3).double(), "hflip")  # two channels, two elements: an image batch passes dim 1
    with pytest.raises(ValueError, match=r"inputs must be the views \[B, G, C, H, W\] with G = 2"):
        two.forward_views(_images()[:, :2])
    assert torch.equal(wrapper.forward_views(wrapper.group.orbit(_images())), wrapper.eval()(_images()))


def test_a_token_group_in_an_image_wrapper_points_to_equilm() -> None:
    group = equinb.TokenPermutationGroup(10, [[1, 2]])
    with pytest.raises(TypeError, match="use equinb.equilm.EquiLM"):
        Equitune(Recorder(), group)


class Transpose(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


@pytest.mark.parametrize("wrapper_class", [Equitune, LambdaEquitune])
def test_a_head_of_the_wrong_size_fails_on_the_first_image_naming_head_and_trunk_output(wrapper_class) -> None:
    """PyTorch's own error ('mat1 and mat2 shapes cannot be multiplied') names neither the head nor the trunk."""
    trunk = nn.Sequential(nn.Flatten(), nn.Linear(3 * 12 * 12, 6)).double()
    kwargs = {"weight_net": nn.Sequential(nn.Linear(6, 1), nn.Flatten(1)).double()} \
        if wrapper_class is LambdaEquitune else {}
    wrapper = wrapper_class(trunk, "rot90", head=nn.Linear(5, K).double(), **kwargs)
    with pytest.raises(ValueError, match=r"the head Linear\(in_features=5.* does not take the trunk's output \[B, 6\]"):
        wrapper(_images(b=2))
    fitted = wrapper_class(trunk, "rot90", head=nn.Linear(6, K).double(), **kwargs)
    assert fitted(_images(b=2)).shape == (2, K)


# ---------------------------------------------------------------------------------------------------------------
# Mixed precision, options held from construction, label outputs, weighting networks that mix the views.

class MixedPrecision(nn.Module):
    """A tensor of another dtype registered before the first layer, as CLIP's ViT keeps ``class_embedding`` in fp32
    before its fp16 ``conv1``: here float32 before a float64 convolution. Shapes: [B, 3, 12, 12] -> [B, 4]."""

    def __init__(self) -> None:
        super().__init__()
        self.class_embedding = nn.Parameter(torch.zeros(4))
        self.conv1 = nn.Conv2d(3, 4, 4, stride=4).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(x).mean((2, 3)) + self.class_embedding


def test_inputs_take_the_dtype_of_the_first_layer_not_of_the_first_parameter() -> None:
    x = _images(b=2)
    wrapper = Equitune(MixedPrecision(), "rot90").eval()
    assert check_invariance(wrapper, x, "rot90") < 1e-6 and wrapper(x.float()).shape == (2, 4)
    assert check_invariance(wrapper.trunk, x, "rot90") > 1e-3  # the bare model is not: the bound can fail


def test_trunk_eval_and_a_frozen_copy_hold_from_construction_not_only_after_train() -> None:
    def model() -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 10 * 10, K)).double()

    trunk = model()
    before = trunk[1].running_mean.clone()
    wrapper = Equitune(trunk, "rot90", trunk_eval=True)
    assert wrapper.training and not trunk.training
    wrapper(_images(b=2))
    assert torch.equal(trunk[1].running_mean, before)  # the frozen backbone's statistics stay as they were
    frozen = model()
    lam = LambdaEquitune(model(), "rot90", EmbeddingWeightNet(K, 7).double(), frozen_copy=frozen, dropout_in_eval=True)
    assert not frozen.training and all(m.training for m in lam.weight_net.modules())


def test_a_model_returning_labels_is_refused_instead_of_averaged_to_zeros() -> None:
    labels = Recorder(lambda lo, m: lo.argmax(-1))
    with pytest.raises(TypeError, match=r"the model returns int64 outputs.*logits before an argmax"):
        Equitune(labels, "rot90")(_images(b=2))
    assert labels.batches == [1]


def test_a_weighting_network_that_mixes_the_views_is_refused_on_the_first_call() -> None:
    mixing = nn.Sequential(nn.Flatten(1), nn.Linear(4 * K, 4)).double()  # [B, G, K] -> [B, G], not view by view
    with pytest.raises(ValueError, match=r"does not compute each view's weight from that view alone"):
        LambdaEquitune(Recorder(), "rot90", mixing)(_images(b=2))
    with pytest.raises(ValueError, match=r"does not compute each view's weight"):
        EquiAttention(Recorder(), "rot90", mixing)(_images(b=2))
    per_view = LambdaEquitune(Recorder(), "rot90", EmbeddingWeightNet(K, 7).double()).eval()
    assert check_invariance(per_view, _images(b=2), "rot90") < 1e-9  # per-view networks pass the same check


def test_attention_weights_that_do_not_sum_to_one_are_refused_on_the_first_call() -> None:
    """EquiAttention's weights are the column means of a row-stochastic matrix and sum to 1; a network whose weights
    do not (exp without the softmax's division) scales the output and stays invariant, so only this check sees it.
    λ-equitune's weights may take any sum (its article text and code divide differently)."""
    unnormalised = nn.Sequential(EmbeddingWeightNet(K, 7), Exp()).double()
    with pytest.raises(ValueError, match=r"views weights that sum to [0-9.e+-]+, not 1, so the output would be scaled"):
        EquiAttention(Recorder(), "rot90", unnormalised)(_images(b=2))
    LambdaEquitune(Recorder(), "rot90", unnormalised)(_images(b=2))
    softmax = nn.Sequential(EmbeddingWeightNet(K, 7), nn.Softmax(dim=1)).double()
    assert check_invariance(EquiAttention(Recorder(), "rot90", softmax).eval(), _images(b=2), "rot90") < 1e-9


class Exp(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z.exp()


class NeighbourWeights(nn.Module):
    """Each view's weight times its cyclic neighbour's: weights that move with a cyclic shift of the views (a
    rotation's permutation) and not with a mirror's. Shapes: [B, G, D] -> [B, G]."""

    def __init__(self) -> None:
        super().__init__()
        self.net = EmbeddingWeightNet(K, 7).double()

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        lam = self.net(views)
        return lam * torch.roll(lam, 1, dims=1)


def test_the_weight_check_tries_every_element_not_one_shift() -> None:
    """Under rot90 every view permutation is a cyclic shift, so NeighbourWeights moves with the views and the wrapper
    is invariant; under d4 a mirror permutes the views otherwise, invariance breaks, and the first call refuses it."""
    x = _images(b=2)
    rotations = LambdaEquitune(Recorder(), "rot90", NeighbourWeights()).eval()
    assert check_invariance(rotations, x, "rot90") < 1e-9
    with pytest.raises(ValueError, match=r"transforming an image by element \d of d4 permutes its 8 views"):
        LambdaEquitune(Recorder(), "d4", NeighbourWeights())(x)


class MirrorBonus(nn.Module):
    """A per-view weighting network plus 1 on the mirrored views (views 4-7 of d4): weights that move with every
    rotation (which keeps mirrored views among mirrored ones) and not with a mirror (which swaps the two halves).
    Shapes: [B, G, D] -> [B, G]."""

    def __init__(self) -> None:
        super().__init__()
        self.net = EmbeddingWeightNet(K, 7).double()

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        return self.net(views) + (torch.arange(views.shape[1]) >= 4).to(views.dtype)


def test_the_weight_check_refuses_weights_that_move_with_the_rotations_but_not_the_mirrors() -> None:
    """Only the mirror elements (4-7) expose MirrorBonus: a check that tried one shift, or the rotations alone, would
    let a wrapper through whose output is not invariant."""
    x = _images(b=2)
    unchecked = LambdaEquitune(Recorder(), "d4", MirrorBonus()).eval()
    unchecked._first_call_checked = True  # what the wrapper computes when the check is skipped: not invariant
    assert check_invariance(unchecked, x, "d4") > 1e-3
    assert check_invariance(unchecked, x, "rot90") < 1e-9  # the rotations cannot tell
    with pytest.raises(ValueError, match=r"transforming an image by element [4-7] of d4 permutes its 8 views"):
        LambdaEquitune(Recorder(), "d4", MirrorBonus())(x)


class PositionJitter(nn.Module):
    """A per-view weighting network plus ``size`` times each view's position: weights that do not roll with the
    views by ``size``, in the network's dtype. Shapes: [B, G, D] -> [B, G]."""

    def __init__(self, size: float, dtype: torch.dtype) -> None:
        super().__init__()
        self.net, self.size = EmbeddingWeightNet(K, 7).to(dtype), size

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        lam = self.net(views)
        return lam + self.size * torch.arange(lam.shape[1], dtype=lam.dtype)


def test_the_weight_check_tolerates_rounding_of_the_weights_precision_and_nothing_more() -> None:
    x = _images(b=2)
    for size in (1e-4, 1e-9, 1e-12):  # above float64's rounding (64 eps is about 1e-14)
        with pytest.raises(ValueError, match=r"does not compute each view's weight"):
            LambdaEquitune(Recorder(), "rot90", PositionJitter(size, torch.float64), normalisation="none")(x)
    LambdaEquitune(Recorder(), "rot90", PositionJitter(1e-16, torch.float64), normalisation="none")(x)  # rounding
    # a half-precision network's weights round to about 1e-3: a difference that size is its rounding, accepted
    half = Recorder().half()
    LambdaEquitune(half, "rot90", PositionJitter(1e-3, torch.float16), normalisation="none")(x.half())


def test_the_device_check_runs_on_every_call_so_a_moved_wrapper_still_says_what_to_do() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 10 * 10, 5))
    wrapper = Equitune(model, "rot90").eval()
    wrapper(_images(b=2).float())  # checked on the CPU
    wrapper.to("meta")
    with pytest.raises(ValueError, match=r"input is on cpu and the model on meta"):
        wrapper(_images(b=2).float())


def test_normalise_views_is_refused_for_maps_whose_last_axis_is_the_width() -> None:
    with pytest.raises(ValueError, match=r"normalise_views=True L2-normalises embedding views \[B, D\].*\[4, 6, 6\]"):
        Equitune(Recorder(lambda lo, m: m), "rot90", normalise_views=True, head=nn.Flatten())(_images(b=2))


def test_unknown_keywords_name_the_wrapper_called_and_the_closest_valid_one() -> None:
    with pytest.raises(TypeError, match=r"^EquiZero\(\) got unexpected keyword argument 'example_input'; it takes: "
                                        r"align_views, .*proxy"):
        EquiZero(Recorder(), "rot90", example_input=_images(b=1))
    with pytest.raises(TypeError, match=r"LambdaEquitune\(\) .* 'normalization' \(did you mean 'normalisation'\?\)"):
        LambdaEquitune(Recorder(), "rot90", EmbeddingWeightNet(K), normalization="sum")


def test_one_image_without_a_batch_dim_and_the_base_class_get_a_message() -> None:
    with pytest.raises(ValueError, match=r"got shape \(3, 12, 12\); for one image \[C, H, W\] pass x\[None\]"):
        Equitune(Recorder(), "rot90")(_images(b=1)[0])
    signals = torch.randn(4, 2, 9, dtype=torch.float64)  # [B, C, L]: the route the message gives
    with pytest.raises(ValueError, match=r"\[B, C, 1, L\] \(x\[:, :, None\]\) under a group without quarter turns"):
        Equitune(nn.Conv1d(2, 3, 3).double(), "hflip")(signals)
    over_time = nn.Sequential(nn.Flatten(1, 2), nn.Conv1d(2, 3, 3), nn.Flatten()).double()  # [B, 2, 1, L] -> [B, 21]
    assert check_invariance(Equitune(over_time, "hflip"), signals[:, :, None], "hflip") < 1e-9
    with pytest.raises(NotImplementedError, match=r"OrbitWrapper is the base class; use Equitune"):
        equinb.OrbitWrapper(Recorder(), "rot90")(_images(b=1))


# ---------------------------------------------------------------------------------------------------------------
# A new user's mistakes and edge cases: each fails with what was wrong and what to do.

def test_a_nan_first_image_is_named_instead_of_blaming_the_weighting_network() -> None:
    x = _images(b=2)
    x[0, 0, 0, 0] = float("nan")
    for make in (lambda: LambdaEquitune(Recorder(), "d4", EmbeddingWeightNet(K, 7).double()),
                 lambda: EquiAttention(Recorder(), "d4", example_input=_images(b=1))):
        with pytest.raises(ValueError, match=r"outputs for the first image's views are not finite .* \(x\[0\]\)"):
            make().eval()(x)
    broken = EmbeddingWeightNet(K, 7).double()
    with torch.no_grad():
        next(broken.parameters()).fill_(float("nan"))  # a diverged checkpoint's weighting network
    with pytest.raises(ValueError, match=r"gives weights that are not finite .* which are finite"):
        LambdaEquitune(Recorder(), "d4", broken).eval()(_images(b=2))


def test_a_function_head_with_a_long_repr_gets_the_head_message_and_shows_in_repr() -> None:
    import functools

    head = functools.partial(lambda z, weight: z @ weight, weight=torch.randn(7, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"the head partial functools\.partial.*does not take the trunk's output"):
        Equitune(Recorder(), "rot90", head=head)(_images(b=2))
    assert "(head): partial functools.partial" in repr(Equitune(Recorder(), "rot90", head=head))


def test_channels_last_images_are_named_as_such_under_quarter_turns() -> None:
    hwc = _images(b=2).permute(0, 2, 3, 1)  # [B, 12, 12, 3], as from numpy
    with pytest.raises(ValueError, match=r"channels-last images \[B, H, W, C\] = \[2, 12, 12, 3\].*permute\(0, 3, 1, "
                                         r"2\)"):
        Equitune(Recorder(), "rot90")(hwc)
    with pytest.raises(ValueError, match=r"crop or pad the images to a square, .*vflip\)$"):  # no layout hint
        Equitune(Recorder(), "rot90")(torch.randn(1, 3, 8, 12, dtype=torch.float64))
    # without quarter turns the model itself fails on them: its error gets the same permute
    convolution = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()).double()
    with pytest.raises(RuntimeError, match=r"channels-last images \[B, H, W, C\] = \[2, 12, 12, 3\]"):
        Equitune(convolution, "hflip")(hwc)


def test_one_channel_batches_without_their_channel_dim_get_the_fix_for_a_batch_first() -> None:
    with pytest.raises(ValueError, match=r"got shape \(8, 28, 28\); a batch of one-channel images \[B, H, W\] "
                                         r"goes in as x\[:, None\]; for one image"):
        Equitune(Recorder(), "d4")(torch.randn(8, 28, 28, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"got shape \(3, 28, 28\); for one image \[C, H, W\] pass x\[None\]"):
        Equitune(Recorder(), "d4")(torch.randn(3, 28, 28, dtype=torch.float64))


def test_a_selector_copied_from_a_wrapper_into_a_check_says_to_leave_it_out() -> None:
    wrapper = Equitune(Recorder(lambda lo, m: (lo, m)), "rot90", output=0)
    with pytest.raises(TypeError, match=r"the model already returns a tensor .* leave output= out here"):
        check_invariance(wrapper, _images(b=2), "rot90", output=0)


def test_check_equivariance_names_non_square_outputs_of_square_images() -> None:
    model = nn.Conv2d(3, 2, 3, padding=(1, 0)).double()  # 12 x 12 -> 12 x 10
    with pytest.raises(ValueError, match=r"outputs of these square images are not square \(shape \(2, 2, 12, 10\)\)"):
        check_equivariance(model, _images(b=2), "rot90")
    assert check_equivariance(model, _images(b=2), "hflip") > 0  # no quarter turns: measured


def test_a_weighting_network_of_another_shape_gets_the_squeeze_hint_only_for_a_trailing_one() -> None:
    class Shaped(nn.Module):
        def __init__(self, shape) -> None:
            super().__init__()
            self.shape = shape

        def forward(self, views):
            return views.sum() * torch.ones(self.shape(views), dtype=views.dtype)

    with pytest.raises(ValueError, match=r"got \[1, 4, 1\] \(squeeze the trailing dim of size 1"):
        LambdaEquitune(Recorder(), "rot90", Shaped(lambda v: (v.shape[0], 4, 1)))(_images(b=2))
    with pytest.raises(ValueError, match=r"got \[1, 2\]$"):
        LambdaEquitune(Recorder(), "rot90", Shaped(lambda v: (1, 2)))(_images(b=2))


def test_images_passed_where_weight_net_goes_say_example_input() -> None:
    with pytest.raises(TypeError, match=r"got Tensor: images go in as example_input=images"):
        LambdaEquitune(Recorder(), "rot90", _images(b=1))


def test_a_chunk_size_that_splits_orbits_warns_while_batchnorm_trains() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(K)).double()
    model(_images(b=2))  # materialise the lazy layer
    with pytest.warns(UserWarning, match=r"chunk_size=3 splits each orbit of 8 views .* at least 8") as caught:
        Equitune(model, "d4", chunk_size=3).train()(_images(b=2))
    assert caught[0].filename == __file__  # the caller's line, not torch's (whose line would show it only once)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Equitune(model, "d4", chunk_size=8).train()(_images(b=2))  # whole orbits
        Equitune(model, "d4", chunk_size=3).eval()(_images(b=2))  # running statistics: any chunking


def test_the_checks_refuse_a_wrong_rank_as_the_wrappers_do() -> None:
    one = _images(b=1)[0]
    for call in (lambda: check_invariance(Recorder(), one, "rot90"), lambda: Equitune(Recorder(), "rot90")(one)):
        with pytest.raises(ValueError, match=r"image batch \[B, C, H, W\].*pass x\[None\]"):
            call()
