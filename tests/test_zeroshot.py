"""Zero-shot evaluation on cached per-view logits: per-image scores agree with the table, draws only move vanilla."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from equinb import zeroshot as zs


@pytest.fixture(scope="module")
def logits():
    torch.manual_seed(0)
    elements = zs.view_elements(zs.TRANSFORMS)
    labels = torch.randint(0, 7, (90,))
    views = torch.randn(90, len(elements), 7)
    views[torch.arange(90), 0, labels] += 2.0  # the upright view knows the answer more often
    return views, labels, elements


def test_per_image_scores_average_to_the_table(logits):
    views, labels, elements = logits
    rows = zs.evaluate_views(views, labels, elements)
    for k in (1, 5):
        table = {(r["transform"], r["method"], r["reading"]): r[f"top{k}"] for r in rows}
        for transform in zs.TRANSFORMS:
            scores = zs.per_image_correct(views, labels, elements, transform, k=k)
            assert set(scores) == {(m, r) for m in zs.ZEROSHOT_METHODS for r in ("as_published", "as_described")}
            for (method, reading), s in scores.items():
                assert s.shape == (90,) and 0 <= float(s.min()) and float(s.max()) <= 1
                assert 100 * float(s.mean()) == pytest.approx(table[transform, method, reading])


def test_only_vanilla_as_published_depends_on_the_draws(logits):
    views, labels, elements = logits
    a = zs.per_image_correct(views, labels, elements, "rot90", seed=0)
    b = zs.per_image_correct(views, labels, elements, "rot90", seed=1)
    assert not torch.equal(a["vanilla", "as_published"], b["vanilla", "as_published"])
    for key in a:
        if key != ("vanilla", "as_published"):
            assert torch.equal(a[key], b[key]), key


def test_each_transform_reads_its_own_views_only(logits):
    views, labels, elements = logits
    gen = torch.Generator().manual_seed(1)
    for name in zs.TRANSFORMS:
        own = [elements.index(e) for e in zs.transform_group(name).elements]
        others = [c for c in range(len(elements)) if c not in own]
        scrambled = views.clone()
        scrambled[:, others] = torch.randn(len(views), len(others), views.shape[-1], generator=gen)
        a = zs.per_image_correct(views, labels, elements, name)
        b = zs.per_image_correct(scrambled, labels, elements, name)
        assert all(torch.equal(a[key], b[key]) for key in a), name  # the other transforms' views do not matter
        expected = (views[:, own].softmax(-1).mean(1).argmax(-1) == labels).double()
        assert torch.equal(a["equitune", "as_described"], expected), name


def test_per_view_logits_hold_each_images_views_in_order():
    from equinb.groups import d4_act

    elements = zs.view_elements(zs.TRANSFORMS)
    images = torch.randn(5, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    encoder, head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 6)), torch.nn.Linear(6, 3)
    batches = [(images[:3], torch.arange(3)), (images[3:], torch.arange(3, 5))]
    logits, labels = zs.per_view_logits(encoder, head, batches, elements)
    assert logits.shape == (5, len(elements), 3) and torch.equal(labels, torch.arange(5))
    with torch.no_grad():
        for j, element in enumerate(elements):
            torch.testing.assert_close(logits[:, j], head(encoder(d4_act(images, element))))


def test_missing_views_fail_clearly(logits):
    views, labels, elements = logits
    with pytest.raises(ValueError, match="needs views"):
        zs.per_image_correct(views[:, :1], labels, elements[:1], "rot90")


def test_method_ordering_names_ties_and_the_expected_order():
    table = pd.DataFrame({"vanilla": [1.0, 5.0], "equitune": [2.0, 5.0], "equizero": [3.0, 4.0]})
    out = zs.method_ordering(table)
    assert list(out.ordering) == ["equizero > equitune > vanilla", "vanilla = equitune > equizero"]
    assert list(out[zs.ORDERING_COLUMN]) == ["yes", "no"]


def test_orbit_predictions_of_equitune_and_equizero_do_not_depend_on_the_orientation():
    from equinb.groups import get_group

    group = get_group("rot90")
    gen = torch.Generator().manual_seed(0)
    views = torch.randn(50, 4, 7, generator=gen) * 3
    got = zs.orbit_predictions(views, group)
    assert torch.equal(got["vanilla"], views[:, 0].argmax(-1))
    chosen = views.softmax(-1).amax(-1).argmax(-1)  # the most confident view of each image
    assert torch.equal(got["equizero"], views[torch.arange(50), chosen].argmax(-1))
    assert torch.equal(got["equitune"], views.softmax(-1).mean(1).argmax(-1))
    turned = views[:, group.view_permutation(1)]  # the same images turned by 90 degrees
    again = zs.orbit_predictions(turned, group)
    assert torch.equal(again["equitune"], got["equitune"]) and torch.equal(again["equizero"], got["equizero"])
    assert not torch.equal(again["vanilla"], got["vanilla"])  # the control moves
    with pytest.raises(ValueError, match=r"view_logits must be \[N, 4, C\]"):
        zs.orbit_predictions(views[:, :2], group)


def test_bad_arguments_fail_before_a_model_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unknown transformation or dataset is named before any backbone loads (for CLIP: a download and the
    text head's encoding)."""
    from equinb import heads, zeroshot

    never = lambda *a, **k: pytest.fail("a model was loaded before the arguments were checked")  # noqa: E731
    monkeypatch.setattr(zeroshot, "load_frozen_model", never)
    monkeypatch.setattr(heads, "load_backbone", never)
    with pytest.raises(ValueError, match="unknown transformation 'rot45'"):
        zeroshot.orbit_logits("mobilenet_v2", "digits", transforms=["none", "rot45"])
    with pytest.raises(ValueError, match="unknown transformation"):
        zeroshot.run_zeroshot("mobilenet_v2", "digits", transforms=["mirror"])
    with pytest.raises(ValueError, match="cifar10"):
        heads.load_frozen_model("mobilenet_v2", "cifar10")
    for transforms in ("rot90", []):  # a bare name would be read one letter at a time
        with pytest.raises(ValueError, match="transforms must be a non-empty list of names"):
            zeroshot.run_zeroshot("mobilenet_v2", "digits", transforms=transforms)


def test_top5_on_fewer_than_five_classes_counts_every_class_in_both_readers():
    """A test set of 3 classes: top-5 holds every class, so each image is a hit, in the per-image scores as in
    the table (the per-image scores once asked topk for 5 of 3 and raised)."""
    torch.manual_seed(0)
    elements = zs.view_elements(["rot90"])
    views = torch.randn(12, len(elements), 3)  # [N, E, C]: 3 classes
    labels = torch.randint(0, 3, (12,))
    scores = zs.per_image_correct(views, labels, elements, "rot90", k=5)
    assert all(bool((s == 1).all()) for s in scores.values())
    assert zs.topk_accuracy(views[:, 0], labels, 5) == 100.0
