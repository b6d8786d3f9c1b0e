"""Every glued verdict table of the committed notebooks follows the rule: a verdict can fail, and cannot be given
where the comparison cannot test the claim.

- an interval that excludes 0 reads "agrees" or "reversed" (by the article's side) or "not tested here: ...";
- an interval that holds 0 reads "inconclusive" or "not tested here: ...";
- a compared finetune stage that changed no test prediction is "not tested here";
- a "not tested here" reason is one that a reason function of ``equinb.verdicts`` or ``equinb.evidence`` makes
  from the numbers (its form is recognised), never a sentence typed in a chapter;
- every claim a chapter is registered for has its row, and the claim list counts them all.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from equinb.claims import claim, claims, claims_of
from equinb.tables import glued_json
from equinb.verdicts import FAILS_BY_CONSTRUCTION, NEEDS_OTHER_SETTING, NOT_TESTED, VERDICT_COLUMN

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
sys.path.insert(0, str(ROOT / "tools"))
from build_book import AGGREGATES, notebook_ids  # noqa: E402

CHAPTERS = [c for c in notebook_ids() if c not in AGGREGATES and claims_of(c)]
INTERVAL = re.compile(r"^\[([-+]?\d+\.?\d*), ([-+]?\d+\.?\d*)\]$")


def _rows(chapter: str) -> list[dict]:
    rows = glued_json(NOTEBOOKS / f"{chapter}.ipynb")
    assert rows, f"notebooks/{chapter}.ipynb has no glued verdicts: run `make notebooks`"
    return rows


# The forms of the reasons the reason functions make (equinb.verdicts: unchanged_stage, diverged, at_chance,
# below_majority, solved_without_training, by_construction, zero_by_construction, orientation_kept, too_few_seeds,
# not_in_this_run, out_of_reach, not_finite (both its forms), judge's own two;
# equinb.evidence: stage_problems, diverged_seeds).
COMPUTED_REASONS = [re.compile(pattern) for pattern in (
    r"^\w+ changed no test prediction of ", r"^[^:;]{1,80} diverged (\(training loss above|in \d+ of \d+ seeds)",
    r"^[^:;]{1,80} is at chance (\(top-1 |in balanced accuracy \()", r"^both below the majority class: ",
    r"^[^:;]{1,80} ran \d+ seeds? \(a verdict needs \d+\)$",
    r"^solved without training: ", r"^decided by construction: ", r"^indistinguishable from a control: ",
    r"^the stand-in turns upright images at random", r"^the compared scores are not all finite ",
    r"^no interval can be estimated from ",
    "^" + re.escape(NEEDS_OTHER_SETTING), r"^out of reach: ", r"^nothing was measured$", r"^no article value$")]


def verdict_problem(row: dict) -> str | None:
    """What is wrong with one verdict row (None: it follows the rule)."""
    verdict = row[VERDICT_COLUMN]
    if verdict.startswith(f"{NOT_TESTED}: "):
        reason = verdict.removeprefix(f"{NOT_TESTED}: ")
        if not any(form.search(reason) for form in COMPUTED_REASONS):
            return f"a reason no reason function makes: {reason!r}"
        return None
    if verdict.startswith("reversed: "):  # refuted by the code's construction: that reason, and a measured reversal
        reason = verdict.removeprefix("reversed: ")
        if not (reason.startswith("decided by construction: ") and FAILS_BY_CONSTRUCTION in reason):
            return f"a reversal with a reason other than the code's construction: {reason!r}"
        verdict = "reversed"
    if any(count == 0 for count in row.get("changed", {}).values()):
        return f"a compared finetune stage changed no prediction, yet the verdict is {verdict!r}"
    match = INTERVAL.match(row["95% interval"])
    if match is None:
        return f"no interval ({row['95% interval']!r}) and no reason, yet the verdict is {verdict!r}"
    low, high = float(match.group(1)), float(match.group(2))
    if low <= 0 <= high:
        return None if verdict == "inconclusive" else f"interval [{low}, {high}] holds 0 but the verdict is {verdict!r}"
    side = claim(row["id"]).side
    expected = "reversed" if side == 0 else "agrees" if (low > 0) == (side > 0) else "reversed"
    if verdict != expected:
        return f"interval [{low}, {high}], article side {side}: {verdict!r} != {expected!r}"
    return None


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_every_glued_verdict_follows_the_rule(chapter: str) -> None:
    rows = _rows(chapter)
    problems = [f"{row['id']}: {p}" for row in rows if (p := verdict_problem(row))]
    assert not problems, "\n".join(problems)
    assert sorted(r["id"] for r in rows) == sorted(c.id for c in claims_of(chapter))  # every registered claim


def test_the_rule_checker_catches_each_fault() -> None:
    good = {"id": "tab1.updated_minus_original.rot90.prefinetune", "95% interval": "[+1.00, +5.00]",
            VERDICT_COLUMN: "agrees", "changed": {}}
    assert verdict_problem(good) is None
    assert "holds 0" in verdict_problem({**good, "95% interval": "[-1.00, +5.00]"})
    assert "'agrees' != 'reversed'" in verdict_problem({**good, "95% interval": "[-5.00, -1.00]"})
    assert "inconclusive" in verdict_problem({**good, VERDICT_COLUMN: "inconclusive"})
    stuck = {**good, "id": "tab1.finetune_gain.rot90.updated", "changed": {"the updated code": 0}}
    assert "changed no prediction" in verdict_problem(stuck)
    assert verdict_problem({**stuck, VERDICT_COLUMN: f"{NOT_TESTED}: finetuning changed no test prediction of "
                                                     "the updated code"}) is None
    refuted = f"reversed: decided by construction: Z is invariant, so it is not equivariant: {FAILS_BY_CONSTRUCTION}"
    assert verdict_problem({**good, "95% interval": "[-5.00, -1.00]", VERDICT_COLUMN: refuted}) is None
    assert "holds 0" in verdict_problem({**good, "95% interval": "[-5.00, +1.00]", VERDICT_COLUMN: refuted})
    assert "other than the code's construction" in verdict_problem({**good, "95% interval": "[-5.00, -1.00]",
                                                                     VERDICT_COLUMN: "reversed: it looks wrong"})
    for typed in ("the stand-in is too easy", "no run does this; besides, finetuning changed no test prediction of r"):
        assert verdict_problem({**good, VERDICT_COLUMN: f"{NOT_TESTED}: {typed}"}).startswith(
            "a reason no reason function makes")


def test_the_claim_list_lists_every_claim_with_counts() -> None:
    from equinb.tables import glued_json as read

    notebook = NOTEBOOKS / "claim_list.ipynb"
    text = notebook.read_text()
    assert all(c.text[:60].replace('"', '\\"') in text for c in claims()), "a claim is missing from the list"
    assert read(notebook) is None  # the list glues counts, not verdict rows
    assert '"claims_tested"' in text and '"claims_not_tested_here"' in text


def test_the_summary_table_leaves_out_only_claims_that_need_other_settings(monkeypatch) -> None:
    import myst_nb

    from equinb import tables

    glued = {}
    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display=True: glued.__setitem__(name, value))
    monkeypatch.setattr("IPython.display.display", lambda *args: None)
    rows = [{"id": "a", "claim": "x", VERDICT_COLUMN: "agrees"},
            {"id": "b", "claim": "y", VERDICT_COLUMN: f"{NOT_TESTED}: needs backbone RN101; this run has RN50"},
            {"id": "c", "claim": "z", VERDICT_COLUMN: f"{NOT_TESTED}: finetuning changed no test prediction of r"}]
    tables.publish_verdicts(rows, "small", "tab1_original_vs_updated", "Claims")
    runnable = glued[tables.RUNNABLE_KEY]
    assert list(runnable.frame["id"]) == ["a", "c"] and len(glued[tables.VERDICTS_KEY].frame) == 3
    assert runnable.caption.endswith("; 1 more need settings this profile does not run (the claim list has them)")


def test_columns_that_would_show_under_one_name_are_refused() -> None:
    import pandas as pd

    from equinb.tables import Table

    with pytest.raises(ValueError, match="repeated names"):
        repr(Table(pd.DataFrame({"prefinetune_top1": [1.0], "prefinetune top1": [2.0]})))
    assert "prefinetune top-1" in repr(Table(pd.DataFrame({"prefinetune_top1": [1.0]})))


def test_a_column_shown_beneath_another_keeps_its_data() -> None:
    """In HTML the noise sits under the interval (five columns fit the page); the text form and the data keep it
    as a column, and a missing note ("—") is left out, not printed as "noise: —"."""
    import pandas as pd

    from equinb.tables import Table

    frame = pd.DataFrame({"claim": ["a", "b"], "95% interval": ["[+1.00, +2.00]", "—"],
                          "noise": ["5 seeds × 10 items", None]})
    table = Table(frame, beneath={"noise": "95% interval", "missing": "claim"})
    page = table._repr_html_()
    assert "<th>noise</th>" not in page and "<th>95% interval</th>" in page
    assert ('<td class="num">[+1.00, +2.00]<div class="equinb-beneath">noise: 5 seeds × 10 items</div></td>'
            in page)
    assert page.count("equinb-beneath") == 1 and "noise: —" not in page
    assert "noise" in repr(table).splitlines()[0] and list(table.frame.columns) == ["claim", "95% interval", "noise"]


def test_a_collapsed_table_folds_in_html_only() -> None:
    import pandas as pd

    from equinb.tables import Collapsed, Table

    table = Table(pd.DataFrame({"claim": ["a"], "verdict vs the article": ["not tested here: needs x"]}), "Table 9.2")
    folded = Collapsed(table)
    assert repr(folded) == repr(table)
    page = folded._repr_html_()
    assert page.startswith('<details class="equinb-collapsed"><summary>Table 9.2 (click to show)</summary>')
    assert page.endswith("</details>") and "not tested here: needs x" in page
    assert page.count("Table 9.2") == 1  # the summary line is the caption; the opened table does not repeat it
    table.data_href = "t.csv"
    assert 'href="t.csv"' in Collapsed(table)._repr_html_() and table.caption == "Table 9.2"  # the link stays
