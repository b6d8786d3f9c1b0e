"""Trained-model analysis: weight statistics, measured symmetry, orientation-free data and the run cache."""

from __future__ import annotations

import copy

import pytest
import numpy as np
import torch
from torch import nn

from equinb import analysis
from equinb import engine as en
from equinb import setups as su
from equinb.groups import get_group
from equinb.weighting import FeatureMapWeightNet, ViewAttention

N, K = 24, 3


def _setup(group_name: str = "rot90", positional: bool = True, dtype: torch.dtype = torch.float64) -> su.TrainingSetup:
    """Toy maps [2, 5, 5] from random images; the head is positional (flatten) or pooled."""
    group = get_group(group_name)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(N, 3, 5, 5, generator=gen, dtype=dtype)
    labels = torch.randint(0, K, (N,), generator=gen)
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.Tanh()).to(dtype).requires_grad_(False)
    head = nn.Sequential(nn.Flatten(), nn.Linear(2 * 25, K)) if positional else \
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, K))
    head = head.to(dtype).requires_grad_(False)
    train = en.ViewData(group.orbit(images[:16]), labels[:16])
    test = en.ViewData(group.orbit(images[16:]), labels[16:])
    return su.TrainingSetup(group, lambda: copy.deepcopy(trunk).requires_grad_(True), head, train, test,
                          en.extract_view_features(trunk, train), en.extract_view_features(trunk, test), "toy",
                          normalise_views=False, key="toy")


def _model(setup: su.TrainingSetup, method: str, align: bool) -> nn.Module:
    torch.manual_seed(1)
    net = FeatureMapWeightNet(2, (5, 5), conv_channels=3, per_channel=2, hidden=6) if method == "lambda_equitune" else \
        ViewAttention(2, (5, 5), hidden=6, out_dim=6, conv_channels=3, per_channel=2)
    return en.weighted_model(setup.make_trunk(), net.double(), setup.head, setup.group, su.feature_map_config(),
                             method=method, align_views=align, normalise_views=False).eval()


def test_weight_summary_definitions() -> None:
    w = torch.tensor([[0.7, 0.1, 0.1, 0.1],     # upright preferred
                      [0.25, 0.25, 0.25, 0.25],  # a tie: goes to the upright view
                      [0.1, 0.6, 0.2, 0.1],      # not upright, and upright is not strictly smallest
                      [0.05, 0.5, 0.3, 0.15]])   # not upright, and upright is the smallest
    s = analysis.weight_summary(w, ["0", "90", "180", "270"])
    assert s["share_argmax_not_upright"] == pytest.approx(0.5)
    assert s["share_upright_smallest"] == pytest.approx(0.25)
    assert s["mean_0"] == pytest.approx(w[:, 0].mean().item()) and s["mean_270"] == pytest.approx(0.15)
    assert s["share_argmax_on_original"] == pytest.approx(0.5)
    moved = analysis.weight_summary(w, ["0", "90", "180", "270"], original=torch.tensor([0, 1, 1, 1]))
    assert moved["share_argmax_on_original"] == pytest.approx(0.75)  # rows 0, 2 and 3 (the tie goes to view 0)
    with pytest.raises(ValueError, match=r"weights must be \[N, 4\]"):
        analysis.weight_summary(w[:, :3], ["0", "90", "180", "270"])
    assert s["share_one_view_all_weight"] == 0.0
    peaked = torch.tensor([[0.995, 0.005, 0.0, 0.0], [0.0, 0.0, 0.999, 0.001], [0.99, 0.01, 0.0, 0.0]])
    assert analysis.weight_summary(peaked, ["0", "90", "180", "270"])["share_one_view_all_weight"] == \
        pytest.approx(2 / 3)  # the bin's lower edge counts; 0.99 does not
    assert analysis.rotation_labels(get_group("rot90")) == ["0", "90", "180", "270"]


@pytest.mark.parametrize("method", ["lambda_equitune", "equiattention"])
def test_view_weights_are_the_models_weights_and_travel_with_the_views(method: str) -> None:
    setup = _setup()
    model = _model(setup, method, align=False)
    w = analysis.view_weights(model, setup.test_feats, batch_size=3)
    _, expected = model.forward_views(views=setup.test_feats, return_weights=True)
    torch.testing.assert_close(w, expected.float())
    torch.testing.assert_close(w.sum(1), torch.ones(len(w)))
    moved = analysis.view_weights(model, setup.test_feats[:, setup.group.view_permutation(1)])
    torch.testing.assert_close(moved, w[:, setup.group.view_permutation(1)])


@pytest.mark.parametrize("method", ["lambda_equitune", "equiattention"])
def test_measured_symmetry_as_published_and_as_described(method: str) -> None:
    """As published Z is invariant, not equivariant; aligned, the reverse. A positional head's logits then move,
    a pooled head's do not."""
    setup, pooled = _setup(), _setup(positional=False).head
    heads = {"positional": setup.head, "pooled": pooled}
    published, per_published = analysis.combined_map_symmetry(_model(setup, method, False), setup.test_feats,
                                                              setup.test.labels, heads, batch_size=5)
    described, per_described = analysis.combined_map_symmetry(_model(setup, method, True), setup.test_feats,
                                                              setup.test.labels, heads, batch_size=5)
    assert (per_published["invariance"] < 1e-6).all() and (per_published["equivariance"] > 1e-4).all()
    assert (per_described["equivariance"] < 1e-6).all() and (per_described["invariance"] > 1e-4).all()
    for rows in (published, described):
        assert rows[0]["invariance"] == 0 and rows[0]["equivariance"] == 0  # the identity changes nothing
    for p, d in zip(published[1:], described[1:]):
        assert p["invariance"] < 1e-12 < 1e-3 < p["equivariance"]
        assert d["equivariance"] < 1e-12 < 1e-3 < d["invariance"]
        assert p["positional_logit_change"] < 1e-12 < 1e-4 < d["positional_logit_change"]
        assert p["pooled_logit_change"] < 1e-12 and d["pooled_logit_change"] < 1e-12
        assert p["positional_top1"] == published[0]["positional_top1"]
    errors, top1, per_image = analysis.symmetry_tables({"p": _model(setup, method, False),
                                                        "d": _model(setup, method, True)}, setup, heads)
    assert set(per_image) == {"p", "d"} and per_image["p"]["invariance"].shape == (len(setup.test.labels),)
    assert "float rounding" in errors.loc["p", "Z invariance error"]
    assert "float rounding" not in errors.loc["d", "Z invariance error"]
    assert top1.shape == (2, 2 * setup.group.order)


def test_plain_head_reference_points() -> None:
    setup = _setup()
    out = analysis.plain_head_top1(setup.head, setup.test_feats, setup.test.labels, batch_size=5)
    hits = lambda x: 100 * (setup.head(x).argmax(-1) == setup.test.labels).double().mean().item()  # noqa: E731
    assert out["upright"] == pytest.approx(hits(setup.test_feats[:, 0]))
    assert out["rotated"] == pytest.approx(sum(hits(setup.test_feats[:, k]) for k in range(4)) / 4)
    assert out["mean_of_views"] == pytest.approx(hits(setup.test_feats.mean(1)))


def test_reoriented_setup_is_the_orbit_of_turned_images() -> None:
    group = get_group("rot90")
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(10, 1, 4, 4, generator=gen)
    labels = torch.arange(10)
    data = en.ViewData(group.orbit(images), labels)
    setup = su.TrainingSetup(group, nn.Identity, nn.Linear(1, 1), data, data, data.inputs * 2, data.inputs * 2,
                           "toy", normalise_views=False, key="k")
    turned = setup.reoriented(seed=3)
    for i in range(10):  # every image's views are the orbit of some turn of it, and feats moved alike
        matches = [h for h in range(4) if torch.equal(turned.train.inputs[i], group.orbit(group.act(images[i:i + 1],
                                                                                                   h))[0])]
        assert len(matches) == 1
        assert torch.equal(turned.train_feats[i], turned.train.inputs[i] * 2)
    assert torch.equal(turned.train.labels, labels)
    for i in range(10):  # the original image is view h_i^-1 of the turned one
        original = group.inverse(int(turned.turns["train"][i]))
        assert torch.equal(turned.train.inputs[i, original], images[i])
    for split, views in (("train", turned.train.inputs), ("test", turned.test.inputs)):  # what the chapters read
        original = turned.original_views(split)
        assert all(torch.equal(views[i, original[i]], images[i]) for i in range(10)), split
    assert torch.equal(setup.original_views("test"), torch.zeros(10, dtype=torch.long))  # nothing turned: view 0
    assert turned.key == "k-turned3" and setup.reoriented(seed=3).key == turned.key
    turns = {h for i in range(10) for h in range(4)
             if torch.equal(turned.test.inputs[i], group.orbit(group.act(images[i:i + 1], h))[0])}
    assert len(turns) > 1  # not all the same turn
    assert su.TrainingSetup(group, nn.Identity, nn.Linear(1, 1), data, data, data.inputs, data.inputs).key == ""


def test_runs_are_cached_by_their_settings(tmp_path, monkeypatch) -> None:
    setup = _setup(dtype=torch.float32)  # the engine trains in float32
    config = su.feature_map_config(prefinetune_rounds=2, prefinetune_steps=2, finetune_rounds=1, finetune_steps=1,
                                   batch_size=4, selection_batches=1)
    net = lambda: FeatureMapWeightNet(2, (5, 5), conv_channels=3, per_channel=2, hidden=6)  # noqa: E731
    first = su.run_training(setup, config, weight_net=net, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("run_*.pt"))) == 1
    monkeypatch.setattr(su, "_run", lambda *a, **k: pytest.fail("a cached run was trained again"))
    second = su.run_training(setup, config, weight_net=net, cache_dir=tmp_path)
    assert first[0] == second[0] and first[1] == second[1]
    for stage in ("prefinetune", "finetune"):
        for name, value in first[2][stage].items():
            assert torch.equal(value, second[2][stage][name])
    with pytest.raises(pytest.fail.Exception):  # another setting is another run
        su.run_training(setup, config, weight_net=net, cache_dir=tmp_path, align_views=True)
    with pytest.raises(ValueError, match="no key"):
        su.run_training(su.TrainingSetup(**{**setup.__dict__, "key": ""}), config, weight_net=net,
                               cache_dir=tmp_path)


def test_feature_map_helpers_fail_clearly() -> None:
    from equinb.engine import weight_net_for

    with pytest.raises(ValueError, match="unknown method 'mean'; valid: 'lambda_equitune', 'equiattention'"):
        weight_net_for("mean", (2, 5, 5))
    with pytest.raises(ValueError, match="unknown profile 'huge'"):
        su.build_setup("huge", "maps", get_group("rot90"))
    with pytest.raises(ValueError, match="use image_size >= 65"):
        su.small_feature_map_setup(get_group("rot90"), image_size=64)
    with pytest.raises(ValueError, match="TrainConfig.prelr must be a number >= 0, got -1.0"):
        su.feature_map_config(prelr=-1.0)
    with pytest.raises(ValueError, match="TrainConfig.batch_size must be an integer >= 1, got '32'"):
        su.feature_map_config(batch_size="32")  # int() would take it, and a count of 2.5 too
    with pytest.raises(ValueError, match="TrainConfig.finetune_rounds must be an integer >= 0, got 2.5"):
        su.feature_map_config(finetune_rounds=2.5)


def _digit_like_setup() -> su.TrainingSetup:
    """Embedding-level toy setup with 4 classes of 6 training and 5 test images each; features = inputs."""
    group = get_group("rot90")
    gen = torch.Generator().manual_seed(0)
    labels = {s: torch.arange(4).repeat_interleave(n) for s, n in (("train", 6), ("test", 5))}
    data = {s: en.ViewData(group.orbit(torch.randn(len(y), 1, 3, 3, generator=gen)), y) for s, y in labels.items()}
    head = nn.Sequential(nn.Flatten(-3), nn.Linear(9, 4)).requires_grad_(False)
    return su.TrainingSetup(group, nn.Identity, head, data["train"], data["test"], data["train"].inputs,
                            data["test"].inputs, "toy", normalise_views=False, key="toy")


def test_prototype_head_favours_no_orientation_and_uses_its_shots() -> None:
    from equinb.heads import prototype_head

    group = get_group("rot90")
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat_interleave(4)
    embeddings = torch.randn(12, 4, 5, generator=gen)
    head = prototype_head(embeddings, labels, shots=2, n_classes=3, seed=1)
    turned = embeddings[:, group.view_permutation(1)]  # every image turned: its views permuted
    assert torch.allclose(prototype_head(turned, labels, 2, 3, seed=1).weight, head.weight, atol=1e-6)
    assert torch.allclose(head.weight.norm(dim=1), torch.ones(3)) and head.bias is None
    assert not torch.allclose(prototype_head(embeddings, labels, 2, 3, seed=2).weight, head.weight)  # the draw
    with pytest.raises(ValueError, match="class 0 has 4 training images; prototype_head needs 5"):
        prototype_head(embeddings, labels, 5, 3)


def test_stand_in_index_draws_the_counts_per_class_in_split_order(monkeypatch) -> None:
    labels = {"train": np.repeat([0, 1, 2, 3], 10), "test": np.repeat([0, 1, 2, 3], 5)}
    monkeypatch.setattr(su, "fashion_mnist_arrays", lambda split, root=None: (None, labels[split]))
    index = su.stand_in_index([3, 1], {"train": [6, 2], "test": [4, 1]}, seed=0)
    assert [int(labels["train"][i]) for i in index["train"]].count(3) == 6 and len(index["train"]) == 8
    assert index["train"] == sorted(index["train"]) and len(index["test"]) == 5
    assert index != su.stand_in_index([3, 1], {"train": [6, 2], "test": [4, 1]}, seed=1)
    assert su._relabel(torch.tensor([3, 1, 3]), [3, 1]).tolist() == [0, 1, 0]
    with pytest.raises(ValueError, match="one train count per class"):
        su.stand_in_index([3, 1], {"train": [6], "test": [4, 1]})


def test_group_changes_try_every_element_not_the_first() -> None:
    """A function of the rotated views alone is invariant to the rotations (elements 1-3 of d4) and not to the
    mirrors: only a measurement over every element tells it from the mean of all views. The images are 4 x 4, since
    a 3 x 3 image averaged over its rotations is already mirror-symmetric (both would pass)."""
    group = get_group("d4")
    images = torch.randn(8, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    data = en.ViewData(group.orbit(images), torch.zeros(8, dtype=torch.long))  # [8, 8, 1, 4, 4]
    head = nn.Linear(16, 4).double()
    all_views = lambda v: head(v.flatten(2)).mean(1)  # noqa: E731
    rotations = lambda v: head(v[:, :4].flatten(2)).mean(1)  # noqa: E731
    changes = analysis.group_changes({"all": all_views, "rotations": rotations}, data, group)
    assert changes["all"].endswith("(float rounding)") and "float rounding" not in changes["rotations"]
    rotation_only = analysis.group_changes({"rotations": rotations}, data.restrict(get_group("rot90"), [0, 1, 2, 3]),
                                           get_group("rot90"))
    assert rotation_only["rotations"].endswith("(float rounding)")  # invariant where the mirrors are not measured


def test_group_changes_tell_an_invariant_function_from_one_view() -> None:
    setup = _digit_like_setup()
    mean_of_views = lambda v: setup.head(v).mean(1)  # noqa: E731
    first_view = lambda v: setup.head(v[:, 0])  # noqa: E731
    changes = analysis.group_changes({"mean": mean_of_views, "view 0": first_view}, setup.test, setup.group)
    assert changes["mean"].endswith("(float rounding)") and "float rounding" not in changes["view 0"]
    assert float(changes["view 0"]) > 0.01
