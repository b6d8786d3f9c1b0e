"""Notebook code paths: parameters are documented, bad values fail early, chapters share their settings.

The paper path of every chapter runs on fakes in ``tests/test_paper_smoke.py`` (the smoke of ``make paper-smoke``
on tiny models).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import papermill as pm
import pytest
import torch

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


# the book build's own readers of _toc.yml and of a chapter's parameters cell (one implementation each)
sys.path.insert(0, str(ROOT / "tools"))
from build_book import AGGREGATES, chapter_parameters, notebook_ids as chapter_ids  # noqa: E402,F401


@pytest.mark.parametrize("nb_id", chapter_ids())
def test_help_notebook_documents_every_parameter(tmp_path: Path, nb_id: str) -> None:
    path = _ipynb(nb_id, tmp_path)
    result = subprocess.run([sys.executable, "-m", "papermill", "--help-notebook", str(path)],
                            capture_output=True, text=True, check=True)
    params = pm.inspect_notebook(str(path))
    assert {"profile", "device"} <= set(params) or nb_id in AGGREGATES and "profile" in params
    assert (NOTEBOOKS / "params" / f"{nb_id}.paper.yaml").is_file()
    for name, spec in params.items():
        assert name in result.stdout
        assert spec["help"], f"parameter {name!r} has no comment"
        assert spec["inferred_type_name"] not in ("None", ""), f"parameter {name!r} has no type hint"


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        (dict(backbones=["resnet18"]), "an item of backbones='resnet18' is not valid; choose one of"),
        (dict(datasets=["mnist"]), "an item of datasets='mnist' is not valid; choose one of"),
        (dict(transforms=["rot45"]), "an item of transforms='rot45' is not valid; choose one of"),
        (dict(device="cuda"), "no CUDA GPU is available"),
        (dict(profile="huge"), "profile='huge' is not valid"),
        (dict(batch_size=0), "batch_size must be an integer >= 1, got 0"),
        (dict(image_size=5), "image_size must be an integer >= 32, got 5"),
        (dict(seeds=5), "this chapter has no parameter 'seeds'"),  # papermill itself only warns
        (dict(noise_seeds="[1]"), "papermill's -p passes '[1]' as text: give lists and dicts with -y"),
    ],
)
def test_bad_parameters_fail_in_the_first_cells(tmp_path: Path, parameters: dict, message: str) -> None:
    _expect_early_failure(tmp_path, "fig4_zeroshot", parameters, message)


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        (dict(groups=["rot45"]), "an item of groups='rot45' is not valid; choose one of"),
        (dict(device="cuda"), "no CUDA GPU is available"),
        (dict(profile="huge"), "profile='huge' is not valid"),
        (dict(lr_updated=-1.0), "lr_updated must be a number >= 0"),
    ],
)
def test_tab1_bad_parameters_fail_in_the_first_cells(tmp_path: Path, parameters: dict, message: str) -> None:
    _expect_early_failure(tmp_path, "tab1_original_vs_updated", parameters, message)


@pytest.mark.parametrize("nb_id", chapter_ids())
def test_every_chapter_checks_every_parameter_it_declares(nb_id: str) -> None:
    """check_params refuses an injected name the chapter lacks by comparing with the names it is given, so each
    chapter must give it every name its parameters cell declares."""
    import ast

    tree = ast.parse((ROOT / "notebooks" / f"{nb_id}.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "check_params"]
    assert len(calls) == 1
    assert {k.arg for k in calls[0].keywords} - {"feature_maps"} == set(chapter_parameters(nb_id))


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


@pytest.mark.parametrize(
    ("nb_id", "parameters", "message"),
    [
        ("tab2_featuremap", dict(group="rot45"), "group='rot45' is not valid; choose one of"),
        ("tab2_featuremap", dict(profile="huge"), "profile='huge' is not valid"),
        ("tab2_featuremap", dict(device="cuda"), "no CUDA GPU is available"),
        ("tab2_featuremap", dict(prelr=-1.0), "prelr must be a number >= 0"),
        ("tab2_featuremap", dict(image_size=64), "use image_size >= 65"),
        ("tab3_equiattention", dict(group="rot45"), "group='rot45' is not valid; choose one of"),
        ("tab3_equiattention", dict(finetune_rounds=-1), "finetune_rounds must be an integer >= 0"),
        ("fig2_3_lambda_weights", dict(orientation_free="mnist"), "orientation_free='mnist' is not valid"),
        ("fig2_3_lambda_weights", dict(orientation_free="isic2018"), "does not fit profile 'small'"),
        ("tab2_featuremap", dict(split_block=17, last_block=16), "last_block=16 must not come before split_block=17"),
        ("fig2_3_lambda_weights", dict(profile="huge"), "profile='huge' is not valid"),
    ],
)
def test_feature_map_chapters_fail_early_on_bad_parameters(tmp_path: Path, nb_id: str, parameters: dict,
                                                           message: str) -> None:
    _expect_early_failure(tmp_path, nb_id, parameters, message)


def test_feature_map_chapters_share_their_run_settings(tmp_path: Path) -> None:
    """fig2_3 reuses tab3's runs and tab3 reuses tab2's only if they build identical configurations, in the
    notebook defaults (small profile) and in the paper parameter files."""
    import yaml

    ids = ("tab2_featuremap", "tab3_equiattention", "fig2_3_lambda_weights")
    defaults = {nb_id: pm.inspect_notebook(str(_ipynb(nb_id, tmp_path))) for nb_id in ids}
    papers = {nb_id: yaml.safe_load((NOTEBOOKS / "params" / f"{nb_id}.paper.yaml").read_text()) for nb_id in ids}
    for name in ("prefinetune_rounds", "prefinetune_steps", "prelr", "finetune_rounds", "finetune_steps", "lr",
                 "seed", "noise_seeds", "image_size", "split_block", "last_block", "group", "backbone", "dataset"):
        small = {nb_id: params[name]["default"] for nb_id, params in defaults.items()}
        assert len(set(small.values())) == 1, f"default {name} differs between the chapters: {small}"
        paper = {nb_id: str(p.get(name)) for nb_id, p in papers.items()}
        assert len(set(paper.values())) == 1, f"paper {name} differs between the chapters: {paper}"


@pytest.mark.parametrize("nb_id", chapter_ids())
def test_committed_notebook_matches_its_source(nb_id: str) -> None:
    """The committed .ipynb (the regression reference) holds exactly the cells of its paired .py."""
    import jupytext

    source = [(c.cell_type, c.source.strip(), sorted(c.metadata.get("tags", [])))
              for c in jupytext.read(NOTEBOOKS / f"{nb_id}.py").cells]
    committed = [(c.cell_type, c.source.strip(), sorted(c.metadata.get("tags", [])))
                 for c in jupytext.read(NOTEBOOKS / f"{nb_id}.ipynb").cells]
    assert committed == source, f"notebooks/{nb_id}.ipynb is stale: run `make notebooks` (or jupytext --sync)"


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        (dict(group="rot45"), "group='rot45' is not valid; choose one of"),
        (dict(test_split="val"), "test_split='val' is not valid for fashion_mnist"),
        (dict(dataset="isic2018", test_split="val"), "profile 'small' runs on fashion_mnist, got dataset='isic2018'"),
        (dict(profile="paper", backbone="RN50", dataset="isic2018", test_split="test"),
         "test_split='test' is not valid for isic2018"),
        (dict(stand_in_classes=[0, 1]), "stand_in_classes must list 7 distinct Fashion-MNIST classes"),
    ],
)
def test_isic_chapter_fails_early_on_bad_parameters(tmp_path: Path, parameters: dict, message: str) -> None:
    _expect_early_failure(tmp_path, "tab4_isic2018", parameters, message)


def test_isic_chapter_names_the_missing_data_folder(tmp_path: Path) -> None:
    empty = tmp_path / "no_data"
    empty.mkdir()
    _expect_early_failure(tmp_path, "tab4_isic2018", dict(profile="paper", backbone="RN50", dataset="isic2018",
                                                          test_split="val", data_root=str(empty)),
                          "ISIC 2018 'train' split not found")
    nb = json.loads((tmp_path / "tab4_isic2018.out.ipynb").read_text())
    assert "challenge.isic-archive.com" in json.dumps(nb)  # where to get it


GLUE_ROLE = __import__("re").compile(r"\{glue(?::(text|md|any))?\}`([^`]+)`")


def _glued_names(notebook: Path) -> set[str]:
    cells = json.loads(notebook.read_text())["cells"]
    return {o["metadata"]["scrapbook"]["name"] for c in cells for o in c.get("outputs", [])
            if "scrapbook" in o.get("metadata", {})}


def test_every_glue_reference_names_a_value_its_notebook_glues() -> None:
    """Read each glue role as myst-nb reads it (``glue:text`` and ``glue:md`` take the text after the last colon as
    a format, so ``path::key`` needs one: ``path::key:s``), and find the key among the values the committed
    notebook glues. A broken reference fails ``make book`` (warnings are errors) only after every chapter ran."""
    sources = sorted((ROOT / "book").glob("*.md")) + sorted(NOTEBOOKS.glob("*.py"))
    problems, checked = [], 0
    for source in sources:
        for role, text in GLUE_ROLE.findall(source.read_text()):
            key = text.rsplit(":", 1)[0] if role in ("text", "md") and ":" in text else text
            doc, _, name = key.rpartition("::")
            notebook = (source.parent / doc).resolve() if doc else source.with_suffix(".ipynb")
            if not doc and source.suffix == ".md":
                problems.append(f"{source.name}: {text!r} is read as the key {key!r} of the page itself, which glues "
                                "nothing (a path::key reference to a notebook needs a format: path::key:s)")
            elif not notebook.is_file():
                problems.append(f"{source.name}: {text!r} names {notebook.name}, which is not a committed notebook")
            elif name not in _glued_names(notebook):
                problems.append(f"{source.name}: {text!r} reads the key {name!r}, which {notebook.name} does not glue")
            checked += 1
    assert checked > 100 and not problems, "\n".join(problems)
