"""Chapter parameters: one vocabulary for every notebook, checked in the first cell before any heavy work.

Every chapter calls ``check_params(**its parameters)``. A parameter name means the same thing in every
chapter (``clip_paths`` maps backbone names to local CLIP files everywhere; ``dataset_options`` is keyed by
dataset name everywhere), and each name has one rule: a type, a range or a set of valid values. A bad value
fails at once with the valid ones named; a name without a rule is refused, so that a new parameter cannot
skip its check. ``tools/build_book.py`` checks the names of papermill parameters against a chapter's
parameters cell the same way.
"""

from __future__ import annotations

import ast
import contextlib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from .backbones import BACKBONE_NAMES, CLIP_NAMES, TINY_CLIP_NAMES
from .data import DATASET_NAMES, FASHION_MNIST_CLASSES, ISIC2018_CLASSES, dataset_spec
from .engine import TrainConfig, batch_schedule
from .groups import GROUP_NAMES
from .nlg import DEMOGRAPHICS, LABELS
from .setups import PROFILES, check_map_image_size
from .zeroshot import TRANSFORMS
from .validation import check_setting

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["PROFILES", "RULES", "RUN_PARAMETERS_ENV", "check_params", "check_device", "injected_parameters",
           "parameters_cell", "profile_values", "same_value", "changed_parameters", "profile_note", "schedule_note",
           "loader_note", "SETTING_MEANINGS", "settings_table"]

ORIENTATION_FREE = ("stand_in", "isic2018")
SCORERS = ("vader", "regard")
CLIP_BACKBONES = (*CLIP_NAMES, *TINY_CLIP_NAMES)  # the paper profile's (the tiny ones for its CPU smoke)
MIN_IMAGE_SIZE = 32  # MobileNetV2 and the CLIP ResNets reduce the input by 32: smaller images are a single pixel


def _choice(valid: tuple[str, ...]) -> Callable[[str, Any], None]:
    return lambda name, value: check_setting(name, value, valid)


def _choices(valid: tuple[str, ...]) -> Callable[[str, Any], None]:
    def rule(name: str, value: Any) -> None:
        if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
            raise ValueError(f"{name} must be a non-empty list, got {value!r}")
        for item in value:
            _choice(valid)(f"an item of {name}", item)
    return rule


def _integer(low: int, high: int | None = None) -> Callable[[str, Any], None]:
    def rule(name: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"in {low}..{high}"
            raise ValueError(f"{name} must be an integer {bound}, got {value!r}")
    return rule


def _number(low: float, *, strict: bool = False) -> Callable[[str, Any], None]:
    def rule(name: str, value: Any) -> None:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = number and (value > low if strict else value >= low)
        if not ok:
            raise ValueError(f"{name} must be a number {'>' if strict else '>='} {low}, got {value!r}")
    return rule


def _flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")


def _text(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {value!r}")


def _nonempty_text(name: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")


def check_device(name: str, device: Any) -> None:
    """``cpu``, ``cuda`` or ``cuda:<index>``, and a GPU must be there when one is asked for."""
    if not isinstance(device, str) or not (device in ("cpu", "cuda") or device.startswith("cuda:")):
        raise ValueError(f"unknown {name} {device!r}; valid: 'cpu', 'cuda', 'cuda:<index>'")
    index = device.partition(":")[2]
    if index and not index.isdigit():
        raise ValueError(f"unknown {name} {device!r}; the index after 'cuda:' is a GPU number (0, 1, ...)")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"{name}={device!r} was requested but no CUDA GPU is available; use device='cpu'")
    if index and int(index) >= torch.cuda.device_count():
        raise ValueError(f"{name}={device!r}: this machine has {torch.cuda.device_count()} GPU(s), numbered from 0")


def _image_size(name: str, value: Any) -> None:
    _integer(MIN_IMAGE_SIZE)(name, value)


def _clip_paths(name: str, value: Any) -> None:
    if not isinstance(value, dict):
        raise ValueError(f"{name} must map backbone names to local CLIP weight files, got {value!r}")
    for backbone, path in value.items():
        _choice(BACKBONE_NAMES)(f"a key of {name}", backbone)
        if not Path(str(path)).expanduser().is_file():
            raise ValueError(f"{name}[{backbone!r}] = {path!r} is not a file")


def _dataset_options(name: str, value: Any) -> None:
    if not isinstance(value, dict):
        raise ValueError(f"{name} must map dataset names to get_dataset options, for example "
                         f"{{'cifar100': {{'download': True}}}}; got {value!r}")
    for dataset, options in value.items():
        if dataset not in DATASET_NAMES:
            raise ValueError(f"{name} is keyed by dataset name ({', '.join(DATASET_NAMES)}), got key {dataset!r}; "
                             f"for example {{'cifar100': {{'download': True}}}}")
        spec = dataset_spec(dataset)
        if not isinstance(options, dict):
            raise ValueError(f"{name}[{dataset!r}] must be a dict of get_dataset options, got {options!r}")
        unknown = sorted(set(options) - set(spec.options))
        if unknown:
            raise ValueError(f"{name}[{dataset!r}] has unknown options {unknown}; valid: {', '.join(spec.options)}")


def _groups(name: str, value: Any) -> None:
    _choices(GROUP_NAMES)(name, value)


def _transforms(name: str, value: Any) -> None:
    _choices(TRANSFORMS)(name, value)


def _strings(name: str, value: Any) -> None:
    is_list = isinstance(value, (list, tuple)) and not isinstance(value, str)
    if not is_list or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{name} must be a list of non-empty strings, got {value!r}")


def _nonempty_strings(name: str, value: Any) -> None:
    _strings(name, value)
    if not value:
        raise ValueError(f"{name} must not be empty")


def _seed_list(name: str, value: Any) -> None:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                              for v in value):
        raise ValueError(f"{name} must be a list of integers >= 0 (it may be empty), got {value!r}")
    if len(set(value)) != len(value):
        raise ValueError(f"{name} must not repeat a seed, got {value!r}")


def _stand_in_classes(name: str, value: Any) -> None:
    n, k = len(ISIC2018_CLASSES), len(FASHION_MNIST_CLASSES)
    if (not isinstance(value, list) or len(value) != n or len(set(value)) != n
            or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < k for v in value)):
        raise ValueError(f"{name} must list {n} distinct Fashion-MNIST classes 0-{k - 1}, one per ISIC 2018 class in "
                         f"the order MEL, NV, BCC, AKIEC, BKL, DF, VASC; got {value!r}")


# One rule per parameter name, shared by every chapter.
RULES: dict[str, Callable[[str, Any], None]] = {
    "profile": _choice(PROFILES),
    "backbone": _choice(BACKBONE_NAMES),
    "backbones": _choices(BACKBONE_NAMES),
    "dataset": _choice(DATASET_NAMES),
    "datasets": _choices(DATASET_NAMES),
    "orientation_free": _choice(ORIENTATION_FREE),
    "group": _choice(GROUP_NAMES),
    "groups": _groups,
    "transforms": _transforms,
    "image_size": _image_size,
    "split_block": _integer(1, 18),  # MobileNetV2 has feature blocks 0..18; at least one stays trainable
    "last_block": _integer(1, 18),  # the last MobileNetV2 block kept (checked against split_block below)
    "batch_size": _integer(1),
    "num_workers": _integer(0),
    "prefinetune_rounds": _integer(0),
    "prefinetune_steps": _integer(0),
    "finetune_rounds": _integer(0),
    "finetune_steps": _integer(0),
    "prelr": _number(0),
    "prelr_embedding": _number(0),
    "prelr_orientation_free": _number(0),
    "lr": _number(0),
    "lr_original": _number(0),
    "lr_updated": _number(0),
    "seed": _integer(0),
    "noise_seeds": _seed_list,
    "stand_in_classes": _stand_in_classes,
    "stand_in_train": _integer(len(ISIC2018_CLASSES)),
    "stand_in_shots": _integer(1),
    "stand_in_seed": _integer(0),
    "test_split": _text,  # checked against the dataset's splits in check_params
    "device": check_device,
    "data_root": _text,
    "chapters_dir": _nonempty_text,
    "clip_paths": _clip_paths,
    "clip_download_root": _text,
    "max_train": _integer(1),
    "dataset_options": _dataset_options,
    "lm_name": _nonempty_text,
    "scorer": _choice(SCORERS),
    "regard_classifiers": _strings,
    "regard_label_names": _choices(LABELS),
    "mask_demographic": _flag,
    "templates": _nonempty_strings,
    "demographics": _choices(tuple(DEMOGRAPHICS)),
    "binary_group": _choices(tuple(DEMOGRAPHICS)),
    "n_samples": _integer(1),
    "max_new_tokens": _integer(1),
    "top_k": _integer(1),
    "temperature": _number(0, strict=True),
    "paired_seeds": _flag,
    "n_bootstrap": _integer(1),
    "num_threads": _integer(1),
    "train_steps": _integer(1),
    "timing_repeats": _integer(1),
}


PAPERMILL_HEADER = "# Parameters"  # the first line of the cell papermill injects after the parameters cell


def _kernel_history() -> list[str]:
    """The sources of the cells this IPython kernel ran, in order (``In``); [] outside IPython."""
    try:
        from IPython import get_ipython
    except ImportError:
        return []
    shell = get_ipython()
    return list(shell.user_ns.get("In", [])) if shell is not None else []


def _papermill_cell(history: list[str]) -> tuple[int, list[ast.stmt]] | None:
    """The index and statements of papermill's injected cell in ``history``: the last cell whose first line is
    exactly "# Parameters" and that holds only assignments of names; None where there is none."""
    for index in range(len(history) - 1, -1, -1):
        source = history[index]
        if source.strip().splitlines()[:1] != [PAPERMILL_HEADER]:
            continue
        try:
            body = ast.parse(source).body
        except SyntaxError:  # a cell of the user's that only looks like papermill's
            continue
        if all(isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name)
               for n in body):
            return index, body
    return None


def injected_parameters(history: list[str] | None = None) -> dict[str, Any]:
    """The parameters papermill injected into this kernel, by name (``_papermill_cell``), read from the kernel's
    input ``history`` (IPython's ``In`` by default). Values that are not literals are kept as their source text;
    papermill's ``--inject-paths`` names (``PAPERMILL_*``) are left out. ``{}`` outside IPython or where papermill
    injected nothing."""
    found = _papermill_cell(_kernel_history() if history is None else history)
    if found is None:
        return {}
    values: dict[str, Any] = {}
    for node in found[1]:
        name = node.targets[0].id
        if name.startswith("PAPERMILL_"):
            continue
        try:
            values[name] = ast.literal_eval(node.value)
        except ValueError:
            values[name] = ast.unparse(node.value)
    return values


RUN_PARAMETERS_ENV = "EQUINB_RUN_PARAMETERS"  # set by tools/build_book.py: the parameters changed for this run
LOCATION_PARAMETERS = ("chapters_dir", "data_root", "clip_download_root")  # where files are, not what runs


NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"  # the chapters' sources, in the checkout
PARAMS_DIR = NOTEBOOKS_DIR / "params"  # the profiles' files


def parameters_cell(chapter_id: str, notebooks_dir: Path = NOTEBOOKS_DIR) -> tuple[list[str], dict[str, Any]]:
    """What the parameters cell of ``<notebooks_dir>/<chapter_id>.py`` (its cell tagged ``parameters``) declares:
    the names in order, and the defaults of those whose value is a literal. ``([], {})`` where the file or the cell
    is missing."""
    path = notebooks_dir / f"{chapter_id}.py"
    text = path.read_text() if path.is_file() else ""
    header = re.search(r'^# %% tags=\[[^\]]*"parameters"[^\]]*\]$', text, flags=re.M)  # other tags may follow
    if header is None:
        return [], {}
    cell = re.split(r"^# %%", text[header.end():], maxsplit=1, flags=re.M)[0]
    names: list[str] = []
    defaults: dict[str, Any] = {}
    for node in ast.parse(cell).body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.append(node.target.id)
            with contextlib.suppress(ValueError):  # an expression (a path from the environment): no literal default
                defaults[node.target.id] = ast.literal_eval(node.value) if node.value is not None else None
    return names, defaults


def profile_parameters_file(chapter_id: str, profile: str, params_dir: Path = PARAMS_DIR) -> Path:
    """Where a profile keeps a chapter's parameters: ``<params_dir>/<chapter_id>.<profile>.yaml`` (papermill passes
    it whole with ``-f``; the small profile has none, its values are the notebook's defaults). It may not exist."""
    return params_dir / f"{chapter_id}.{profile}.yaml"


def profile_parameters(chapter_id: str, profile: str, params_dir: Path = PARAMS_DIR) -> dict:
    """The parameters a profile's file sets for a chapter ({} where it has none)."""
    import yaml

    path = profile_parameters_file(chapter_id, profile, params_dir)
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def profile_values(chapter_id: str, profile: str, params_dir: Path = PARAMS_DIR) -> dict:
    """A chapter's parameters as a profile runs them: the notebook's literal defaults (``parameters_cell``, from the
    notebooks beside ``params_dir``), then the profile's file."""
    return {**parameters_cell(chapter_id, params_dir.parent)[1], **profile_parameters(chapter_id, profile, params_dir)}


def same_value(a: Any, b: Any) -> bool:
    """Equal and of the same type: ``1`` is no ``True`` and ``0.0`` no ``0`` for a parameter (the rules refuse
    one and take the other), so one never stands for the other."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same_value, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def changed_parameters(chapter_id: str, params_dir: Path = PARAMS_DIR) -> str:
    """This run's changed parameters as ``"name=value, ..."``, "" for a profile's own run: what the book's build
    passed with ``-p`` (``$EQUINB_RUN_PARAMETERS``); else, under plain papermill, what it injected that differs from
    the profile's own values (``profile_values``: its file ``<params_dir>/<chapter_id>.<profile>.yaml``, which ``-f``
    passes whole, over the notebook's defaults), those that only say where files are left out."""
    if RUN_PARAMETERS_ENV in os.environ:
        return os.environ[RUN_PARAMETERS_ENV]
    injected = injected_parameters()
    own = profile_values(chapter_id, injected.get("profile", "small"), params_dir)
    given = {k: v for k, v in injected.items()
             if k not in LOCATION_PARAMETERS and not (k in own and same_value(own[k], v))}
    return ", ".join(f"{k}={v!r}" for k, v in given.items())


def _text_hint(name: str, value: Any) -> str:
    """How to pass parameter ``name`` where its ``value`` was refused for how it arrived: a list or dict as text
    (papermill's ``-p`` passes anything but a number, True, False or None as a string), one item where the parameter
    takes a list of them, a flag as the text "True" or "False" (papermill's ``-r``, or quotes in YAML). Only a value
    the parameter's rule takes is suggested; "" otherwise."""
    import yaml

    text = value.strip() if isinstance(value, str) else None
    if text is not None and text[:1] in ("[", "{"):
        try:
            parsed = yaml.safe_load(text)
        except yaml.YAMLError:
            return ""
        if not _accepts(name, parsed):
            return ""
        return (f". papermill's -p passes {value!r} as text: give lists and dicts with -y, e.g. papermill ... -y "
                f"\"{name}: {text}\", or through make chapter ID=<id> ARGS=\"-p {name} '{text}'\"")
    if not isinstance(value, (list, tuple, dict)) and _accepts(name, [value]):
        listed = yaml.safe_dump([value], default_flow_style=True, width=float("inf")).strip()
        return f". {name} takes a list: papermill ... -y \"{name}: {listed}\""
    if RULES.get(name) is _flag and text is not None and text.lower() in ("true", "false"):
        return (f". {value!r} is text, not a bool: papermill ... -p {name} {text.capitalize()} (papermill converts "
                f"it), or -y \"{name}: {text.lower()}\" without quotes")
    return ""


def _accepts(name: str, value: Any) -> bool:
    """Whether parameter ``name``'s rule takes ``value``."""
    try:
        RULES[name](name, value)
    except (ValueError, TypeError):
        return False
    return True


def check_params(*, feature_maps: bool = False, injected: dict[str, Any] | None = None, **params: Any) -> None:
    """Check a chapter's parameters (its parameters cell, every one passed by name) before any heavy work.

    ``feature_maps``: the chapter trains on the small profile's feature maps, which need maps of at least
    3x3 (``image_size >= 65``). ``injected``: the parameters papermill injected (default: read from the kernel,
    ``injected_parameters``); a name among them that the chapter does not have is refused, where papermill
    would only warn and run the defaults. Raises ``ValueError`` naming the parameter and the valid values, or
    ``TypeError`` for a name that has no rule.
    """
    unknown = sorted(set(params) - set(RULES))
    if unknown:
        raise TypeError(f"no rule for chapter parameter(s) {unknown}; every parameter needs one in "
                        "equinb.chapter.RULES")
    stray = sorted(set(injected_parameters() if injected is None else injected) - set(params))
    if stray:
        raise ValueError(f"this chapter has no parameter {', '.join(map(repr, stray))} (papermill passes unknown "
                         f"names on with a warning, and the chapter would run its defaults); its parameters are: "
                         f"{', '.join(params)}")
    for name, value in params.items():
        try:
            RULES[name](name, value)
        except ValueError as err:
            hint = _text_hint(name, value)
            if not hint:
                raise
            raise ValueError(f"{err}{hint}") from None
    if feature_maps and params.get("profile") == "small" and "image_size" in params:
        check_map_image_size(params["image_size"])
    if params.get("profile") == "paper":  # CLIP on the article's datasets; the small ones normalise themselves
        paper_datasets = [n for n in DATASET_NAMES if not dataset_spec(n).normalises_itself]
        for names, valid, what in ((("dataset", "datasets"), paper_datasets, "datasets"),
                                   (("backbone", "backbones"), list(CLIP_BACKBONES), "CLIP backbones")):
            for name in names:
                given = params.get(name)
                wrong = [v for v in ([given] if isinstance(given, str) else given or []) if v not in valid]
                if wrong:
                    raise ValueError(f"{name}: {wrong} are small-profile {name}; the paper profile runs the "
                                     f"{what} {valid}")
    if "test_split" in params and "dataset" in params:
        spec = dataset_spec(params["dataset"])
        valid = [s for s in spec.splits if s != "train"]
        if params["test_split"] != spec.eval_split:
            raise ValueError(f"test_split={params['test_split']!r} is not valid for {params['dataset']}; its results "
                             f"are reported on the {spec.eval_split!r} split (splits: {', '.join(spec.splits)}; "
                             f"not training: {', '.join(valid)})")
    if "last_block" in params and "split_block" in params and params["last_block"] < params["split_block"]:
        raise ValueError(f"last_block={params['last_block']} must not come before split_block="
                         f"{params['split_block']}: blocks split_block..last_block are the trainable trunk")
    if params.get("seed") in params.get("noise_seeds", []):
        others = [s for s in params["noise_seeds"] if s != params["seed"]]
        free = next(s for s in range(len(params["noise_seeds"]) + 1) if s not in params["noise_seeds"])
        raise ValueError(f"noise_seeds must not contain the run's own seed {params['seed']}; it is always included. "
                         f"Pass other seeds as well, e.g. make chapter ARGS=\"-p noise_seeds "
                         f"'{sorted([*others, free])}'\" (papermill: -y \"noise_seeds: {sorted([*others, free])}\"), "
                         f"or a seed outside {list(params['noise_seeds'])}")
    demographics = params.get("demographics")
    if demographics is not None:
        if len(set(demographics)) != len(demographics) or len(demographics) < 2:
            raise ValueError(f"demographics must list at least 2 distinct groups, got {list(demographics)}")
        binary = params.get("binary_group", [])
        if len(set(binary)) != 2 or not set(binary) <= set(demographics):
            raise ValueError(f"binary_group must be 2 distinct members of demographics {list(demographics)}, "
                             f"got {list(binary)}")
    if params.get("scorer") == "regard" and not params.get("regard_classifiers"):
        raise ValueError(
            "scorer 'regard' needs regard_classifiers: a list of local folders or hub ids of regard classifiers "
            "(Hugging Face sequence-classification format, classes negative, neutral, positive, other), for "
            "example Sheng et al.'s BERT regard checkpoints from github.com/ewsheng/nlg-bias; pass them with "
            "papermill -p or in notebooks/params/fig6_nlg_fairness.paper.yaml")


def profile_note(profile: str, small: str, paper: str) -> str:
    """The sentence at the top of a chapter that says what this build ran: ``small`` and ``paper`` describe each
    profile's setting (a clause each, e.g. "a MobileNetV2 on the 8x8 digits stands in for CLIP RN50 on CIFAR100")."""
    if profile == "small":
        return (f"This build ran the small profile: {small}. It re-runs the article's comparisons on a stand-in: "
                "compare the directions (signs) of the differences with the article's, as the verdict table does; "
                f"neither the values nor the sizes of the differences carry over. The paper profile runs {paper}; "
                "this build did not produce its numbers.")
    return f"This build ran the {profile} profile: {paper}."


# What each ``TrainConfig`` field sets, in a reader's words (a settings table prints it beside the field's name,
# which is what a papermill run passes).
SETTING_MEANINGS = {
    "prefinetune_rounds": "rounds of prefinetuning (the weighting network alone)",
    "prefinetune_steps": "batches per prefinetuning round",
    "prelr": "learning rate of the weighting network in prefinetuning",
    "finetune_rounds": "rounds of finetuning",
    "finetune_steps": "batches per finetuning round",
    "lr": "learning rate of finetuning",
    "momentum": "SGD momentum (no weight decay, no schedule)",
    "batch_size": "images per batch",
    "output_softmax": "average the views' probabilities, then cross-entropy (a double softmax)",
    "lambda_input": "what the weighting network reads: a frozen copy of the backbone, or the backbone being trained",
    "finetune_params": "what finetuning updates",
    "data_order": "restart: one unshuffled pass restarted every round; shuffle: epochs that go on across rounds",
    "selection": "the images on which the best round is chosen",
    "selection_batches": "how many batches that choice reads",
    "dropout_in_eval": "the weighting network's dropout stays on in every evaluation",
    "param_dtype": "precision of the weights: CLIP's fp16 (updates below half its spacing are lost) or fp32",
    "trunk_mode": "BatchNorm in finetuning: running statistics (eval) or each batch's (train)",
    "logit_factor": "factor on the cosine logits",
    "normalisation": "how the views' weights are normalised",
    "seed": "data order, dropout and the random group element of each batch",
}


def settings_table(configs: dict[str, TrainConfig]) -> pd.DataFrame:
    """Every setting of the named runs ``configs``, one row per ``TrainConfig`` field: its name (what a papermill
    run passes), what it sets (``SETTING_MEANINGS``) and each run's value, as text."""
    import pandas as pd

    values = pd.DataFrame({name: config.as_dict() for name, config in configs.items()}).astype(str)
    meanings = values.index.map(SETTING_MEANINGS.__getitem__)  # every field has one (tests/test_chapter.py)
    return values.rename_axis("setting").assign(what_it_sets=meanings).reset_index()[
        ["setting", "what_it_sets", *configs]]


def loader_note(train_images: int, config: TrainConfig) -> str:
    """How ``config``'s prefinetuning loader meets a training set of ``train_images`` images: the batches of one
    round (counted by the engine's own schedule), and what a selection on the first training batches reads."""
    batches = batch_schedule(train_images, config.batch_size, 1, config.prefinetune_steps, config.data_order,
                             config.seed)[0]
    if config.data_order == "restart":
        note = (f"{train_images:,} training images: a round of the restarted loader has {len(batches)} batches of "
                f"{config.batch_size} (the schedule allows {config.prefinetune_steps})")
    else:
        note = (f"{train_images:,} training images in shuffled epochs that go on across rounds: {len(batches)} "
                f"batches of {config.batch_size} per round")
    limit = config.selection_limit
    if limit is not None:
        seen = min(train_images, limit * config.batch_size)
        note += (f"; selection on the first {limit} training batches reads "
                 + ("every training image" if seen == train_images else f"the first {seen:,} training images"))
    return note


def schedule_note(image_size: int, prefinetune_rounds: int, finetune_rounds: int) -> str:
    """A training chapter's settings in words (the summary page puts two chapters' side by side)."""
    return (f"{image_size} px, {prefinetune_rounds} prefinetune rounds, {finetune_rounds} finetune "
            f"round{'s' if finetune_rounds != 1 else ''}")
