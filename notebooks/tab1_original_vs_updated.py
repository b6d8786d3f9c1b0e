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
# {glue:text}`profile_note` The methods themselves are stated in the [method primer](../book/methods.md) (see its
# {ref}`λ-equitune diagram <fig-method-lambda-equitune>`).
# ```
#
# **Claim** {cite}`vlasenko2024even` (Vlasenko et al., §4.1, Table 1). The authors changed three things in the original
# code: they removed a double softmax, trained the λ network end to end with the backbone, and lowered the
# finetuning learning rate. With CLIP RN50 on CIFAR100 under random 90° rotations, accuracy rose by +3.70 pp after
# prefinetuning (31.42 → 35.12) and by +4.98 pp after finetuning (51.17 → 56.15). Finetuning itself added about
# 20 pp to both codes (31.42 → 51.17 and 35.12 → 56.15); the article does not say where that gain comes from. This
# chapter measures what finetuning as published changes, parameter group by group, and two counterfactual
# finetunes.
#
# **What runs here.** The engine `equinb.engine`:
# - *Prefinetuning* trains only the λ network, on per-view features of the frozen backbone that are
#   cached once. This is exact: a random group transformation only permutes the views.
# - Before each round, the λ network is scored on a selection set and the best copy is kept.
# - *Finetuning* then trains the backbone (original code) or the backbone and λ together (updated
#   code), in the article's precision: CLIP's convolution and linear weights are fp16 and SGD updates them in
#   place, while its norm layers stay fp32 (`param_dtype="clip_fp16"`).
#
# The two code versions are `TrainConfig.original()` and `TrainConfig.updated()`. All of the article's
# quirks stay on in both, as published:
# - an unshuffled loader restarted every round;
# - selection on the first 50 training batches;
# - dropout active at evaluation;
# - logit factor 1;
# - the backbone in evaluation mode while it is finetuned (BatchNorm keeps its running statistics).
#
# ```{admonition} Profiles: what this page runs on the small profile and on the paper profile
# :class: dropdown
# - *small* (default; CPU, offline):
#   - MobileNetV2 with ImageNet weights at 64 px on the digits.
#   - Blocks 0-17 are frozen and their per-view outputs cached. Only the last block (the 1x1
#     convolution 320 → 1280 with its BatchNorm) is finetuned: the depthwise convolutions of earlier
#     blocks are too slow to backpropagate through on a CPU. Its convolution weights are stored as fp16 values,
#     as CLIP stores its own; on a CPU the arithmetic is fp32 (fp16 arithmetic there is many times slower).
#   - A linear head, fitted once on the normalised embeddings of the upright training digits, stands
#     in for CLIP's text head.
#   - The article's schedule and learning rates are kept. The training set is smaller than CIFAR100's, so a
#     round of the restarted loader ends early and the selection reads every training image (the setup cell
#     prints both).
# - *paper* (GPU, internet): CLIP RN50, CIFAR100 train and test, the article's full schedule, real fp16 weights.
# ```

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
noise_seeds: list = [1, 2, 3, 4]  # further seeds of every run, for its spread ([] skips them)
device: str = "cpu"  # cpu or cuda
data_root: str = ""  # folder of datasets and caches; empty means $EQUINB_DATA or ~/.cache/equinb
clip_paths: dict = {}  # backbone name to a local CLIP weight file (TorchScript or state dict); empty means download
clip_download_root: str = ""  # folder for CLIP downloads; empty means ~/.cache/clip
max_train: int = 16000  # paper profile: training images loaded (the article only ever sees the first 16,000)
dataset_options: dict = {}  # per dataset, extra get_dataset options, for example cifar100: download True

# %% tags=["hide-input", "exact"]
from dataclasses import replace

import pandas as pd
import torch
from myst_nb import glue

from equinb import get_group, viz
from equinb.analysis import group_changes, no_training_scores
from equinb.cache import run_cache_dir
from equinb.chapter import (check_params, loader_note, profile_note, schedule_note,
                            settings_table)
from equinb.engine import TrainConfig, group_drift, weighted_model
from equinb.evidence import (STAGES, compare_runs, finetune_changed, no_training_check, no_training_finding,
                             ran_away_note, stage_problems, stage_spread, top1_cell, trained_minus_frozen)
from equinb.noise import chapter_tolerances, noise_note
from equinb.reference import article_fig4, article_shown, article_tab1, beside_article
from equinb.setups import build_setup, correct_by_seed, run_training, seed_repeats
from equinb.tables import Link, publish_verdicts, show, start_chapter
from equinb.verdicts import CHANGED_NOTHING, compare, effect_row, not_in_this_run, unchanged_stage, verdict_row
from equinb.weighting import EmbeddingWeightNet

start_chapter("tab1_original_vs_updated")  # number its tables as the book numbers the chapter
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
top1_noise = chapter_tolerances(profile, "top1")["top1"]  # how far a top-1 may move between CPUs (regression)
viz.book_style()
pd.set_option("display.precision", 2)
glue("profile", profile, display=False)
glue("setting", f"{backbone} on {dataset}", display=False)  # the summary page names the stand-in
glue("schedule", schedule_note(image_size, prefinetune_rounds, finetune_rounds), display=False)  # summary page
glue("profile_note", profile_note(profile, "a MobileNetV2 on the 8×8 digits, its last block finetuned, stands in "
                                  "for CLIP RN50 on CIFAR100", "CLIP RN50 on CIFAR100 with the article's schedule"),
     display=False)
print(f"profile={profile} backbone={backbone} dataset={dataset} groups={groups} device={device}")

# %% [markdown]
# ## The article's numbers
# The table gives top-1 accuracy in %. The text states the relative gains as 11.12% and 9.28%. The cell below
# computes each gain relative to the original code's accuracy, to the updated code's and to the mean of the two: the
# text's figures are the last.

# %% tags=["hide-input", "exact"]
article = article_tab1()
show(article_shown(article), "The article's Table 1: top-1 (%), CLIP RN50 on CIFAR100", computed=False)
for metric in ("prefinetune_top1", "finetune_top1"):
    o, u = article.loc[("rot90", "original"), metric], article.loc[("rot90", "updated"), metric]
    print(f"rot90, {metric.replace('_top1', ' top-1')}: +{u - o:.2f} pp, relative gain {100 * (u - o) / o:.2f}% "
          f"of the original code's accuracy, {100 * (u - o) / u:.2f}% of the updated code's, "
          f"{200 * (u - o) / (o + u):.2f}% of their mean, {(o + u) / 2:.2f}")
gains = article["finetune_top1"] - article["prefinetune_top1"]  # per group and code: what finetuning added
print("the article's finetuning gains (finetune − prefinetune top-1, pp): "
      + ", ".join(f"{group} {code} {gain:+.2f}" for (group, code), gain in gains.items()))
glue("article_finetune_gains", f"{gains.min():+.2f} to {gains.max():+.2f} pp", display=False)

# %% [markdown]
# ## Setup (cached once) and a symmetry check
# One frozen pass over every view of every image gives the cached inputs and features. rot180's views are
# views 0 and 2 of rot90's, so they are reused. The check takes a few test images. It feeds their views
# in every order a group element produces, and prints the largest change of the λ-equitune logits, which
# is float rounding. It also prints the change of the logits of one view alone, which is not invariant.

# %% tags=["exact"]
base = "rot90" if "rot90" in groups else groups[0]
full = build_setup(profile, "embeddings", group_objects[base], backbone=backbone, dataset=dataset,
                   image_size=image_size, split_block=split_block, device=device, data_root=data_root,
                   clip_paths=clip_paths, clip_download_root=clip_download_root, max_train=max_train,
                   dataset_options=dataset_options)
setups = {name: full if name == base else full.restricted(g, [full.group.elements.index(e) for e in g.elements])
          for name, g in group_objects.items()}
print(full.description)
updated = configs["updated"]
print(loader_note(len(full.train), updated))
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

# %% tags=["hide-input", "exact"]
show(settings_table(configs), f"Settings of the two code versions (profile: {profile})")

# %% tags=["tolerance-top1"]
rows, curves, trained = [], [], {}
for name, setup in setups.items():
    for code, config in configs.items():
        trained[name, code] = run = run_training(setup, config, cache_dir=runs, ablate=True)
        rows.append(dict(group=name, code=code, **run.row, finetune_changed=finetune_changed(run)))
        curves += [dict(run=f"{code} / {name}", **h) for h in run.history]
ours = pd.DataFrame(rows)
curves = pd.DataFrame(curves)
print(noise_note(top1_noise, "top-1 accuracies (%)"))
show(ours, f"This build's runs: top-1 (%) and test predictions that finetuning changed (profile: {profile})")

# %% [markdown]
# The frozen model with no training at all, on the same test images under random turns: vanilla (its expected
# score over the turns), equitune and equizero of the fitted head's per-view outputs, beside the article's
# zero-shot numbers for CLIP RN50 on CIFAR100 (Figure 4's result files). A trained run that does not beat these
# adds nothing a frozen model cannot do: the last table of the verdicts sets every trained run against the best of
# them.
#
# Figure 4's chapter gives other no-training numbers for the same MobileNetV2 on the same digits: its head is fitted
# on the backbone's raw embeddings, this chapter's on L2-normalised ones (what the training engine feeds its head),
# so the two frozen models differ in their head.

# %% tags=["hide-input", "tolerance-frozen"]
zero_shot = article_fig4().query("backbone == 'RN50' and dataset == 'cifar100'").set_index(
    ["transform", "method"])["seed_top1"]  # the article's zero-shot top-1 per group and method
frozen_rows = []
for name, setup in setups.items():  # every group: the verdicts' last table reads each group's best baseline
    baselines = {m: 100 * float(score.mean()) for m, score in no_training_scores(setup).items()}
    article_row = {m: zero_shot[name, m] for m in baselines}
    frozen_rows += [{"group": name, "run": f"this build ({profile})", **baselines},
                    {"group": name, "run": "article (CLIP RN50, CIFAR100)", **article_row}]
show(pd.DataFrame(frozen_rows), f"Top-1 (%) with no training, per group (profile: {profile})")

# %% [markdown]
# ## This run beside the article

# %% tags=["hide-input", "tolerance-top1"]
print(f"profile: {profile} ({full.description})")
show(beside_article(ours, article, on=["group", "code"], show=("group", "code"), with_delta=profile == "paper"),
     f"This build beside the article's Table 1, top-1 (%) (profile: {profile})")  # no delta across profiles
for _, r in ours.iterrows():
    for stage in STAGES:  # the summary's table marks a number that is no result of its stage (unchanged, ran away)
        glue(f"{r.group}_{r.code}_{stage}_cell",
             top1_cell(float(r[f"{stage}_top1"]), [trained[r.group, r.code]], stage), display=False)

# %% [markdown]
# (tab1-noise)=
# ## Noise: other seeds
# Every run again under the seeds below. A seed sets the λ network's initialisation, its dropout and the random
# rotation of every batch (the restarted loader's order does not depend on it). A run whose finetuning changed no
# test prediction is repeated for its prefinetuning only: its finetune stage has nothing to test. The cell prints
# the mean and standard deviation of each stage's top-1 over the seeds that ran it.

# %% tags=["tolerance-top1"]
seeds = [seed, *noise_seeds]
repeats = {}
for key, run in trained.items():  # a finetune that changed nothing has nothing to repeat
    repeats[key] = [run, *seed_repeats(setups[key[0]], configs[key[1]], noise_seeds,
                                       finetune=finetune_changed(run) > 0, cache_dir=runs)]
spread = pd.DataFrame([dict(group=g, code=c, **row) for (g, c), rs in repeats.items() for row in stage_spread(rs)])
show(spread, f"Top-1 (%) over seeds {seeds}, per run and stage (profile: {profile}; sd needs 2 seeds)")
# a seed's table can look sound where its own or another seed's training ran away: say so beside the numbers
print(f"profile: {profile}; {ran_away_note({f'the {c} code ({g})': rs for (g, c), rs in repeats.items()})}")


# %% [markdown]
# (tab1-switches)=
# ## As described, one switch at a time
# The article's code differs from the method as its text states it (A.2), or adds steps the text does not state
# (A.3, A.4, and a fixed data order that restarts each round). Each row below starts from the updated code and
# changes one of these four, under every seed. The runs are prefinetune-only. The effect is the switched run minus
# the updated code as published, averaged over the seeds, with an interval over seeds and test images.

# %% tags=["tolerance-top1"]
switches = {"λ normalised by its sum": dict(normalisation="sum"),
            "dropout off at evaluation": dict(dropout_in_eval=False),
            "selection on a held-out split": dict(selection="heldout"),
            "shuffled data order": dict(data_order="shuffle")}
deviation = {"λ normalised by its sum": "A.2", "dropout off at evaluation": "A.3",
             "selection on a held-out split": "A.4"}  # the deviation each switch undoes
reference = repeats[base, "updated"]
labels = full.test.labels
effects = []
for label, change in switches.items():
    switched = seed_repeats(full, replace(configs["updated"], **change), seeds, cache_dir=runs)
    # both runs' problems (a run-away loss, chance level) and the seed rule, as every verdict of the book
    comparison, reasons, _ = compare_runs(reference, "prefinetune", switched, "prefinetune", full, ("updated", label))
    code = deviation.get(label)
    effects.append({"deviation": Link(code, f"../book/deviations.html#dev-{code.lower().replace('.', '')}")
                    if code else "—", **effect_row(label, comparison, reasons=reasons)})
print(f"profile: {profile}; group {base}; prefinetune top-1 (%), switched minus the updated code as published")
show(pd.DataFrame(effects), f"Each switch's effect on the updated code's prefinetune top-1 (profile: {profile})")

# %% [markdown]
# (tab1-mechanism)=
# ## What finetuning as published changes ({ref}`deviation A.8 <dev-a8>`)
# The article's finetuning runs SGD on CLIP as `clip.load` builds it on a GPU: convolution and linear weights
# in fp16 and updated in place, BatchNorm's affine parameters and the attention pool's positional embedding in
# fp32, and the network in evaluation mode throughout (CLIP's `build_model` returns `model.eval()`, and the
# article's training code never calls `.train()`), so BatchNorm's running statistics never change. The first
# table says, per run and group of parameters, what finetuning changed: the share of entries that changed at all
# and the relative change $\lVert w - w_0\rVert / \lVert w_0\rVert$.

# %% tags=["hide-input", "tolerance-top1"]
def share_text(share):  # a share in %, with two significant digits below 1% (a few changed entries are not 0.0%)
    return f"{100 * share:.1f}%" if share == 0 or share >= 0.01 else f"{100 * share:.2g}%"


rows = []
for (g, c), r in trained.items():
    for group, d in group_drift(r.drift).items():
        rows.append({"group": g, "code": c, "lr": f"{configs[c].lr:.0e}", "parameters": group,
                     "entries": f"{d['entries']:,}", "changed": share_text(d["changed_share"]),
                     "relative change": f"{d['relative_change']:.2e}"})
show(pd.DataFrame(rows), f"What finetuning changed in the trunk, per parameter group (profile: {profile})")

# %% [markdown]
# Second, what each group contributes, where finetuning changed a test prediction: the top-1 of the finetuned
# model with that group put back to its value before finetuning (and, for the updated code, the λ network put back
# to its prefinetuned state), minus the finetuned top-1, paired over the test images. Third, two counterfactual
# finetunes of the rot90 runs, under seed 0: every weight kept in fp32 (no update lost to fp16 rounding), and the
# backbone in training mode (BatchNorm re-estimates its statistics on each batch, which the article's code never
# does). Each is compared with the finetune as published.

# %% tags=["tolerance-top1"]
unchanged = [f"{c} / {g}" for (g, c), r in trained.items() if finetune_changed(r) == 0]
print(f"profile: {profile}; finetuning as published changed no test prediction of: {', '.join(unchanged) or 'none'}")
contributions = []
for (g, c), r in trained.items():
    for key in [k for k in r.predictions if k.endswith(" reset")]:
        comparison = compare((r.predictions["finetune"] == setups[g].test.labels).double(),
                             (r.predictions[key] == setups[g].test.labels).double(), deterministic=True)
        # an attribution within one run (no random step between its two models), not a claim about other seeds
        contributions.append(effect_row(f"{g}, {c}, the run of seed {r.seed}: {key.split(', ')[1]}", comparison))
counterfactual = {}
for c, config in configs.items():
    for label, change in (("fp32 weights", dict(param_dtype="fp32")), ("backbone in training mode",
                                                                        dict(trunk_mode="train"))):
        counterfactual[c, label] = run = run_training(setups[base], replace(config, **change), cache_dir=runs)
        comparison = compare(correct_by_seed([trained[base, c]], "finetune", labels),
                             correct_by_seed([run], "finetune", labels))
        # where neither finetune moved a prediction, the two models predict alike: nothing to compare
        alike = all(unchanged_stage(r.predictions["prefinetune"], r.predictions["finetune"], c)
                    for r in (trained[base, c], run))
        contributions.append(effect_row(f"{base}, {c}: finetuned with {label}", comparison, reasons=[
            f"finetuning {CHANGED_NOTHING} of the {c} code, as published or with {label}, so the two finetuned models "
            "predict alike" if alike else None]))
shares = sum(1 for row in contributions if ": finetuned with " not in row["change"])
caption = ("Each group's share of finetuning (one row per changed parameter group of each run whose finetuning "
           "changed a test prediction), and two counterfactual finetunes" if shares else
           "Two counterfactual finetunes (no finetuning as published changed a test prediction, so no group has a "
           "share)")
show(pd.DataFrame(contributions), f"{caption}, top-1 (%) differences (profile: {profile})")
changed_fp16 = max(group_drift(r.drift).get("fp16 weights", {"changed_share": 0})["changed_share"]
                   for r in trained.values())
changed_norm = max(group_drift(r.drift).get("norm affine (fp32)", {"changed_share": 0})["changed_share"]
                   for r in trained.values())
glue("mechanism_fp16_changed", share_text(changed_fp16), display=False)
glue("mechanism_norm_changed", share_text(changed_norm), display=False)
glue("mechanism_unchanged_runs", f"{len(unchanged)} of {len(trained)}", display=False)
# whether this profile has a finetuning gain to attribute at all (the article's is about 20 pp on CLIP)
finetuned_as = (f"{finetune_rounds} rounds of at most {finetune_steps} steps on the trainable part of the backbone; "
                f"lr {lr_original:g} for the original code, {lr_updated:g} for the updated")
moved = ", ".join(f"{finetune_changed(run)} ({c} code, {label})" for (c, label), run in counterfactual.items())
if unchanged and len(unchanged) == len(trained):
    mechanism_finding = (f"finetuning as published ({finetuned_as}) changed no test prediction in any of the "
                         f"{len(trained)} runs, so this profile has no finetuning gain to attribute and cannot test "
                         f"where the article's comes from; the counterfactual finetunes changed {moved} test "
                         "predictions")
else:
    mechanism_finding = (f"finetuning as published ({finetuned_as}) changed test predictions in "
                         f"{len(trained) - len(unchanged)} of {len(trained)} runs; the table above gives each "
                         f"group's share; the counterfactual finetunes changed {moved} test predictions")
print(f"profile: {profile}; {mechanism_finding}")
glue("mechanism_finding", mechanism_finding, display=False)
for (c, label), run in counterfactual.items():
    key = f"counterfactual_{c}_{'fp32' if 'fp32' in label else 'train_mode'}"
    glue(f"{key}_changed", finetune_changed(run), display=False)
    glue(f"{key}_effect", next(r for r in contributions if r["change"].endswith(label) and f", {c}:" in r["change"])[
        "ours"], display=False)

# %% [markdown]
# (verdicts-tab1_original_vs_updated)=
# ## Verdicts on the article's claims
# Updated minus original, per group and stage, and each code's finetune minus its prefinetune, in pp, averaged over
# the seeds. Each verdict follows {ref}`the book's rule <verdict-rule>` (*agrees* or *reversed*: the interval excludes
# zero; *inconclusive*: it holds zero; *not tested here*: with its computed reason). The last table sets every trained
# run and stage against the best model without training (cross-fitted: each half of the test items is scored by the
# model that is best on the other half, since the best of three picked on the same items would score there above what
# it is worth), item by item: a negative difference means that the trained run scores below the frozen model with no
# training at all, whatever the verdicts above say about the codes. Before finetuning the two codes differ
# only in the softmax (the λ network's input and the learning rate act once the backbone trains), so the prefinetune
# rows test that change alone; the claim that the gain comes from all three changes needs a gain to attribute and the
# original code finetuned with one change at a time, and its row says which of the two this run lacks.

# %% tags=["tolerance-top1", "hide-input"]


solved = {name: no_training_check([setup]) for name, setup in setups.items()}  # does the frozen model leave room?


def tab1_claim(claim_id, name, a, b):  # a, b: (code, stage); the verdict on b minus a
    comparison, reasons, changed = compare_runs(repeats[name, a[0]], a[1], repeats[name, b[0]], b[1], setups[name],
                                                (f"the {a[0]} code", f"the {b[0]} code"))
    return verdict_row(claim_id, comparison, reasons=[solved[name], *reasons], changed=changed)


claims = []
for name in setups:
    for stage in ("prefinetune", "finetune"):
        claims.append(tab1_claim(f"tab1.updated_minus_original.{name}.{stage}", name, ("original", stage),
                                 ("updated", stage)))
    for code in configs:
        claims.append(tab1_claim(f"tab1.finetune_gain.{name}.{code}", name, (code, "prefinetune"), (code, "finetune")))
# which change the gain comes from: first, a gain to attribute (where the updated code's finetuning changed no test
# prediction, there is none); then the runs the claim needs, the original code with one change at a time, against
# the runs this chapter trained (the two codes, the switches above and the counterfactual finetunes)
acting = [k for k in ("output_softmax", "lambda_input", "finetune_params", "lr")
          if getattr(configs["original"], k) != getattr(configs["updated"], k)]
no_gain = next((r for name in setups for r in stage_problems(repeats[name, "updated"], "finetune", setups[name],
                                                              f"the updated code ({name})") if r), None)
trained_runs = ([f"the {c} code" for c in configs] + [f"the updated code with {label}" for label in switches]
                + [f"the {c} code finetuned with {label}" for c, label in counterfactual])
needed = {"": f"the original code with one of its changes alone ({', '.join(acting)})"}
claims.append(verdict_row("tab1.gain_sources", None,
                          reasons=[no_gain or not_in_this_run(needed, {"": trained_runs})]))
publish_verdicts(claims, profile, "tab1_original_vs_updated", "Table 1 claims and their verdicts")
frozen, frozen_comparisons = [], []
for name, setup in setups.items():
    article_best = max(zero_shot[name, m] for m in ("vanilla", "equitune", "equizero"))
    rows = trained_minus_frozen([setup], {f"the {code} code": repeats[name, code] for code in configs})
    frozen_comparisons += rows
    for (code, stage), (text, comparison, reasons) in zip([(c, s) for c in configs for s in STAGES], rows):
        row = effect_row(f"{name}: {text}", comparison, reasons=reasons)
        frozen.append({"change": row.pop("change"),
                       "article": f"{article.loc[(name, code), f'{stage}_top1'] - article_best:+.2f}", **row})
show(pd.DataFrame(frozen), f"Every trained run minus the best model without training, top-1 (%) differences; "
                           f"article: its run minus its best zero-shot top-1, CLIP RN50 on CIFAR100 (profile: "
                           f"{profile})")
glue("no_training_finding", no_training_finding(frozen_comparisons), display=False)
for row in claims:
    key = row["id"].split(".", 1)[1].replace(".", "_")  # e.g. updated_minus_original_rot90_prefinetune
    glue(f"{key}_ours", row["ours"], display=False)
    glue(f"{key}_verdict", row["verdict vs the article"], display=False)

# %% [markdown]
# ## Learning curves

# %% tags=["remove-input", "tolerance-top1"]
viz.glue_figure("tab1_curves", viz.learning_curves(curves, title=f"Table 1 runs, seed {seed} (profile: {profile})"),
                data=curves)
glue("tab1_curves_finding", viz.describe_curves(curves, seed), display=False)

# %% [markdown]
# ```{glue:figure} tab1_curves
# :name: fig-tab1-curves
# :alt: Two line charts of top-1 (%) per round, one line per run: selection accuracy, then test accuracy
#
# The Table 1 runs round by round: {glue:text}`tab1_curves_finding`. Left: the selection accuracy measured before each
# prefinetuning round; the best of these picks the weighting network. Right: test accuracy of the selected network
# (round 0), then after each finetuning round. Runs with equal numbers share a position and differ in line style.
# <a href="../data/tab1_original_vs_updated/tab1_curves.csv">data (CSV)</a>
# ```

# %% [markdown]
# (tab1-deviations)=
# ## Deviations and notes
# - **Relative gains.** The article's 11.12% and 9.28% are relative to the mean of the two codes' accuracies
#   (3.70/33.27 and 4.98/53.66). Relative to the original code's accuracy they would be 11.78% and 9.73% (both
#   computed in the cell under "The article's numbers"); the article's Table 2 gain is relative to that table's
#   baseline row instead (the Table 2 chapter computes it).
# - **As published, on purpose.** Both rows keep the article's quirks:
#   - the λ network is selected on training images, before each round;
#   - dropout stays on at evaluation;
#   - λ is an unnormalised per-view factor, an inverse temperature (`normalisation="none"`);
#   - only the first `steps × 32` training images are ever seen.
#
#   Each is a `TrainConfig` option (`selection`, `dropout_in_eval`, `normalisation`, `data_order`). The
#   table "As described, one switch at a time" measures what each changes, with its noise.
# - **Precision** ({ref}`deviation A.8 <dev-a8>`). `param_dtype="clip_fp16"` (as published, the default) applies
#   CLIP's rule to any trunk (`equinb.precision`); `"fp32"` keeps every update. On a CPU the fp16 weights are fp16
#   values held in fp32 (`HalfStorageSGD`): the forward and backward passes run in fp32, and only the gradient, the
#   momentum and the stored weights are rounded to fp16. On the article's GPU the passes themselves ran in fp16,
#   with no loss scaling; their intermediate rounding is not reproduced here. `trunk_mode="eval"` (as published)
#   keeps BatchNorm's statistics; `"train"` lets them adapt. The section {ref}`tab1-mechanism` measures, on this
#   profile, what each group of parameters changed and what each counterfactual does.
# - **Small profile.** A MobileNetV2 on digits is not CLIP on CIFAR100, and only its last block is finetuned:
#   the verdict table says which of the article's claims this stand-in could test, and why not where it could not.
