"""Datasets, one data root, and random group transforms that simulate a transformed test distribution.

Data root: ``data_root()`` is ``$EQUINB_DATA`` or ``~/.cache/equinb``. Every loader takes ``root=None``
meaning that folder, and keeps each dataset in its own subfolder:

    <root>/cifar100/cifar-100-python/{train,test,meta}                 (torchvision's CIFAR100 layout)
    <root>/imagenetv2/imagenetv2-matched-frequency-format-val/<0..999>/*.jpeg
    <root>/isic2018/ISIC2018_Task3_{Training,Validation}_GroundTruth.csv
    <root>/isic2018/ISIC2018_Task3_{Training,Validation}_Input/<image>.jpg
    <root>/fashion_mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz

The bundled scikit-learn digits (``load_digits``) need no download; they are the offline small profile.
Fashion-MNIST (``load_fashion_mnist``, the small profile's stand-in for ISIC 2018) comes from Debian's
``dataset-fashion-mnist`` package, fetched without root (``fetch_fashion_mnist``).
``get_dataset(name, split, **kwargs)`` dispatches by name; ``dataset_classes(name)`` gives class names.

Random group transforms (article spec section 1): the article's ``RandomRot90``/``RandomFlip`` draw ONE
element with ``np.random.randint(0, G)`` per batch of 32 and transform the whole batch ("as published");
the text describes an independently transformed test set ("as described", one element per image).
``random_group_transform`` does either; ``group_transform_indices`` gives the element index of every image
of a dataset evaluated in order, so per-view results cached once can be picked without re-running a model.

torchvision and scikit-learn are imported inside the functions that need them.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from .cache import data_root, sha256_file
from .groups import Group, get_group
from .validation import check_choice

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DIGITS_CLASSES",
    "CIFAR100_CLASSES",
    "ISIC2018_CLASSES",
    "ISIC2018_COLUMNS",
    "ISIC2018_CLASS_COUNTS",
    "proportional_counts",
    "DatasetSpec",
    "DATASETS",
    "DATASET_NAMES",
    "TRANSFORM_PER",
    "data_root",
    "root_identity",
    "load_digits",
    "FASHION_MNIST_CLASSES",
    "fetch_fashion_mnist",
    "fashion_mnist_arrays",
    "load_fashion_mnist",
    "cifar100",
    "ImageNetV2",
    "ISIC2018",
    "get_dataset",
    "dataset_classes",
    "dataset_spec",
    "image_batches",
    "random_group_transform",
    "group_transform_indices",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

DIGITS_CLASSES: list[str] = [str(i) for i in range(10)]
FASHION_MNIST_CLASSES: list[str] = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                                    "Sneaker", "Bag", "Ankle boot"]

# torchvision's CIFAR100 fine labels (meta b"fine_label_names", alphabetical) in index order, "_" -> " ".
CIFAR100_CLASSES: list[str] = [
    "apple", "aquarium fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn mower", "leopard", "lion", "lizard", "lobster", "man", "maple tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak tree", "orange", "orchid", "otter", "palm tree", "pear", "pickup truck", "pine tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet pepper", "table", "tank", "telephone", "television", "tiger",
    "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow tree", "wolf", "woman", "worm",
]  # fmt: skip

# Same order as the CSV columns MEL, NV, BCC, AKIEC, BKL, DF, VASC.
ISIC2018_CLASSES: list[str] = [
    "Melanoma",
    "Nevus",
    "Basal Cell Carcinoma",
    "Actinic Keratosis",
    "Benign Keratosis",
    "Dermatofibroma",
    "Vascular Lesion",
]
ISIC2018_COLUMNS: tuple[str, ...] = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
# Images per class (column order) in the official ISIC 2018 Task 3 ground-truth files: 10,015 training and 193
# validation images. The small profile's stand-in copies these proportions; the paper profile counts the files.
ISIC2018_CLASS_COUNTS: dict[str, tuple[int, ...]] = {
    "train": (1113, 6705, 514, 327, 1099, 115, 142),
    "val": (21, 123, 15, 8, 22, 1, 3),
}

TRANSFORM_PER: tuple[str, ...] = ("image", "batch")

_CIFAR100_FILES = ("train", "test", "meta")
_IMAGENETV2_FOLDER = "imagenetv2-matched-frequency-format-val"
_IMAGENETV2_URL = "https://huggingface.co/datasets/vaishaal/ImageNetV2/resolve/main/imagenetv2-matched-frequency.tar.gz"
_IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
_ISIC_SPLITS = {"train": "Training", "val": "Validation"}
# Fashion-MNIST as Debian's dataset-fashion-mnist package ships it (MIT licence), with each file's SHA256.
_FASHION_FILES = {
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
_FASHION_PACKAGE = "dataset-fashion-mnist"
_FASHION_SYSTEM = Path("/usr/share/datasets/fashion-mnist")  # where the package puts them when installed


# --------------------------------------------------------------------------------------------------
# data root and validation helpers
# --------------------------------------------------------------------------------------------------


def _resolve_root(root: str | Path | None) -> Path:
    return data_root() if root is None else Path(root).expanduser()


def _check_name(name: str) -> str:
    return check_choice(name, DATASETS, "dataset")


def _check_split(name: str, split: str) -> str:
    return check_choice(split, DATASETS[name].splits, "split", note=f" (the splits of {name!r})")


def _check_per(per: str) -> str:
    return check_choice(per, TRANSFORM_PER, "per")


def _load_rgb(path: Path) -> Any:
    from PIL import Image

    with Image.open(path) as img:  # close the file handle now, not when the object is collected
        return img.convert("RGB")


# --------------------------------------------------------------------------------------------------
# digits (bundled with scikit-learn; the offline small profile)
# --------------------------------------------------------------------------------------------------


def proportional_counts(proportions: Sequence[float], total: int) -> list[int]:
    """Images per class for a set of about ``total`` images with the classes in ``proportions``: each count
    rounded, and at least 1. ``proportional_counts(ISIC2018_CLASS_COUNTS["train"], 600)`` -> [67, 402, 31, 20, 66,
    7, 9]."""
    if not proportions or min(proportions) <= 0 or total < len(proportions):
        raise ValueError(f"need positive proportions and a total of at least one image per class; got "
                         f"{list(proportions)} and {total}")
    whole = float(sum(proportions))
    return [max(1, math.floor(total * p / whole + 0.5)) for p in proportions]


def load_digits(
    split: str,
    size: int = 64,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    test_fraction: float = 0.4,
    seed: int = 0,
) -> TensorDataset:
    """scikit-learn's 8x8 digits (1,797 images), as normalised 3-channel images ready for an ImageNet model.

    Pixels 0..16 are scaled to [0, 1], bilinearly resized to ``size`` (``align_corners=False``), repeated to
    3 channels and normalised with ``mean``/``std``. The split is stratified and fixed by ``seed``
    (``train_test_split(..., stratify=labels, random_state=seed)``); each split keeps scikit-learn's order,
    so it is a fixed subset rather than also a permutation. Deterministic.

    Shapes: images [N, 3, size, size] float32, labels [N] int64; N = 1078 (train) / 719 (test) by default.
    """
    _check_split("digits", split)
    _check_size(size)
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    _check_normalisation(mean, std)

    from sklearn.datasets import load_digits as _sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = _sk_load_digits()
    labels = np.asarray(bunch.target, dtype=np.int64)
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=float(test_fraction), stratify=labels, random_state=seed
    )
    idx = np.sort(train_idx if split == "train" else test_idx)

    x = torch.from_numpy(bunch.images[idx].astype(np.float32) / 16.0).unsqueeze(1)  # [N, 1, 8, 8] in [0, 1]
    return TensorDataset(_grey_to_model_input(x, size, mean, std), torch.from_numpy(labels[idx]))


def _check_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")


def _check_normalisation(mean: Sequence[float], std: Sequence[float]) -> None:
    if torch.as_tensor(mean).shape != (3,) or torch.as_tensor(std).shape != (3,):
        raise ValueError(f"mean and std need 3 values (one per RGB channel), got {list(mean)} and {list(std)}")
    if not bool((torch.as_tensor(std) > 0).all()):
        raise ValueError(f"std must be positive, got {list(std)}")


def _grey_to_model_input(x: torch.Tensor, size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Grey images in [0, 1] as an ImageNet model's input: bilinear resize to ``size`` (``align_corners=False``),
    repeated to 3 channels, normalised. Shapes: x [N, 1, h, w] -> [N, 3, size, size] float32."""
    if size != x.shape[-1]:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x.repeat(1, 3, 1, 1)
    x = (x - torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)) / torch.as_tensor(
        std, dtype=torch.float32).view(1, 3, 1, 1)
    return x.contiguous()


# --------------------------------------------------------------------------------------------------
# Fashion-MNIST (Debian's dataset-fashion-mnist; the small profile's stand-in for ISIC 2018)
# --------------------------------------------------------------------------------------------------


def _fashion_complete(folder: Path) -> bool:
    return all((folder / name).is_file() and sha256_file(folder / name) == sha for name, sha in _FASHION_FILES.items())


def fetch_fashion_mnist(root: str | Path | None = None) -> Path:
    """The folder ``<root>/fashion_mnist`` with Fashion-MNIST's four files, fetched once and checked by SHA256.

    Sources, in order: the folder itself; ``/usr/share/datasets/fashion-mnist`` (the Debian package, when
    installed); ``apt-get download dataset-fashion-mnist`` unpacked with ``dpkg -x`` in a temporary folder (no
    root needed; Debian's package registry must be reachable). The copy is atomic per file, and processes that
    fetch at once each copy into a partial file of their own.
    """
    import os
    import shutil
    import subprocess
    import tempfile

    folder = _resolve_root(root) / "fashion_mnist"
    if _fashion_complete(folder):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        source = _FASHION_SYSTEM
        if not all((source / name).is_file() for name in _FASHION_FILES):
            missing = [tool for tool in ("apt-get", "dpkg") if shutil.which(tool) is None]
            if missing:
                raise FileNotFoundError(
                    f"Fashion-MNIST is not in {folder} and {' and '.join(missing)} is missing, so Debian's "
                    f"{_FASHION_PACKAGE} package cannot be fetched. Put {', '.join(_FASHION_FILES)} (from "
                    "github.com/zalandoresearch/fashion-mnist, MIT licence) into that folder.")
            done = subprocess.run(["apt-get", "download", _FASHION_PACKAGE], cwd=tmp, capture_output=True, text=True)
            debs = sorted(Path(tmp).glob(f"{_FASHION_PACKAGE}_*.deb"))
            if done.returncode != 0 or not debs:
                raise FileNotFoundError(
                    f"`apt-get download {_FASHION_PACKAGE}` failed ({done.stderr.strip()[-300:]}); put "
                    f"{', '.join(_FASHION_FILES)} into {folder} by hand (github.com/zalandoresearch/fashion-mnist)")
            subprocess.run(["dpkg", "-x", str(debs[0]), str(Path(tmp) / "x")], check=True, capture_output=True)
            source = Path(tmp) / "x" / str(_FASHION_SYSTEM).lstrip("/")
        for name, sha in _FASHION_FILES.items():
            if sha256_file(source / name) != sha:
                raise ValueError(f"{source / name} does not have the expected SHA256 {sha}")
            # a partial file of this process alone: two processes fetching at once never write into one
            fd, part = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".part")
            os.close(fd)
            try:
                shutil.copy(source / name, part)  # with the source's mode bits, not mkstemp's 0o600
                os.replace(part, folder / name)
            except BaseException:
                Path(part).unlink(missing_ok=True)
                raise
    return folder


def fashion_mnist_arrays(split: str, root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST's ``split`` (train: 60,000 images, test: 10,000) as uint8 images [N, 28, 28] and labels [N]
    (``FASHION_MNIST_CLASSES`` order), fetched on first use (``fetch_fashion_mnist``)."""
    import gzip

    _check_split("fashion_mnist", split)
    folder = fetch_fashion_mnist(root)
    stem = "train" if split == "train" else "t10k"
    with gzip.open(folder / f"{stem}-images-idx3-ubyte.gz") as handle:
        images = np.frombuffer(handle.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(folder / f"{stem}-labels-idx1-ubyte.gz") as handle:
        labels = np.frombuffer(handle.read(), np.uint8, offset=8).astype(np.int64)
    return images, labels


def load_fashion_mnist(split: str, size: int = 64, mean: Sequence[float] = IMAGENET_MEAN,
                       std: Sequence[float] = IMAGENET_STD, root: str | Path | None = None,
                       index: Sequence[int] | None = None) -> TensorDataset:
    """Fashion-MNIST images ``index`` of ``split`` (default: all; 60,000 images at 64 px take 2.9 GB) as normalised
    3-channel images for an ImageNet model, as ``load_digits`` prepares the digits.

    Shapes: images [N, 3, size, size] float32, labels [N] int64.
    """
    _check_size(size)  # before the archive is read
    _check_normalisation(mean, std)
    images, labels = fashion_mnist_arrays(split, root)
    pick = np.arange(len(labels)) if index is None else np.asarray(index, dtype=np.int64)
    x = torch.from_numpy(images[pick].astype(np.float32) / 255.0).unsqueeze(1)
    return TensorDataset(_grey_to_model_input(x, size, mean, std), torch.from_numpy(labels[pick]))




# --------------------------------------------------------------------------------------------------
# CIFAR100 (torchvision)
# --------------------------------------------------------------------------------------------------


def _make_cifar100_files_class() -> type:
    from torchvision.datasets import CIFAR100

    class CIFAR100Files(CIFAR100):
        """torchvision's CIFAR100 with an opt-out of its MD5 checks (``verify_md5=False``).

        With ``verify_md5=True`` (the default) every method is torchvision's own. With ``False``,
        ``train``/``test``/``meta`` must still exist, but their MD5 sums are not compared with the official
        release; this is for hand-made files in the same pickle format (tests, subsets).
        """

        def __init__(
            self,
            root: str | Path,
            train: bool = True,
            transform: Callable | None = None,
            download: bool = False,
            verify_md5: bool = True,
        ) -> None:
            self.verify_md5 = bool(verify_md5)  # set first: CIFAR10.__init__ calls the checks below
            super().__init__(root, train=train, transform=transform, download=download)

        def _check_integrity(self) -> bool:
            if self.verify_md5:
                return super()._check_integrity()
            folder = Path(self.root) / self.base_folder
            return all((folder / f).is_file() for f, _ in self.train_list + self.test_list)

        def _load_meta(self) -> None:
            if self.verify_md5:
                return super()._load_meta()
            import pickle

            with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    CIFAR100Files.__module__ = __name__
    CIFAR100Files.__qualname__ = "CIFAR100Files"
    return CIFAR100Files


def _cifar100_files_class() -> type:
    cls = globals().get("CIFAR100Files")
    if cls is None:
        cls = globals()["CIFAR100Files"] = _make_cifar100_files_class()
    return cls


def __getattr__(name: str) -> Any:
    # PEP 562: the torchvision subclass is built on first use (torchvision stays a lazy import) and is
    # still reachable as ``equinb.data.CIFAR100Files``, so datasets pickle into DataLoader workers.
    if name == "CIFAR100Files":
        return _cifar100_files_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def cifar100(
    split: str,
    root: str | Path | None = None,
    transform: Callable | None = None,
    download: bool = False,
    verify_md5: bool = True,
) -> Dataset:
    """torchvision's CIFAR100 stored under ``<root>/cifar100``; items are ``(transform(PIL image), label)``.

    ``split`` is ``"train"`` (50,000) or ``"test"`` (10,000). ``download=True`` fetches the official
    archive (needs internet). ``verify_md5=False`` skips torchvision's checksum of the files (they must
    still exist): only for hand-made files in CIFAR's format.

    Shapes: untransformed images are 32x32 RGB PIL images; labels are ints 0..99 (``CIFAR100_CLASSES``).
    """
    _check_split("cifar100", split)
    base = _resolve_root(root) / "cifar100"
    folder = base / "cifar-100-python"
    if not download:
        missing = [f for f in _CIFAR100_FILES if not (folder / f).is_file()]
        if missing:
            raise FileNotFoundError(
                f"CIFAR100 not found: expected the folder {folder} with files {', '.join(_CIFAR100_FILES)} "
                f"(missing: {', '.join(missing)}). Pass download=True on a machine with internet to fetch it "
                f"there, or set EQUINB_DATA (or root=) to a data root that holds cifar100/cifar-100-python."
            )
    try:
        return _cifar100_files_class()(
            str(base), train=(split == "train"), transform=transform, download=download, verify_md5=verify_md5
        )
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted" (MD5 mismatch)
        raise RuntimeError(
            f"CIFAR100 files in {folder} do not match the official release ({err}). Delete the folder and "
            f"pass download=True to fetch it again; for hand-made files in CIFAR's format pass verify_md5=False."
        ) from err


# --------------------------------------------------------------------------------------------------
# ImageNetV2 (matched frequency)
# --------------------------------------------------------------------------------------------------


def _download_imagenetv2(url: str, folder: Path) -> None:
    """Download and extract the archive into a temporary folder beside ``folder``, then move the extracted folder
    into place: a killed download or extraction never leaves a partial ``folder`` that a later run would read."""
    import shutil
    import tempfile

    from torchvision.datasets.utils import download_and_extract_archive

    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".download-") as tmp:
        download_and_extract_archive(url, download_root=tmp, remove_finished=True)
        extracted = Path(tmp) / folder.name
        if not extracted.is_dir():
            raise FileNotFoundError(f"the archive {url} holds no folder {folder.name!r}; found "
                                    f"{sorted(p.name for p in Path(tmp).iterdir())}")
        shutil.move(str(extracted), str(folder))  # a rename: the same file system


class _ImageFiles(Dataset):
    """A labelled list of image files: ``samples`` [(path, label)], ``targets`` (the labels), ``transform``
    applied to each RGB image as it is read."""

    samples: list[tuple[Path, int]]
    transform: Callable | None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        img = _load_rgb(path)
        return (self.transform(img) if self.transform is not None else img), label


class ImageNetV2(_ImageFiles):
    """ImageNetV2 matched-frequency (10,000 images): ``<root>/imagenetv2/imagenetv2-matched-frequency-format-val``.

    Each subfolder is named by its ImageNet class index 0..999, and that integer is the label. Folder names
    are read as integers (``ImageFolder`` would sort "10" before "2" and mislabel them); samples are sorted
    by (label, file name), so the order does not depend on the file system.

    Shapes: items are ``(transform(RGB PIL image), label int)``; ``targets`` [N] list of ints.
    """

    def __init__(self, root: str | Path | None = None, transform: Callable | None = None, download: bool = False,
                 url: str = _IMAGENETV2_URL) -> None:
        self.folder = _resolve_root(root) / "imagenetv2" / _IMAGENETV2_FOLDER
        how = (
            f"Pass download=True (dataset_options {{'imagenetv2': {{'download': True}}}}, about 1.3 GB), or download "
            f"imagenetv2-matched-frequency.tar.gz from the ImageNetV2 release "
            f"(https://github.com/modestyachts/ImageNetV2; {_IMAGENETV2_URL}) and extract it into "
            f"{self.folder.parent}, so that {self.folder}/<class index>/*.jpeg exist (or set EQUINB_DATA)."
        )
        if download and not self.folder.is_dir():
            _download_imagenetv2(url, self.folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"ImageNetV2 not found: expected the folder {self.folder}. {how}")
        samples: list[tuple[Path, int]] = []
        for sub in self.folder.iterdir():
            if not sub.is_dir() or sub.name.startswith("."):
                continue
            if not (sub.name.isascii() and sub.name.isdigit()):
                raise ValueError(f"ImageNetV2 class folders must be named by class index 0..999, found {sub}")
            label = int(sub.name)
            files = sorted(p for p in sub.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())
            samples.extend((p, label) for p in files)
        if not samples:
            raise FileNotFoundError(f"ImageNetV2: no images found under {self.folder}. {how}")
        samples.sort(key=lambda s: (s[1], s[0].name))
        self.samples = samples
        self.targets = [label for _, label in samples]
        self.transform = transform


# --------------------------------------------------------------------------------------------------
# ISIC 2018 Task 3
# --------------------------------------------------------------------------------------------------


class ISIC2018(_ImageFiles):
    """ISIC 2018 Task 3 (lesion diagnosis): ``"train"`` = official training set (10,015 images), ``"val"`` =
    official validation set (193 images; the article's test set).

    Reads ``<root>/isic2018/ISIC2018_Task3_{Training|Validation}_GroundTruth.csv`` (columns image, MEL, NV,
    BCC, AKIEC, BKL, DF, VASC; one-hot floats) and ``..._Input/<image>.jpg``. The label is the index of the
    first 1.0 among the 7 columns (order of ``ISIC2018_CLASSES``). Samples follow the CSV order and are
    built once here (the article's code rebuilt a key list on every item, O(N) per item).

    Shapes: items are ``(transform(RGB PIL image), label int)``; ``targets`` [N] list of ints.
    """

    def __init__(self, split: str, root: str | Path | None = None, transform: Callable | None = None) -> None:
        _check_split("isic2018", split)
        folder = _resolve_root(root) / "isic2018"
        part = _ISIC_SPLITS[split]
        self.csv_path = folder / f"ISIC2018_Task3_{part}_GroundTruth.csv"
        self.image_dir = folder / f"ISIC2018_Task3_{part}_Input"
        how = (
            f"Get the ISIC 2018 Task 3 challenge data (https://challenge.isic-archive.com/data/#2018): "
            f"Training and Validation Input images and Ground Truth CSVs, extracted into {folder} as "
            f"ISIC2018_Task3_<Training|Validation>_GroundTruth.csv and ISIC2018_Task3_<Training|Validation>_Input/ "
            f"(or set EQUINB_DATA)."
        )
        for path in (self.csv_path, self.image_dir):
            if not path.exists():
                raise FileNotFoundError(f"ISIC 2018 {split!r} split not found: missing {path}. {how}")

        samples: list[tuple[Path, int]] = []
        with open(self.csv_path, newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or [h.strip() for h in header] != ["image", *ISIC2018_COLUMNS]:
                raise ValueError(
                    f"{self.csv_path}: expected the header image,{','.join(ISIC2018_COLUMNS)}, got {header}"
                )
            for row in reader:
                if not row:
                    continue
                image, values = row[0].strip(), row[1:]
                if len(values) != len(ISIC2018_COLUMNS):
                    raise ValueError(
                        f"{self.csv_path}: row for image {image!r} has {len(values)} label columns, expected 7"
                    )
                label = next((i for i, v in enumerate(values) if float(v) == 1.0), None)
                if label is None:
                    raise ValueError(f"{self.csv_path}: image {image!r} has no label column equal to 1.0: {values}")
                samples.append((self.image_dir / f"{image}.jpg", label))
        missing = [p for p, _ in samples if not p.is_file()]  # fail now, not in a DataLoader worker mid-epoch
        if missing:
            shown = ", ".join(str(p) for p in missing[:3])
            raise FileNotFoundError(
                f"ISIC 2018: {len(missing)} image(s) listed in {self.csv_path} are missing, e.g. {shown}. {how}"
            )
        self.samples = samples
        self.targets = [label for _, label in samples]
        self.classes = list(ISIC2018_CLASSES)
        self.transform = transform


# --------------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------------

def _imagenet_classes() -> list[str]:
    from .prompts import IMAGENET_CLASSES  # the 1000 curated CLIP ImageNet names live with the prompts

    return list(IMAGENET_CLASSES)


@dataclass(frozen=True)
class DatasetSpec:
    """Everything the library needs to know about one dataset; callers never branch on its name.

    Attributes:
        name: the registry key.
        load: ``load(split, **options)`` returns a ``Dataset`` of (image, label).
        splits: the splits it has.
        eval_split: the split results are reported on (ISIC2018: the official validation set, the
            article's "test" set of 193 images; ImageNetV2 is a test set only).
        classes: class names in label order.
        options: the keyword options ``load`` accepts.
        in_memory: the images are an array in memory (``ds.data``, uint8 [N, H, W, 3]); else files decoded
            on access.
        normalises_itself: the loader resizes and normalises (``size``, ``mean``, ``std``) instead of taking
            a backbone's ``transform`` and a ``root``.
    """

    name: str
    load: Callable[..., Dataset]
    splits: tuple[str, ...]
    eval_split: str
    classes: Callable[[], list[str]]
    options: tuple[str, ...]
    in_memory: bool = False
    normalises_itself: bool = False

    def backbone_options(self, backbone: Any, root: str | Path | None) -> dict:
        """Options that make the dataset's images the input of ``backbone`` (its size and normalisation)."""
        if self.normalises_itself:
            return dict(size=backbone.input_size, mean=backbone.mean, std=backbone.std)
        return dict(root=root, transform=backbone.preprocess)


DATASETS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec("digits", load_digits, ("train", "test"), "test", lambda: list(DIGITS_CLASSES),
                          ("size", "mean", "std", "test_fraction", "seed"), normalises_itself=True),
    "fashion_mnist": DatasetSpec("fashion_mnist", load_fashion_mnist, ("train", "test"), "test",
                                 lambda: list(FASHION_MNIST_CLASSES), ("size", "mean", "std", "root", "index"),
                                 normalises_itself=True),
    "cifar100": DatasetSpec("cifar100", lambda split, **kw: cifar100(split, **kw), ("train", "test"), "test",
                            lambda: list(CIFAR100_CLASSES), ("root", "transform", "download", "verify_md5"),
                            in_memory=True),
    "imagenetv2": DatasetSpec("imagenetv2", lambda split, **kw: ImageNetV2(**kw), ("test",), "test",
                              _imagenet_classes, ("root", "transform", "download", "url")),
    "isic2018": DatasetSpec("isic2018", lambda split, **kw: ISIC2018(split, **kw), ("train", "val"), "val",
                            lambda: list(ISIC2018_CLASSES), ("root", "transform")),
}
DATASET_NAMES: tuple[str, ...] = tuple(DATASETS)


def dataset_spec(name: str) -> DatasetSpec:
    """The registry entry of dataset ``name`` (an unknown name fails with the valid ones)."""
    return DATASETS[_check_name(name)]


def get_dataset(name: str, split: str, **kwargs: Any) -> Dataset:
    """The dataset ``name`` (one of ``DATASET_NAMES``), split ``split`` (see ``DATASETS[name].splits``).

    kwargs: digits: size, mean, std, test_fraction, seed; cifar100: root, transform, download, verify_md5;
    imagenetv2: root, transform, download, url; isic2018: root, transform. Names, splits and kwargs are checked
    before any loading.
    """
    spec = dataset_spec(name)
    _check_split(name, split)
    unknown = sorted(set(kwargs) - set(spec.options))
    if unknown:
        raise TypeError(f"get_dataset({name!r}) got unexpected keyword(s) {unknown}; valid: {', '.join(spec.options)}")
    return spec.load(split, **kwargs)


def dataset_classes(name: str) -> list[str]:
    """Class names of dataset ``name`` in label order (a new list)."""
    return dataset_spec(name).classes()


def image_batches(backbone: Any, dataset: str, split: str, batch_size: int, root: str | Path | None = None,
                  num_workers: int = 0, options: dict | None = None) -> tuple[DataLoader, dict[str, Any]]:
    """A loader of one split's images prepared for ``backbone``, and an id describing them for cache keys.

    ``backbone``: anything with ``input_size``, ``mean``, ``std`` and ``preprocess`` (``equinb.backbones``).
    ``options``: extra keyword arguments of ``get_dataset`` (e.g. ``download=True`` for CIFAR100).

    Shapes: batches of (images [B, 3, S, S], labels [B]), S = ``backbone.input_size``.
    """
    from torch.utils.data import DataLoader

    ds = get_dataset(dataset, split, **dataset_spec(dataset).backbone_options(backbone, root), **(options or {}))
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=torch.cuda.is_available())
    ident = dict(dataset=dataset, split=split, n=len(ds), size=backbone.input_size, root=root_identity(root),
                 mean=backbone.mean, std=backbone.std)
    return loader, ident


def root_identity(root: str | Path | None) -> str:
    """A data root as cache keys name it: relative to ``data_root()`` when inside it (``"."`` for the default), so
    that moving or renaming the data folder as a whole keeps every result cached in it; any other root by its
    absolute path (a folder of fakes or another copy of the data is other data)."""
    home = data_root().expanduser().resolve()
    path = Path(root).expanduser().resolve() if root else home  # None and "": the default root
    return str(path.relative_to(home)) if path.is_relative_to(home) else str(path)


# --------------------------------------------------------------------------------------------------
# random group transforms (a transformed test distribution)
# --------------------------------------------------------------------------------------------------

Rng = np.random.Generator | np.random.RandomState


def _draw(rng: Rng | None, high: int, size: int | None) -> Any:
    if rng is None:  # numpy's global RNG, like the article's np.random.randint
        return np.random.randint(0, high, size=size)
    if isinstance(rng, np.random.RandomState):
        return rng.randint(0, high, size=size)
    if isinstance(rng, np.random.Generator):
        return rng.integers(0, high, size=size)
    raise TypeError(f"rng must be a numpy Generator, a numpy RandomState or None, got {type(rng).__name__}")


def random_group_transform(
    x: torch.Tensor,
    group: Group | str,
    per: str = "image",
    rng: Rng | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply a random group element to every image: ``out[b] = group.act(x[b], k[b])``.

    ``per="image"``: independent k[b] ~ U{0..G-1} (the article's text). ``per="batch"``: ONE k for the whole
    batch (the article's code, one ``np.random.randint(0, G)`` per batch; with
    ``rng=numpy.random.RandomState(seed)`` this reproduces its draw sequence). ``rng=None`` uses numpy's
    global RNG, as the article's code does.

    Shapes: x [B, ..., H, W] -> (x_transformed [B, ..., H, W], k [B] int64 on x.device).
    """
    _check_per(per)
    if isinstance(group, str):
        group = get_group(group)
    if not isinstance(x, torch.Tensor) or x.ndim < 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a batched tensor [B, ..., H, W], got {shape}")
    b = x.shape[0]
    if per == "batch":
        k = int(_draw(rng, group.order, None))
        return group.act(x, k), torch.full((b,), k, dtype=torch.int64, device=x.device)
    ks = torch.as_tensor(np.asarray(_draw(rng, group.order, b), dtype=np.int64), device=x.device)
    out = torch.empty_like(x)
    for k in torch.unique(ks).tolist():  # one vectorised action per element present, not one per image
        mask = ks == k
        out[mask] = group.act(x[mask], k)
    return out, ks


def group_transform_indices(
    n: int, group_order: int, per: str, batch_size: int = 32, seed: int = 0
) -> np.ndarray:
    """Element index of each of ``n`` images evaluated in order in batches of ``batch_size``.

    ``per="batch"``: ``RandomState(seed).randint(0, G)`` once per batch, repeated for the batch's images
    (the article's ``RandomRot90``/``RandomFlip``; the last batch may be short). ``per="image"``:
    ``RandomState(seed).randint(0, G, size=n)``. Both equal what ``random_group_transform`` draws batch by
    batch from one ``RandomState(seed)``, so per-view outputs cached once can be indexed with the result.

    Shapes: -> [n] int64.
    """
    _check_per(per)
    for label, value, low in (("n", n, 0), ("group_order", group_order, 1), ("batch_size", batch_size, 1)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{label} must be an int >= {low}, got {value!r}")
    rs = np.random.RandomState(seed)
    if per == "image":
        return rs.randint(0, group_order, size=n).astype(np.int64)
    # Drawing all batches at once gives the same stream as one scalar randint per batch (MT19937, 32-bit draws).
    per_batch = rs.randint(0, group_order, size=math.ceil(n / batch_size)).astype(np.int64)
    return np.repeat(per_batch, batch_size)[:n]
