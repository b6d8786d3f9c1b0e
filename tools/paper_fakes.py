"""Fakes of everything the paper profile reads, in the real formats, made offline in seconds to minutes.

- ``cifar100``: torchvision's CIFAR100 pickles (random pixels, labels cycling over the 100 classes);
- ``imagenetv2``: the matched-frequency folder layout (JPEGs under ``<class index>/``);
- ``isic2018``: ISIC 2018 Task 3's ground-truth CSVs and JPEG folders, every class present, NV the majority;
- ``clip_weights``: random CLIPs saved as state dicts for RN50, RN101, ViT-B/32 and ViT-B/16, at full size or tiny;
- ``language_models``: a tiny random GPT-2 and a tiny random 4-class regard classifier saved as hub folders.

`tools/paper_smoke.py` runs every chapter's paper path on them; the tests share them.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

# The full-size CLIPs of the article (vision: embed, resolution, layers, width, patch) and CLIP's text tower.
CLIP_CONFIGS = {"RN50": (1024, 224, (3, 4, 6, 3), 64, None), "RN101": (512, 224, (3, 4, 23, 3), 64, None),
                "ViT-B/32": (512, 224, 12, 768, 32), "ViT-B/16": (512, 224, 12, 768, 16)}
CLIP_TEXT = (77, 49408, 512, 8, 12)
ISIC_PROPORTIONS = (1113, 6705, 514, 327, 1099, 115, 142)  # MEL NV BCC AKIEC BKL DF VASC, the training split


def cifar100(root: Path, n_train: int, n_test: int) -> None:
    """``<root>/cifar100/cifar-100-python/{train,test,meta}`` with random 32x32 images."""
    from equinb.data import CIFAR100_CLASSES

    folder = root / "cifar100" / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, size in (("train", n_train), ("test", n_test)):
        with open(folder / split, "wb") as handle:
            pickle.dump({"data": rng.integers(0, 255, (size, 3072), dtype=np.uint8),
                         "fine_labels": [i % 100 for i in range(size)], "coarse_labels": [0] * size,
                         "filenames": [f"{i}.png" for i in range(size)]}, handle, 2)
    with open(folder / "meta", "wb") as handle:
        pickle.dump({"fine_label_names": [c.replace(" ", "_") for c in CIFAR100_CLASSES]}, handle, 2)


def _jpeg(path: Path, rng: np.random.Generator, size: tuple[int, int]) -> None:
    from PIL import Image

    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=90)


def imagenetv2(root: Path, classes: int, per_class: int, size: tuple[int, int] = (500, 375)) -> None:
    """``<root>/imagenetv2/imagenetv2-matched-frequency-format-val/<k>/<i>.jpeg`` for ``classes`` classes."""
    rng = np.random.default_rng(1)
    base = root / "imagenetv2" / "imagenetv2-matched-frequency-format-val"
    for label in np.linspace(0, 999, classes).round().astype(int):
        folder = base / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            _jpeg(folder / f"{i}.jpeg", rng, size)


def isic2018(root: Path, n_train: int, n_val: int, size: tuple[int, int] = (600, 450)) -> None:
    """ISIC 2018 Task 3's CSVs and image folders under ``<root>/isic2018``: classes drawn at the training split's
    proportions, each class at least once, images ``size`` (the challenge's 600x450 by default)."""
    rng = np.random.default_rng(2)
    p = np.array(ISIC_PROPORTIONS, float) / sum(ISIC_PROPORTIONS)
    folder = root / "isic2018"
    for part, n in (("Training", n_train), ("Validation", n_val)):
        images = folder / f"ISIC2018_Task3_{part}_Input"
        images.mkdir(parents=True, exist_ok=True)
        classes = rng.choice(7, size=n, p=p)
        classes[:7] = np.arange(7)
        lines = ["image,MEL,NV,BCC,AKIEC,BKL,DF,VASC"]
        for i, k in enumerate(classes):
            name = f"ISIC_{part[0]}{i:06d}"
            lines.append(name + "," + ",".join("1.0" if j == k else "0.0" for j in range(7)))
            _jpeg(images / f"{name}.jpg", rng, size)
        (folder / f"ISIC2018_Task3_{part}_GroundTruth.csv").write_text("\n".join(lines) + "\n")


def clip_weights(folder: Path, tiny: bool) -> dict[str, str]:
    """Random CLIPs as state dicts, by backbone name: full size (2 GB for the four), or tiny (``tiny_clip``: a
    ResNet at 96 px, whose 3x3 maps the feature-map networks need, and a ViT)."""
    from equinb.backbones import tiny_clip

    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, vision in CLIP_CONFIGS.items():
        path = folder / f"{name.replace('/', '-')}.pt"
        if tiny:
            model = tiny_clip("rn" if name.startswith("RN") else "vit", image_resolution=96 if name.startswith("RN")
                              else None)
        else:
            import clip

            torch.manual_seed(0)
            model = clip.model.CLIP(*vision, *CLIP_TEXT)
        torch.save(model.state_dict(), path)
        paths[name] = str(path)
    return paths


def language_models(root: Path, templates: list[str]) -> tuple[str, str]:
    """A tiny random GPT-2 and a tiny random 4-class BERT regard classifier with a word-level tokenizer, saved as
    hub folders (``save_pretrained``); returns their paths. ``templates``: the prompts' words are in the
    vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel,
                              PreTrainedTokenizerFast)

    words = ["[UNK]", "[PAD]", "<eos>", "The", "Black", "White", "Asian", "person"]
    words += sorted({w for t in templates for w in t.split()} - set(words)) + [f"w{i}" for i in range(20)]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                        eos_token="<eos>")
    torch.manual_seed(0)
    lm_dir, classifier_dir = root / "tiny_gpt2", root / "tiny_regard"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=len(words), n_positions=64,
                               bos_token_id=2, eos_token_id=2)).save_pretrained(lm_dir)
    BertForSequenceClassification(BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=32, num_labels=4,
                                             max_position_embeddings=64)).save_pretrained(classifier_dir)
    for folder in (lm_dir, classifier_dir):
        tokenizer.save_pretrained(folder)
    return str(lm_dir), str(classifier_dir)
