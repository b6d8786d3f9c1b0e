"""Notebook code paths: parameters are documented, bad values fail early, the paper path runs on fakes.

The paper profile needs CLIP weights, CIFAR100 and ImageNetV2, which cannot be downloaded here. These
tests run the same notebook code path through papermill on a tiny random CLIP saved to disk, a
CIFAR100-format fake and an ImageNetV2-style folder, so that the paper profile cannot rot.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import papermill as pm
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


def _ipynb(nb_id: str, tmp_path: Path) -> Path:
    """Convert the py:percent source to a temporary .ipynb (papermill cannot read .py)."""
    import jupytext

    path = tmp_path / f"{nb_id}.ipynb"
    jupytext.write(jupytext.read(NOTEBOOKS / f"{nb_id}.py"), path)
    return path


def _run(nb_id: str, tmp_path: Path, **parameters) -> dict:
    out = tmp_path / f"{nb_id}.out.ipynb"
    pm.execute_notebook(str(_ipynb(nb_id, tmp_path)), str(out), parameters=parameters, kernel_name="python3",
                        language="python", cwd=str(NOTEBOOKS), progress_bar=False)
    return json.loads(out.read_text())


def _outputs(nb: dict) -> str:
    texts = []
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            texts.append("".join(out.get("text", "")))
            texts.append("".join(out.get("data", {}).get("text/plain", "")))
    return "\n".join(texts)


def _chapter_ids() -> list[str]:
    """Every notebook the book lists in _toc.yml."""
    import yaml

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [c["file"] for part in toc["parts"] for c in part["chapters"]]
    return [f.split("/", 1)[1] for f in files if f.startswith("notebooks/")]


@pytest.mark.parametrize("nb_id", _chapter_ids())
def test_help_notebook_documents_every_parameter(tmp_path: Path, nb_id: str) -> None:
    path = _ipynb(nb_id, tmp_path)
    result = subprocess.run([sys.executable, "-m", "papermill", "--help-notebook", str(path)],
                            capture_output=True, text=True, check=True)
    params = pm.inspect_notebook(str(path))
    assert {"profile", "device"} <= set(params)
    assert (NOTEBOOKS / "params" / f"{nb_id}.paper.yaml").is_file()
    for name, spec in params.items():
        assert name in result.stdout
        assert spec["help"], f"parameter {name!r} has no comment"
        assert spec["inferred_type_name"] not in ("None", ""), f"parameter {name!r} has no type hint"


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        (dict(backbones=["resnet18"]), "unknown backbone 'resnet18'; valid:"),
        (dict(datasets=["mnist"]), "unknown dataset 'mnist'; valid:"),
        (dict(transforms=["rot45"]), "unknown transformation 'rot45'; valid:"),
        (dict(device="cuda"), "no CUDA GPU is available"),
        (dict(profile="huge"), "unknown profile 'huge'"),
    ],
)
def test_bad_parameters_fail_in_the_first_cells(tmp_path: Path, parameters: dict, message: str) -> None:
    _expect_early_failure(tmp_path, "fig4_zeroshot", parameters, message)


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        (dict(groups=["rot45"]), "unknown group 'rot45'; valid names:"),
        (dict(device="cuda"), "no CUDA GPU is available"),
        (dict(profile="huge"), "unknown profile 'huge'"),
        (dict(lr_updated=-1.0), "TrainConfig.lr must be >= 0"),
    ],
)
def test_tab1_bad_parameters_fail_in_the_first_cells(tmp_path: Path, parameters: dict, message: str) -> None:
    _expect_early_failure(tmp_path, "tab1_original_vs_updated", parameters, message)


def _expect_early_failure(tmp_path: Path, nb_id: str, parameters: dict, message: str) -> None:
    if parameters.get("device") == "cuda" and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(pm.PapermillExecutionError) as info:
        _run(nb_id, tmp_path, **parameters)
    assert message in str(info.value)
    # it fails in the setup cell, right after the parameters: no heavy work ran before
    nb = json.loads((tmp_path / f"{nb_id}.out.ipynb").read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    failed = [i for i, c in enumerate(code) if any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    assert failed and failed[0] <= 2, f"failed in code cell {failed}"


def _fake_cifar100(root: Path, n: int = 12) -> None:
    """A CIFAR100-format test split (python pickles, as torchvision reads them)."""
    from equinb.data import CIFAR100_CLASSES

    folder = root / "cifar100" / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, size in (("train", 4), ("test", n)):
        with open(folder / split, "wb") as handle:
            pickle.dump({"data": rng.integers(0, 255, (size, 3072), dtype=np.uint8),
                         "fine_labels": [int(i) % 100 for i in range(size)],
                         "coarse_labels": [0] * size, "filenames": [f"{i}.png" for i in range(size)]}, handle, 2)
    with open(folder / "meta", "wb") as handle:
        pickle.dump({"fine_label_names": [c.replace(" ", "_") for c in CIFAR100_CLASSES]}, handle, 2)


def _fake_imagenetv2(root: Path) -> None:
    rng = np.random.default_rng(1)
    for label in (0, 7, 10):
        folder = root / "imagenetv2" / "imagenetv2-matched-frequency-format-val" / str(label)
        folder.mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(folder / f"{i}.jpeg")


def test_paper_profile_code_path_on_fakes(tmp_path: Path) -> None:
    from equinb.backbones import tiny_clip

    data = tmp_path / "data"
    _fake_cifar100(data)
    _fake_imagenetv2(data)
    weights = tmp_path / "tiny_rn50.pt"
    torch.save(tiny_clip("rn").state_dict(), weights)
    nb = _run("fig4_zeroshot", tmp_path, profile="paper", backbones=["RN50"], datasets=["cifar100", "imagenetv2"],
              clip_paths={"RN50": str(weights)}, data_root=str(data), batch_size=8,
              dataset_options={"cifar100": {"verify_md5": False}})
    text = _outputs(nb)
    assert "profile: paper" in text
    # our RN50 rows are joined with the article's result files (the delta column is filled)
    assert "article (seed files)" in text and "41.79" in text and "52.88" in text
    assert not any(o.get("output_type") == "error" for c in nb["cells"] for o in c.get("outputs", []))
    # the per-view logits were cached: one file per (backbone, dataset)
    assert len(list((data / "cache").glob("view_logits_*.pt"))) == 2


def test_tab1_paper_profile_code_path_on_fakes(tmp_path: Path) -> None:
    """Table 1's paper path (CLIP encoder finetuned whole, text head, CIFAR100) on a tiny CLIP and fakes."""
    from equinb.backbones import tiny_clip

    data = tmp_path / "data"
    _fake_cifar100(data)
    weights = tmp_path / "tiny_rn50.pt"
    torch.save(tiny_clip("rn").state_dict(), weights)
    nb = _run("tab1_original_vs_updated", tmp_path, profile="paper", backbone="RN50", dataset="cifar100",
              clip_path=str(weights), data_root=str(data), prefinetune_rounds=2, prefinetune_steps=2,
              finetune_rounds=1, finetune_steps=1, dataset_options={"verify_md5": False})
    text = _outputs(nb)
    assert "profile: paper" in text and "CLIP RN50 image encoder" in text
    assert "31.42" in text and "56.15" in text  # the article's values beside ours
    assert len(list((data / "cache").glob("lambda_clip_*.pt"))) == 1
