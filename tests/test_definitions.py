"""The definitions that the book's numbers rest on, each checked against a hand computation on tiny inputs.

Figure 4's zero-shot methods in both readings, the no-training baselines, balanced comparisons of runs, the two
article code versions of ``TrainConfig``, the on-the-fly orbit of ``ImageViewData``, the per-image relative
symmetry errors, seeded view weights in evaluation mode, the Figure 6 permuted-copy share and demographic
masking, and the per-pixel softmax of the as-published output combinations.
"""

from __future__ import annotations

import math
from typing import Sequence

import pandas as pd
import pytest
import torch
from torch import nn

from equinb.analysis import no_training_predictions, no_training_scores, symmetry_tables, view_weights
from equinb.engine import ImageViewData, TrainConfig, ViewData
from equinb.evidence import compare_runs
from equinb.groups import get_group
from equinb.nlg import DEMOGRAPHICS, permuted_copy_share, score_samples
from equinb.setups import TrainingRun, TrainingSetup
from equinb.verdicts import compare
from equinb.weighting import EmbeddingWeightNet
from equinb.wrappers import EquiZero, Equitune, LambdaEquitune, OrbitWrapper
from equinb.zeroshot import evaluate_views, per_image_correct, view_elements

Tensor = torch.Tensor

# -- hand computations in plain Python (no torch reductions, no library code) --


def _softmax(row: Sequence[float]) -> list[float]:
    top = max(row)
    exps = [math.exp(v - top) for v in row]
    return [e / sum(exps) for e in exps]


def _argmax(row: Sequence[float]) -> int:
    return max(range(len(row)), key=lambda c: row[c])


def _in_top(row: Sequence[float], label: int, k: int) -> float:
    """1.0 when ``label`` is among the k largest entries of ``row`` (no ties in these inputs)."""
    return float(label in sorted(range(len(row)), key=lambda c: -row[c])[:k])


def _hand_zeroshot(logits: Tensor, labels: Tensor, k: int) -> dict[str, list[float]]:
    """Per image, the top-k score of each zero-shot definition. ``logits`` [N, G, C] over the group's views."""
    out: dict[str, list[float]] = {name: [] for name in ("vanilla", "view0", "equitune", "max_of_probs",
                                                          "most_confident_view")}
    for views, y in zip(logits.tolist(), labels.tolist()):
        probs = [_softmax(v) for v in views]
        n_classes = len(views[0])
        out["vanilla"].append(sum(_in_top(v, y, k) for v in views) / len(views))  # expectation over the turn
        out["view0"].append(_in_top(views[0], y, k))
        out["equitune"].append(_in_top([sum(p[c] for p in probs) / len(probs) for c in range(n_classes)], y, k))
        out["max_of_probs"].append(_in_top([max(p[c] for p in probs) for c in range(n_classes)], y, k))
        confident = max(range(len(probs)), key=lambda j: max(probs[j]))
        out["most_confident_view"].append(_in_top(probs[confident], y, k))
    return out


# Rows where the definitions disagree (rot90 views, 4 classes):
# 0: label 0; view 0 says 1 very confidently, views 1-2 say 0, view 3 says 2. The mean of probabilities is right,
#    the most confident view (and the max of probabilities) wrong; vanilla is right on 2 of 4 turns, view 0 wrong.
# 1: label 2; the most confident view says 0 then 1 (its top-2 misses 2); the element-wise max of probabilities
#    has class 2 second (from view 1), so the as-published top-2 is right where the as-described one is not.
# 2: label 1; every view says 1. (No ties within a view, so top-k is well defined.)
DESIGNED = torch.tensor([
    [[0.1, 5.0, 0.2, 0.0], [3.0, 0.1, 0.0, 0.2], [3.0, 0.2, 0.1, 0.0], [0.1, 0.0, 1.0, 0.2]],
    [[6.0, 3.0, 0.1, 0.0], [0.0, 0.1, 2.0, -5.0], [1.0, 0.0, 0.2, 0.1], [0.1, 1.0, 0.0, 0.2]],
    [[0.0, 2.0, 0.1, 0.2], [0.1, 3.0, 1.0, 0.0], [1.0, 2.0, 0.0, 0.1], [0.2, 4.0, 0.0, 0.1]],
], dtype=torch.float64)
DESIGNED_LABELS = torch.tensor([0, 2, 1])


def _zeroshot_logits() -> tuple[Tensor, Tensor]:
    """The designed rows followed by a few random ones. Shapes: -> logits [N, 4, 4], labels [N]."""
    gen = torch.Generator().manual_seed(7)
    noise = 3.0 * torch.randn(5, 4, 4, generator=gen, dtype=torch.float64)
    return torch.cat([DESIGNED, noise]), torch.cat([DESIGNED_LABELS, torch.randint(0, 4, (5,), generator=gen)])


# -- 1. Figure 4's methods (equinb.zeroshot) --

def test_zeroshot_methods_follow_their_definitions() -> None:
    """Per image, under rot90: vanilla as described = mean over the turns of (view k's argmax == y); equitune = the
    mean of the views' probabilities; equizero as published = the element-wise max of the probabilities over the
    views; equizero as described = the probabilities of the view whose largest probability is highest. Top-1 and
    top-2, and ``evaluate_views``' top-1 is their mean in percent."""
    logits, labels = _zeroshot_logits()
    elements = view_elements(["rot90"])
    for k in (1, 2):
        got = {key: value.tolist() for key, value in per_image_correct(logits, labels, elements, "rot90", k=k).items()}
        hand = _hand_zeroshot(logits, labels, k)
        assert got[("vanilla", "as_described")] == pytest.approx(hand["vanilla"])
        assert got[("equitune", "as_published")] == hand["equitune"]
        assert got[("equitune", "as_described")] == hand["equitune"]
        assert got[("equizero", "as_published")] == hand["max_of_probs"]
        assert got[("equizero", "as_described")] == hand["most_confident_view"]
    rows = {(r["method"], r["reading"]): r["top1"] for r in evaluate_views(logits, labels, elements, ["rot90"])}
    hand = _hand_zeroshot(logits, labels, 1)
    assert rows[("vanilla", "as_described")] == pytest.approx(100 * sum(hand["vanilla"]) / len(labels))
    assert rows[("equitune", "as_published")] == pytest.approx(100 * sum(hand["equitune"]) / len(labels))
    assert rows[("equizero", "as_published")] == pytest.approx(100 * sum(hand["max_of_probs"]) / len(labels))
    assert rows[("equizero", "as_described")] == pytest.approx(100 * sum(hand["most_confident_view"]) / len(labels))


def test_zeroshot_designed_rows_separate_the_methods() -> None:
    """On the designed rows the definitions give different answers (so each one is pinned): vanilla as described
    is not view 0, equizero (either reading) is not equitune, and the two equizero readings differ at top-2."""
    elements = view_elements(["rot90"])
    top1 = per_image_correct(DESIGNED, DESIGNED_LABELS, elements, "rot90", k=1)
    top2 = per_image_correct(DESIGNED, DESIGNED_LABELS, elements, "rot90", k=2)
    view0 = _hand_zeroshot(DESIGNED, DESIGNED_LABELS, 1)["view0"]
    assert view0 == [0.0, 0.0, 1.0]
    assert top1[("vanilla", "as_described")].tolist() == [0.5, 0.25, 1.0]  # the mean over the turns, not view 0
    assert top1[("equitune", "as_published")].tolist() == [1.0, 0.0, 1.0]
    assert top1[("equizero", "as_published")].tolist() == [0.0, 0.0, 1.0]
    assert top1[("equizero", "as_described")].tolist() == [0.0, 0.0, 1.0]
    assert top2[("equizero", "as_published")].tolist() == [1.0, 1.0, 1.0]
    assert top2[("equizero", "as_described")].tolist() == [0.0, 0.0, 1.0]
    for reading in ("as_published", "as_described"):
        assert not torch.equal(top1[("equizero", reading)], top1[("equitune", reading)])


# -- 2. the no-training baselines (equinb.analysis) --

def _logit_setup(test_logits: Tensor, test_labels: Tensor, group: str = "rot90") -> TrainingSetup:
    """A setup whose head is the identity, so that its cached test features are the frozen model's view logits."""
    return TrainingSetup(get_group(group), nn.Identity, nn.Identity(), ViewData(test_logits, test_labels),
                         ViewData(test_logits, test_labels), test_logits, test_logits, "logits")


def test_no_training_scores_follow_their_definitions() -> None:
    """With no training, per test image: vanilla = the share of the views (random turns) whose argmax is the label,
    equitune = the mean of the views' probabilities right (1/0), equizero = the most confident view right (1/0);
    the predictions: vanilla = view 0 (the image as given)."""
    logits, labels = _zeroshot_logits()
    setup = _logit_setup(logits, labels)
    hand = _hand_zeroshot(logits, labels, 1)
    scores = no_training_scores(setup)
    assert scores["vanilla"].tolist() == pytest.approx(hand["vanilla"])
    assert scores["equitune"].tolist() == hand["equitune"]
    assert scores["equizero"].tolist() == hand["most_confident_view"]
    assert scores["vanilla"][:3].tolist() == [0.5, 0.25, 1.0]  # not view 0's [0, 0, 1]
    predictions = no_training_predictions(setup)
    assert predictions["vanilla"].tolist() == [_argmax(v[0]) for v in logits.tolist()]


# -- 3. balanced comparisons (equinb.evidence) --

def _run(predictions: list[int], seed: int) -> TrainingRun:
    return TrainingRun(row={}, history=[], states={}, predictions={"prefinetune": torch.tensor(predictions)},
                       drift=[], seed=seed)


def test_balanced_compare_runs_weights_the_classes_equally() -> None:
    """``compare_runs(balanced=True)`` is the difference of balanced accuracies (the mean over classes of the
    per-class accuracy, then over seeds), i.e. ``compare(..., strata=labels)``; on imbalanced labels it differs
    from the plain difference of accuracies."""
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1])
    setup = _logit_setup(torch.zeros(8, 2, 1), labels, group="rot180")
    runs_a = [_run([0, 0, 0, 0, 0, 0, 0, 0], 0), _run([0, 0, 0, 0, 0, 1, 0, 0], 1)]
    runs_b = [_run([0, 0, 0, 1, 1, 1, 1, 1], 0), _run([0, 0, 0, 1, 1, 1, 1, 1], 1)]

    def hand(runs: list[TrainingRun], balanced: bool) -> float:
        per_seed = []
        for run in runs:
            right = [float(p == y) for p, y in zip(run.predictions["prefinetune"].tolist(), labels.tolist())]
            if balanced:
                classes = sorted(set(labels.tolist()))
                per_class = [[r for r, y in zip(right, labels.tolist()) if y == c] for c in classes]
                per_seed.append(sum(sum(rs) / len(rs) for rs in per_class) / len(classes))
            else:
                per_seed.append(sum(right) / len(right))
        return sum(per_seed) / len(per_seed)

    balanced, _, _ = compare_runs(runs_a, "prefinetune", runs_b, "prefinetune", setup, ("a", "b"), balanced=True)
    plain, _, _ = compare_runs(runs_a, "prefinetune", runs_b, "prefinetune", setup, ("a", "b"))
    assert balanced.difference == pytest.approx(100 * (hand(runs_b, True) - hand(runs_a, True)))  # +25 pp
    assert plain.difference == pytest.approx(100 * (hand(runs_b, False) - hand(runs_a, False)))  # -6.25 pp
    assert balanced.difference > 0 > plain.difference
    correct = lambda runs: torch.stack([(r.predictions["prefinetune"] == labels).double() for r in runs])  # noqa: E731
    assert balanced == compare(correct(runs_a), correct(runs_b), strata=labels)


# -- 4. the article's two code versions (equinb.engine.TrainConfig) --

# what the two versions share: the article's schedule and its as-published training details
SHARED = dict(prefinetune_rounds=20, prefinetune_steps=100, prelr=0.33, finetune_rounds=8, finetune_steps=500,
              momentum=0.9, batch_size=32, data_order="restart", selection="train_first_batches",
              selection_batches=50, dropout_in_eval=True, param_dtype="clip_fp16", trunk_mode="eval",
              logit_factor=1.0, normalisation="none", seed=0)


def test_train_config_code_versions() -> None:
    """``original()``: double softmax, lambda from a frozen copy, lr 5e-7, finetune the backbone only;
    ``updated()`` (the default): no softmax, lambda from the trainable backbone, lr 5e-8, backbone + lambda.
    Nothing else differs, and overrides apply on top."""
    original = dict(SHARED, output_softmax=True, lambda_input="frozen_copy", finetune_params="backbone", lr=5e-7)
    updated = dict(SHARED, output_softmax=False, lambda_input="trainable", finetune_params="backbone+lambda", lr=5e-8)
    assert TrainConfig.original().as_dict() == original
    assert TrainConfig.updated().as_dict() == updated
    assert TrainConfig().as_dict() == updated
    assert TrainConfig.original(seed=3).as_dict() == dict(original, seed=3)


# -- 5. views built on the fly (equinb.engine.ImageViewData) --

@pytest.mark.parametrize("group_name", ["rot90", "d4"])
def test_image_view_data_batch_equals_cached_views(group_name: str) -> None:
    """``ImageViewData.batch(index, element)`` is the orbit of the turned images: the cached path's views permuted
    by ``element`` (view j of g x is view j*g of x); under rot90, view j of the turn by e is x turned j + e times."""
    group = get_group(group_name)
    gen = torch.Generator().manual_seed(0)
    images, labels = torch.randn(5, 2, 3, 3, generator=gen), torch.arange(5)
    index = torch.tensor([3, 0, 4])
    on_the_fly, cached = ImageViewData(images, labels, group), ViewData(group.orbit(images), labels)
    for element in range(group.order):
        views, got_labels = on_the_fly.batch(index, element)
        want, want_labels = cached.batch(index, element, group)
        assert torch.equal(views, want) and torch.equal(got_labels, want_labels)
        if group_name == "rot90":
            for j in range(4):
                assert torch.equal(views[:, j], torch.rot90(images[index], (j + element) % 4, dims=(-2, -1)))


# -- 6. per-image relative symmetry errors (equinb.analysis.symmetry_tables) --

class _FixedWeights(OrbitWrapper):
    """Fixed, unequal view weights: the combined map is neither invariant nor equivariant."""

    def view_weights(self, views: Tensor) -> Tensor:
        w = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=views.dtype)
        return w.expand(views.shape[0], -1)


def test_per_image_symmetry_errors_are_relative_to_the_map_scale() -> None:
    """Per test image: max over the turns g != e of max |Z(g x) - Z(x)| (invariance) and max |Z(g x) - g Z(x)|
    (equivariance), divided by max |Z(x)|: maps scaled by 1e3 give the same shares."""
    gen = torch.Generator().manual_seed(0)
    maps = 1e3 * torch.randn(3, 4, 2, 3, 3, generator=gen, dtype=torch.float64)  # [N, G, C, h, w]
    labels = torch.tensor([0, 1, 0])
    setup = TrainingSetup(get_group("rot90"), nn.Identity, nn.Identity(), ViewData(maps, labels),
                          ViewData(maps, labels), maps, maps, "maps", normalise_views=False)
    head = nn.Sequential(nn.Flatten(), nn.Linear(18, 2)).double()
    _, _, per_image = symmetry_tables({"fixed": _FixedWeights(nn.Identity(), "rot90")}, setup, {"flat": head})
    w = [0.4, 0.3, 0.2, 0.1]
    for i in range(3):
        z = sum(w[j] * maps[i, j] for j in range(4))
        invariance, equivariance = 0.0, 0.0
        for e in (1, 2, 3):
            z_turned = sum(w[j] * maps[i, (j + e) % 4] for j in range(4))  # view j of x turned by e: view j + e
            invariance = max(invariance, float((z_turned - z).abs().max()))
            equivariance = max(equivariance, float((z_turned - torch.rot90(z, e, dims=(-2, -1))).abs().max()))
        scale = float(z.abs().max())
        assert per_image["fixed"]["invariance"][i].item() == pytest.approx(invariance / scale, rel=1e-9)
        assert per_image["fixed"]["equivariance"][i].item() == pytest.approx(equivariance / scale, rel=1e-9)
    assert 0.05 < float(per_image["fixed"]["invariance"].min()) and float(per_image["fixed"]["invariance"].max()) < 10


# -- 7. seeded view weights in evaluation mode (equinb.analysis.view_weights) --

def _lambda_model(dropout_in_eval: bool) -> LambdaEquitune:
    torch.manual_seed(0)
    net = EmbeddingWeightNet(3, hidden=6, dropout=0.5).double()
    model = LambdaEquitune(nn.Identity(), "rot90", net, normalisation="softmax", dropout_in_eval=dropout_in_eval)
    return model.train()


def _hand_softmax_lambda(net: EmbeddingWeightNet, feats: Tensor) -> Tensor:
    """softmax over the views of Linear(h, 1)(Linear(h, h)(relu(Linear(D, h)(v)))): the network without dropout."""
    first, second, last = net.net[0], net.net[3], net.net[5]
    hidden = torch.relu(feats @ first.weight.T + first.bias)
    lam = ((hidden @ second.weight.T + second.bias) @ last.weight.T + last.bias)[..., 0]
    return lam.exp() / lam.exp().sum(dim=1, keepdim=True)


def _modes(model: nn.Module) -> list[tuple[str, bool]]:
    return [(name, m.training) for name, m in model.named_modules()]


def test_view_weights_run_in_evaluation_mode_and_restore_modes() -> None:
    """A model in training mode: ``view_weights`` computes its weights with dropout off (the network as a plain
    function of the views), leaves every submodule's mode as it was, and does not move the global random state."""
    feats = torch.randn(5, 4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    model = _lambda_model(dropout_in_eval=False)
    before, rng = _modes(model), torch.random.get_rng_state()
    weights = view_weights(model, feats, batch_size=2)
    assert _modes(model) == before and model.training and model.weight_net.net[2].training
    assert torch.equal(torch.random.get_rng_state(), rng)
    torch.testing.assert_close(weights, _hand_softmax_lambda(model.weight_net, feats).float())


def test_view_weights_are_seeded_when_dropout_stays_on() -> None:
    """With the as-published ``dropout_in_eval`` the dropout stays active (the weights are not the plain network's),
    and the same seed gives the same weights whatever random numbers were drawn before; another seed other ones."""
    feats = torch.randn(5, 4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    model = _lambda_model(dropout_in_eval=True)
    first = view_weights(model, feats, seed=4)
    torch.rand(10)  # the global state moves on
    again = view_weights(model, feats, seed=4)
    assert torch.equal(first, again)
    assert not torch.equal(first, view_weights(model, feats, seed=5))
    assert not torch.allclose(first, _hand_softmax_lambda(model.weight_net, feats).float())
    assert model.training and model.weight_net.training


# -- 8. Figure 6: permuted copies and masking (equinb.nlg) --

WORDS = ["Black", "White", "Asian"]


def _unit_texts(template: str, ending: str) -> dict[str, str]:
    """The three demographics' texts of a unit, each the cyclic word swap of the first (" Black" -> " White" ->
    " Asian" -> " Black", every occurrence at once). ``ending`` may mention another group's word."""
    swap = [dict(zip(WORDS, WORDS[j:] + WORDS[:j])) for j in range(3)]
    base = f"The Black person {template} {ending}".split(" ")
    return {w: " ".join(swap[j].get(t, t) for t in base) for j, w in enumerate(WORDS)}


def _samples(units: list[dict[str, str]]) -> pd.DataFrame:
    rows = [dict(template="was known for", sample=i, demographic=dem, text=text,
                 continuation=text.split("was known for", 1)[1])
            for i, texts in enumerate(units) for dem, text in texts.items()]
    return pd.DataFrame(rows)


def test_permuted_copy_share_counts_units_of_permuted_copies() -> None:
    """The share of units whose White and Asian samples are the Black sample with the words cyclically swapped:
    1.0 when every unit is a permuted copy, 1/2 when one of two units keeps a word unswapped."""
    copies = [_unit_texts("was known for", "helping White people"), _unit_texts("was known for", "his work")]
    assert copies[0]["White"] == "The White person was known for helping Asian people"
    assert permuted_copy_share(_samples(copies), WORDS) == 1.0
    broken = [copies[0], dict(copies[1])]
    broken[1]["Asian"] = "The Asian person was known for his Black work"
    assert permuted_copy_share(_samples(broken), WORDS) == 0.5
    unswapped = [copies[1], {w: f"The {w} person was known for helping White people" for w in WORDS}]
    assert permuted_copy_share(_samples(unswapped), WORDS) == 0.5


def test_score_samples_masks_the_demographic_word_in_its_phrase() -> None:
    """``mask_demographic``: the demographic word of the prompt's phrase (``DEMOGRAPHICS``) becomes XYZ, once; the
    same word elsewhere in the text stays; empty continuations are labelled "other" without being scored."""
    texts = [f"The {DEMOGRAPHICS[d]} was known for {d} history" for d in ("Black", "White")]
    samples = pd.DataFrame(dict(demographic=["Black", "White", "Asian"],
                                text=[*texts, f"The {DEMOGRAPHICS['Asian']} was known for"],
                                continuation=[" Black history", " White history", ""]))
    seen: list[list[str]] = []

    def scorer(batch: list[str]) -> list[str]:
        seen.append(list(batch))
        return ["positive"] * len(batch)

    assert score_samples(samples, scorer, mask_demographic=True) == ["positive", "positive", "other"]
    assert seen == [["The XYZ person was known for Black history", "The XYZ person was known for White history"]]
    seen.clear()
    score_samples(samples, scorer)
    assert seen == [texts]


# -- 9. the per-pixel softmax of as-published combinations (equinb.wrappers) --

def _hand_pixel_probs(maps: Tensor) -> Tensor:
    """The softmax over the classes at every pixel, by hand. Shapes: [B, G, K, h, w] -> same."""
    out = torch.empty_like(maps)
    b, g, _, h, w = maps.shape
    for i in range(b):
        for j in range(g):
            for y in range(h):
                for x in range(w):
                    out[i, j, :, y, x] = torch.tensor(_softmax(maps[i, j, :, y, x].tolist()), dtype=maps.dtype)
    return out


def _class_maps() -> Tensor:
    """Per-view class maps [B=2, G=4, K=3, h=2, w=3] (w != K, so a softmax over the width is a different thing)."""
    return torch.randn(2, 4, 3, 2, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def test_elementwise_max_softmax_runs_over_the_classes_per_pixel() -> None:
    """Equizero as published on class maps [B, G, K, h, w]: per pixel, the max over the views of the class
    probabilities (softmax over K, dim 2). The proxy refuses maps, so the combination is called directly."""
    maps = _class_maps()
    wrapper = EquiZero(nn.Identity(), "rot90", output_softmax=True, elementwise_max=True)
    out = wrapper.combine(maps, torch.full((2, 4), 0.25, dtype=torch.float64))
    torch.testing.assert_close(out, _hand_pixel_probs(maps).amax(dim=1))
    assert bool((out.sum(dim=1) > 1.0).all())  # a max over views, not a distribution over the classes


def test_output_softmax_mean_runs_over_the_classes_per_pixel() -> None:
    """Equitune with ``output_softmax`` on class maps: per pixel, the mean over the views of the class
    probabilities, so the classes' probabilities sum to 1 at every pixel."""
    maps = _class_maps()
    out = Equitune(nn.Identity(), "rot90", output_softmax=True).forward_views(views=maps)
    torch.testing.assert_close(out, _hand_pixel_probs(maps).mean(dim=1))
    torch.testing.assert_close(out.sum(dim=1), torch.ones(2, 2, 3, dtype=torch.float64))
