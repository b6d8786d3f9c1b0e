"""The article's numbers beside ours: missing values read "—", deltas only where asked."""

from __future__ import annotations

import pandas as pd

from equinb.reference import article_tab1, beside_article, display_numbers


def test_display_numbers_formats_floats_and_never_shows_nan():
    table = display_numbers(pd.DataFrame({"name": ["a", "b"], "top1": [93.185, float("nan")], "n": [1, 2]}))
    assert list(table.top1) == ["93.19", "—"] and list(table.n) == [1, 2] and list(table.name) == ["a", "b"]
    assert "NaN" not in table.to_string() and "nan" not in table.to_html()


def test_beside_article_matches_rows_and_adds_deltas_only_when_asked():
    article = article_tab1()
    ours = pd.DataFrame({"group": ["rot90", "d4"], "code": ["updated", "updated"], "prefinetune_top1": [36.0, 50.0],
                         "finetune_top1": [57.0, 60.0]})
    table = beside_article(ours, article, on=["group", "code"], show=("group",))
    assert table.loc[0, "prefinetune (article)"] == "35.12" and table.loc[0, "prefinetune delta"] == "0.88"
    assert table.loc[1, "prefinetune (article)"] == "—"  # no such row in the article
    without = beside_article(ours, article, on=["group", "code"], show=("group",), with_delta=False)
    assert not any("delta" in c for c in without.columns)
