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

# %% tags=["parameters"]
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
device: str = "cpu"  # cpu or cuda
data_root: str = ""  # folder of datasets and caches; empty means $EQUINB_DATA or ~/.cache/equinb
clip_paths: dict = {}  # backbone name to a local CLIP weight file (TorchScript or state dict); empty means download
clip_download_root: str = ""  # folder for CLIP downloads; empty means ~/.cache/clip
max_train: int = 16000  # paper profile: training images loaded (the article only ever sees the first 16,000)
dataset_options: dict = {}  # per dataset, extra get_dataset options, for example cifar100: download True

# %%
from dataclasses import replace

import pandas as pd
import torch
from IPython.display import display
from myst_nb import glue

from equinb import get_group, viz
from equinb.cache import run_cache_dir
from equinb.chapter import check_params
from equinb.checks import format_error
from equinb.engine import TrainConfig, weighted_model
from equinb.noise import compare_directions, noise_note, tolerance
from equinb.reference import article_tab1, beside_article
from equinb.setups import build_setup, run_training
from equinb.weighting import EmbeddingWeightNet

check_params(profile=profile, backbone=backbone, dataset=dataset, groups=groups, image_size=image_size,
             split_block=split_block, prefinetune_rounds=prefinetune_rounds, prefinetune_steps=prefinetune_steps,
             prelr=prelr, finetune_rounds=finetune_rounds, finetune_steps=finetune_steps, lr_original=lr_original,
             lr_updated=lr_updated, seed=seed, device=device, data_root=data_root, clip_paths=clip_paths,
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
with torch.no_grad():
    views, _ = full.test.batch(torch.arange(8))
    for label, f in [("lambda-equitune", model.forward_views), ("one view", lambda v: model.view_outputs(v)[:, 0])]:
        ref_out = f(views)
        err = max((f(full.test.batch(torch.arange(8), k, full.group)[0]) - ref_out).abs().max().item()
                  for k in range(1, full.group.order))
        print(f"{label:>16}: max change over the group = {format_error(err, ref_out.abs().max().item())}")

# %% [markdown]
# ## Train both code versions on each group

# %% tags=["tolerance-top1"]
rows, curves = [], []
for name, setup in setups.items():
    for code, config in configs.items():
        row, history, _ = run_training(setup, config, cache_dir=runs)
        rows.append(dict(group=name, code=code, **row))
        curves += [dict(run=f"{code} / {name}", **h) for h in history]
ours = pd.DataFrame(rows).assign(profile=profile)
curves = pd.DataFrame(curves)
print(noise_note(top1_noise, "top-1 accuracies (%)"))
display(ours)

# %% [markdown]
# ## This run beside the article

# %% tags=["tolerance-top1"]
print(f"profile: {profile} ({full.description})")
display(beside_article(ours, article, on=["group", "code"], show=("profile", "group", "code")))

# %% [markdown]
# ### Updated minus original: the article's direction and ours
# A verdict is "agrees" or "reversed" only when our difference is larger than the noise of a trained
# top-1; smaller differences are "within noise".

# %% tags=["tolerance-top1"]
def updated_minus_original(table):  # rows (group, code) -> one row per (group, stage); groups the table has
    return pd.Series({(g, stage): table.loc[(g, "updated"), f"{stage}_top1"] - table.loc[(g, "original"),
                      f"{stage}_top1"] for g in groups if (g, "original") in table.index
                      for stage in ("prefinetune", "finetune")}, dtype=float)


summary = compare_directions(updated_minus_original(ours.set_index(["group", "code"])),
                             updated_minus_original(article), top1_noise.absolute)
print(f"profile: {profile}; updated minus original, in pp")
display(summary)
for (name, stage), r in summary.iterrows():
    glue(f"{name}_{stage}_gain", round(float(r.ours), 2), display=False)
    glue(f"{name}_{stage}_verdict", r.verdict, display=False)
for _, r in ours.iterrows():
    for stage in ("prefinetune", "finetune"):
        glue(f"{r.group}_{r.code}_{stage}_top1", round(float(r[f"{stage}_top1"]), 2), display=False)
glue("profile", profile, display=False)

# %% [markdown]
# ## Learning curves
# Left: the selection accuracy before each prefinetuning round. The best of these picks the λ network,
# so the last round's training is never eligible. Right: test accuracy of the selected network, then
# after each finetuning round.

# %%
fig = viz.learning_curves(curves, title=f"Table 1 runs (profile: {profile})")

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
#   Each is a `TrainConfig` option (`selection`, `dropout_in_eval`, `data_order`, ...). The as-described
#   settings are `selection="heldout"`, `dropout_in_eval=False` and `data_order="shuffle"`.
# - **fp16 in-place updates.** On CUDA the article's CLIP has fp16 weights, updated in place by SGD. At
#   lr 5e-8 most weight updates are below half an fp16 ULP and vanish (`param_dtype="fp16_inplace"`
#   reproduces this). The small profile trains fp32 weights. Where a row's finetune column equals its
#   prefinetune column, finetuning changed none of its test predictions.
# - **Small profile.** A MobileNetV2 on digits is not CLIP on CIFAR100. Compare the sign of the
#   original-to-updated change with the article's, not the values: the verdicts above do, and call a
#   difference smaller than the measured noise of a trained top-1 "within noise".
