"""Chapter parameters: one rule per name, bad values fail before any heavy work with the valid ones named."""

import pytest
import yaml

from equinb import chapter
from equinb.chapter import RULES, check_params, injected_parameters

FIG4 = dict(profile="small", backbones=["mobilenet_v2"], datasets=["digits"], transforms=["none", "rot90"],
            image_size=64, batch_size=256, seed=0, device="cpu", data_root="", clip_paths={}, clip_download_root="",
            num_workers=0, dataset_options={})
TRAINING = dict(profile="small", backbone="mobilenet_v2", dataset="digits", group="rot90", image_size=96,
                split_block=18, prefinetune_rounds=10, prefinetune_steps=100, prelr=0.1, finetune_rounds=1,
                finetune_steps=500, lr=5e-8, seed=0, noise_seeds=[1, 2, 3, 4], device="cpu", data_root="",
                clip_paths={},
                clip_download_root="", max_train=16000, dataset_options={"cifar100": {"download": True}})
NLG = dict(profile="small", lm_name="smollm2", scorer="vader", regard_classifiers=[], templates=["was known for"],
           demographics=["Black", "White", "Asian"], binary_group=["Black", "White"], n_samples=2,
           temperature=1.0, device="cpu")


@pytest.mark.parametrize("params", [FIG4, TRAINING, NLG])
def test_the_books_defaults_pass(params: dict) -> None:
    check_params(**params, feature_maps=params is TRAINING)


@pytest.mark.parametrize(
    ("base", "changes", "message"),
    [
        (FIG4, dict(batch_size=0), "batch_size must be an integer >= 1, got 0"),
        (FIG4, dict(image_size=5), "image_size must be an integer >= 32, got 5"),
        (FIG4, dict(backbones=["RN5O"]), "an item of backbones='RN5O' is not valid"),
        (FIG4, dict(transforms=["rot45"]), "an item of transforms='rot45' is not valid"),
        (FIG4, dict(clip_paths={"RN50": "/no/such/file.pt"}), "clip_paths['RN50'] = '/no/such/file.pt' is not a file"),
        (FIG4, dict(dataset_options={"cifar100": {"downlaod": True}}), "unknown options ['downlaod']"),
        (FIG4, dict(dataset_options={"download": True}), "dataset_options is keyed by dataset name"),
        (FIG4, dict(device="tpu"), "unknown device 'tpu'"),
        (FIG4, dict(device="cuda:abc"), "the index after 'cuda:' is a GPU number"),
        (FIG4, dict(profile="paper", backbones=["RN50"], datasets=["digits"]),
         "datasets: ['digits'] are small-profile datasets; the paper profile runs the datasets ['cifar100'"),
        (FIG4, dict(profile="paper", datasets=["cifar100"]), "backbones: ['mobilenet_v2'] are small-profile"),
        (TRAINING, dict(profile="paper", backbone="RN50"), "dataset: ['digits'] are small-profile"),
        (TRAINING, dict(profile="paper", dataset="cifar100"), "backbone: ['mobilenet_v2'] are small-profile"),
        (TRAINING, dict(profile="huge"), "profile='huge' is not valid; choose one of 'small', 'paper'"),
        (TRAINING, dict(prelr=-0.1), "prelr must be a number >= 0"),
        (TRAINING, dict(split_block=19), "split_block must be an integer in 1..18"),
        (TRAINING, dict(prefinetune_rounds=2.5), "prefinetune_rounds must be an integer >= 0"),
        (TRAINING, dict(image_size=64), "use image_size >= 65"),
        (TRAINING, dict(group="rot45"), "group='rot45' is not valid"),
        (TRAINING, dict(noise_seeds=[1, 1]), "noise_seeds must not repeat a seed"),
        (TRAINING, dict(noise_seeds=[1, -2]), "noise_seeds must be a list of integers >= 0"),
        (TRAINING, dict(noise_seeds=[0, 1]), "own seed 0; it is always included. Pass other seeds as well, e.g. "
                                             "make chapter ARGS=\"-p noise_seeds '[1, 2]'\" (papermill: -y "
                                             "\"noise_seeds: [1, 2]\")"),
        (TRAINING, dict(test_split="test", dataset="isic2018"),
         "test_split='test' is not valid for isic2018; its results are reported on the 'val' split"),
        (TRAINING, dict(test_split="train"), "test_split='train' is not valid for digits"),
        (TRAINING, dict(stand_in_classes=[0, 1, 2]), "stand_in_classes must list 7 distinct Fashion-MNIST classes"),
        (TRAINING, dict(stand_in_classes=[0, 1, 2, 3, 4, 5, 5]), "stand_in_classes must list 7 distinct"),
        (TRAINING, dict(stand_in_train=3), "stand_in_train must be an integer >= 7"),
        (TRAINING, dict(split_block=17, last_block=16), "last_block=16 must not come before split_block=17"),
        (TRAINING, dict(stand_in_classes=[0, 1, 2, 3, 4, 5, 10]), "one per ISIC 2018 class in the order MEL, NV"),
        (NLG, dict(scorer="regard"), "scorer 'regard' needs regard_classifiers"),
        (NLG, dict(scorer="toxicity"), "scorer='toxicity' is not valid"),
        (NLG, dict(demographics=["Black", "Purple"]), "an item of demographics='Purple' is not valid"),
        (NLG, dict(binary_group=["Black", "Black"]), "binary_group must be 2 distinct members"),
        (NLG, dict(n_samples=0), "n_samples must be an integer >= 1"),
        (NLG, dict(templates=[]), "templates must not be empty"),
        (NLG, dict(temperature=0.0), "temperature must be a number > 0"),
    ],
)
def test_bad_values_fail_with_the_valid_ones(base: dict, changes: dict, message: str) -> None:
    with pytest.raises(ValueError) as info:
        check_params(**{**base, **changes}, feature_maps=base is TRAINING)
    assert message in str(info.value)


def test_the_paper_profile_takes_clip_on_the_articles_datasets() -> None:
    check_params(**{**TRAINING, "profile": "paper", "backbone": "RN50", "dataset": "cifar100", "test_split": "test"},
                 feature_maps=True)
    check_params(**{**FIG4, "profile": "paper", "backbones": ["RN50", "ViT-B/32"],
                    "datasets": ["cifar100", "imagenetv2"]})


def test_a_parameter_without_a_rule_is_refused() -> None:
    with pytest.raises(TypeError, match=r"no rule for chapter parameter\(s\) \['clip_path'\]"):
        check_params(profile="small", clip_path="x.pt")


def test_every_chapter_parameter_has_a_rule_and_every_rule_a_chapter() -> None:
    """The parameters cells of all chapters use exactly the names that have rules."""
    import test_notebooks as tn

    names = {name for nb_id in tn.chapter_ids() for name in tn.chapter_parameters(nb_id)}
    assert names == set(RULES), (sorted(names - set(RULES)), sorted(set(RULES) - names))


def test_the_injected_parameters_are_read_from_papermills_cell() -> None:
    history = ["", "profile: str = 'small'\nseed: int = 0", "# Parameters\nseed = 5\nclip_paths = {'RN50': 'a.pt'}\n"
               "data_root = os.getcwd()\n", "check_params(...)"]
    assert injected_parameters(history) == {"seed": 5, "clip_paths": {"RN50": "a.pt"}, "data_root": "os.getcwd()"}
    assert injected_parameters(history[:2]) == {} and injected_parameters() == {}  # no papermill, no IPython
    # a cell of the user's that only starts like papermill's, or does not parse, is not papermill's
    for cell in ("# Parameters I tried\nbest = 0.3", "# Parameters\nbest = (", "# Parameters\nprint(1)"):
        assert injected_parameters([*history[:2], cell]) == {}
    paths = "# Parameters\nseed = 5\nPAPERMILL_INPUT_PATH = 'a.ipynb'\nPAPERMILL_OUTPUT_PATH = 'b.ipynb'\n"
    assert injected_parameters([paths]) == {"seed": 5}  # papermill --inject-paths


NOTEBOOK = """# %%
import os

# %% tags=["parameters", "hide-input"]
profile: str = "small"  # small or paper
backbones: list[str] = ["mobilenet_v2"]
seed: int = 0  # article: 0
templates: list[str] = [
    "was known for",  # a value over several lines
]
data_root: str = os.environ.get("EQUINB_DATA", "")  # no literal

# %%
check_params(...)
"""


def test_the_parameters_cell_gives_the_names_and_literal_defaults(tmp_path) -> None:
    (tmp_path / "ch.py").write_text(NOTEBOOK)
    assert chapter.parameters_cell("ch", tmp_path) == (
        ["profile", "backbones", "seed", "templates", "data_root"],
        {"profile": "small", "backbones": ["mobilenet_v2"], "seed": 0, "templates": ["was known for"]})
    assert chapter.parameters_cell("missing", tmp_path) == ([], {})
    (tmp_path / "untagged.py").write_text(NOTEBOOK.replace('tags=["parameters", "hide-input"]', ""))
    assert chapter.parameters_cell("untagged", tmp_path) == ([], {})
    names, defaults = chapter.parameters_cell("fig6_nlg_fairness")  # the repository's: a list over several lines
    assert names[0] == "profile" and isinstance(defaults["templates"], list) and len(defaults["templates"]) > 1


def test_same_value_needs_the_same_type() -> None:
    assert chapter.same_value(0, 0) and chapter.same_value([1, "a"], [1, "a"]) and chapter.same_value({"a": [1]},
                                                                                                    {"a": [1]})
    for a, b in ((1, True), (0, 0.0), ([1], (1,)), ([1], [True]), ({"a": 1}, {"a": 1.0}), ([1], [1, 2])):
        assert not chapter.same_value(a, b) and not chapter.same_value(b, a), (a, b)


@pytest.mark.parametrize("name, value", [("noise_seeds", "[1, 2]"), ("dataset_options", " {'cifar100': {}}")])
def test_a_list_given_as_text_names_papermills_yaml_option(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=r"papermill's -p passes .* as text: give lists and dicts with -y, e.g. "
                                         rf"papermill \.\.\. -y \"{name}: "):
        check_params(**{**TRAINING, name: value}, feature_maps=True)
    with pytest.raises(ValueError) as info:
        check_params(**{**TRAINING, "noise_seeds": "five"}, feature_maps=True)
    assert "-y" not in str(info.value)  # text that is not a list gets the rule's message alone


@pytest.mark.parametrize("params, hint", [
    (dict(FIG4, transforms="rot90"), 'transforms takes a list: papermill ... -y "transforms: [rot90]"'),
    (dict(FIG4, backbones="mobilenet_v2"), '-y "backbones: [mobilenet_v2]"'),
    (dict(TRAINING, noise_seeds=3), '-y "noise_seeds: [3]"'),
    (dict(NLG, templates="was known, for"), "-y \"templates: ['was known, for']\""),  # one item, quoted
])
def test_one_item_where_a_list_is_taken_is_shown_the_list(params: dict, hint: str) -> None:
    with pytest.raises(ValueError) as info:
        check_params(**params)
    assert hint in str(info.value)


@pytest.mark.parametrize("params", [dict(FIG4, transforms="rot45"), dict(TRAINING, seed="[1]"),
                                    dict(TRAINING, noise_seeds="[1, -2]")])
def test_no_hint_suggests_a_value_the_rule_refuses(params: dict) -> None:
    """rot45 is no transformation as a list either; a seed is no list; [1, -2] is refused as a list too."""
    with pytest.raises(ValueError) as info:
        check_params(**params)
    assert "-y" not in str(info.value)


@pytest.mark.parametrize("value", ["False", "true", " TRUE"])
def test_a_flag_given_as_text_is_shown_the_bool(value: str) -> None:
    with pytest.raises(ValueError) as info:
        check_params(**{**NLG, "paired_seeds": value})
    message = str(info.value)
    assert f"paired_seeds must be True or False, got {value!r}. {value!r} is text, not a bool" in message
    assert f"-p paired_seeds {value.strip().capitalize()}" in message
    assert f'-y "paired_seeds: {value.strip().lower()}"' in message
    with pytest.raises(ValueError) as info:
        check_params(**{**NLG, "paired_seeds": "yes"})
    assert "-p" not in str(info.value)  # other text gets the rule's message alone


def test_a_run_with_changed_parameters_says_so_in_every_caption(monkeypatch, capsys, tmp_path) -> None:
    import pandas as pd

    from equinb import tables

    monkeypatch.setattr(tables, "_chapter", dict(tables._chapter))  # the running chapter's state, restored after
    monkeypatch.setenv(chapter.RUN_PARAMETERS_ENV, "seed=5")  # tools/build_book.py's -p
    tables.start_chapter("fig4_zeroshot")
    assert "this run changed the chapter's parameters: seed=5" in capsys.readouterr().out
    table = tables._numbered(tables.Table(pd.DataFrame({"a": [1]}), "Top-1 (profile: small)"))
    assert table.caption.endswith("(profile: small) [changed parameters: seed=5]")
    article = tables._numbered(tables.Table(pd.DataFrame({"a": [1]}), "The article's Table 1"), computed=False)
    assert article.caption.endswith(". The article's Table 1")  # numbered, not tagged: the article's numbers
    monkeypatch.setenv(chapter.RUN_PARAMETERS_ENV, "")  # the profile's own run
    tables.start_chapter("fig4_zeroshot")
    table = tables._numbered(tables.Table(pd.DataFrame({"a": [1]}), "Top-1 (profile: small)"))
    assert "changed" not in table.caption and not capsys.readouterr().out
    # plain papermill: what it injected beyond the profile's own file (-f passes it whole), where files live left out
    monkeypatch.delenv(chapter.RUN_PARAMETERS_ENV)
    params = tmp_path / "params"
    params.mkdir()
    (params / "fig4_zeroshot.paper.yaml").write_text("profile: paper\nbackbones: [RN50]\nseed: 0\n")
    (tmp_path / "fig4_zeroshot.py").write_text(NOTEBOOK)  # the notebook's parameters cell: its defaults
    injected = {"profile": "paper", "backbones": ["RN50"], "seed": 5, "data_root": "/d", "chapters_dir": "/c"}
    monkeypatch.setattr(chapter, "injected_parameters", lambda: injected)
    assert chapter.changed_parameters("fig4_zeroshot", params) == "seed=5"
    injected["seed"] = 0  # the paper profile's own run
    assert chapter.changed_parameters("fig4_zeroshot", params) == ""
    injected["profile"] = "small"  # the small profile has no file: what differs from the notebook's defaults
    assert chapter.changed_parameters("fig4_zeroshot", params) == "backbones=['RN50']"
    injected["backbones"] = ["mobilenet_v2"]  # every value the notebook's own: the profile's own run
    assert chapter.changed_parameters("fig4_zeroshot", params) == ""
    injected["seed"] = 0.0  # equal, but not the notebook's value (the rule refuses it)
    assert chapter.changed_parameters("fig4_zeroshot", params) == "seed=0.0"
    # the repository's own paper file, as book/index.md's plain papermill command passes it
    injected.clear()
    injected.update(yaml.safe_load((chapter.PARAMS_DIR / "fig4_zeroshot.paper.yaml").read_text()))
    assert chapter.changed_parameters("fig4_zeroshot") == ""


def test_the_loader_note_counts_a_rounds_batches_and_what_selection_reads() -> None:
    from dataclasses import replace

    from equinb.chapter import loader_note
    from equinb.engine import TrainConfig

    config = TrainConfig.updated(prefinetune_steps=100, batch_size=32, selection_batches=50)
    assert loader_note(1078, config) == ("1,078 training images: a round of the restarted loader has 34 batches "
                                         "of 32 (the schedule allows 100); selection on the first 50 training "
                                         "batches reads every training image")
    assert loader_note(50000, config).endswith("reads the first 1,600 training images")
    held_out = loader_note(50000, replace(config, selection="heldout"))  # nothing to say about the loader
    assert "has 100 batches" in held_out and "selection" not in held_out
    # shuffled epochs go on across rounds: a round has all its steps, whatever the data
    assert "shuffled epochs" in loader_note(1078, replace(config, data_order="shuffle")) and ": 100 batches" in \
        loader_note(1078, replace(config, data_order="shuffle"))


def test_the_settings_table_describes_every_training_setting() -> None:
    from dataclasses import fields

    from equinb.chapter import SETTING_MEANINGS, settings_table
    from equinb.engine import TrainConfig

    assert set(SETTING_MEANINGS) == {f.name for f in fields(TrainConfig)}  # a new setting needs its words
    table = settings_table({"original": TrainConfig.original(), "updated": TrainConfig.updated()})
    assert list(table.columns) == ["setting", "what_it_sets", "original", "updated"]
    row = table.set_index("setting").loc["lr"]
    assert (row.what_it_sets, row.original, row.updated) == ("learning rate of finetuning", "5e-07", "5e-08")
