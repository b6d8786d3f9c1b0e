"""Dataset loaders on small files made here, the data root, the registry, and random group transforms."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from equinb import data
from equinb.data import (
    CIFAR100_CLASSES,
    DATASET_NAMES,
    DIGITS_CLASSES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ISIC2018_CLASSES,
    ImageNetV2,
    ISIC2018,
    dataset_classes,
    get_dataset,
    group_transform_indices,
    load_digits,
    random_group_transform,
)
from equinb.groups import get_group


# ---------------------------------------------------------------------------------------------- root


def test_the_caches_go_where_equinb_cache_says_unless_a_root_is_given(monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path) -> None:
    from equinb import cache

    monkeypatch.setenv("EQUINB_DATA", str(tmp_path / "data"))
    monkeypatch.delenv(cache.CACHE_ENV, raising=False)
    assert cache.cache_dir() == tmp_path / "data" / "cache" == cache.cache_dir("")
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "mine"))
    assert cache.cache_dir() == tmp_path / "mine" and cache.run_cache_dir() == tmp_path / "mine" / "runs"
    assert data.data_root() == tmp_path / "data"  # the datasets stay
    assert cache.cache_dir(tmp_path / "root") == tmp_path / "root" / "cache"  # a chapter's data_root: its own
    monkeypatch.setenv(cache.CACHE_ENV, "")
    assert cache.cache_dir() == tmp_path / "data" / "cache"


def test_data_root_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EQUINB_DATA", str(tmp_path))
    assert data.data_root() == tmp_path
    monkeypatch.delenv("EQUINB_DATA")
    assert data.data_root() == Path("~/.cache/equinb").expanduser()


def test_cache_keys_name_a_root_inside_the_data_folder_relative_to_it(monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path) -> None:
    for home in (tmp_path / "data", tmp_path / "moved"):  # moving the whole data folder keeps the keys
        monkeypatch.setenv("EQUINB_DATA", str(home))
        assert data.root_identity(None) == data.root_identity("") == data.root_identity(str(home)) == "."
        assert data.root_identity(home / "isic") == "isic"
    fakes = tmp_path / "fakes"
    assert data.root_identity(fakes) == str(fakes.resolve())  # other data keeps its own key


# ---------------------------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits() -> dict[str, torch.utils.data.TensorDataset]:
    return {split: load_digits(split, size=16) for split in ("train", "test")}


def test_digits_sizes_and_stratification(digits: dict) -> None:
    (xtr, ytr), (_, yte) = digits["train"].tensors, digits["test"].tensors
    assert len(ytr) + len(yte) == 1797 and len(yte) == 719  # ceil(0.4 * 1797)
    assert xtr.shape == (1078, 3, 16, 16) and xtr.dtype == torch.float32 and ytr.dtype == torch.int64
    # stratified: each class's test share is within one image of 40 %
    counts_tr, counts_te = torch.bincount(ytr, minlength=10), torch.bincount(yte, minlength=10)
    share = counts_te.double() / (counts_tr + counts_te).double()
    assert torch.all((share - 0.4).abs() * (counts_tr + counts_te) <= 1.0)
    assert len(DIGITS_CLASSES) == 10 and dataset_classes("digits") == [str(i) for i in range(10)]


def test_digits_disjoint_and_deterministic(digits: dict) -> None:
    again = load_digits("test", size=16)
    assert torch.equal(again.tensors[0], digits["test"].tensors[0])
    assert torch.equal(again.tensors[1], digits["test"].tensors[1])
    other_seed = load_digits("test", size=16, seed=1)
    assert not torch.equal(other_seed.tensors[1], digits["test"].tensors[1])
    # no test image is also a training image (digits has no exact duplicates across these splits)
    tr = {tuple(v) for v in digits["train"].tensors[0][:, 0].flatten(1).tolist()}
    assert not any(tuple(v) in tr for v in digits["test"].tensors[0][:, 0].flatten(1).tolist())


def test_digits_normalisation(digits: dict) -> None:
    x = digits["train"].tensors[0]
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    raw = x * std + mean
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5  # bilinear with align_corners=False cannot overshoot
    assert torch.allclose(raw[:, 0], raw[:, 1], atol=1e-5) and torch.allclose(raw[:, 0], raw[:, 2], atol=1e-5)
    # identity normalisation at the native size gives the sklearn pixels / 16
    plain = load_digits("train", size=8, mean=(0, 0, 0), std=(1, 1, 1))
    from sklearn.datasets import load_digits as sk_load

    images = torch.from_numpy(sk_load().images).float() / 16
    assert any(torch.equal(plain.tensors[0][0, 0], images[i]) for i in range(len(images)))
    assert plain.tensors[0].min() == 0 and plain.tensors[0].max() == 1


def test_digits_bad_arguments() -> None:
    with pytest.raises(ValueError, match="'train', 'test'"):
        load_digits("val")
    with pytest.raises(ValueError, match="size"):
        load_digits("train", size=0)
    with pytest.raises(ValueError, match="3 values"):
        load_digits("train", mean=(0.5,))


def test_fashion_mnist_checks_its_size_before_reading_the_archive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "fashion_mnist_arrays", lambda *a, **k: pytest.fail("the archive was read first"))
    for size in (0, 2.5, True):
        with pytest.raises(ValueError, match="size must be a positive int"):
            data.load_fashion_mnist("train", size=size)


# ---------------------------------------------------------------------------------------------- CIFAR100


def _write_fake_cifar100(root: Path, n_test: int = 6) -> tuple[np.ndarray, list[int]]:
    # The official files are Python 2 pickles: their keys, read with encoding="latin1" as torchvision does,
    # are str ("data", "fine_labels", ...). Python 3 bytes keys (b"data") would come back as bytes, so the
    # fakes use str keys (protocol 2) to load exactly like the real files.
    folder = root / "cifar100" / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 4), ("test", n_test)):
        pixels = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        fine = [int(v) for v in rng.integers(0, 100, size=n)]
        entry = {
            "data": pixels,
            "fine_labels": fine,
            "coarse_labels": [f // 5 for f in fine],
            "filenames": [f"img_{i}.png" for i in range(n)],
        }
        with open(folder / split, "wb") as f:
            pickle.dump(entry, f, protocol=2)
        arrays[split] = (pixels, fine)
    names = [c.replace(" ", "_") for c in CIFAR100_CLASSES]
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": names, "coarse_label_names": ["x"] * 20}, f, protocol=2)
    return arrays["test"]


def test_cifar100_fake_files(tmp_path: Path) -> None:
    pixels, labels = _write_fake_cifar100(tmp_path)
    ds = get_dataset("cifar100", "test", root=tmp_path, verify_md5=False)
    assert len(ds) == 6 and [ds[i][1] for i in range(6)] == labels
    img, _ = ds[2]
    # CIFAR rows are channel-major [3, 32, 32]; the PIL image is HWC
    assert np.array_equal(np.asarray(img), pixels[2].reshape(3, 32, 32).transpose(1, 2, 0))
    assert [c.replace("_", " ") for c in ds.classes] == CIFAR100_CLASSES
    ds_t = get_dataset("cifar100", "test", root=tmp_path, verify_md5=False, transform=lambda im: np.asarray(im).sum())
    assert ds_t[0][0] == int(pixels[0].astype(np.int64).sum())
    # picklable, so it can go to DataLoader worker processes
    assert len(pickle.loads(pickle.dumps(ds))) == 6


def test_cifar100_md5_checked_by_default(tmp_path: Path) -> None:
    _write_fake_cifar100(tmp_path)
    with pytest.raises(RuntimeError, match="verify_md5=False"):
        get_dataset("cifar100", "test", root=tmp_path)


def test_cifar100_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError, match="download=True") as info:
        get_dataset("cifar100", "train", root=tmp_path)
    assert str(tmp_path / "cifar100" / "cifar-100-python") in str(info.value)
    monkeypatch.setenv("EQUINB_DATA", str(tmp_path / "elsewhere"))
    with pytest.raises(FileNotFoundError, match="elsewhere"):
        data.cifar100("test")


def test_cifar100_classes() -> None:
    assert len(CIFAR100_CLASSES) == 100 and len(set(CIFAR100_CLASSES)) == 100
    assert CIFAR100_CLASSES == sorted(CIFAR100_CLASSES)  # torchvision's fine labels are alphabetical
    assert {"aquarium fish", "maple tree", "lawn mower", "sweet pepper"} <= set(CIFAR100_CLASSES)
    assert not any("_" in c for c in CIFAR100_CLASSES)


# ---------------------------------------------------------------------------------------------- ImageNetV2


def _jpeg(path: Path, value: int, size: tuple[int, int] = (6, 4)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path, format="JPEG")


def test_imagenetv2_integer_folders(tmp_path: Path) -> None:
    folder = tmp_path / "imagenetv2" / "imagenetv2-matched-frequency-format-val"
    for label in (10, 2, 0):  # as strings "10" < "2": ImageFolder would label these 0, 2, 1
        for j in ("b", "a"):
            _jpeg(folder / str(label) / f"{j}{label}.jpeg", value=label * 20)
    Image.new("L", (3, 3)).save(folder / "0" / "c0.jpeg", format="JPEG")  # grey image -> RGB
    ds = ImageNetV2(root=tmp_path)
    assert ds.targets == [0, 0, 0, 2, 2, 10, 10]
    names = ["a0.jpeg", "b0.jpeg", "c0.jpeg", "a2.jpeg", "b2.jpeg", "a10.jpeg", "b10.jpeg"]
    assert [p.name for p, _ in ds.samples] == names
    img, label = ds[5]
    assert label == 10 and img.mode == "RGB" and img.size == (6, 4)
    assert ds[2][0].mode == "RGB"
    via_registry = get_dataset("imagenetv2", "test", root=tmp_path, transform=lambda im: im.size)
    assert via_registry[0] == ((6, 4), 0)


def test_imagenetv2_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="imagenetv2-matched-frequency.tar.gz") as info:
        ImageNetV2(root=tmp_path)
    assert str(tmp_path / "imagenetv2" / "imagenetv2-matched-frequency-format-val") in str(info.value)


def test_imagenetv2_download_fetches_and_extracts_the_release_archive(tmp_path: Path) -> None:
    """download=True fetches the archive and extracts it into <root>/imagenetv2 (from a local HTTP server)."""
    import functools
    import tarfile
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    source = tmp_path / "release"
    for label in (0, 3):
        _jpeg(source / "imagenetv2-matched-frequency-format-val" / str(label) / "x.jpeg", value=label)
    archive = tmp_path / "imagenetv2-matched-frequency.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / "imagenetv2-matched-frequency-format-val", arcname="imagenetv2-matched-frequency-format-val")
    root = tmp_path / "data"
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/{archive.name}"
        ds = get_dataset("imagenetv2", "test", root=root, download=True, url=url)
    finally:
        server.shutdown()
    assert ds.targets == [0, 3] and not (root / "imagenetv2" / archive.name).exists()  # the archive is removed
    assert [p.name for p in (root / "imagenetv2").iterdir()] == [archive.name.removesuffix(".tar.gz") + "-format-val"]
    assert ImageNetV2(root=root).targets == [0, 3]  # a second call finds the folder, no download


def test_an_interrupted_imagenetv2_extraction_leaves_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The archive is extracted beside the dataset's folder and moved into place only when complete: a killed
    extraction leaves nothing that a later run would read as the dataset."""
    import torchvision.datasets.utils as tv_utils

    def partial(url: str, download_root: str, **kwargs) -> None:
        (Path(download_root) / "imagenetv2-matched-frequency-format-val" / "0").mkdir(parents=True)
        raise KeyboardInterrupt

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", partial)
    with pytest.raises(KeyboardInterrupt):
        ImageNetV2(root=tmp_path, download=True)
    assert list((tmp_path / "imagenetv2").iterdir()) == []


# ---------------------------------------------------------------------------------------------- ISIC 2018


def _write_isic(root: Path, part: str, rows: list[tuple[str, list[float]]], images: bool = True) -> None:
    folder = root / "isic2018"
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["image,MEL,NV,BCC,AKIEC,BKL,DF,VASC"]
    lines += [name + "," + ",".join(f"{v:.1f}" for v in values) for name, values in rows]
    (folder / f"ISIC2018_Task3_{part}_GroundTruth.csv").write_text("\n".join(lines) + "\n")
    (folder / f"ISIC2018_Task3_{part}_Input").mkdir(exist_ok=True)
    if images:
        for i, (name, _) in enumerate(rows):
            _jpeg(folder / f"ISIC2018_Task3_{part}_Input" / f"{name}.jpg", value=10 * i, size=(8, 6))


def _one_hot(k: int) -> list[float]:
    return [1.0 if i == k else 0.0 for i in range(7)]


def test_isic2018_labels(tmp_path: Path) -> None:
    labels = [6, 1, 0, 3, 1]
    _write_isic(tmp_path, "Validation", [(f"ISIC_{i:07d}", _one_hot(k)) for i, k in enumerate(labels)])
    ds = get_dataset("isic2018", "val", root=tmp_path)
    assert isinstance(ds, ISIC2018) and len(ds) == 5
    assert ds.targets == labels and [ds[i][1] for i in range(5)] == labels  # CSV order
    img, _ = ds[0]
    assert img.mode == "RGB" and img.size == (8, 6)
    assert ds.classes == ISIC2018_CLASSES == dataset_classes("isic2018")
    assert ISIC2018_CLASSES[ds.targets[0]] == "Vascular Lesion"


def test_isic2018_first_one_wins_and_no_label(tmp_path: Path) -> None:
    _write_isic(tmp_path, "Training", [("ISIC_a", [0, 1, 0, 0, 1, 0, 0]), ("ISIC_b", [0.0] * 7)])
    with pytest.raises(ValueError, match="ISIC_b"):
        ISIC2018("train", root=tmp_path)
    _write_isic(tmp_path, "Training", [("ISIC_a", [0, 1, 0, 0, 1, 0, 0])])
    assert ISIC2018("train", root=tmp_path).targets == [1]


def test_isic2018_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="ISIC 2018 Task 3") as info:
        ISIC2018("train", root=tmp_path)
    assert str(tmp_path / "isic2018" / "ISIC2018_Task3_Training_GroundTruth.csv") in str(info.value)
    _write_isic(tmp_path, "Validation", [("ISIC_x", _one_hot(2))], images=False)
    with pytest.raises(FileNotFoundError, match="ISIC_x.jpg"):
        ISIC2018("val", root=tmp_path)


@pytest.mark.parametrize("dataset", ["cifar100", "isic2018"])
def test_the_paper_setup_names_a_missing_dataset_before_clip_loads(tmp_path: Path, monkeypatch, dataset: str) -> None:
    """A missing dataset is named at once, not after CLIP's weights are loaded or downloaded (hundreds of MB)."""
    import equinb.setups as su

    def no_model(*args, **kwargs):
        raise AssertionError("CLIP was loaded before the data were checked")

    monkeypatch.setattr(su, "load_frozen_model", no_model)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / dataset)):
        su.clip_lambda_setup(get_group("rot90"), "RN50", dataset, data_root=tmp_path)


# ---------------------------------------------------------------------------------------------- registry


def test_registry_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="digits.*cifar100.*imagenetv2.*isic2018"):
        get_dataset("mnist", "test")
    with pytest.raises(ValueError, match="'train', 'val'"):
        get_dataset("isic2018", "test", root=tmp_path)
    with pytest.raises(ValueError, match="'test'"):
        get_dataset("imagenetv2", "train", root=tmp_path)
    with pytest.raises(TypeError, match="size"):
        get_dataset("digits", "train", root=tmp_path)
    with pytest.raises(ValueError, match="unknown dataset .imagenet.; valid: "):
        dataset_classes("imagenet")
    assert DATASET_NAMES == ("digits", "fashion_mnist", "cifar100", "imagenetv2", "isic2018")


# ---------------------------------------------------------------------------------------------- random group transforms


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.randperm(64 * 2 * 5 * 5, generator=torch.Generator().manual_seed(0)).reshape(64, 2, 5, 5).float()


def test_random_transform_per_batch(batch: torch.Tensor) -> None:
    group = get_group("rot90")
    rs = np.random.RandomState(3)
    out, ks = random_group_transform(batch, group, per="batch", rng=rs)
    k = np.random.RandomState(3).randint(0, 4)  # the article's single draw per batch
    assert ks.dtype == torch.int64 and ks.shape == (64,) and torch.all(ks == k)
    assert torch.equal(out, group.act(batch, k))


@pytest.mark.parametrize("rng", [np.random.RandomState(1), np.random.default_rng(1)])
def test_random_transform_per_image(batch: torch.Tensor, rng) -> None:
    group = get_group("d4")
    out, ks = random_group_transform(batch, group, per="image", rng=rng)
    assert len(torch.unique(ks)) > 1 and int(ks.min()) >= 0 and int(ks.max()) < 8
    for b in range(len(batch)):
        assert torch.equal(out[b], group.act(batch[b], int(ks[b])))


def test_random_transform_by_name_and_errors(batch: torch.Tensor) -> None:
    out, ks = random_group_transform(batch, "flip", per="batch", rng=np.random.default_rng(0))
    assert torch.equal(out, get_group("rot180").act(batch, int(ks[0])))
    with pytest.raises(ValueError, match="'image', 'batch'"):
        random_group_transform(batch, "rot90", per="dataset")
    with pytest.raises(TypeError, match="RandomState"):
        random_group_transform(batch, "rot90", rng=0)
    with pytest.raises(ValueError, match="unknown group .rot45.; valid: "):
        random_group_transform(batch, "rot45")


@pytest.mark.parametrize("per", ["batch", "image"])
@pytest.mark.parametrize("n, batch_size", [(100, 32), (64, 32), (7, 3)])
def test_group_transform_indices_match_batch_loop(per: str, n: int, batch_size: int) -> None:
    x = torch.arange(n * 4, dtype=torch.float32).reshape(n, 1, 2, 2)
    rs = np.random.RandomState(5)
    looped = [
        random_group_transform(x[i : i + batch_size], "rot90", per=per, rng=rs)[1] for i in range(0, n, batch_size)
    ]
    expected = torch.cat(looped).numpy()
    got = group_transform_indices(n, 4, per, batch_size=batch_size, seed=5)
    assert got.shape == (n,) and got.dtype == np.int64
    assert np.array_equal(got, expected)
    if per == "batch":  # one element per batch, as the article's RandomRot90
        for i in range(0, n, batch_size):
            assert len(set(got[i : i + batch_size].tolist())) == 1
    else:
        assert np.array_equal(got, np.random.RandomState(5).randint(0, 4, size=n))


def test_group_transform_indices_errors() -> None:
    with pytest.raises(ValueError, match="'image', 'batch'"):
        group_transform_indices(10, 4, "epoch")
    with pytest.raises(ValueError, match="batch_size"):
        group_transform_indices(10, 4, "batch", batch_size=0)
    assert group_transform_indices(0, 4, "batch").shape == (0,)


def test_proportional_counts_keep_the_proportions_and_every_class() -> None:
    from equinb.data import ISIC2018_CLASS_COUNTS, proportional_counts

    assert proportional_counts(ISIC2018_CLASS_COUNTS["train"], 600) == [67, 402, 31, 20, 66, 7, 9]
    assert proportional_counts((100, 1), 50) == [50, 1]  # every class keeps at least one image
    with pytest.raises(ValueError, match="at least one image per class"):
        proportional_counts((1, 2, 3), 2)




def test_fashion_mnist_fetches_at_once_never_share_a_partial_file(tmp_path, monkeypatch) -> None:
    """Another process fetching while this one copies (simulated by a fetch inside the first copy) writes its own
    partial files; both finish with whole, checked files and leave no partial file. A failed copy leaves none."""
    import hashlib
    import shutil

    import equinb.data as data

    system = tmp_path / "system"
    system.mkdir()
    files = {name: f"contents of {name}".encode() * 1000 for name in data._FASHION_FILES}
    for name, blob in files.items():
        (system / name).write_bytes(blob)
    monkeypatch.setattr(data, "_FASHION_SYSTEM", system)
    monkeypatch.setattr(data, "_FASHION_FILES", {n: hashlib.sha256(b).hexdigest() for n, b in files.items()})
    real_copy, parts, nested = shutil.copy, [], []

    def copy(src, dst):
        parts.append(Path(dst))
        real_copy(src, dst)
        if not nested:  # the other process starts while this one's first partial file exists
            nested.append(None)
            nested[0] = data.fetch_fashion_mnist(tmp_path)
        return dst

    monkeypatch.setattr(shutil, "copy", copy)
    folder = data.fetch_fashion_mnist(tmp_path)
    assert nested == [folder] and len(parts) == 2 * len(files) and len(set(parts)) == len(parts)
    assert all((folder / n).read_bytes() == b for n, b in files.items()) and data._fashion_complete(folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted(files)  # no partial file left

    def broken(src, dst):
        Path(dst).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(shutil, "copy", broken)
    for name in files:
        (folder / name).unlink()
    with pytest.raises(OSError, match="disk full"):
        data.fetch_fashion_mnist(tmp_path)
    assert not list(folder.iterdir())  # the failed copy's partial file is removed


def test_fashion_mnist_missing_tools_and_damaged_files_fail_clearly(tmp_path, monkeypatch) -> None:
    import shutil

    import equinb.data as data

    monkeypatch.setattr(data, "_FASHION_SYSTEM", tmp_path / "not-installed")
    monkeypatch.setattr(shutil, "which", lambda tool: None)
    with pytest.raises(FileNotFoundError, match="apt-get and dpkg is missing"):
        data.fetch_fashion_mnist(tmp_path)
    folder = tmp_path / "fashion_mnist"
    for name in data._FASHION_FILES:  # present but not the files the checksums name: fetched again, not trusted
        (folder / name).write_bytes(b"damaged")
    assert not data._fashion_complete(folder)
    with pytest.raises(FileNotFoundError, match=str(folder)):
        data.fetch_fashion_mnist(tmp_path)
    with pytest.raises(ValueError, match="unknown split"):
        data.fashion_mnist_arrays("val", tmp_path)
