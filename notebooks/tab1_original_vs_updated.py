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
# # Invariant λ-equitune: the original vs the updated code (article Table 1)
#
# ```{admonition} What this page shows
# :class: tip
# This build ran the **{glue:text}`profile`** profile. On the *small* profile, a MobileNetV2 on the 8×8 digits,
# with its last block finetuned, stands in for CLIP RN50 on CIFAR100: compare the directions and sizes of the
# differences with the article's, not the values (the verdict tables do). The *paper* profile runs the article's
# setting, and its numbers compare directly. The methods themselves are stated in the
# [method primer](../book/methods.md).
# ```
#
# **Claim** {cite}`vlasenko2024even` (Vlasenko et al., §4.1, Table 1). The authors changed three things in the original
# code:
# they removed a double softmax, trained the λ network end to end with the backbone, and lowered the
# finetuning learning rate. With CLIP RN50 on CIFAR100 under random 90° rotations, accuracy rose by
# +3.70 pp after prefinetuning (31.42 → 35.12) and by +4.98 pp after finetuning (51.17 → 56.15).
#
# **What runs here.** The engine `equinb.engine`:
# - *Prefinetuning* trains only the λ network, on per-view features of the frozen backbone that are
#   cached once. This is exact: a random group transformation only permutes the views.
# - Before each round, the λ network is scored on a selection set and the best copy is kept.
# - *Finetuning* then trains the backbone (original code) or the backbone and λ together (updated
#   code).
#
# The two code versions are `TrainConfig.original()` and `TrainConfig.updated()`. All of the article's
# quirks stay on in both, as published:
# - an unshuffled loader restarted every round;
# - selection on the first 50 training batches;
# - dropout active at evaluation;
# - logit factor 1.
#
# **Profiles.**
# - *small* (default; CPU, offline, about 1 minute):
#   - MobileNetV2 with ImageNet weights at 64 px on the digits.
#   - Blocks 0-17 are frozen and their per-view outputs cached. Only the last block (the 1x1
#     convolution 320 → 1280 with its BatchNorm) is finetuned: the depthwise convolutions of earlier
#     blocks are too slow to backpropagate through on a CPU.
#   - A linear head, fitted once on the normalised embeddings of the upright training digits, stands
#     in for CLIP's text head.
#   - The article's schedule and learning rates are kept. With 1,078 training images, a round of the
#     restarted loader ends after 34 batches.
# - *paper* (GPU, internet): CLIP RN50, CIFAR100 train and test, the article's full schedule.

# %% tags=["parameters", "hide-input"]
profile: str = "small"  # small (MobileNetV2 + digits, CPU) or paper (CLIP RN50 + CIFAR100, GPU)
backbone: str = "mobilenet_v2"  # mobilenet_v2 (small) or a CLIP ResNet or ViT name (paper)
dataset: str = "digits"  # digits (small) or cifar100 (paper)
groups: list = ["rot90", "rot180"]  # groups of Table 1; rot180 is the article's flip
image_size: int = 64  # MobileNetV2 input size in px
split_block: int = 18  # small profile: MobileNetV2 blocks before this index are frozen and cached
prefinetune_rounds: int = 20  # article: 20
prefinetune_steps: int = 100  # article: 100 steps per round (fewer when the restarted loader runs out)
prelr: float = 0.33  # article: 0.33
finetune_rounds: int = 8  # article: 8
finetune_steps: int = 500  # article: 500 steps per round
lr_original: float = 5e-7  # article: original code
lr_updated: float = 5e-8  # article: updated code
seed: int = 0  # article: 0
noise_seeds: list = [1, 2, 3, 4]  # further seeds of every prefinetune run, for its spread ([] skips them)
device: str = "cpu"  # cpu or cuda
data_root: str = ""  # folder of datasets and caches; empty means $EQUINB_DATA or ~/.cache/equinb
clip_paths: dict = {}  # backbone name to a local CLIP weight file (TorchScript or state dict); empty means download
clip_download_root: str = ""  # folder for CLIP downloads; empty means ~/.cache/clip
max_train: int = 16000  # paper profile: training images loaded (the article only ever sees the first 16,000)
dataset_options: dict = {}  # per dataset, extra get_dataset options, for example cifar100: download True

# %% tags=["hide-input"]
from dataclasses import replace

import pandas as pd
import torch
from IPython.display import display
from myst_nb import glue

from equinb import get_group, viz
from equinb.analysis import group_changes
from equinb.cache import run_cache_dir
from equinb.chapter import check_params
from equinb.engine import TrainConfig, sgd_step_survival, total_drift, weighted_model
from equinb.noise import noise_note, tolerance
from equinb.reference import article_tab1, beside_article
from equinb.setups import build_setup, run_training, seed_repeats
from equinb.verdicts import VERDICT_RULE, claim_row, judge, paired_interval, verdict_table
from equinb.weighting import EmbeddingWeightNet

check_params(profile=profile, backbone=backbone, dataset=dataset, groups=groups, image_size=image_size,
             split_block=split_block, prefinetune_rounds=prefinetune_rounds, prefinetune_steps=prefinetune_steps,
             prelr=prelr, finetune_rounds=finetune_rounds, finetune_steps=finetune_steps, lr_original=lr_original,
             lr_updated=lr_updated, seed=seed, noise_seeds=noise_seeds, device=device, data_root=data_root,
             clip_paths=clip_paths,
             clip_download_root=clip_download_root, max_train=max_train, dataset_options=dataset_options)
group_objects = {name: get_group(name) for name in groups}  # unknown names fail here, listing valid ones
configs = {"original": TrainConfig.original(lr=lr_original), "updated": TrainConfig.updated(lr=lr_updated)}
configs = {k: replace(c, prefinetune_rounds=prefinetune_rounds, prefinetune_steps=prefinetune_steps, prelr=prelr,
                      finetune_rounds=finetune_rounds, finetune_steps=finetune_steps, seed=seed)
           for k, c in configs.items()}
runs = run_cache_dir(data_root)
top1_noise = tolerance("top1")  # how far a trained top-1 moves between CPUs and seeds (measured)
viz.book_style()
pd.set_option("display.precision", 2)
print(f"profile={profile} backbone={backbone} dataset={dataset} groups={groups} device={device}")

# %% [markdown]
# ## The article's numbers
# The table gives top-1 accuracy in %. The text states the relative gains as 11.12% and 9.28%. Computed
# from its own table they are 11.78% and 9.73%, and the cell below recomputes them.

# %%
article = article_tab1()
display(article)
for metric in ("prefinetune_top1", "finetune_top1"):
    o, u = article.loc[("rot90", "original"), metric], article.loc[("rot90", "updated"), metric]
    print(f"rot90 {metric}: +{u - o:.2f} pp, relative gain {100 * (u - o) / o:.2f}%")

# %% [markdown]
# ## Setup (cached once) and a symmetry check
# One frozen pass over every view of every image gives the cached inputs and features. rot180's views are
# views 0 and 2 of rot90's, so they are reused. The check takes a few test images. It feeds their views
# in every order a group element produces, and prints the largest change of the λ-equitune logits, which
# is float rounding. It also prints the change of the logits of one view alone, which is not invariant.

# %%
base = "rot90" if "rot90" in groups else groups[0]
full = build_setup(profile, "embeddings", group_objects[base], backbone=backbone, dataset=dataset,
                   image_size=image_size, split_block=split_block, device=device, data_root=data_root,
                   clip_paths=clip_paths, clip_download_root=clip_download_root, max_train=max_train,
                   dataset_options=dataset_options)
setups = {name: full if name == base else full.restricted(g, [full.group.elements.index(e) for e in g.elements])
          for name, g in group_objects.items()}
print(full.description)
torch.manual_seed(seed)
model = weighted_model(full.make_trunk(), EmbeddingWeightNet(full.embed_dim), full.head, full.group,
                       TrainConfig.updated(dropout_in_eval=False)).to(full.head.weight.device).eval()
changes = group_changes({"lambda-equitune": model.forward_views, "one view": lambda v: model.view_outputs(v)[:, 0]},
                        full.test, full.group)
for label, change in changes.items():
    print(f"{label:>16}: max change over the group = {change}")

# %% [markdown]
# (tab1-runs)=
# ## Train both code versions on each group
# Every setting of the two runs, as the engine reads it (`TrainConfig.original()` and `TrainConfig.updated()`
# with this chapter's schedule):

# %%
display(pd.DataFrame({code: config.as_dict() for code, config in configs.items()}).astype(str))

# %% tags=["tolerance-top1"]
rows, curves, trained = [], [], {}
for name, setup in setups.items():
    for code, config in configs.items():
        trained[name, code] = run = run_training(setup, config, cache_dir=runs)
        rows.append(dict(group=name, code=code, **run.row))
        curves += [dict(run=f"{code} / {name}", **h) for h in run.history]
ours = pd.DataFrame(rows).assign(profile=profile)
curves = pd.DataFrame(curves)
print(noise_note(top1_noise, "top-1 accuracies (%)"))
display(ours)

# %% [markdown]
# ## This run beside the article

# %% tags=["tolerance-top1"]
print(f"profile: {profile} ({full.description})")
display(beside_article(ours, article, on=["group", "code"], show=("profile", "group", "code"),
                       with_delta=profile == "paper"))  # a delta across profiles would mean nothing
for _, r in ours.iterrows():
    for stage in ("prefinetune", "finetune"):
        glue(f"{r.group}_{r.code}_{stage}_top1", round(float(r[f"{stage}_top1"]), 2), display=False)
glue("profile", profile, display=False)

# %% [markdown]
# (tab1-noise)=
# ## Noise: other seeds, and the test set
# Each prefinetune run again under the seeds below. A seed sets the λ network's initialisation, its
# dropout and the random rotation of every batch (the restarted loader's order does not depend on it).
# Finetuning is not repeated. The cell prints the mean and standard deviation of the prefinetune top-1
# over all seeds.

# %% tags=["tolerance-top1"]
seeds = [seed, *noise_seeds]
repeats = {key: [run, *seed_repeats(setups[key[0]], configs[key[1]], noise_seeds, cache_dir=runs)]
           for key, run in trained.items()}
spread = pd.DataFrame([dict(group=g, code=c, top1=r.row["prefinetune_top1"]) for (g, c), rs in repeats.items()
                       for r in rs]).groupby(["group", "code"], sort=False).top1.agg(["count", "mean", "std"])
print(f"profile: {profile}; prefinetune top-1 (%) over seeds {seeds}")
display(spread)


def correct(run, stage: str, setup=full):  # per test image: 1.0 where the run's prediction is right
    return (run.predictions[stage] == setup.test.labels).double()


# %% [markdown]
# (tab1-switches)=
# ## As described, one switch at a time
# The article's text describes the method differently from its code in four places. Each row below starts
# from the updated code and changes one of them, under the chapter's seed. The runs are prefinetune-only:
# in the updated code finetuning at lr 5e-8 changed no test prediction on this profile (the two columns of
# the updated rows above are equal). The noise of a difference is its paired interval over the test
# images, and twice the standard deviation of a difference between two seeds, estimated as √2 times the
# seed spread of the updated row above.

# %% tags=["tolerance-top1"]
switches = {"λ normalised by its sum (A.2)": dict(normalisation="sum"),
            "dropout off at evaluation (A.3)": dict(dropout_in_eval=False),
            "selection on a held-out split (A.4)": dict(selection="heldout"),
            "shuffled data order": dict(data_order="shuffle")}
reference = trained[base, "updated"]
reference_sd = spread.loc[(base, "updated"), "std"] * 2 ** 0.5 if len(seeds) > 1 else None
effects = []
for label, change in switches.items():
    switched = run_training(full, replace(configs["updated"], finetune_rounds=0, **change), cache_dir=runs)
    difference = switched.row["prefinetune_top1"] - reference.row["prefinetune_top1"]
    interval = paired_interval(correct(reference, "prefinetune"), correct(switched, "prefinetune"))
    verdict = judge(difference, None, interval=interval, seed_sd=reference_sd, tolerance=top1_noise.absolute)
    effects.append({"switch": label, "prefinetune top-1": switched.row["prefinetune_top1"],
                    "minus as published": difference, "95% interval": f"[{interval[0]:+.2f}, {interval[1]:+.2f}]",
                    # the header is wider than either value, so a flip does not re-flow the printed table
                    "effect of the switch": "changes the result" if verdict != "within noise" else verdict})
print(f"profile: {profile}; group {base}, seed {seed}; prefinetune top-1 (%); the updated code as published: "
      f"{reference.row['prefinetune_top1']:.2f}")
display(pd.DataFrame(effects))

# %% [markdown]
# (tab1-drift)=
# ## What finetuning changes ({ref}`deviation A.8 <dev-a8>`)
# First, for each run: the share of the trunk's weight entries that finetuning changed at all, and the
# relative change of the trunk's weights, $\lVert w - w_0\rVert / \lVert w_0\rVert$ (fp32 weights, as this
# profile trains them).

# %% tags=["tolerance-top1"]
rows = []
for (g, c), r in trained.items():
    total = total_drift(r.drift)
    rows.append({"group": g, "code": c, "lr": f"{configs[c].lr:.0e}",
                 "entries changed": f"{total['changed_share']:.1%}",
                 "relative change": f"{total['relative_change']:.2e}", "prefinetune_top1": r.row["prefinetune_top1"],
                 "finetune_top1": r.row["finetune_top1"]})
print(f"profile: {profile}; trunk: {full.description}")
display(pd.DataFrame(rows))

# %% [markdown]
# Second, the mechanism behind the article's finetune column: on CUDA its CLIP holds fp16 weights, which SGD
# updates in place (`param_dtype="fp16_inplace"`). The cell computes the trunk's gradient on one training
# batch (the updated code, its selected λ network) and counts the weight entries that the first SGD step
# changes at each of the article's learning rates, once with fp32 weights and once with the step rounded to
# fp16. (A full fp16 finetune is not run here: fp16 arithmetic on a CPU is too slow for the book's build.)

# %% tags=["tolerance-top1"]
model = weighted_model(full.make_trunk(), EmbeddingWeightNet(full.embed_dim), full.head, full.group,
                       configs["updated"]).to(full.head.weight.device)
model.weight_net.load_state_dict(trained[base, "updated"].states["prefinetune"])
views, labels = full.train.batch(torch.arange(min(configs["updated"].batch_size, len(full.train))))
survival = pd.DataFrame(sgd_step_survival(model, views, labels, [lr_updated, lr_original]))
survival = survival.pivot_table(index="lr", columns="weights", values="changed_share")[["fp32", "fp16"]]
print(f"profile: {profile}; share of the trunk's weight entries changed by the first SGD step, group {base}")
display(survival.map(lambda v: f"{v:.2%}"))

# %% [markdown]
# ## Verdicts: the article's claims, tested
# Updated minus original, per group and stage, in pp. Prefinetune differences have a seed spread;
# finetune differences, run once, use the measured tolerance of a trained top-1 instead. The rule:
# {glue:text}`verdict_rule`.

# %% tags=["tolerance-top1", "hide-input"]
glue("verdict_rule", VERDICT_RULE, display=False)
claims = []
for name in setups:
    original, updated = repeats[name, "original"], repeats[name, "updated"]
    for stage in ("prefinetune", "finetune"):
        ours_diff = trained[name, "updated"].row[f"{stage}_top1"] - trained[name, "original"].row[f"{stage}_top1"]
        article_diff = (article.loc[(name, "updated"), f"{stage}_top1"] - article.loc[(name, "original"),
                        f"{stage}_top1"]) if (name, "updated") in article.index else None
        seed_diffs = ([u.row["prefinetune_top1"] - o.row["prefinetune_top1"] for o, u in zip(original, updated)]
                      if stage == "prefinetune" and len(seeds) > 1 else None)
        claims.append(claim_row(
            "Table 1", f"updated − original, {stage}, {name}", article_diff, ours_diff,
            interval=paired_interval(correct(trained[name, "original"], stage, setups[name]),
                                     correct(trained[name, "updated"], stage, setups[name])),
            seed_differences=seed_diffs, tolerance=top1_noise.absolute))
verdicts = verdict_table(claims, profile)
display(verdicts)
glue("verdicts", verdicts, display=False)
for row in claims:
    key = row["claim"].split(", ", 1)[1].replace(", ", "_")  # e.g. prefinetune_rot90
    stage, name = key.split("_", 1)
    glue(f"{name}_{stage}_gain", float(row["ours"]), display=False)
    glue(f"{name}_{stage}_verdict", row["verdict"], display=False)
    glue(f"{name}_{stage}_article_gain", row["article"], display=False)

# %% [markdown]
# ## Learning curves

# %% tags=["remove-input"]
viz.glue_figure("tab1_curves", viz.learning_curves(curves, title=f"Table 1 runs (profile: {profile})"))

# %% [markdown]
# ```{glue:figure} tab1_curves
# :name: fig-tab1-curves
# :alt: Two line charts of top-1 (%) per round, one line per run: selection accuracy, then test accuracy
#
# The Table 1 runs round by round. Left: the selection accuracy measured before each prefinetuning round;
# the best of these picks the weighting network. Right: test accuracy of the selected network (round 0),
# then after each finetuning round. Runs with equal numbers share a position and differ in line style.
# ```

# %% [markdown]
# ## Deviations and notes
# - **Relative gains.** The article's 11.12% and 9.28% are wrong. From its own table the gains are
#   3.70/31.42 = 11.78% and 4.98/51.17 = 9.73%.
# - **As published, on purpose.** Both rows keep the article's quirks:
#   - the λ network is selected on training images, before each round;
#   - dropout stays on at evaluation;
#   - λ is an unnormalised per-view factor, an inverse temperature (`normalisation="none"`);
#   - only the first `steps × 32` training images are ever seen.
#
#   Each is a `TrainConfig` option (`selection`, `dropout_in_eval`, `normalisation`, `data_order`). The
#   table "As described, one switch at a time" measures what each changes, with its noise.
# - **fp16 in-place updates** ({ref}`deviation A.8 <dev-a8>`). On CUDA the article's CLIP has fp16 weights,
#   updated in place by SGD; `param_dtype="fp16_inplace"` reproduces this, and `"fp32"` (the default) casts
#   the trunk to fp32 before finetuning, on the paper profile too. The two tables of "What finetuning changes"
#   measure, on this profile, how much each finetune moved the trunk and how many weight entries one step
#   changes in each dtype. Where a row's finetune column equals its prefinetune column, finetuning changed
#   none of its test predictions.
# - **Small profile.** A MobileNetV2 on digits is not CLIP on CIFAR100. Compare the sign of the
#   original-to-updated change with the article's, not the values: the verdicts above do, with the noise
#   rule stated there.
