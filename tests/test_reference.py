"""The article's numbers beside ours: missing values read "—", deltas only where asked."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

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


def test_article_tab4_and_the_test_set_size_behind_its_percentages():
    from equinb.reference import article_tab4, count_behind

    table = article_tab4()
    assert list(table.columns) == ["prefinetune_top1", "finetune_top1"]
    assert table.loc["original_invariant", "finetune_top1"] == 63.73
    assert count_behind(63.73, 193) == 123 and count_behind(15.03, 193) == 29
    assert all(count_behind(v, 194) is None for v in table.to_numpy().ravel())
    assert all(count_behind(v, 193) is not None for v in table.to_numpy().ravel())
    assert count_behind(100.0, 7) == 7 and count_behind(50.0, 7) is None


def _zeroshot_rows(backbone: str, dataset: str) -> pd.DataFrame:
    return pd.DataFrame([dict(backbone=backbone, dataset=dataset, transform=t, method=m, reading=r, top1=top1)
                         for t in ("rot90", "hflip") for m in ("vanilla", "equizero")
                         for r, top1 in (("as_published", 50.0), ("as_described", 51.0))])


def test_compare_fig4_deltas_for_the_same_cell_and_none_for_a_stand_in():
    from equinb.reference import article_fig4, compare_fig4

    article = article_fig4()
    same = compare_fig4(_zeroshot_rows("RN50", "cifar100"), article)
    row = same[(same["transform"] == "rot90") & (same.method == "vanilla")].iloc[0]
    assert row["article (result files)"] == 24.28 and abs(row["delta"] - (50.0 - 24.28)) < 1e-9
    stand_in = compare_fig4(_zeroshot_rows("mobilenet_v2", "digits"), article,
                            stand_in={("mobilenet_v2", "digits"): ("RN50", "cifar100")})
    assert "delta" not in stand_in.columns and set(stand_in["article cell"]) == {"RN50 / cifar100"}
    rot90 = stand_in[(stand_in["transform"] == "rot90") & (stand_in.method == "equizero")].iloc[0]
    assert rot90["article (result files)"] == 38.89 and rot90["article (Basu et al.)"] == 38.87
    assert stand_in[stand_in["transform"] == "hflip"]["article (result files)"].isna().all()  # the article has none
    unmatched = compare_fig4(_zeroshot_rows("mobilenet_v2", "digits"), article)  # no stand-in: nothing lines up
    assert unmatched["article (result files)"].isna().all()
    with pytest.raises(ValueError, match="the article does not have"):
        compare_fig4(_zeroshot_rows("mobilenet_v2", "digits"), article,
                     stand_in={("mobilenet_v2", "digits"): ("RN50", "mnist")})
    with pytest.raises(ValueError, match="this run does not have"):  # a typo would give a table of dashes
        compare_fig4(_zeroshot_rows("mobilenet_v2", "digits"), article,
                     stand_in={("mobilenetv2", "digits"): ("RN50", "cifar100")})


BOOK = Path(__file__).resolve().parent.parent / "book"
_NUMBER = re.compile(r"(?<![\w.])[-+−]?\d+(?:\.\d+)?")


def _article_cells(page: Path) -> list[tuple[str, str]]:
    """(header, cell) of every cell of a Markdown table of ``page`` under a header naming the article, without the
    cells a chapter fills in (glue)."""
    cells, header = [], None
    for line in page.read_text().splitlines():
        if not line.startswith("|"):
            header = None
            continue
        row = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = row
        elif not set(line) <= set("|-: "):
            cells += [(h, c) for h, c in zip(header, row) if "article" in h and "glue:" not in c]
    return cells


def test_the_article_numbers_typed_into_the_book_pages_are_the_articles() -> None:
    """The summary's tables type the article's values beside the glued ones: each must be a value of the article's
    number table, as printed (its decimals; a column in % may show a fraction as a percentage)."""
    table = pd.read_csv(Path(__file__).resolve().parent.parent / "equinb" / "article_numbers.csv")
    values = pd.to_numeric(table["value"], errors="coerce").dropna().tolist()
    checked = 0
    for page in sorted(BOOK.glob("*.md")):
        for header, cell in _article_cells(page):
            for text in _NUMBER.findall(cell):
                x, decimals = float(text.replace("−", "-")), len(text.partition(".")[2])
                scales = (1.0, 100.0) if "%" in header else (1.0,)
                assert any(abs(round(v * k, decimals) - x) < 1e-9 for v in values for k in scales), (
                    f"{page.name}: {text} under {header!r} is no value of equinb/article_numbers.csv")
                checked += 1
    assert checked >= 30  # the summary's tables of Tables 1-4, Figures 2-3 and Figure 4

