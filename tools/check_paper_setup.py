"""What the paper profile needs on this machine, chapter by chapter, and what is missing (with the fix).

Usage (from the repository root; `make paper-check` calls this):

    .venv/bin/python tools/check_paper_setup.py [--profile paper]

It reads each chapter's `notebooks/params/<id>.<profile>.yaml` and looks, without any GPU work or download, for: a
CUDA GPU, the Python packages, the CLIP weights (in `clip_paths`, `clip_download_root` or `~/.cache/clip`), the
datasets under `$EQUINB_DATA` (or `data_root`), the language model and regard classifiers, and free disk for the
caches (all chapters' caches together, against the free space). Something the chapter would download on its first
run (CLIP weights, a dataset with `download: true`, a hub model) counts as present, marked "downloads on first run
(internet)", only when its server (or the HTTPS proxy) answers from this machine within 3 s, name lookup included;
offline, or with `HF_HUB_OFFLINE` set for a hub model, it is missing, with where to put the file. It ends with a
to-do list, one line per missing piece with the chapters that need it. Exit status 1 when anything is missing, 0 when
every chapter can run.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import shutil
import socket
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from build_book import notebook_ids  # noqa: E402

from equinb.cache import cache_dir  # noqa: E402
from equinb.chapter import profile_parameters_file  # noqa: E402

# Disk each chapter's caches take in the paper profile (estimates from the cache layouts: fp16 features of
# 16,000 + 10,000 CIFAR100 images x 4 views; layer4 maps of RN50 are 2048 x 7 x 7 per view).
DISK_GB = {"fig4_zeroshot": 1.5, "tab1_original_vs_updated": 0.3, "tab2_featuremap": 21.0,
           "tab3_equiattention": 0.1, "tab4_isic2018": 9.0, "fig2_3_lambda_weights": 1.0, "fig6_nlg_fairness": 0.1}


@dataclass
class Item:
    what: str
    ok: bool
    note: str  # the fix when missing, or how it is satisfied


def _package(name: str, extra: str) -> Item:
    found = importlib.util.find_spec(name) is not None
    return Item(f"python package {name}", found, "installed" if found else f"pip install -e '.[{extra}]'")


def _gpu(device: str) -> Item:
    import torch

    if not str(device).startswith("cuda"):
        return Item("GPU", True, f"not needed (device={device})")
    ok = torch.cuda.is_available()
    return Item("CUDA GPU", ok, torch.cuda.get_device_name(0) if ok else
                "no CUDA GPU visible to torch: run on a GPU machine, or run one chapter on the CPU (slow): make "
                "chapter ID=<id> PROFILE=paper ARGS=\"-p device cpu\"")


def _clip_weights(name: str, params: dict) -> Item:
    local = (params.get("clip_paths") or {}).get(name)
    if local:
        ok = Path(local).expanduser().is_file()
        return Item(f"CLIP {name} weights", ok, local if ok else f"clip_paths[{name!r}] = {local} does not exist")
    folder = Path(params.get("clip_download_root") or "~/.cache/clip").expanduser()
    try:
        with warnings.catch_warnings():  # clip imports pkg_resources, which warns on import
            warnings.simplefilter("ignore")
            from clip.clip import _MODELS  # the download URLs; the file name is the URL's last part
    except ImportError:
        return Item(f"CLIP {name} weights", False, "pip install -e '.[clip]' first")
    path = folder / Path(_MODELS[name]).name
    if path.is_file():
        return Item(f"CLIP {name} weights", True, str(path))
    return _download(f"CLIP {name} weights", urlparse(_MODELS[name]).hostname, f"to {path}",
                     f"put {path.name} into {folder} or pass clip_paths {{{name!r}: <file>}}")


@functools.lru_cache(maxsize=None)
def _reachable(host: str, timeout: float = 3.0) -> bool:
    """Whether a download from ``host`` could start here: its port 443, or the HTTPS proxy's port when one is set,
    answers within ``timeout`` seconds, name lookup included (a dead resolver can hang far longer; the lookup then
    goes on in a daemon thread that nothing waits for)."""
    import threading
    import urllib.request

    proxy = urllib.request.getproxies().get("https")
    target = (urlparse(proxy).hostname, urlparse(proxy).port or 443) if proxy else (host, 443)
    answered: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection(target, timeout=timeout).close()
            answered.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answered)


def _download(what: str, host: str | None, where: str, offline_fix: str) -> Item:
    """Something a chapter downloads on its first run: present when its server answers, else missing."""
    if host is None or _reachable(host):
        return Item(what, True, f"downloads on first run (internet) {where}")
    return Item(what, False, f"not here, and {host} cannot be reached from this machine: {offline_fix}")


def _dataset(name: str, root: Path, options: dict) -> Item:
    from equinb.data import dataset_spec, get_dataset

    spec = dataset_spec(name)
    where = {} if spec.normalises_itself else {"root": str(root)}  # the bundled digits have no folder
    try:
        for split in spec.splits:
            get_dataset(name, split, **where)
        return Item(f"dataset {name}", True, str(root / name))
    except (FileNotFoundError, RuntimeError, ValueError) as err:
        if options.get("download"):
            return _download(f"dataset {name}", _download_host(name), f"into {root / name}",
                             str(err).splitlines()[0][:400])
        return Item(f"dataset {name}", False, str(err).splitlines()[0][:400])


def _download_host(dataset: str) -> str | None:
    """The server a dataset downloads from, read from the code that downloads it (None: none known)."""
    if dataset == "cifar100":
        from torchvision.datasets import CIFAR100

        return urlparse(CIFAR100.url).hostname
    if dataset == "imagenetv2":
        from equinb.data import _IMAGENETV2_URL

        return urlparse(_IMAGENETV2_URL).hostname
    return None


def _mobilenet_weights() -> Item:
    from equinb.backbones import load_backbone

    try:
        load_backbone("mobilenet_v2")
        return Item("MobileNetV2 ImageNet weights", True, "found")
    except (FileNotFoundError, ValueError) as err:
        return Item("MobileNetV2 ImageNet weights", False, str(err).splitlines()[0][:400])


def _hub_model(what: str, source: str, parameter: str) -> Item:
    """A hub model or local folder that the chapter's ``parameter`` names."""
    if Path(source).expanduser().is_dir() or Path(source).expanduser().is_file():
        return Item(what, True, source)
    cached = Path("~/.cache/huggingface/hub").expanduser() / f"models--{source.replace('/', '--')}"
    if cached.is_dir():
        return Item(what, True, f"{source} (in the Hugging Face cache)")
    fix = (f"copy the model into a local folder and set {parameter} to its path instead of {source} (in the "
           "chapter's notebooks/params/<id>.<profile>.yaml)")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return Item(what, False, f"not here, and HF_HUB_OFFLINE is set: {fix}")
    return _download(what, urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname,
                     f"from the Hugging Face hub ({source})", fix)


def existing(root: Path) -> Path:
    """``root``, or its nearest parent that exists (the folder a first run would create lies there)."""
    return root if root.exists() else next(p for p in root.parents if p.exists())


def disk(root: Path, need_gb: float) -> Item:
    """Free space under ``root`` (or its nearest existing parent) against ``need_gb``: the caches of every chapter
    on that filesystem together, since one build keeps them all."""
    probe = existing(root)
    free = shutil.disk_usage(probe).free / 1e9
    return Item(f"disk for every chapter's caches (about {need_gb:g} GB together, estimate)", free >= need_gb,
                f"{free:.0f} GB free under {probe}" + ("" if free >= need_gb else
                                                        "; set EQUINB_CACHE (or EQUINB_DATA) to a larger disk"))


def data_folder(params: dict) -> Path:
    """Where a chapter's datasets and caches live: its ``data_root``, else ``$EQUINB_DATA``'s."""
    from equinb.cache import data_root

    return Path(params.get("data_root") or data_root())


def chapter_needs(nb_id: str, params: dict) -> list[Item]:
    """Everything one chapter's parameters ask for, checked (disk apart: ``disk`` counts every chapter at once)."""
    if nb_id == "claim_list":  # it reads the verdicts of the chapters this build executed, nothing else
        return []
    root = data_folder(params)
    options = params.get("dataset_options") or {}
    items = [_gpu(params.get("device", "cpu"))]
    if nb_id == "own_model":  # the guide: the offline MobileNetV2, and ttach for its cost table
        return items + [_package("ttach", "book"), _mobilenet_weights()]
    if nb_id == "fig6_nlg_fairness":
        items += [_package("transformers", "lm"),
                  _hub_model("language model", str(params.get("lm_name", "")), "lm_name")]
        if params.get("scorer") == "regard":
            sources = params.get("regard_classifiers") or []
            items += [_hub_model("regard classifier", s, "regard_classifiers") for s in sources] or [Item(
                "regard classifiers", False, "regard_classifiers is empty: fill it in notebooks/params/"
                "fig6_nlg_fairness.paper.yaml (folders or hub ids, e.g. sasha/regardv3), or pass make chapter "
                "ID=fig6_nlg_fairness PROFILE=paper ARGS=\"-p regard_classifiers '[sasha/regardv3]'\"")]
        return items
    items.append(_package("clip", "clip"))
    backbones = params.get("backbones") or [params.get("backbone", "RN50")]
    items += [_clip_weights(b, params) for b in backbones]
    datasets = list(params.get("datasets") or [params.get("dataset", "cifar100")])
    if params.get("orientation_free") == "isic2018":
        datasets.append("isic2018")
    return items + [_dataset(d, root, options.get(d, {})) for d in datasets]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="paper", help="the params files to check (default: paper)")
    args = parser.parse_args(argv)
    todo: dict[tuple[str, str], list[str]] = {}  # (what, fix) -> the chapters that need it
    disks: dict[int, tuple[Path, float, list[str]]] = {}  # filesystem -> (a folder on it, GB, the chapters)
    for nb_id in notebook_ids():
        path = profile_parameters_file(nb_id, args.profile)
        if not path.is_file():
            print(f"\n{nb_id}: no {path.relative_to(ROOT)}")
            todo.setdefault((f"{path.relative_to(ROOT)}", "write it (or run without this profile)"), []).append(nb_id)
            continue
        params = yaml.safe_load(path.read_text()) or {}
        print(f"\n{nb_id} ({path.relative_to(ROOT)})")
        items = chapter_needs(nb_id, params)
        if not items:
            print("  needs nothing of its own: it reads the verdicts of the chapters the build executed")
        for item in items:
            print(f"  [{'ok' if item.ok else 'MISSING'}] {item.what}: {item.note}")
            if not item.ok:
                todo.setdefault((item.what, item.note), []).append(nb_id)
        if nb_id in DISK_GB:  # summed per filesystem: two cache folders on one disk share its free space
            root = cache_dir(params.get("data_root") or None)
            folder, need_gb, chapters = disks.get(os.stat(existing(root)).st_dev, (root, 0.0, []))
            disks[os.stat(existing(root)).st_dev] = (folder, need_gb + DISK_GB[nb_id], [*chapters, nb_id])
    print()
    for folder, need_gb, chapters in disks.values():
        item = disk(folder, need_gb)
        print(f"[{'ok' if item.ok else 'MISSING'}] {item.what}: {item.note}")
        if not item.ok:
            todo[(item.what, item.note)] = chapters
    if not todo:
        print("\nevery chapter of the profile can run here")
        return 0
    print(f"\nto do ({len(todo)} missing piece{'s' if len(todo) > 1 else ''}):")
    for (what, fix), chapters in todo.items():
        print(f"  - {what} (needed by {', '.join(chapters)}): {fix}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
