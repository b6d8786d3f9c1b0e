# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: -jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Skin lesions without an orientation: ISIC 2018 (the article's ISIC table)
#
# ```{admonition} What this page shows
# :class: tip
# {glue:text}`profile_note` The methods themselves are stated in the [method primer](../book/methods.md) (see its
# {ref}`feature-map diagram <fig-method-feature-map>`).
# ```
#
# **Claim** {cite}`vlasenko2024even` (Vlasenko et al., §4.5.1). The article applies three λ-equitune variants to
# skin-lesion diagnosis, ISIC 2018 Task 3 {cite}`codella2019isic,tschandl2018ham10000`, with CLIP RN50 and the
# group of 90° rotations: the invariant λ-equitune in the original and the updated code, and the feature-map
# λ-equitune. It reports top-1 accuracy (%) after prefinetuning and after finetuning: original 15.03 / 63.73,
# updated 16.58 / 64.77, feature map 16.58 / 18.13. Its Figure 3 discussion adds that λ-equitune does better than
# equiattention there. (The article numbers this table "Table 3" a second time; its repository's README calls it
# Table 4.)
#
# **What this chapter adds.** Most of ISIC's images are nevi (NV; two thirds of its training images). A model
# that always answers "nevus" scores their share as top-1 without having learned anything, so plain accuracy
# cannot tell a classifier from a constant. The chapter counts the classes, computes the majority-class accuracy
# and the test-set size behind the article's percentages, and scores every run also by **balanced accuracy** (the
# mean recall over the classes; a constant answer scores 100/7 = 14.29%) and **macro F1**, with the zero-shot and
# majority baselines on the same split and the confusion matrices. It also runs the ISIC equiattention the article's
# Figure 3 shows.
#
# ```{admonition} Profiles: what this page runs on the small profile and on the paper profile
# :class: dropdown
# - *small* (default; CPU, offline once Debian's Fashion-MNIST package is fetched): a stand-in in
#   the article's regime. Seven Fashion-MNIST classes stand for MEL, NV, BCC, AKIEC, BKL, DF and VASC (shirt,
#   T-shirt/top, pullover, coat, dress, bag, sandal), at ISIC's training proportions for training and with ISIC's
#   193 validation counts as the test set; every image is turned by its own random rotation. The head favours no
#   orientation: per class, the prototype of one training image over all its rotations (how well it does without
#   training is in the baselines table). The trunk is the feature-map chapters' (MobileNetV2 block 17 at 72 px),
#   and the schedule is shortened as there: 10 prefinetuning rounds and 1 finetuning round.
# - *paper* (GPU, the ISIC data): CLIP RN50 on the official training split (10,015 images) and validation
#   split (the article's test set), with the settings of the article's ISIC job.
# ```

# %% tags=["parameters", "hide-input"]
profile: str = "small"  # small (MobileNetV2 + the Fashion-MNIST stand-in, CPU) or paper (CLIP RN50 + ISIC 2018, GPU)
backbone: str = "mobilenet_v2"  # mobilenet_v2 (small) or a CLIP ResNet name such as RN50 (paper)
dataset: str = "fashion_mnist"  # fashion_mnist (small: the stand-in) or isic2018 (paper)
test_split: str = "test"  # the split the table reports on: test (the stand-in) or val (ISIC's validation set)
stand_in_classes: list = [6, 0, 2, 4, 3, 8, 5]  # small: Fashion-MNIST classes for MEL, NV, BCC, AKIEC, BKL, DF, VASC
stand_in_train: int = 600  # small profile: training images of the stand-in, at ISIC's training proportions
stand_in_shots: int = 1  # small profile: training images per class behind the head's prototypes
stand_in_seed: int = 0  # small profile: seeds the stand-in's draw of images, their turns and the head's shots
group: str = "rot90"  # the group of the views and of the random training rotations (article: rot90)
image_size: int = 72  # small profile: MobileNetV2 input size in px (72 gives 3x3 maps)
split_block: int = 17  # small profile: MobileNetV2 blocks before this index are frozen and cached
last_block: int = 17  # small profile: the last MobileNetV2 block used; its output maps are M1's
prefinetune_rounds: int = 10  # article: 20
prefinetune_steps: int = 100  # article: 100 steps per round (fewer when the restarted loader runs out)
prelr: float = 0.33  # article: 0.33 for all three ISIC runs
finetune_rounds: int = 1  # article: 8 (each one epoch of ISIC's training split: its loader runs out first)
finetune_steps: int = 500  # article: 500 steps per round
lr_original: float = 5e-6  # article's ISIC job: 5e-6 for the original code (5e-7 on CIFAR100)
lr_updated: float = 5e-8  # article: 5e-8 for the updated code and the feature-map runs
seed: int = 0  # seeds training: λ initialisation, data order, dropout, random rotation per batch
noise_seeds: list = [1, 2, 3, 4]  # further seeds of every run ([]: none, and no verdict)
device: str = "cpu"  # cpu or cuda
data_root: str = ""  # folder of datasets and caches; empty means $EQUINB_DATA or ~/.cache/equinb
clip_paths: dict = {}  # backbone name to a local CLIP weight file (TorchScript or state dict); empty means download
clip_download_root: str = ""  # folder for CLIP downloads; empty means ~/.cache/clip
max_train: int = 10015  # paper profile: training images loaded (ISIC 2018 has 10,015; finetuning reads them all)
dataset_options: dict = {}  # per dataset, extra get_dataset options (isic2018 takes none besides its folder)

# %% tags=["hide-input", "exact"]
import pandas as pd
import torch
from myst_nb import glue

from equinb import get_group, viz
from equinb.analysis import group_changes, no_training_predictions, view_weights
from equinb.cache import data_root as default_data_root
from equinb.cache import run_cache_dir
from equinb.chapter import check_params, profile_note, settings_table
from equinb.data import (FASHION_MNIST_CLASSES, ISIC2018_CLASS_COUNTS, ISIC2018_CLASSES, ISIC2018_COLUMNS,
                         fashion_mnist_arrays, get_dataset)
from equinb.engine import TrainConfig, weight_net_for, weighted_model
from equinb.evidence import (STAGE_CHANGE, STAGES, compare_runs, finetune_changed, no_training_check,
                             no_training_finding, ran_away_note, stage_problems, stage_runs, stage_spread,
                             top1_cell, trained_minus_frozen)
from equinb.metrics import class_counts, classification_scores, confusion_matrix, majority_predictions
from equinb.noise import ORIENTATION_READINGS, chapter_tolerances, noise_note
from equinb.reference import ARTICLE_ROW_NAMES, article_shown, article_tab4, count_behind
from equinb.setups import (build_setup, correct_by_seed, feature_map_config, isic_stand_in, run_training,
                           seed_repeats, trained_model)
from equinb.tables import publish_verdicts, show, start_chapter
from equinb.verdicts import (NOT_TESTED, compare, effect_row, judge, orientation_kept,
                             verdict_row)
from equinb.weighting import EmbeddingWeightNet

start_chapter("tab4_isic2018")  # number its tables as the book numbers the chapter
check_params(profile=profile, backbone=backbone, dataset=dataset, test_split=test_split,
             stand_in_classes=stand_in_classes, stand_in_train=stand_in_train, stand_in_shots=stand_in_shots,
             stand_in_seed=stand_in_seed, group=group, image_size=image_size, split_block=split_block,
             last_block=last_block, prefinetune_rounds=prefinetune_rounds, prefinetune_steps=prefinetune_steps,
             prelr=prelr, finetune_rounds=finetune_rounds, finetune_steps=finetune_steps, lr_original=lr_original,
             lr_updated=lr_updated, seed=seed, noise_seeds=noise_seeds, device=device, data_root=data_root,
             clip_paths=clip_paths, clip_download_root=clip_download_root, max_train=max_train,
             dataset_options=dataset_options, feature_maps=True)
if (profile, dataset) not in (("small", "fashion_mnist"), ("paper", "isic2018")):
    raise ValueError(f"profile {profile!r} runs on {'fashion_mnist' if profile == 'small' else 'isic2018'}, got "
                     f"dataset={dataset!r}: the small profile builds its stand-in from Fashion-MNIST, the paper "
                     "profile reads ISIC 2018")
group_object = get_group(group)  # an unknown name fails here, listing the valid ones
if dataset == "isic2018":  # a missing data folder fails here, naming the files and where to get them
    for split in ("train", test_split):
        get_dataset("isic2018", split, root=data_root or str(default_data_root()))
schedule = dict(prefinetune_rounds=prefinetune_rounds, prefinetune_steps=prefinetune_steps, prelr=prelr,
                finetune_rounds=finetune_rounds, finetune_steps=finetune_steps, seed=seed)
runs = run_cache_dir(data_root)
noise = chapter_tolerances(profile, "imbalanced")  # how far these scores may move between CPUs (regression only)
viz.book_style()
glue("profile", profile, display=False)
glue("profile_note", profile_note(profile, "seven randomly turned Fashion-MNIST classes at ISIC 2018's class "
                                  "proportions, with a head that favours no orientation, stand in for the skin-lesion "
                                  "images", "CLIP RN50 on ISIC 2018 with the article's ISIC settings"), display=False)
print(f"profile={profile} backbone={backbone} dataset={dataset} test_split={test_split} group={group} "
      f"device={device}")

# %% [markdown]
# (tab4-size)=
# ## The article's numbers, and the test set behind them
# The article's text gives 194 test images. Every accuracy it prints is a whole number of correct images out
# of 193 and none is out of 194: the cell finds, for each number, the count $k$ with $100k/N$ equal to it
# at two decimals.

# %% tags=["hide-input", "exact"]
article = article_tab4()
show(article_shown(article), "The article's ISIC table: top-1 (%), CLIP RN50 on ISIC 2018", computed=False)
behind = pd.DataFrame([{"variant": ARTICLE_ROW_NAMES[v], "stage": m.replace("_top1", ""),
                        "article (%)": f"{article.loc[v, m]:.2f}",
                        **{f"k of {n}": "none" if (k := count_behind(article.loc[v, m], n)) is None else k
                           for n in (193, 194)}}
                       for v in article.index for m in article.columns])
show(behind, "The count of correct images behind each printed accuracy", computed=False)
fits = {n: bool((behind[f"k of {n}"] != "none").all()) for n in (193, 194)}
print("test-set size consistent with every printed accuracy: "
      + ", ".join(f"{n} images: {'yes' if ok else 'no'}" for n, ok in fits.items()))
glue("article_test_size", str(next((n for n, ok in fits.items() if ok), "neither")), display=False)

# %% [markdown]
# ## The data in numbers
# Class counts of both splits, computed from this build's data, beside ISIC 2018's (the official ground-truth
# files: 10,015 training and 193 validation images). The majority-class accuracy is the share of the
# largest class in the test split: the top-1 of a model that always answers it.

# %% tags=["hide-input", "exact"]
common = dict(backbone=backbone, dataset=dataset, image_size=image_size, split_block=split_block,
              last_block=last_block, device=device, data_root=data_root, clip_paths=clip_paths,
              clip_download_root=clip_download_root, max_train=max_train, dataset_options=dataset_options)
if profile == "small":
    setups = {level: isic_stand_in(group_object, level, classes=stand_in_classes, train_images=stand_in_train,
                                   shots=stand_in_shots, seed=stand_in_seed, image_size=image_size,
                                   split_block=split_block, last_block=last_block, data_root=data_root)
              for level in ("embeddings", "maps")}
else:
    setups = {level: build_setup(profile, level, group_object, **common) for level in ("embeddings", "maps")}
embeddings, maps = setups["embeddings"], setups["maps"]
n_classes = len(ISIC2018_CLASSES)
codes = list(ISIC2018_COLUMNS) if profile == "paper" else [f"{c} ({FASHION_MNIST_CLASSES[k]})" for c, k in
                                                             zip(ISIC2018_COLUMNS, stand_in_classes)]
counts = {split: class_counts(data.labels, n_classes) for split, data in (("train", embeddings.train),
                                                                           ("test", embeddings.test))}
data_table = pd.DataFrame({"class": codes, "name": ISIC2018_CLASSES, "train": counts["train"].tolist(),
                           "test": counts["test"].tolist(), "ISIC train": ISIC2018_CLASS_COUNTS["train"],
                           "ISIC validation": ISIC2018_CLASS_COUNTS["val"]})
for column in ("train", "test", "ISIC train", "ISIC validation"):
    data_table[f"{column} %"] = (100 * data_table[column] / data_table[column].sum()).round(1)
print(f"profile: {profile} ({embeddings.description})")
show(data_table, f"Images per class, this build beside ISIC 2018 (profile: {profile})", decimals=1)
labels = embeddings.test.labels
majority_top1 = 100 * float(counts["test"].max()) / len(labels)
print(f"test split: {len(labels)} images; majority class {codes[int(counts['test'].argmax())]}: "
      f"{int(counts['test'].max())} images, majority-class accuracy {majority_top1:.2f}%")
glue("test_size", len(labels), display=False)
glue("majority_top1", round(majority_top1, 2), display=False)

# %% [markdown]
# ## One sample per class
# As in the article's figure: the first training image of each class in the split's order, titled with its
# code and name and the class's counts in the training and test splits.

# %% tags=["remove-input", "exact"]
first = [int(torch.nonzero(embeddings.train.labels == k)[0]) for k in range(n_classes)]
if profile == "small":  # the stand-in's pixels in [0, 1], turned as the stand-in turned them
    pixels = fashion_mnist_arrays("train", data_root or None)[0]
    images = [group_object.act(torch.tensor(pixels[int(embeddings.index["train"][i])], dtype=torch.float32)[None, None]
                               / 255, int(embeddings.turns["train"][i]))[0, 0].numpy() for i in first]
else:  # decoded uint8 images at the backbone's input size
    images = [embeddings.train.inputs[i].float().cpu().numpy() / 255 for i in first]
titles = [f"{code.split(' ')[0]}\n{name}\ntrain {int(counts['train'][k])}, test {int(counts['test'][k])}"
          for k, (code, name) in enumerate(zip(codes, ISIC2018_CLASSES))]
viz.glue_figure("tab4_samples", viz.class_samples(images, titles), data=pd.DataFrame(
    {"class": codes, "name": list(ISIC2018_CLASSES), "train": counts["train"].tolist(),
     "test": counts["test"].tolist()}))

# %% [markdown]
# ```{glue:figure} tab4_samples
# :name: fig-tab4-samples
# :alt: Seven images, the first training image of each class, titled with the lesion class code, name and counts
#
# The first training image of each class. On the small profile these are Fashion-MNIST garments standing for the
# lesion classes, each turned by its own random rotation; the counts show the imbalance: one class holds two
# thirds of the images, two classes a handful. <a href="../data/tab4_isic2018/tab4_samples.csv">data (CSV)</a>
# ```

# %% [markdown]
# ## Baselines: the majority class and zero-shot
# The majority baseline always answers the most frequent training class. The zero-shot baselines use the frozen
# model and its head, with no training: vanilla on the image as given, equitune (the mean of the four views'
# probabilities) and equizero (the most confident view). On the paper profile the head is CLIP's text head
# with the article's five ISIC prompt templates; on the small profile the one-shot prototypes.

# %% tags=["hide-input", "tolerance-frozen"]
predictions = {"majority class": majority_predictions(embeddings.train.labels, len(labels)),
               **{f"zero-shot {m}": p for m, p in no_training_predictions(embeddings).items()}}
baselines = pd.DataFrame([dict(run=name, **classification_scores(p, labels, n_classes))
                          for name, p in predictions.items()])
show(baselines, f"Baselines without training on the {len(labels)} test images, scores in % (profile: {profile})")
glue("majority_balanced", round(float(baselines.balanced_accuracy[0]), 2), display=False)
# the summary's row without training: equitune as published (the mean of the views' probabilities), named in
# advance rather than picked as the best on these images
equitune_row = baselines.set_index("run").loc["zero-shot equitune"]
glue("zero_shot_equitune_top1", round(float(equitune_row.top1), 2), display=False)
glue("zero_shot_equitune_balanced", round(float(equitune_row.balanced_accuracy), 2), display=False)

# %% [markdown]
# ## Symmetry check
# Each variant's model, with its weighting network as initialised and its dropout off, on a few test images:
# the largest change of its logits when every image is turned by each rotation of the group (float rounding:
# invariant), and the same for the frozen model on one view alone (not invariant).

# %% tags=["exact"]
torch.manual_seed(seed)
device_of_head = next(embeddings.head.parameters()).device
invariant = weighted_model(embeddings.make_trunk(), EmbeddingWeightNet(embeddings.embed_dim), embeddings.head,
                           group_object, TrainConfig.updated(dropout_in_eval=False)).to(device_of_head).eval()
changes = group_changes({"invariant λ-equitune": invariant.forward_views,
                         "one view alone (no wrapper)": lambda v: invariant.head(invariant.view_outputs(v)[:, 0])},
                        embeddings.test, group_object)
for align in (False, True):
    fresh = weight_net_for("lambda_equitune", maps.map_shape).state_dict()
    model = trained_model(maps, feature_map_config(), "lambda_equitune", align, fresh)
    name = f"feature map ({'as described' if align else 'as published'})"
    changes |= group_changes({name: model.forward_views}, maps.test, group_object)
print(f"profile: {profile}; largest change of the logits over the group, 8 test images")
show(pd.Series(changes, name="max change over the group").rename_axis("model").reset_index(),
     "Symmetry of each variant's model")

# %% [markdown]
# (tab4-runs)=
# ## The ISIC table: the three runs of the article, the feature map as described, and equiattention
# Every setting of the runs, as the engine reads them. The feature-map runs use the article's feature-map code
# (softmax-normalised weights); the as-described run combines aligned views; equiattention is the article's
# Figure 3 module. Each run is repeated under the seeds below (for its prefinetuning only when its finetuning
# changed no test prediction).

# %% tags=["hide-input", "exact"]
configs = {"original invariant": TrainConfig.original(lr=lr_original, **schedule),
           "updated invariant": TrainConfig.updated(lr=lr_updated, **schedule),
           "feature map (as published)": feature_map_config(lr=lr_updated, **schedule)}
show(settings_table(configs), f"Settings of the article's three runs, as this build runs them (profile: {profile})")
article_schedule = dict(prefinetune_rounds=20, prefinetune_steps=100, finetune_rounds=8, finetune_steps=500)
shortened = [f"{k} {schedule[k]} (article {v})" for k, v in article_schedule.items() if schedule[k] != v]
print(f"schedule: {'as the article' if not shortened else 'shortened from the article: ' + ', '.join(shortened)}")
configs["feature map (as described)"] = configs["feature map (as published)"]
configs["equiattention (as published)"] = configs["feature map (as published)"]

# %% tags=["tolerance-imbalanced"]
article_rows = {"original invariant": "original_invariant", "updated invariant": "updated_invariant",
                "feature map (as published)": "feature_map"}
seeds = [seed, *noise_seeds]
repeats, rows = {}, []


def setup_of(name):  # the feature-map runs train on maps, the invariant ones on embeddings
    return maps if name.startswith(("feature map", "equiattention")) else embeddings


for name, config in configs.items():
    setup = setup_of(name)
    method = "equiattention" if name.startswith("equiattention") else "lambda_equitune"
    options = dict(method=method, align_views="as described" in name)
    run = run_training(setup, config, cache_dir=runs, **options)
    repeats[name] = [run, *seed_repeats(setup, config, noise_seeds, finetune=finetune_changed(run) > 0,
                                        cache_dir=runs, **options)]
    for stage, top1 in zip(STAGES, stage_spread(repeats[name])):  # each run's row holds its top-1 per stage
        scores = pd.DataFrame([classification_scores(r.predictions[stage], labels, n_classes)
                               for r in stage_runs(repeats[name], stage)]).mean()
        article_top1 = article.loc[article_rows[name], f"{stage}_top1"] if name in article_rows else float("nan")
        rows.append(dict(run=name, stage=stage, seeds=len(stage_runs(repeats[name], stage)), top1=scores.top1,
                         article_top1=article_top1, **{STAGE_CHANGE: top1[STAGE_CHANGE]},
                         balanced_accuracy=scores.balanced_accuracy, macro_f1=scores.macro_f1))
table4 = pd.DataFrame(rows)
print(f"profile: {profile}; {len(labels)} test images; majority-class accuracy {majority_top1:.2f}; "
      f"{ran_away_note(repeats)}")
print(noise_note(noise["imbalanced"], "scores (%)"))
show(table4, f"The ISIC table: scores in %, means over the seeds (profile: {profile})")
glue_names = {"original invariant": "original", "updated invariant": "updated",
              "feature map (as published)": "published", "feature map (as described)": "described",
              "equiattention (as published)": "attention"}
for r in table4.itertuples():
    glue(f"{glue_names[r.run]}_{r.stage}_balanced", round(r.balanced_accuracy, 2), display=False)
    glue(f"{glue_names[r.run]}_{r.stage}_seeds", int(r.seeds), display=False)  # the summary gives each row's count
    # the summary's table marks a mean that is no result of its stage (finetune changed nothing, loss ran away)
    glue(f"{glue_names[r.run]}_{r.stage}_cell", top1_cell(r.top1, repeats[r.run], r.stage), display=False)

# %% [markdown]
# (tab4-orientation)=
# ### Does the stand-in privilege an orientation?
# Per test image, whether the feature-map modules put their largest weight on the view that shows the image as it
# was before its random turn (the view that undoes the turn), over every seed. With nothing privileged this is one
# in four. The head cannot favour an orientation (its prototypes average all four); a share above one in four then
# means that the frozen ImageNet features still tell the original orientation apart.

# %% tags=["hide-input", "tolerance-imbalanced"]
undo = maps.original_views("test")
turn_rows, undo_hits = [], {}  # undo_hits[run]: [S, N], 1.0 where the largest weight undoes the image's turn
for name in ("feature map (as published)", "equiattention (as published)"):
    method = "equiattention" if name.startswith("equiattention") else "lambda_equitune"
    hits = torch.stack([(view_weights(trained_model(maps, configs[name], method, False, r.states["prefinetune"]),
                                      maps.test_feats, seed=seed).argmax(1) == undo).double()
                        for r in repeats[name]])
    undo_hits[name] = hits
    comparison = compare(torch.full_like(hits, 1 / group_object.order), hits)
    against_chance = judge(comparison, 0)  # "reversed": the share differs from chance (either way)
    turn_rows.append(dict(module=name, share=100 * float(hits.mean()), chance=100 / group_object.order,
                          **{"95% interval": f"[{comparison.interval[0] + 100 / group_object.order:.1f}, "
                                             f"{comparison.interval[1] + 100 / group_object.order:.1f}]"},
                          reading=ORIENTATION_READINGS.get(against_chance, against_chance)))
show(pd.DataFrame(turn_rows), f"Share (%) of test images whose largest weight undoes their turn, {len(seeds)} seeds "
                              f"(profile: {profile})", decimals=1)
for r in turn_rows:
    glue(f"undo_share_{glue_names[r['module']]}", round(r["share"], 1), display=False)
    glue(f"undo_reading_{glue_names[r['module']]}", f"{r['reading']}, 95% interval {r['95% interval']}",
         display=False)  # the summary page gives each share with its reading

# %% [markdown]
# (tab4-majority)=
# ## Does any run beat the majority class?
# Every run, and the zero-shot baselines, against the majority baseline: the difference of balanced accuracy
# (the majority baseline scores 100/7 = 14.29%) averaged over the seeds, with a 95% interval over the seeds and,
# within each class, the test images; and the difference of top-1, beside the article's (its top-1 minus the
# majority share of its test set, 123 of 193 images: the article reports no balanced accuracy). A trained row with
# fewer seeds than a verdict needs (a stage run under one seed) is not judged: its interval would leave out the
# seeds' noise.

# %% tags=["hide-input", "tolerance-imbalanced"]
majority = predictions["majority class"]
majority_correct = (majority == labels).double()
outcome = {"agrees": "beats it", "reversed": "below it", "inconclusive": "inconclusive"}
verdict_column = "beats the majority class in balanced accuracy?"  # top-1 can sit below it on 7 unequal classes
base = classification_scores(majority, labels, n_classes)
# the article's test set is ISIC 2018's validation split: its majority class (nevus) is 123 of the 193 images
# (rounded as the article rounds its top-1, so that its 63.73% finetune reads as the majority rate it is)
majority_count, val_images = max(ISIC2018_CLASS_COUNTS["val"]), sum(ISIC2018_CLASS_COUNTS["val"])
article_majority = round(100 * majority_count / val_images, 2)
candidates = {**{f"{name}, {stage}": correct_by_seed(stage_runs(rs, stage), stage, labels) for name, rs in
                 repeats.items() for stage in STAGES},
              **{name: (p == labels).double()[None] for name, p in predictions.items() if name != "majority class"}}
problems_of = {f"{name}, {stage}": stage_problems(rs, stage, setup_of(name), name)
               for name, rs in repeats.items() for stage in STAGES}  # a trained run's: diverged, unchanged, ...
beyond = []
for name, correct in candidates.items():
    comparison = compare(majority_correct.expand_as(correct), correct, strata=labels,
                         deterministic=name.startswith("zero-shot"))  # a frozen model has no random step
    top1_gain = 100 * float(correct.mean()) - base["top1"]
    run_name, _, stage = name.rpartition(", ")
    article_gain = (article.loc[article_rows[run_name], f"{stage}_top1"] - article_majority
                    if run_name in article_rows else float("nan"))
    beyond.append({"run": name, "balanced accuracy − majority": comparison.difference,
                   "95% interval (within classes)": f"[{comparison.interval[0]:+.2f}, {comparison.interval[1]:+.2f}]",
                   "noise": comparison.basis, "top-1 − majority": top1_gain, "article: top-1 − majority": article_gain,
                   verdict_column: outcome.get(verdict := judge(comparison, 1, problems_of.get(name, [])), verdict)})
beyond = pd.DataFrame(beyond)
print(f"profile: {profile}; differences in pp; majority class: top-1 {base['top1']:.2f}, balanced accuracy "
      f"{base['balanced_accuracy']:.2f} (the article's test set: top-1 {article_majority:.2f}; it reports no balanced "
      "accuracy)")
shown = beyond.copy()
for column in ("balanced accuracy − majority", "top-1 − majority", "article: top-1 − majority"):
    shown[column] = shown[column].map(lambda x: "—" if pd.isna(x) else f"{x:+.2f}")  # signed, as its interval
show(shown, f"Every run against the majority class (profile: {profile})")
# an article top-1 at its test set's majority share is what a model that answers the majority class scores
at_majority = [f"{variant.replace('_', ' ')} {stage} ({article.loc[variant, f'{stage}_top1']:.2f}%)"
               for variant in article.index for stage in STAGES
               if abs(article.loc[variant, f"{stage}_top1"] - article_majority) < 0.005]
at_majority_text = ", ".join(at_majority) or "none"
print(f"the article's top-1 at exactly its test set's majority share, {majority_count} of {val_images} images = "
      f"{article_majority:.2f}%: {at_majority_text}")
glue("article_at_majority", at_majority_text, display=False)
glue("article_majority_share", f"{majority_count} of {val_images}, {article_majority:.2f}%", display=False)
trained_rows = beyond[~beyond.run.str.startswith("zero-shot")]
untested = trained_rows[verdict_column].str.startswith(NOT_TESTED)
glue("runs_beating_majority", int((trained_rows[verdict_column] == "beats it").sum()), display=False)
glue("trained_rows", int((~untested).sum()), display=False)
glue("trained_rows_untested", int(untested.sum()), display=False)
zero_shot_rows = beyond[beyond.run.str.startswith("zero-shot")]
glue("zero_shot_beating_majority", int((zero_shot_rows[verdict_column] == "beats it").sum()), display=False)
glue("zero_shot_rows", len(zero_shot_rows), display=False)
glue("trained_rows_all", len(trained_rows), display=False)
glue("trained_rows_below_majority_top1", int((trained_rows["top-1 − majority"] < 0).sum()), display=False)

# %% [markdown]
# The article's numbers at exactly the majority share of its test set, the score of a model that always answers
# the most frequent class: {glue:text}`article_at_majority`.
#
# (tab4-zero-shot)=
# ## Does training beat the frozen model?
# Every trained run against the best of its own frozen model's zero-shot baselines (no training at all; the feature-map
# and equiattention runs start from the map-level model, the invariant ones from the embedding-level one), in balanced
# accuracy, with its interval as above. Which baseline is best is decided without favouring it: each half of the test
# images is scored by the baseline with the highest balanced accuracy on the *other* half (as in the Table 1
# chapter), since the best of three on the images it is scored on sits above its own expectation. A trained row that
# does not beat it gives no evidence that training added anything on this data; an *inconclusive* row is no evidence
# either way. The article prints no zero-shot number for ISIC 2018, so there is no article column.

# %% tags=["hide-input", "tolerance-imbalanced"]
frozen_comparisons = []  # (description, comparison, reasons) per run and stage
for setup in (embeddings, maps):
    own_runs = {name: rs for name, rs in repeats.items() if setup_of(name) is setup}
    frozen_comparisons += trained_minus_frozen([setup], own_runs, balanced=True)
frozen_rows = [effect_row(text, comparison, reasons=reasons) for text, comparison, reasons in frozen_comparisons]
print(f"profile: {profile}; differences in pp of balanced accuracy")
show(pd.DataFrame(frozen_rows), f"Every trained run minus the best of its frozen model's zero-shot baselines, "
                                f"balanced accuracy (profile: {profile})")
glue("no_training_finding", no_training_finding(frozen_comparisons), display=False)

# %% [markdown]
# ## Confusion matrices
# Rows are the true classes, columns the predicted ones, each cell a count of test images (seed 0). The panels show
# the updated code's invariant run after finetuning (named in advance: a pick of the best run, among runs a few
# points apart, could differ between CPUs), the row whose finetune top-1 the article prints as 63.73% (the original
# code), and the majority baseline, which puts every image in one column.

# %% tags=["remove-input", "exact"]
seed0 = {f"{name}, {stage}": rs[0].predictions[stage] for name, rs in repeats.items() for stage in STAGES}
panels = {name: seed0[name] for name in ("updated invariant, finetune", "original invariant, finetune")}
panels["majority class"] = majority
matrices = {name: confusion_matrix(p, labels, n_classes).numpy() for name, p in panels.items()}
viz.glue_figure("tab4_confusion", viz.confusion_heatmaps(matrices, [c.split(" ")[0] for c in codes],
                                                         title=f"profile: {profile}"),
                data=pd.DataFrame([dict(panel=name, true=codes[t], predicted=codes[q], images=int(m[t, q]))
                                   for name, m in matrices.items() for t in range(n_classes)
                                   for q in range(n_classes)]))

# %% [markdown]
# ```{glue:figure} tab4_confusion
# :name: fig-tab4-confusion
# :alt: Three confusion matrices as heat maps, true class by row and predicted class by column
#
# Confusion matrices on the test split: the updated and the original code's invariant runs after finetuning
# (seed 0), and the majority baseline. A model that predicts anything but the majority class fills more
# than one column. <a href="../data/tab4_isic2018/tab4_confusion.csv">data (CSV)</a>
# ```

# %% [markdown]
# (verdicts-tab4_isic2018)=
# ## Verdicts on the article's claims
# Differences of top-1 in pp, as the article's table reads, averaged over the seeds: updated minus original, feature map
# minus the updated invariant row, each run's finetune minus its prefinetune, and feature-map λ-equitune minus
# equiattention. Where the best no-training baseline in top-1 (of either level's frozen model) leaves no room (even a
# run with every test image right could not score measurably above it), the task is solved without training and the
# claims are not tested; so is a comparison with a prefinetune stage whose training loss ran away (its selected λ is no
# basis for a verdict). Where both compared runs score below answering the largest class for every test image, a top-1
# difference is not tested either: it can come from answering that class more or less often, and the reason gives the
# balanced-accuracy difference instead. The λ-equitune vs equiattention claim assumes that equiattention's weights are
# uniform on data without a natural orientation; a stand-in made by turning upright images may keep each image's
# original orientation in its pixels, which a module can learn to find ({ref}`the table above <tab4-orientation>`
# measures how often it does): where a module finds it beyond chance, the stand-in is not such data and the claim is not
# tested on it. Each verdict follows {ref}`the book's rule <verdict-rule>` (*agrees* or *reversed*: the interval
# excludes zero; *inconclusive*: it holds zero; *not tested here*: with its computed reason). The last table compares
# this build's own variants, and the two codes in balanced accuracy, where the article has no numbers.

# %% tags=["tolerance-imbalanced", "hide-input"]
solved = no_training_check([embeddings, maps])  # does the frozen model leave training room?


def tab4_claim(claim_id, a, stage_a, b, stage_b, setup=embeddings, premise=None):  # the verdict on run b minus a
    comparison, reasons, changed = compare_runs(repeats[a], stage_a, repeats[b], stage_b, setup, (a, b))
    return verdict_row(claim_id, comparison, reasons=[premise, solved, *reasons], changed=changed)


# The λ-equitune vs equiattention claim rests on equiattention's weights being uniform on data without a natural
# orientation. A stand-in made by turning upright images may keep each one's orientation: where a module finds it
# beyond chance (the table above), the stand-in is not such data and the claim is not tested on it.
attention_kept = orientation_kept(undo_hits, group_object.order) if maps.turns is not None else None


claims = [tab4_claim(f"tab4.updated_minus_original.{stage}", "original invariant", stage, "updated invariant", stage)
          for stage in STAGES]
claims += [tab4_claim(f"tab4.featuremap_minus_updated.{stage}", "updated invariant", stage,
                      "feature map (as published)", stage) for stage in STAGES]
claims += [tab4_claim(f"tab4.finetune_gain.{key}", name, "prefinetune", name, "finetune")
           for key, name in (("original", "original invariant"), ("updated", "updated invariant"),
                             ("featuremap", "feature map (as published)"))]
claims.append(tab4_claim("tab4.lambda_minus_attention", "equiattention (as published)", "prefinetune",
                         "feature map (as published)", "prefinetune", maps, premise=attention_kept))
publish_verdicts(claims, profile, "tab4_isic2018", "ISIC table claims and their verdicts")
own = []
for stage in STAGES:
    for a, b, setup, balanced, label in (
            ("feature map (as published)", "feature map (as described)", maps, False,
             f"feature map: as described − as published, {stage}"),
            ("original invariant", "updated invariant", embeddings, True,
             f"updated − original, balanced accuracy, {stage}")):
        comparison, reasons, _ = compare_runs(repeats[a], stage, repeats[b], stage, setup, (a, b), balanced=balanced)
        own.append(effect_row(label, comparison, reasons=reasons))
show(pd.DataFrame(own), f"This build's own comparisons, in pp (profile: {profile})")

# %% [markdown]
# (tab4-deviations)=
# ## Deviations and notes
# - **Plain accuracy on an imbalanced test set** ({ref}`deviation A.11 <dev-a11>`). The first table of this
#   chapter shows that the article's percentages are counts out of 193, and the data table gives the
#   majority-class accuracy of this build's test split. Whether a run learned more than the majority class
#   is what the balanced-accuracy comparison above computes; top-1 alone cannot say it.
# - **The ISIC job** ({ref}`deviation B.14 <dev-b14>`). The original code runs at the ISIC job's lr 5e-6
#   (not CIFAR100's 5e-7); every run reports on the full test split (the job's updated run lacks the flag
#   that the table's filter requires). Every setting is printed above the table.
# - **The test-set size** ({ref}`deviation B.21 <dev-b21>`). The text's 194 images do not fit the printed
#   accuracies; 193 does, as the first table computes.
# - **Finetuning** ({ref}`deviation A.8 <dev-a8>`). As in the Table 1 chapter, finetuning runs in the article's
#   precision (fp16 weights updated in place, fp32 norms) with the backbone in evaluation mode; where it changed no
#   test prediction the finetune verdicts say so.
# - **Small profile.** The stand-in has ISIC's imbalance, no preferred orientation in its head, and a no-training
#   baseline far from the ceiling, as the baseline table shows; it cannot show what CLIP knows about dermoscopic
#   images. What carries over is what each metric says about a run, and whether a run does more than answer the
#   majority class.
