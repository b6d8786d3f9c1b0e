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
# # Skin lesions without an orientation: ISIC 2018 (article Table 4)
#
# ```{admonition} What this page shows
# :class: tip
# This build ran the **{glue:text}`profile`** profile. On the *small* profile, seven digit classes at ISIC
# 2018's class proportions, each image turned by its own random rotation, stand in for the skin-lesion
# images: compare what the metrics say about each run, not the values (the verdict tables do). The *paper*
# profile runs the article's setting on the real data, and its numbers compare directly.
# The methods themselves are stated in the [method primer](../book/methods.md).
# ```
#
# **Claim** {cite}`vlasenko2024even` (Vlasenko et al., §4.5.1). The article applies three λ-equitune variants to
# skin-lesion diagnosis, ISIC 2018 Task 3 {cite}`codella2019isic,tschandl2018ham10000`, with CLIP RN50 and the
# group of 90° rotations: the invariant λ-equitune in the original and the updated code, and the feature-map
# λ-equitune. It reports top-1 accuracy (%) after prefinetuning and after finetuning: original 15.03 / 63.73,
# updated 16.58 / 64.77, feature map 16.58 / 18.13: the updated code above the original at both stages.
# (The article numbers this table "Table 3" a second time; its repository's README calls it Table 4.)
#
# **What this chapter adds.** Two thirds of ISIC's test images are nevi (NV). A model that always answers
# "nevus" scores about 64% top-1 without having learned anything, so plain accuracy cannot tell a classifier
# from a constant. The chapter counts the classes, computes the majority-class accuracy and the test-set size
# behind the article's percentages, and scores every run also by **balanced accuracy** (the mean recall over
# the classes; a constant answer scores 100/7 = 14.29%) and **macro F1**, with the zero-shot and majority
# baselines on the same split and the confusion matrices.
#
# **Profiles.**
# - *small* (default; CPU, offline, about a minute): an honest stand-in with the two properties that matter
#   here, no preferred orientation and a heavy class imbalance. Seven digit classes (0-6 stand for MEL, NV,
#   BCC, AKIEC, BKL, DF, VASC), drawn to ISIC's class proportions (the training split's for training, the
#   validation split's for testing), every image turned by its own random rotation. The setups are those of
#   the Table 2 chapter: MobileNetV2 features at 96 px, and the frozen head fitted on the upright digits
#   keeps the logits of the seven classes. It **cannot** show how little CLIP knows about dermoscopic
#   images: this head was fitted on digits. It **can** show what each metric says about the same predictions.
#   The schedule is shortened as in the Table 2 chapter: 10 prefinetuning rounds and 1 finetuning round.
# - *paper* (GPU, the ISIC data): CLIP RN50 on the official training split (10,015 images) and validation
#   split (the article's test set), with the settings of the article's ISIC job.

# %% tags=["parameters", "hide-input"]
profile: str = "small"  # small (MobileNetV2 + the digit stand-in, CPU) or paper (CLIP RN50 + ISIC 2018, GPU)
backbone: str = "mobilenet_v2"  # mobilenet_v2 (small) or a CLIP ResNet name such as RN50 (paper)
dataset: str = "digits"  # digits (small: the stand-in) or isic2018 (paper)
test_split: str = "test"  # the split the table reports on: test (digits) or val (ISIC's validation set, the article's)
stand_in_digits: list = [0, 1, 2, 3, 4, 5, 6]  # small profile: digits for MEL, NV, BCC, AKIEC, BKL, DF, VASC
stand_in_seed: int = 0  # small profile: seeds the stand-in's draw of images and their random rotations
group: str = "rot90"  # the group of the views and of the random training rotations (article: rot90)
image_size: int = 96  # small profile: MobileNetV2 input size in px (96 gives 3x3 maps)
split_block: int = 18  # small profile: MobileNetV2 blocks before this index are frozen and cached
prefinetune_rounds: int = 10  # article: 20
prefinetune_steps: int = 100  # article: 100 steps per round (fewer when the restarted loader runs out)
prelr: float = 0.33  # article: 0.33 for all three ISIC runs
finetune_rounds: int = 1  # article: 8 (each one epoch of ISIC's training split: its loader runs out first)
finetune_steps: int = 500  # article: 500 steps per round
lr_original: float = 5e-6  # article's ISIC job: 5e-6 for the original code (5e-7 on CIFAR100)
lr_updated: float = 5e-8  # article: 5e-8 for the updated code and the feature-map runs
seed: int = 0  # seeds training: λ initialisation, data order, dropout, random rotation per batch
noise_seeds: list = [1, 2, 3, 4]  # further seeds of the invariant rows' prefinetune runs ([]: none)
device: str = "cpu"  # cpu or cuda
data_root: str = ""  # folder of datasets and caches; empty means $EQUINB_DATA or ~/.cache/equinb
clip_paths: dict = {}  # backbone name to a local CLIP weight file (TorchScript or state dict); empty means download
clip_download_root: str = ""  # folder for CLIP downloads; empty means ~/.cache/clip
max_train: int = 10015  # paper profile: training images loaded (ISIC 2018 has 10,015; finetuning reads them all)
dataset_options: dict = {}  # per dataset, extra get_dataset options (isic2018 takes none besides its folder)

# %% tags=["hide-input"]
import pandas as pd
import torch
from IPython.display import display
from myst_nb import glue

from equinb import get_group, viz
from equinb.analysis import group_changes
from equinb.cache import data_root as default_data_root
from equinb.cache import run_cache_dir
from equinb.chapter import check_params
from equinb.data import ISIC2018_CLASS_COUNTS, ISIC2018_CLASSES, ISIC2018_COLUMNS, get_dataset, load_digits
from equinb.engine import TrainConfig, weighted_model
from equinb.metrics import class_counts, classification_scores, confusion_matrix, majority_predictions
from equinb.noise import noise_note, tolerance
from equinb.reference import article_tab4, count_behind, display_numbers
from equinb.setups import (build_setup, feature_map_config, feature_map_weight_net, imbalanced_stand_in,
                           run_training, seed_repeats, trained_model)
from equinb.verdicts import VERDICT_RULE, claim_row, judge, paired_interval, verdict_table
from equinb.weighting import EmbeddingWeightNet
from equinb.zeroshot import orbit_predictions

check_params(profile=profile, backbone=backbone, dataset=dataset, test_split=test_split,
             stand_in_digits=stand_in_digits, stand_in_seed=stand_in_seed, group=group, image_size=image_size,
             split_block=split_block, prefinetune_rounds=prefinetune_rounds, prefinetune_steps=prefinetune_steps,
             prelr=prelr, finetune_rounds=finetune_rounds, finetune_steps=finetune_steps, lr_original=lr_original,
             lr_updated=lr_updated, seed=seed, noise_seeds=noise_seeds, device=device, data_root=data_root,
             clip_paths=clip_paths, clip_download_root=clip_download_root, max_train=max_train,
             dataset_options=dataset_options, feature_maps=True)
if (profile, dataset) not in (("small", "digits"), ("paper", "isic2018")):
    raise ValueError(f"profile {profile!r} runs on {'digits' if profile == 'small' else 'isic2018'}, got "
                     f"dataset={dataset!r}: the small profile builds its stand-in from the digits, the paper "
                     "profile reads ISIC 2018")
group_object = get_group(group)  # an unknown name fails here, listing the valid ones
if dataset == "isic2018":  # a missing data folder fails here, naming the files and where to get them
    for split in ("train", test_split):
        get_dataset("isic2018", split, root=data_root or str(default_data_root()))
schedule = dict(prefinetune_rounds=prefinetune_rounds, prefinetune_steps=prefinetune_steps, prelr=prelr,
                finetune_rounds=finetune_rounds, finetune_steps=finetune_steps, seed=seed)
runs = run_cache_dir(data_root)
noise = {"imbalanced": tolerance("imbalanced")}  # the measured spread of these scores between CPUs and seeds
viz.book_style()
pd.set_option("display.precision", 2)
print(f"profile={profile} backbone={backbone} dataset={dataset} test_split={test_split} group={group} "
      f"device={device}")

# %% [markdown]
# (tab4-size)=
# ## The article's numbers, and the test set behind them
# The article's text gives 194 test images. Every accuracy it prints is a whole number of correct images out
# of 193 and none is out of 194: the cell finds, for each number, the count $k$ with $100k/N$ equal to it
# at two decimals.

# %%
article = article_tab4()
display(article)
behind = pd.DataFrame([{"variant": v, "stage": m.replace("_top1", ""), "article (%)": f"{article.loc[v, m]:.2f}",
                        **{f"k of {n}": "none" if (k := count_behind(article.loc[v, m], n)) is None else k
                           for n in (193, 194)}}
                       for v in article.index for m in article.columns])
display(behind)
fits = {n: bool((behind[f"k of {n}"] != "none").all()) for n in (193, 194)}
print("test-set size consistent with every printed accuracy: "
      + ", ".join(f"{n} images: {'yes' if ok else 'no'}" for n, ok in fits.items()))
glue("article_test_size", str(next((n for n, ok in fits.items() if ok), "neither")), display=False)

# %% [markdown]
# ## The data in numbers
# Class counts of both splits, computed from this build's data, beside ISIC 2018's (the official ground-truth
# files: 10,015 training and 193 validation images). The majority-class accuracy is the share of the
# largest class in the test split: the top-1 of a model that always answers it.

# %%
common = dict(backbone=backbone, dataset=dataset, image_size=image_size, split_block=split_block, device=device,
              data_root=data_root, clip_paths=clip_paths, clip_download_root=clip_download_root,
              max_train=max_train, dataset_options=dataset_options)
setups = {level: build_setup(profile, level, group_object, **common) for level in ("embeddings", "maps")}
if profile == "small":
    proportions = {"train": ISIC2018_CLASS_COUNTS["train"], "test": ISIC2018_CLASS_COUNTS["val"]}
    setups = {level: imbalanced_stand_in(s, stand_in_digits, proportions, stand_in_seed) for level, s in setups.items()}
embeddings, maps = setups["embeddings"], setups["maps"]
n_classes = len(ISIC2018_CLASSES)
codes = list(ISIC2018_COLUMNS) if profile == "paper" else [f"{c} ({d})" for c, d in zip(ISIC2018_COLUMNS,
                                                                                       stand_in_digits)]
counts = {split: class_counts(data.labels, n_classes) for split, data in (("train", embeddings.train),
                                                                           ("test", embeddings.test))}
data_table = pd.DataFrame({"class": codes, "name": ISIC2018_CLASSES, "train": counts["train"].tolist(),
                           "test": counts["test"].tolist(), "ISIC train": ISIC2018_CLASS_COUNTS["train"],
                           "ISIC validation": ISIC2018_CLASS_COUNTS["val"]})
for column in ("train", "test", "ISIC train", "ISIC validation"):
    data_table[f"{column} %"] = (100 * data_table[column] / data_table[column].sum()).round(1)
print(f"profile: {profile} ({embeddings.description})")
display(data_table)
majority_top1 = 100 * float(counts["test"].max()) / len(embeddings.test)
print(f"test split: {len(embeddings.test)} images; majority class {codes[int(counts['test'].argmax())]}: "
      f"{int(counts['test'].max())} images, majority-class accuracy {majority_top1:.2f}%")
glue("profile", profile, display=False)
glue("test_size", len(embeddings.test), display=False)
glue("majority_top1", round(majority_top1, 2), display=False)

# %% [markdown]
# ## One sample per class
# As in the article's figure: the first training image of each class in the split's order, titled with its
# code and name and the class's counts in the training and test splits.

# %% tags=["remove-input"]
first = [int(torch.nonzero(embeddings.train.labels == k)[0]) for k in range(n_classes)]
if profile == "small":  # the stand-in's pixels in [0, 1], turned as the stand-in turned them
    pixels = load_digits("train", image_size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)).tensors[0]
    images = [group_object.act(pixels[embeddings.index["train"][i]], int(embeddings.turns["train"][i]))
              .permute(1, 2, 0).numpy() for i in first]
else:  # decoded uint8 images at the backbone's input size
    images = [embeddings.train.inputs[i].float().numpy() / 255 for i in first]
titles = [f"{code}\n{name}\ntrain {int(counts['train'][k])}, test {int(counts['test'][k])}"
          for k, (code, name) in enumerate(zip(codes, ISIC2018_CLASSES))]
viz.glue_figure("tab4_samples", viz.class_samples(images, titles))

# %% [markdown]
# ```{glue:figure} tab4_samples
# :name: fig-tab4-samples
# :alt: A row of seven images, the first training image of each class, titled with class code, name and counts
#
# The first training image of each class. On the small profile these are digits standing for the lesion
# classes, each turned by its own random rotation; the counts show the imbalance: one class holds two
# thirds of the images, two classes a handful.
# ```

# %% [markdown]
# ## Baselines: the majority class and zero-shot
# The majority baseline always answers the most frequent training class. The zero-shot baselines use the frozen
# model and its head, with no training: vanilla on the image as given, equitune (the mean of the four views'
# probabilities) and equizero (the most confident view). On the paper profile the head is CLIP's text head
# with the article's five ISIC prompt templates.

# %%
view_logits = embeddings.head(embeddings.test_feats.to(next(embeddings.head.parameters()).device)).cpu()
labels = embeddings.test.labels
predictions = {"majority class": majority_predictions(embeddings.train.labels, len(labels)),
               **{f"zero-shot {m}": p for m, p in orbit_predictions(view_logits, group_object).items()}}
baselines = pd.DataFrame([dict(run=name, **classification_scores(p, labels, n_classes))
                          for name, p in predictions.items()]).assign(profile=profile)
print(f"profile: {profile}; {len(labels)} test images; scores in %")
display(display_numbers(baselines[["profile", "run", "top1", "balanced_accuracy", "macro_f1"]]))
glue("majority_balanced", round(float(baselines.balanced_accuracy[0]), 2), display=False)

# %% [markdown]
# ## Symmetry check
# Each variant's model, with its weighting network as initialised and its dropout off, on a few test images:
# the largest change of its logits when every image is turned by each rotation of the group (float rounding:
# invariant), and the same for the frozen model on one view alone (not invariant).

# %%
torch.manual_seed(seed)
device_of_head = next(embeddings.head.parameters()).device
invariant = weighted_model(embeddings.make_trunk(), EmbeddingWeightNet(embeddings.embed_dim), embeddings.head,
                           group_object, TrainConfig.updated(dropout_in_eval=False)).to(device_of_head).eval()
changes = group_changes({"invariant λ-equitune": invariant.forward_views,
                         "one view alone (no wrapper)": lambda v: invariant.head(invariant.view_outputs(v)[:, 0])},
                        embeddings.test, group_object)
for align in (False, True):
    fresh = feature_map_weight_net("lambda_equitune", maps.map_shape)().state_dict()
    model = trained_model(maps, feature_map_config(), "lambda_equitune", align, fresh)
    name = f"feature map ({'as described' if align else 'as published'})"
    changes |= group_changes({name: model.forward_views}, maps.test, group_object)
print(f"profile: {profile}; largest change of the logits over the group, 8 test images")
display(pd.Series(changes, name="max change over the group").to_frame())

# %% [markdown]
# (tab4-runs)=
# ## Table 4: the three runs of the article, and the feature map as described
# Every setting of the runs, as the engine reads them. The feature-map runs use the article's
# feature-map code (softmax-normalised weights); the as-described run combines aligned views.

# %%
configs = {"original invariant": TrainConfig.original(lr=lr_original, **schedule),
           "updated invariant": TrainConfig.updated(lr=lr_updated, **schedule),
           "feature map (as published)": feature_map_config(lr=lr_updated, **schedule)}
configs["feature map (as described)"] = configs["feature map (as published)"]
display(pd.DataFrame({name: c.as_dict() for name, c in list(configs.items())[:3]}).astype(str))

# %% tags=["tolerance-imbalanced"]
article_rows = {"original invariant": "original_invariant", "updated invariant": "updated_invariant",
                "feature map (as published)": "feature_map"}
trained, rows = {}, []
for name, config in configs.items():
    setup = maps if name.startswith("feature map") else embeddings
    weight_net = feature_map_weight_net("lambda_equitune", maps.map_shape) if setup is maps else None
    trained[name] = run = run_training(setup, config, weight_net=weight_net, cache_dir=runs,
                                       align_views="as described" in name)
    for stage in ("prefinetune", "finetune"):
        scores = classification_scores(run.predictions[stage], labels, n_classes)
        article_top1 = article.loc[article_rows[name], f"{stage}_top1"] if name in article_rows else float("nan")
        rows.append(dict(run=name, stage=stage, top1=scores["top1"], article_top1=article_top1,
                         balanced_accuracy=scores["balanced_accuracy"], macro_f1=scores["macro_f1"]))
table4 = pd.DataFrame(rows).assign(profile=profile)
print(f"profile: {profile}; {len(labels)} test images; scores in %; majority-class accuracy {majority_top1:.2f}")
print(noise_note(noise["imbalanced"], "scores (%)"))
display(display_numbers(table4[["profile", "run", "stage", "top1", "article_top1", "balanced_accuracy",
                                "macro_f1"]]))
glue_names = {"original invariant": "original", "updated invariant": "updated",
              "feature map (as published)": "published", "feature map (as described)": "described"}
for r in table4.itertuples():
    glue(f"{glue_names[r.run]}_{r.stage}_top1", round(r.top1, 2), display=False)
    glue(f"{glue_names[r.run]}_{r.stage}_balanced", round(r.balanced_accuracy, 2), display=False)

# %% [markdown]
# (tab4-noise)=
# ### Noise: other seeds of the invariant rows
# The invariant rows train on cached embeddings, so their prefinetuning is repeated under the seeds below
# (λ initialisation, dropout, the random rotation of every batch; the stand-in's images stay the same). The
# feature-map rows are not repeated, to keep the book's build short: their noise is the measured tolerance.

# %% tags=["tolerance-imbalanced"]
seeds = [seed, *noise_seeds]
repeats = {name: [trained[name], *seed_repeats(embeddings, configs[name], noise_seeds, cache_dir=runs)]
           for name in ("original invariant", "updated invariant")}
seed_scores = pd.DataFrame([dict(run=name, seed=s, **classification_scores(r.predictions["prefinetune"], labels,
                                                                          n_classes))
                            for name, rs in repeats.items() for s, r in zip(seeds, rs)])
spread = seed_scores.groupby("run", sort=False)[["top1", "balanced_accuracy", "macro_f1"]].agg(["mean", "std"])
print(f"profile: {profile}; prefinetune scores (%) over seeds {seeds}")
display(spread)

# %% [markdown]
# (tab4-majority)=
# ## Does any run beat the majority class?
# Every run, and the zero-shot baselines, against the majority baseline: the difference of balanced accuracy
# (the majority baseline scores 100/7 = 14.29%) with a 95% interval that resamples the test images within each
# class, and the difference of top-1. A run "beats it" when the balanced-accuracy interval excludes 0 and
# the difference exceeds the measured tolerance of these scores.

# %% tags=["tolerance-imbalanced"]
def correct(predicted):  # per test image: 1.0 where the prediction is right
    return (predicted == labels).double()


majority = predictions["majority class"]
outcome = {"agrees": "beats it", "reversed": "below it", "within noise": "within noise"}
candidates = {**{f"{name}, {stage}": run.predictions[stage] for name, run in trained.items()
                 for stage in ("prefinetune", "finetune")},
              **{name: p for name, p in predictions.items() if name != "majority class"}}
base = classification_scores(majority, labels, n_classes)
scores = {name: classification_scores(p, labels, n_classes) for name, p in candidates.items()}
beyond = []
for name, predicted in candidates.items():
    gain = scores[name]["balanced_accuracy"] - base["balanced_accuracy"]
    interval = paired_interval(correct(majority), correct(predicted), strata=labels)
    # the direction asked is "above the majority class": judged as a claim with a positive sign
    verdict = judge(gain, 1.0, interval=interval, tolerance=noise["imbalanced"].absolute)
    beyond.append({"run": name, "balanced accuracy − majority": gain,
                   "95% interval (within classes)": f"[{interval[0]:+.2f}, {interval[1]:+.2f}]",
                   "top-1 − majority": scores[name]["top1"] - base["top1"],
                   "beats the majority class?": outcome[verdict]})
beyond = pd.DataFrame(beyond)
print(f"profile: {profile}; differences in pp; majority class: top-1 {base['top1']:.2f}, balanced accuracy "
      f"{base['balanced_accuracy']:.2f}")
print(noise_note(noise["imbalanced"], "scores (%)"))
display(display_numbers(beyond))
trained_rows = beyond[~beyond.run.str.startswith("zero-shot")]
glue("runs_beating_majority", int((trained_rows["beats the majority class?"] == "beats it").sum()), display=False)
glue("trained_rows", len(trained_rows), display=False)

# %% [markdown]
# ## Confusion matrices
# Rows are the true classes, columns the predicted ones, each cell a count of test images. The panels show the
# run with the highest balanced accuracy, the row whose finetune top-1 the article prints as 63.73% (the
# original code), and the majority baseline, which puts every image in one column.

# %% tags=["remove-input"]
best = max(candidates, key=lambda n: scores[n]["balanced_accuracy"])
panels = {f"best: {best}": candidates[best], "original invariant, finetune": candidates["original invariant, finetune"],
          "majority class": majority}
matrices = {name: confusion_matrix(p, labels, n_classes).numpy() for name, p in panels.items()}
viz.glue_figure("tab4_confusion", viz.confusion_heatmaps(matrices, codes, title=f"profile: {profile}"))
glue("best_run", best, display=False)

# %% [markdown]
# ```{glue:figure} tab4_confusion
# :name: fig-tab4-confusion
# :alt: Three confusion matrices as heat maps, true class by row and predicted class by column
#
# Confusion matrices on the test split: the run with the best balanced accuracy, the original code after
# finetuning, and the majority baseline. A model that predicts anything but the majority class fills more
# than one column.
# ```

# %% [markdown]
# ## Verdicts: the article's claims, tested
# Differences of top-1 in pp, as the article's table reads: updated minus original, and feature map minus the
# updated invariant row, per stage. Prefinetune differences of the invariant rows have a seed spread; the
# others use the measured tolerance of these scores. The rule: {glue:text}`verdict_rule`. The last rows
# compare this build's own variants, and the two codes in balanced accuracy, where the article has no
# numbers.

# %% tags=["tolerance-imbalanced", "hide-input"]
glue("verdict_rule", VERDICT_RULE, display=False)


def claim(text: str, a: str, b: str, stage: str, metric: str = "top1", article_diff=None):  # run b minus run a
    seeds_a, seeds_b = repeats.get(a), repeats.get(b)
    seed_diffs = None
    if stage == "prefinetune" and seeds_a and seeds_b and len(seeds) > 1:
        seed_diffs = [classification_scores(y.predictions[stage], labels, n_classes)[metric]
                      - classification_scores(x.predictions[stage], labels, n_classes)[metric]
                      for x, y in zip(seeds_a, seeds_b)]
    pa, pb = trained[a].predictions[stage], trained[b].predictions[stage]
    difference = (classification_scores(pb, labels, n_classes)[metric]
                  - classification_scores(pa, labels, n_classes)[metric])
    strata = labels if metric == "balanced_accuracy" else None  # resampled within classes, as the metric weighs them
    return claim_row("Table 4", text, article_diff, difference, seed_differences=seed_diffs,
                     interval=paired_interval(correct(pa), correct(pb), strata=strata),
                     tolerance=noise["imbalanced"].absolute)


def article_diff(a: str, b: str, stage: str) -> float:
    return article.loc[article_rows[b], f"{stage}_top1"] - article.loc[article_rows[a], f"{stage}_top1"]


stages = ("prefinetune", "finetune")
pairs = [("updated − original", "original invariant", "updated invariant"),
         ("feature map − updated invariant", "updated invariant", "feature map (as published)")]
claims = [claim(f"{text}, {stage}", a, b, stage, article_diff=article_diff(a, b, stage))
          for text, a, b in pairs for stage in stages]
claims += [claim(f"as described − as published, {stage}", "feature map (as published)", "feature map (as described)",
                 stage) for stage in stages]
claims += [claim(f"updated − original, balanced accuracy, {stage}", "original invariant", "updated invariant", stage,
                 metric="balanced_accuracy") for stage in stages]
verdicts = verdict_table(claims, profile)
print(f"profile: {profile}; differences in pp")
display(verdicts)
glue("verdicts", verdicts, display=False)

# %% [markdown]
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
# - **Finetuning** ({ref}`deviation A.8 <dev-a8>`). As in the Table 1 chapter, the small profile finetunes
#   fp32 weights; the article's fp16 weights, updated in place, keep only the steps large enough to survive
#   rounding.
# - **Small profile.** The stand-in has ISIC's imbalance and no preferred orientation, but its frozen head was
#   fitted on upright digits, and the zero-shot table shows how well it already separates the classes, where
#   the article's CLIP starts near 15% top-1. Its levels are therefore not comparable with the article's; what
#   carries over is what each metric says about a run, and whether a run does more than answer the majority
#   class.
