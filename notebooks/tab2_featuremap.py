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
# # Feature-map λ-equitune vs the invariant λ-equitune (article Table 2)
#
# ```{admonition} What this page shows
# :class: tip
# This build ran the **{glue:text}`profile`** profile. On the *small* profile, MobileNetV2's last-block maps
# (1280×3×3) on the digits stand in for CLIP RN50's layer4 maps (2048×7×7) on CIFAR100: compare the directions
# and sizes of the differences with the article's, not the values (the verdict tables do). The *paper* profile
# runs the article's setting, and its numbers compare directly.
# The methods themselves are stated in the [method primer](../book/methods.md).
# ```
#
# **Claim** {cite}`vlasenko2024even` (Vlasenko et al., §4.2, Table 2). The article moves λ-equitune from CLIP's
# embeddings to its
# spatial feature maps. The maps of the four rotated views come from layer4 of CLIP RN50 (2048×7×7). A λ
# network scores each map, and the softmax of the scores weights the maps. The combined map goes through
# CLIP's attention pooling and the text head. On CIFAR100 under random 90° rotations, prefinetuning
# reaches 40.95% top-1, against 35.12% for the invariant, embedding-level code. After finetuning it
# reaches 47.55%, against 56.15%.
#
# **What the code computes.** The text says the method combines *aligned* maps,
# $Z = \sum_k w_k\, g_k^{-1} M_1(g_k x)$, which is an equivariant map. In the article's code the inverse
# rotation is computed and thrown away, so the maps are combined *unaligned*, and $Z$ is exactly invariant.
# This chapter runs both variants: `align_views=False` (as published) and `align_views=True` (as described).
# It then measures what each variant does to $Z$ and to the logits.
#
# **Profiles.**
# - *small* (default; CPU, offline, a few minutes):
#   - MobileNetV2 with ImageNet weights at 96 px on the digits. Blocks 0-17 are frozen and cached per
#     view.
#   - The last block (1×1 convolution 320 → 1280) is $M_1$. It gives 1280×3×3 maps.
#   - $M_2$ is global average pooling and a linear head fitted once on the upright training digits.
#   - The embedding-level row uses the same cache: the same block, pooled and L2-normalised, with its
#     own fitted head.
#   - Schedules are shorter than the article's, to keep the book's build short: 10 prefinetuning rounds
#     (the restarted loader ends after 34 batches) and 1 finetuning round.
# - *paper* (GPU, internet): CLIP RN50 on CIFAR100, with the article's prefinetuning schedule. The
#   article's finetuning settings for this table are unrecorded. Both profiles finetune the trunk and
#   the module together at lr 5e-8, as the article's ISIC feature-map run does.

# %% tags=["parameters", "hide-input"]
profile: str = "small"  # small (MobileNetV2 + digits, CPU) or paper (CLIP RN50 + CIFAR100, GPU)
backbone: str = "mobilenet_v2"  # mobilenet_v2 (small) or a CLIP ResNet name such as RN50 (paper)
dataset: str = "digits"  # digits (small) or cifar100 (paper)
group: str = "rot90"  # the group of the views and of the random training rotations (article: rot90)
image_size: int = 96  # small profile: MobileNetV2 input size in px (96 gives 3x3 maps)
split_block: int = 18  # small profile: MobileNetV2 blocks before this index are frozen and cached
prefinetune_rounds: int = 10  # article: 20
prefinetune_steps: int = 100  # article: 100 steps per round (fewer when the restarted loader runs out)
prelr: float = 0.1  # article: 0.1 for the feature-map rows
prelr_embedding: float = 0.33  # article: 0.33 for the invariant row (Table 1, updated code)
finetune_rounds: int = 1  # article: unrecorded for the feature-map row (8 for the invariant row)
finetune_steps: int = 500  # article: 500 steps per round
lr: float = 5e-8  # article: 5e-8 (updated code)
seed: int = 0  # article: 0
noise_seeds: list = [1, 2, 3, 4]  # further seeds of the invariant row's prefinetune run at prelr_embedding ([]: none)
device: str = "cpu"  # cpu or cuda
data_root: str = ""  # folder of datasets and caches; empty means $EQUINB_DATA or ~/.cache/equinb
clip_paths: dict = {}  # backbone name to a local CLIP weight file (TorchScript or state dict); empty means download
clip_download_root: str = ""  # folder for CLIP downloads; empty means ~/.cache/clip
max_train: int = 16000  # paper profile: training images loaded (the article only ever sees the first 16,000)
dataset_options: dict = {}  # per dataset, extra get_dataset options, for example cifar100: download True

# %% tags=["hide-input"]
from dataclasses import replace

import pandas as pd
from IPython.display import display
from myst_nb import glue

from equinb import get_group, viz
from equinb.analysis import plain_head_top1, positional_head, symmetry_tables
from equinb.cache import cache_dir, run_cache_dir
from equinb.chapter import check_params
from equinb.engine import TrainConfig
from equinb.noise import loss_label, noise_note, tolerance
from equinb.reference import article_tab2, beside_article
from equinb.setups import (build_setup, feature_map_config, feature_map_weight_net, run_training, seed_repeats,
                           trained_model)
from equinb.verdicts import VERDICT_RULE, claim_row, paired_interval, verdict_table

check_params(profile=profile, backbone=backbone, dataset=dataset, group=group, image_size=image_size,
             split_block=split_block, prefinetune_rounds=prefinetune_rounds, prefinetune_steps=prefinetune_steps,
             prelr=prelr, prelr_embedding=prelr_embedding, finetune_rounds=finetune_rounds,
             finetune_steps=finetune_steps, lr=lr, seed=seed, noise_seeds=noise_seeds, device=device,
             data_root=data_root,
             clip_paths=clip_paths, clip_download_root=clip_download_root, max_train=max_train,
             dataset_options=dataset_options, feature_maps=True)
group_object = get_group(group)  # an unknown name fails here, listing the valid ones
schedule = dict(prefinetune_rounds=prefinetune_rounds, prefinetune_steps=prefinetune_steps,
                finetune_rounds=finetune_rounds, finetune_steps=finetune_steps, lr=lr, seed=seed)
map_config = feature_map_config(prelr=prelr, **schedule)
embedding_config = TrainConfig.updated(prelr=prelr_embedding, **schedule)
setup_options = dict(backbone=backbone, dataset=dataset, image_size=image_size, split_block=split_block,
                     device=device, data_root=data_root, clip_paths=clip_paths, clip_download_root=clip_download_root,
                     max_train=max_train, dataset_options=dataset_options)
runs = run_cache_dir(data_root)
# measured spreads between CPUs and seeds
noise = {name: tolerance(name) for name in ("top1", "top1_chaotic", "logit", "loss")}
viz.book_style()
pd.set_option("display.precision", 2)
print(f"profile={profile} backbone={backbone} dataset={dataset} group={group} device={device}")

# %% [markdown]
# ## The article's numbers
# Top-1 accuracy (%) on CIFAR100 under random 90° rotations, CLIP RN50.

# %%
article = article_tab2()
display(article)

# %% [markdown]
# ## Setups (one cache) and the three runs
# Every run is saved, keyed by its setup and configuration. The equiattention and λ-weight chapters
# reuse these runs instead of training them again.

# %%
maps = build_setup(profile, "maps", group_object, **setup_options)
embeddings = build_setup(profile, "embeddings", group_object, **setup_options)
print(maps.description)
print(f"maps per view: {maps.map_shape}")
variants = {f"updated_invariant (prelr {rate:g})": (embeddings, replace(embedding_config, prelr=rate), dict())
            for rate in dict.fromkeys([prelr_embedding, prelr])}  # also at the feature-map rows' rate
variants["feature_map (as published)"] = (maps, map_config, dict(align_views=False))
variants["feature_map (as described)"] = (maps, map_config, dict(align_views=True))
rows, curves, trained = [], [], {}
for name, (setup, config, options) in variants.items():
    weight_net = feature_map_weight_net("lambda_equitune", setup.map_shape) if setup is maps else None
    trained[name] = run = run_training(setup, config, weight_net=weight_net, cache_dir=runs, **options)
    rows.append(dict(variant=name, **run.row))
    curves += [dict(run=name, **h) for h in run.history]
ours = pd.DataFrame(rows).assign(profile=profile)
curves = pd.DataFrame(curves)

# %% [markdown]
# ## This run beside the article

# %% tags=["tolerance-top1"]
# the article's numbers sit beside the runs that match them: its rates, and its unaligned feature maps
article_rate = f"updated_invariant (prelr {prelr_embedding:g})"  # chaotic in the small profile: its own cell below
same_as_article = {article_rate: "updated_invariant", "feature_map (as published)": "feature_map"}
mapped = ours.assign(article_variant=ours.variant.map(same_as_article))
stages = ("prefinetune", "finetune")
by_variant = ours.set_index("variant")
print(f"profile: {profile} ({maps.description})")
print(noise_note(noise["top1"], "top-1 accuracies (%)"))
display(beside_article(mapped[mapped.variant != article_rate], article, on="article_variant", article_on="variant",
                       show=("profile", "variant"), with_delta=profile == "paper"))
glue_names = {f"updated_invariant (prelr {prelr:g})": "invariant_map_rate", "feature_map (as published)": "published",
              "feature_map (as described)": "described"}
for _, r in ours[ours.variant.isin(glue_names) & (ours.variant != article_rate)].iterrows():
    glue(f"{glue_names[r.variant]}_prefinetune_top1", round(float(r.prefinetune_top1), 2), display=False)
    glue(f"{glue_names[r.variant]}_finetune_top1", round(float(r.finetune_top1), 2), display=False)
glue("profile", profile, display=False)

# %% [markdown]
# ### The invariant row at the article's rate
# At prelr 0.33 the small profile's invariant run is chaotic: whether its unbounded λ runs away, and
# where its accuracy ends, depends on the seed. Its numbers are therefore compared within the much wider
# spread measured for this run between CPUs and seeds.

# %% tags=["tolerance-top1_chaotic"]
print(noise_note(noise["top1_chaotic"], "top-1 accuracies (%) of this run"))
display(beside_article(mapped[mapped.variant == article_rate], article, on="article_variant", article_on="variant",
                       show=("profile", "variant"), with_delta=profile == "paper"))
for stage in stages:
    glue(f"invariant_{stage}_top1", round(float(by_variant.loc[article_rate, f"{stage}_top1"]), 2), display=False)

# %% [markdown]
# (tab2-noise)=
# ### Noise: other seeds of the invariant row
# The invariant row at the article's rate runs on cached embeddings, so its prefinetuning is repeated under
# the seeds below (λ initialisation, dropout, the random rotation of every batch). The feature-map rows are
# not: one of their prefinetune runs takes about a minute on 2 CPU cores. Nor is the row at the feature-map
# rate, whose comparisons have no article direction (to keep the book's build short). The cell prints the
# mean and the standard deviation of the prefinetune top-1 over all seeds.

# %% tags=["tolerance-top1_chaotic"]
seeds = [seed, *noise_seeds]
invariant_rows = [name for name in variants if name.startswith("updated_invariant")]
repeats = {article_rate: [trained[article_rate], *seed_repeats(embeddings, variants[article_rate][1], noise_seeds,
                                                               cache_dir=runs)]}
spread = pd.DataFrame([dict(variant=name, top1=r.row["prefinetune_top1"]) for name, rs in repeats.items()
                       for r in rs]).groupby("variant", sort=False).top1.agg(["count", "mean", "std", "min", "max"])
print(noise_note(noise["top1_chaotic"], f"prefinetune top-1 (%) over seeds {seeds}"))
display(spread)

# %% [markdown]
# ### Verdicts: the article's claims, tested
# Feature map (as published) minus the invariant row, per stage, in pp. The feature-map row has no seed
# repeats, so the seed part of the noise is the larger of the measured tolerance of a trained top-1 and
# twice the invariant row's standard deviation over seeds (prefinetune). The finetuned invariant row at
# prelr 0.33 is compared within the tolerance measured for that chaotic run. The rule:
# {glue:text}`verdict_rule`. The last rows compare this build's own variants, where the article has no
# numbers.

# %% tags=["tolerance-top1_chaotic", "hide-input"]
glue("verdict_rule", VERDICT_RULE, display=False)


def correct(run, stage: str):  # per test image: 1.0 where the run's prediction is right
    return (run.predictions[stage] == maps.test.labels).double()


def map_claim(claim: str, a: str, b: str, stage: str, article_diff=None):  # run b minus run a
    if a == article_rate and stage == "finetune":  # no seeds of a chaotic finetune: its measured tolerance
        noise_size, label = noise["top1_chaotic"].absolute, "chaotic-run tolerance"
    else:
        sd = spread.loc[a, "std"] if a in spread.index and stage == "prefinetune" and len(seeds) > 1 else 0.0
        noise_size = max(noise["top1"].absolute, 2 * sd)
        label = "tolerance" if noise_size == noise["top1"].absolute else "2 sd of the invariant row"
    return claim_row("Table 2", claim, article_diff, trained[b].row[f"{stage}_top1"] - trained[a].row[f"{stage}_top1"],
                     interval=paired_interval(correct(trained[a], stage), correct(trained[b], stage)),
                     tolerance=noise_size, tolerance_label=label)


claims = [map_claim(f"feature map − invariant, {stage}", article_rate, "feature_map (as published)", stage,
                    article.loc["feature_map", f"{stage}_top1"] - article.loc["updated_invariant", f"{stage}_top1"])
          for stage in stages]
claims += [map_claim(f"feature map − invariant at prelr {prelr:g}, {stage}", name, "feature_map (as published)",
                     stage) for name in invariant_rows if name != article_rate for stage in stages]
claims += [map_claim(f"as described − as published, {stage}", "feature_map (as published)",
                     "feature_map (as described)", stage) for stage in stages]
verdicts = verdict_table(claims, profile)
print(f"profile: {profile}; differences in pp")
display(verdicts)
glue("verdicts", verdicts, display=False)
for stage, row in zip(stages, claims):
    glue(f"published_minus_invariant_{stage}", float(row["ours"]), display=False)
    glue(f"published_minus_invariant_{stage}_verdict", row["verdict"], display=False)

# %% [markdown]
# ### Did the loss stay bounded?
# The invariant rows keep the article's raw, unbounded λ. When the loss runs away, the size it reaches
# depends on the last bits of every earlier step, so only the fact is printed. The largest loss of a
# bounded run is itself noisy (a maximum over steps): its printed tolerance says how noisy.

# %% tags=["tolerance-loss"]
loss = curves[curves.loss.notna()].groupby(["run", "stage"], sort=False).loss.max().unstack()
print(noise_note(noise["loss"], "losses that stayed bounded"))
display(loss.map(loss_label))

# %% [markdown]
# ### Reference points without a weighting network
# The two levels use different heads, so their accuracies differ before any λ is learned (deviation
# A.7). Three reference points per level:
# - the head on the images as given (upright);
# - the head on one randomly rotated view (the plain model under random rotations);
# - the head on the mean of the unaligned views (a constant weighting).

# %% tags=["tolerance-top1"]
plain = pd.DataFrame({level: plain_head_top1(setup.head, setup.test_feats, setup.test.labels)
                      for level, setup in (("embeddings", embeddings), ("maps", maps))}).T
print(f"profile: {profile}; top-1 (%) on the {len(maps.test)} test images")
display(plain)

# %% [markdown]
# ## What the alignment does: invariance of $Z$, equivariance of $Z$, invariance of the logits
# For each rotation $g$ of every test image, the cell measures four things with the selected λ networks:
# - how much the combined map moves, $\max|Z(gx) - Z(x)|$ (invariance);
# - how far it is from the rotated map, $\max|Z(gx) - g\,Z(x)|$ (equivariance);
# - how much each head's logits move;
# - each head's top-1 on the rotated test images.
#
# Two heads are used:
# - the profile's head (average pooling in the small profile, attention pooling in the paper profile);
# - in the small profile, a *positional* head as well: a linear classifier on the flattened 3×3 map,
#   fitted on the upright training maps.
#
# Like attnpool's absolute positional embedding, the positional head sees where a feature is. Average
# pooling does not, so it keeps aligned logits invariant.

# %% tags=["tolerance-logit"]
positional = {"positional": positional_head(maps, cache_dir(data_root))} if profile == "small" else {}
heads = {"head": maps.head, **positional}
models = {name: trained_model(maps, map_config, "lambda_equitune", "described" in name,
                               trained[name].states["prefinetune"])
          for name in ("feature_map (as published)", "feature_map (as described)")}
errors, top1 = symmetry_tables(models, maps, heads)
print(f"profile: {profile}; largest change over the non-identity rotations, {len(maps.test)} test images")
print(noise_note(noise["logit"], "changes that are not float rounding"))
display(errors)

# %% tags=["tolerance-top1"]
print("top-1 (%) when every test image is rotated by the element (0 = upright)")
print(noise_note(noise["top1"], "top-1 accuracies (%)"))
display(top1)

# %% [markdown]
# ## Learning curves

# %% tags=["remove-input"]
viz.glue_figure("tab2_curves", viz.learning_curves(curves, title=f"Table 2 runs (profile: {profile})"))

# %% [markdown]
# ```{glue:figure} tab2_curves
# :name: fig-tab2-curves
# :alt: Two line charts of top-1 (%) per round, one line per run: selection accuracy, then test accuracy
#
# The Table 2 runs round by round. Left: the selection accuracy measured before each prefinetuning round;
# the best of these picks the weighting network. Right: test accuracy of the selected network (round 0),
# then after each finetuning round. Runs with equal numbers share a position and differ in line style.
# ```

# %% [markdown]
# ## Deviations and notes
# - **The no-op inverse** ({ref}`deviation A.1 <dev-a1>`). In the table above, as published $Z$ does not move under
#   rotations of the input (invariance error at float rounding), and it is not the rotated map. As
#   described, the opposite holds: $Z(gx) = g\,Z(x)$. A head with positional information then gives
#   different logits, and a different accuracy, for every rotation of the same image. Average pooling
#   hides this: with it, both variants are invariant classifiers, and they differ only in what the
#   weighting network learns.
# - **Unnormalised λ.** The invariant row keeps the article's raw, unbounded λ, which acts as a per-view
#   inverse temperature. The table of largest losses shows whether it stayed bounded at each learning
#   rate. That is why the invariant row is also run at the feature-map rows' rate. When the loss runs
#   away, the selection before each round still keeps the best network seen, but finetuning then starts
#   from a network trained on that runaway λ, and its own loss and accuracy show whether it recovers.
# - **Heads and temperatures** ({ref}`deviation A.7 <dev-a7>`). As in the article's code, the feature-map logits come
#   from the *unnormalised* pooled map, and the embedding-level logits from the normalised embedding. The
#   two rows therefore train at different effective temperatures, and the learning rates are not
#   comparable across rows.
# - **Finetuning** ({ref}`deviation A.12 <dev-a12>`). The article did not record how its feature-map row was finetuned.
#   Here the trunk and the module are finetuned together at lr 5e-8. How far that moved each row is the
#   gap between its finetune and prefinetune columns above; a row whose loss ran away can lose most of
#   its accuracy there.
# - **Any group.** The article's feature-map code hard-codes the four rotations and the RN50 sizes
#   ({ref}`deviation A.6 <dev-a6>`). Here the group is a parameter, and the weighting network takes its sizes from the
#   maps: 1280×3×3 in the small profile.
# - **Small profile.** MobileNetV2 on digits at 96 px is not CLIP on CIFAR100. Compare the direction of
#   the differences between rows, not the values.
