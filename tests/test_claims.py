"""The claim registry: unique ids, values that follow from the articles' printed numbers, known chapters."""

from __future__ import annotations

import re
from dataclasses import replace
import sys
from pathlib import Path

import pytest

from equinb.claims import claim, claims, claims_of
from equinb.reference import reference_rows

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from build_book import notebook_ids  # noqa: E402


def test_every_value_follows_from_its_derivation():
    for c in claims():
        if c.article_value is None:
            assert not c.derivation and c.direction is not None, c.id  # a direction-only claim says its side
            continue
        a, b = (float(x) for x in re.fullmatch(r"([-\d.]+) − ([-\d.]+)", c.derivation).groups())
        assert c.article_value == pytest.approx(a - b, abs=1e-3), c.id
        assert c.side in (-1, 0, 1)


def test_printed_numbers_of_the_tables_are_the_articles():
    """Each number in a table claim's derivation is a number the article prints for that table."""
    printed = {}
    for r in reference_rows():
        printed.setdefault(r["artifact"], set()).add(round(float(r["value"]), 4))
    artifacts = {"tab1": "tab1_original_vs_updated", "tab2": "tab2_invariant_vs_featuremap",
                 "tab3": "tab3_equitune_vs_equiattention", "tab4": "tab4_isic2018", "fig4": "orig_fig4_zeroshot",
                 "basu": "orig_finetune_curves"}
    checked = 0
    for c in claims():
        prefix = c.id.split(".")[0]
        if prefix not in artifacts or not c.derivation or "finetune_gain" in c.id and prefix == "tab1":
            continue
        for number in re.findall(r"[-\d.]+", c.derivation):
            values = printed[artifacts[prefix]] | (printed["tab1_original_vs_updated"] if prefix == "tab4" else set())
            assert round(float(number), 4) in values or c.id == "tab4.isic_below_cifar", (c.id, number)
            checked += 1
    assert checked > 100


def test_one_hot_shares_in_the_claims_follow_from_the_articles_histogram_counts():
    """The 88% and 99.6% of the one-hot claims are the article's histogram counts at weight >= 0.995, summed over
    the views, out of the 10,000 CIFAR100 test images."""
    counts = {}
    for r in reference_rows("fig2_3_lambda_weights"):
        if str(r["metric"]).startswith("images_weight_ge_0.995_rot"):
            counts[r["method"]] = counts.get(r["method"], 0) + float(r["value"])
    assert set(counts) == {"lambda_equitune", "equiattention"}
    for key, method in (("lambda", "lambda_equitune"), ("attention", "equiattention")):
        quoted = re.search(r"in ([\d.]+)% of the CIFAR100 test images", claim(f"fig2.one_hot.{key}").text).group(1)
        decimals = len(quoted.partition(".")[2])
        assert f"{100 * counts[method] / 10_000:.{decimals}f}" == quoted, (key, counts[method])


def test_ids_are_unique_and_chapters_exist():
    ids = [c.id for c in claims()]
    assert len(ids) == len(set(ids))
    chapters = set(notebook_ids())
    assert {c.chapter for c in claims() if c.chapter} <= chapters
    assert len(claims_of("fig4_zeroshot")) == 64  # 2 datasets x 4 backbones x 2 transforms x 2 pairs x 2 metrics
    untested = [c for c in claims() if not c.chapter]  # some claims no chapter runs: the claim list says why
    assert untested and all(c.no_chapter_because for c in untested)
    with pytest.raises(ValueError, match="not both or neither"):
        replace(untested[0], no_chapter_because="")
    with pytest.raises(KeyError, match="close ones: tab1"):
        claim("tab1.nothing")
