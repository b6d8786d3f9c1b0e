"""Tolerances and tolerance-aware comparison (and its nbval plugin)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from equinb.noise import (TAG_PREFIX, Tolerance, loss_label, snap_numbers, split_numbers, tagged_class, tolerance,
                          tolerances, cpu_turns, verdict_class)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from nbval_tolerance import cell_tolerance, snap_outputs  # noqa: E402

PP = Tolerance("t", absolute=2.0, relative=0.0, unit="pp", basis="test")
REL = Tolerance("r", absolute=0.0, relative=0.1, unit="", basis="test")


def test_split_numbers_keeps_text_and_signs():
    texts, numbers = split_numbers("top-1 91.66  pp, diff -0.30 and 1e-04 (ViT-B/32)")
    assert numbers == ["1", "91.66", "-0.30", "1e-04", "32"]
    assert texts[1] == " " and texts[2] == " pp, diff "  # white space folded


def test_snap_within_tolerance_gives_the_reference_text():
    ref = "method   top1\nlambda  91.66\nattention  92.77"
    ours = "method   top1\nlambda  93.18\nattention   92.63"  # another CPU: numbers moved, columns shifted
    assert snap_numbers(ours, ref, PP) == ref


def test_snap_keeps_numbers_outside_the_tolerance():
    ref = "lambda 91.66 attention 92.77"
    snapped = snap_numbers("lambda 95.00 attention 92.70", ref, PP)
    assert snapped == "lambda 95.00 attention 92.77" and snapped != ref


def test_snap_never_forgives_a_change_of_text():
    ref = "Z invariance error < 1e-04 (float rounding)"
    assert snap_numbers("Z invariance error 3.8", ref, PP) == "Z invariance error 3.8"
    assert snap_numbers("lambda 91.66 extra 1.0", "lambda 91.66", PP) == "lambda 91.66 extra 1.0"
    assert snap_numbers("attention 91.66", "lambda 91.66", PP) == "attention 91.66"


def test_snap_allows_only_adjacent_verdicts():
    ref = "+1.11 agrees"
    assert snap_numbers("+0.80 inconclusive", ref, PP) == ref
    assert snap_numbers("-0.80 reversed", "-1.20 inconclusive", PP) == "-1.20 inconclusive"
    assert snap_numbers("+2.9 non-zero", "+2.4 inconclusive", PP) == "+2.4 inconclusive"
    assert snap_numbers("+1.50 reversed", ref, PP) == "+1.50 reversed"  # agrees vs reversed: a real change
    assert snap_numbers("+1.50 not tested here", ref, PP) == "+1.50 not tested here"  # a verdict vs none


def test_tab4s_orientation_readings_are_adjacent_like_the_verdicts_they_rename():
    """Table 4's chapter renames reversed / inconclusive against chance; its words may swap as those do (found
    under make test-portable's avx512-1thread: an interval of [24.8, 54.4] against chance 25 excluded it there)."""
    from equinb.noise import ORIENTATION_READINGS

    source = (Path(__file__).resolve().parents[1] / "notebooks" / "tab4_isic2018.py").read_text()
    assert "against_chance = judge(comparison, 0)" in source
    assert "reading=ORIENTATION_READINGS.get(against_chance, against_chance)" in source
    assert set(ORIENTATION_READINGS) == {"reversed", "inconclusive"}  # what judge(comparison, 0) can give
    privileged, not_privileged = ORIENTATION_READINGS["reversed"], ORIENTATION_READINGS["inconclusive"]
    ref = f"39.5 [24.8, 54.4] {not_privileged}"
    assert snap_numbers(f"39.9 [25.2, 54.6] {privileged}", ref, PP) == ref
    assert snap_numbers("39.9 [25.2, 54.6] agrees", ref, PP) != ref  # another verdict's word is a real change


def test_relative_tolerance_scales_with_the_value():
    assert REL.allows(3.8, 3.5) and not REL.allows(3.8, 3.3)
    assert REL.allows(0.0, 0.0) and not REL.allows(0.0, 1e-3)
    assert Tolerance("n", 1.0, 0.0, "", "").allows(float("nan"), float("nan"))


def test_loss_label_names_runaway_losses():
    assert loss_label(1.37e28) == loss_label(3.4e16) == "diverged (> 1e+06)"
    assert loss_label(float("inf")).startswith("diverged") and loss_label(2.6812) == "2.68"


def test_measured_tolerances_are_complete_and_used_by_known_tags():
    known = tolerances()
    for t in known.values():
        assert (t.absolute > 0 or t.relative > 0) and t.basis
    used = set()
    for source in (ROOT / "notebooks").glob("*.py"):
        used |= set(re.findall(r'"' + TAG_PREFIX + r'([a-z0-9_]+)"', source.read_text()))
    assert used and used <= set(known), f"tags without a measured class: {used - set(known)}"
    with pytest.raises(KeyError, match="known: "):
        tolerance("no_such_class")


def test_plugin_reads_the_tag_and_snaps_every_text_output():
    cell = nbformat.v4.new_code_cell("x", metadata={"tags": ["hide-input", "tolerance-top1"]})
    assert cell_tolerance(cell) == tolerance("top1")
    assert cell_tolerance(nbformat.v4.new_code_cell("x")) is None
    ref = [nbformat.v4.new_output("stream", name="stdout", text="top1 91.66\n"),
           nbformat.v4.new_output("display_data", data={"text/plain": "a 91.66", "text/html": "<td>91.66</td>"})]
    test = [nbformat.v4.new_output("stream", name="stdout", text="top1 92.10\n"),
            nbformat.v4.new_output("display_data", data={"text/plain": "a 92.10", "text/html": "<td>92.10</td>"})]
    assert snap_outputs(test, ref, PP) == ref
    assert test[0]["text"] == "top1 92.10\n"  # the test's own outputs are not modified


def _run_nbval(tmp_path: Path, cells: list) -> subprocess.CompletedProcess:
    """nbval with the plugin on a notebook of ``cells`` (their outputs are the committed reference)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for i, cell in enumerate(cells):
        cell.execution_count = i + 1
        nb.cells.append(cell)
    path = tmp_path / "regression.ipynb"
    nbformat.write(nb, path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "nbval_tolerance", "--nbval",
                           "--nbval-current-env", "-p", "no:cacheprovider", str(path)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)


def _nbval(tmp_path: Path, printed: dict[str, str], reference: dict[str, str]) -> subprocess.CompletedProcess:
    """nbval with the plugin on a two-cell notebook: one tagged top1 cell, one exact cell."""
    cells = []
    for key, tags in (("tagged", ["tolerance-top1"]), ("exact", [])):
        cell = nbformat.v4.new_code_cell(f"print('top-1 {printed[key]}')", metadata={"tags": tags})
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"top-1 {reference[key]}\n")]
        cells.append(cell)
    return _run_nbval(tmp_path, cells)


def test_nbval_passes_trained_numbers_within_tolerance_and_fails_beyond(tmp_path):
    ref = {"tagged": "91.66", "exact": "0.50"}
    tol = tolerance("top1").absolute
    within = _nbval(tmp_path, {"tagged": f"{91.66 + 0.9 * tol:.2f}", "exact": "0.50"}, ref)
    assert within.returncode == 0, within.stdout[-2000:]
    beyond = _nbval(tmp_path, {"tagged": f"{91.66 + 1.5 * tol + 0.1:.2f}", "exact": "0.50"}, ref)
    assert beyond.returncode != 0 and "1 failed" in beyond.stdout, beyond.stdout[-2000:]
    exact = _nbval(tmp_path, {"tagged": "91.66", "exact": "0.51"}, ref)  # untagged cells stay exact
    assert exact.returncode != 0 and "1 failed" in exact.stdout, exact.stdout[-2000:]


def test_nbval_skips_glued_images_but_compares_the_glued_text(tmp_path):
    """A figure glued for a caption is recorded under papermill's mime type; its pixels move with the CPU."""
    code = ("from IPython.display import display\n"
            "display({'application/papermill.record/image/png': '{image}', "
            "'application/papermill.record/text/plain': '{text}'}, raw=True)")

    def run(image: str, text: str) -> subprocess.CompletedProcess:
        cell = nbformat.v4.new_code_cell(code.replace("{image}", image).replace("{text}", text))
        cell.outputs = [nbformat.v4.new_output("display_data", data={
            "application/papermill.record/image/png": "AAAA", "application/papermill.record/text/plain": "fig"})]
        return _run_nbval(tmp_path, [cell])

    other_pixels = run("BBBB", "fig")
    assert other_pixels.returncode == 0, other_pixels.stdout[-2000:]
    other_text = run("AAAA", "other")
    assert other_text.returncode != 0 and "1 failed" in other_text.stdout, other_text.stdout[-2000:]


def test_regression_power_check_tells_differing_outputs_from_errors(tmp_path):
    """nbval titles both "Notebook cell execution failed"; only differing outputs show the tolerances' power."""
    sys.path.insert(0, str(ROOT / "tools"))
    from check_regression_power import failed_cells

    cells = []
    for code, committed in (("print('top-1 50.0')", "top-1 90.0\n"), ("raise ValueError('diverged')", "ok\n"),
                            ("print('same')", "same\n")):
        cell = nbformat.v4.new_code_cell(code, metadata={"tags": ["tolerance-top1"]})
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=committed)]
        cells.append(cell)
    result = _run_nbval(tmp_path, cells)
    assert result.returncode != 0
    assert failed_cells(result.stdout) == ([0], [1]), result.stdout[-3000:]


def test_measured_file_records_how_it_was_made():
    data = json.loads((ROOT / "equinb" / "noise_measured.json").read_text())
    assert data["command"] and set(data["classes"]) == set(tolerances())


def _executed(tmp_path: Path, name: str, printed: list[str], tags: list[list[str]]) -> Path:
    nb = nbformat.v4.new_notebook()
    for text, cell_tags in zip(printed, tags):
        cell = nbformat.v4.new_code_cell("print(x)", metadata={"tags": cell_tags})
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)]
        nb.cells.append(cell)
    path = tmp_path / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


def test_noise_measurement_pairs_numbers_per_tagged_cell(tmp_path):
    sys.path.insert(0, str(ROOT / "tools"))
    from measure_noise import round_up
    from notebook_numbers import diff_notebooks

    tags = [["tolerance-top1"], []]
    ref = _executed(tmp_path, "ref", ["top-1 91.66 and 92.77\n", "exact 0.50\n"], tags)
    other = _executed(tmp_path, "other", ["top-1 93.18 and 92.77\n", "exact 0.51\n"], tags)
    top1, exact = diff_notebooks(ref, other)
    assert (top1.tolerance_class, top1.pairs, top1.text_differs) == ("top1", [(91.66, 93.18)], False)
    assert abs(top1.max_abs - 1.52) < 1e-9 and exact.tolerance_class == "exact"
    assert round_up(1.52 * 1.5) == 2.3 and round_up(0.0123) == 0.013 and round_up(0) == 0


def test_noise_measurement_skips_what_the_regression_does_not_compare(tmp_path):
    """A timing cell (nbval-ignore-output) and a glued figure's pixels move between runs but are no result."""
    sys.path.insert(0, str(ROOT / "tools"))
    from notebook_numbers import diff_notebooks

    tags = [["nbval-ignore-output"], ["exact"]]
    ref = _executed(tmp_path, "ref", ["907.04 ms\n", "fig\n"], tags)
    other = _executed(tmp_path, "other", ["83.76 ms\n", "fig\n"], tags)
    glued = {"application/papermill.record/text/plain": "<Figure>"}
    for path, pixels in ((ref, "AAAA"), (other, "BBBB")):
        nb = nbformat.read(path, as_version=4)
        nb.cells[1].outputs = [nbformat.v4.new_output("display_data", data={
            **glued, "application/papermill.record/image/png": pixels})]
        nbformat.write(nb, path)
    assert diff_notebooks(ref, other) == []
    nb = nbformat.read(other, as_version=4)  # the glued text beside the pixels is still compared
    nb.cells[1].outputs[0].data["application/papermill.record/text/plain"] = "<Other>"
    nbformat.write(nb, other)
    assert [d.index for d in diff_notebooks(ref, other)] == [1]


def test_package_data_ships_every_data_file_of_equinb():
    import fnmatch
    import tomllib

    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["equinb"]
    data = [p.name for p in (ROOT / "equinb").iterdir() if p.is_file() and p.suffix not in (".py", ".pyc")]
    assert "noise_measured.json" in data
    assert all(any(fnmatch.fnmatch(name, pat) for pat in patterns) for name in data), (data, patterns)


def test_tolerances_are_refused_for_a_profile_they_were_not_measured_on() -> None:
    from equinb.noise import chapter_tolerances, measured_profile, noise_note, tolerance

    assert measured_profile() == "small" and tolerance("top1", "small").absolute > 0
    with pytest.raises(ValueError, match="measured on the 'small' profile, not 'paper'"):
        tolerance("top1", "paper")
    assert chapter_tolerances("paper", "top1", "logit") == {"top1": None, "logit": None}
    assert "measured on the small profile only" in noise_note(None, "top-1 accuracies (%)")


def test_noise_measurement_pairs_the_numbers_of_a_verdict_that_swapped(tmp_path):
    """A verdict that turns from agrees to inconclusive (which the regression allows) moved its interval the most:
    its numbers must enter the measurement, or the tolerance never sees the largest moves. A swap the regression
    refuses (agrees to reversed) is a text change, not noise."""
    sys.path.insert(0, str(ROOT / "tools"))
    from notebook_numbers import diff_notebooks

    tags = [["tolerance-share"]]
    ref = _executed(tmp_path, "ref", ["+17.65 [+7.72, +27.58] agrees\n"], tags)
    swapped = _executed(tmp_path, "swapped", ["+9.30 [-12.82, +31.43] inconclusive\n"], tags)
    (d,) = diff_notebooks(ref, swapped)
    assert not d.text_differs and d.pairs == [(17.65, 9.30), (7.72, -12.82), (27.58, 31.43)]
    assert abs(d.max_abs - 20.54) < 1e-9
    reversed_ = _executed(tmp_path, "reversed", ["-9.30 [-12.82, -1.43] reversed\n"], tags)
    (d,) = diff_notebooks(ref, reversed_)
    assert d.text_differs and d.pairs == []


def test_a_relative_tolerance_is_a_share_of_the_reference_and_infinities_must_match() -> None:
    relative = Tolerance("r", absolute=0.0, relative=0.1, unit="", basis="test")
    points = Tolerance("t", absolute=2.0, relative=0.0, unit="pp", basis="test")
    assert relative.allows(1.0, 1.09) and not relative.allows(1.0, 1.105)
    assert points.allows(float("inf"), float("inf")) and not points.allows(float("inf"), float("-inf"))


def _glued_rows(values: dict[str, tuple[str, str, str]]) -> str:
    """Verdict rows as a chapter glues them for the claim list (``publish_verdicts``): per claim id, (ours,
    interval, verdict)."""
    from equinb.claims import claim

    rows = [{"claim": claim(cid).text, "article": "+0.471", "ours": ours, "95% interval": interval,
             "verdict vs the article": verdict, "noise": "5 seeds × 719 items", "tested as": claim(cid).statistic,
             "id": cid, "changed": {}, "profile": "small", "chapter": claim(cid).chapter}
            for cid, (ours, interval, verdict) in values.items()]
    return repr(json.dumps(rows, ensure_ascii=False))


WEIGHT_ROW, SHARE_ROW = "fig2.upright_weight.lambda", "fig2.one_hot.lambda"  # units: weight, pp


def test_a_glued_verdict_row_is_compared_in_its_claims_unit_not_the_cells():
    """Figures 2-3's verdict cell is tagged share (pp, ±31): a mean weight that moved by 0.3 (a fraction) must
    still fail, in the weight class, while the shares beside it keep their own class."""
    from equinb.claims import claim
    from equinb.noise import row_pieces, snap_rows

    share, weight = tolerance("share"), tolerance("weight")
    assert claim(WEIGHT_ROW).unit == "weight" and claim(SHARE_ROW).unit == "pp"
    assert 0.3 > weight.absolute and 0.3 < share.absolute  # the move this test needs to tell the classes apart
    ref = _glued_rows({WEIGHT_ROW: ("+0.593", "[+0.570, +0.615]", "agrees"),
                       SHARE_ROW: ("+19.76", "[+14.29, +25.24]", "agrees")})
    pieces = row_pieces(ref)
    assert "".join(p for p, _ in pieces) == ref and [n for _, n in pieces] == [None, None, "weight", None, None]
    assert [p for p, n in pieces if n] == ['"ours": "+0.593", "95% interval": "[+0.570, +0.615]"']
    near = _glued_rows({WEIGHT_ROW: ("+0.603", "[+0.575, +0.630]", "agrees"),
                        SHARE_ROW: ("+29.76", "[+24.29, +35.24]", "agrees")})
    assert snap_rows(near, ref, share) == ref
    quoted = _glued_rows({WEIGHT_ROW: ("+0.593", "[+0.570, +0.615]", "agrees (measured: 35.5% of the images)"),
                          SHARE_ROW: ("+19.76", "[+14.29, +25.24]", "agrees")})
    moved = quoted.replace("35.5%", "47.0%")  # a share quoted in a weight row's reason: the cell's class
    assert snap_rows(moved, quoted, share) == quoted and snap_rows(moved, quoted, weight) != quoted
    far = _glued_rows({WEIGHT_ROW: ("+0.293", "[+0.270, +0.315]", "agrees"),
                       SHARE_ROW: ("+19.76", "[+14.29, +25.24]", "agrees")})
    assert snap_rows(far, ref, share) != ref and snap_numbers(far, ref, share) == ref  # the cell's class alone
    outputs = [nbformat.v4.new_output("display_data", data={"application/papermill.record/text/plain": text})
               for text in (ref, far)]
    assert snap_outputs(outputs[1:], outputs[:1], share) != outputs[:1]  # the plugin compares rows so too


def test_noise_measurement_counts_a_glued_row_in_its_claims_unit(tmp_path):
    sys.path.insert(0, str(ROOT / "tools"))
    from notebook_numbers import diff_notebooks

    paths = []
    for name, weight, share in (("ref", "+0.593", "+19.76"), ("other", "+0.603", "+29.76")):
        nb = nbformat.v4.new_notebook()
        cell = nbformat.v4.new_code_cell("publish_verdicts(...)", metadata={"tags": ["tolerance-share"]})
        cell.outputs = [nbformat.v4.new_output("display_data", data={"application/papermill.record/text/plain":
                                                                     _glued_rows({WEIGHT_ROW: (weight, "[]", "a"),
                                                                                  SHARE_ROW: (share, "[]", "a")})})]
        nb.cells.append(cell)
        paths.append(tmp_path / f"{name}.ipynb")
        nbformat.write(nb, paths[-1])
    found = {d.tolerance_class: d.pairs for d in diff_notebooks(*paths)}
    assert found == {"share": [(19.76, 29.76)], "weight": [(0.593, 0.603)]}


@pytest.mark.parametrize("chapter", ["fig2_3_lambda_weights", "tab2_featuremap"])
def test_the_committed_verdict_rows_are_cut_into_their_units(chapter: str) -> None:
    """``row_pieces`` reads the glued rows as ``verdict_row`` and ``publish_verdicts`` write them: in the committed
    chapters, every row whose claim has a unit class of its own gives one piece in that class (renamed or reordered
    keys would silently put the weights back into the cell's class)."""
    from equinb.claims import claim
    from equinb.noise import UNIT_CLASSES, row_pieces
    from equinb.tables import CLAIMS_KEY, glued_json

    path = ROOT / "notebooks" / f"{chapter}.ipynb"
    units = [claim(row["id"]).unit for row in glued_json(path)]
    expected = sorted(UNIT_CLASSES[unit] for unit in units if unit in UNIT_CLASSES)
    glued = [o["data"]["application/papermill.record/text/plain"] for c in json.loads(path.read_text())["cells"]
             for o in c.get("outputs", []) if o.get("metadata", {}).get("scrapbook", {}).get("name") == CLAIMS_KEY]
    assert expected and len(glued) == 1
    assert sorted(name for _, name in row_pieces(glued[0]) if name) == expected



def test_tolerance_used_is_the_share_that_allows_compares_against():
    assert PP.used(91.0, 91.0) == 0.0 and PP.used(91.0, 92.0) == pytest.approx(0.5)
    assert PP.used(91.0, 89.0) == pytest.approx(1.0) and PP.allows(91.0, 89.0)
    assert PP.used(91.0, 88.9) > 1.0 and not PP.allows(91.0, 88.9)
    assert REL.used(4.0, 4.2) == pytest.approx(0.5) and REL.used(0.0, 0.1) == float("inf")
    assert PP.used(float("nan"), float("nan")) == 0.0 and PP.used(1.0, float("inf")) == float("inf")


def test_headroom_against_executed_chapters_fails_past_a_tolerance_or_on_an_exact_change(tmp_path, capsys):
    """`notebook_numbers.py --against DIR` after `make book` on another CPU: the share of each class's tolerance
    used, and a non-zero exit when one number went past it or a cell compared exactly moved."""
    sys.path.insert(0, str(ROOT / "tools"))
    import notebook_numbers
    from notebook_numbers import diff_notebooks, headroom

    tags = [["tolerance-top1"], ["exact"]]
    ref = _executed(tmp_path, "ref", ["top-1 91.66 and 92.77\n", "error < 1e-05\n"], tags)
    near = _executed(tmp_path, "near", ["top-1 93.18 and 92.77\n", "error < 1e-05\n"], tags)
    far = _executed(tmp_path, "far", ["top-1 91.66 and 99.00\n", "error < 1e-04\n"], tags)
    known = {"top1": PP}
    (top1,) = headroom(diff_notebooks(ref, near), known).values()
    assert (top1.numbers, top1.passes) == (1, True) and top1.max_used == pytest.approx(1.52 / 2.0)
    rows = headroom(diff_notebooks(ref, far), known)
    assert not rows["top1"].passes and rows["top1"].max_used == pytest.approx(6.23 / 2.0)
    assert not rows["exact"].passes and rows["exact"].max_used == float("inf")
    with pytest.raises(ValueError, match="unknown tolerance class 'top1'"):
        headroom(diff_notebooks(ref, near), {})

    committed = notebook_numbers.Path(notebook_numbers.__file__).resolve().parent.parent / "notebooks"
    executed = tmp_path / "executed"
    executed.mkdir()
    assert notebook_numbers.main(["--against", str(executed)]) == 2  # nothing to pair is an error, not a pass
    reference = committed / "fig4_zeroshot.ipynb"
    (executed / reference.name).write_bytes(reference.read_bytes())
    assert notebook_numbers.main(["--against", str(executed)]) == 0
    assert "1 chapters against the committed outputs" in capsys.readouterr().out
    (executed / "claim_list.ipynb").write_bytes((committed / "claim_list.ipynb").read_bytes())
    assert notebook_numbers.main(["--against", str(executed)]) == 0  # the claim list is not paired: it reads the
    assert "1 chapters against the committed outputs" in capsys.readouterr().out  # chapters it is given


def test_a_cells_tags_name_at_most_one_class() -> None:
    assert tagged_class(["hide-input", TAG_PREFIX + "top1"]) == "top1" and tagged_class(["exact"]) is None
    with pytest.raises(ValueError, match="several tolerance tags"):
        tagged_class([TAG_PREFIX + "top1", TAG_PREFIX + "share"])
    # a verdict row's result is compared in its unit's class where the unit has one, else in its cell's
    assert verdict_class("weight", "share") == "weight" and verdict_class("pp", "top1") == "top1"
    assert verdict_class("pp", None) is None


def test_a_verdict_another_cpu_could_turn() -> None:
    # decided: within ±2 pp of 0, the nearer end could carry the interval over 0 on another CPU
    assert cpu_turns((1.5, 9.0), PP) == (0,) and cpu_turns((-9.0, -2.0), PP) == (0,)
    assert cpu_turns((2.5, 9.0), PP) == () and cpu_turns((-9.0, -2.5), PP) == ()
    # inconclusive: an end within the tolerance of 0 could leave 0 outside, on that end's side
    assert cpu_turns((-1.0, 8.0), PP) == (1,) and cpu_turns((-8.0, 0.5), PP) == (-1,)
    assert cpu_turns((-1.0, 1.0), PP) == (1, -1) and cpu_turns((-3.0, 3.0), PP) == ()
    # decided with both ends within the tolerance of 0: it could hold 0, or lie on the other side
    assert cpu_turns((0.5, 1.5), PP) == (0, -1) and cpu_turns((-1.5, -0.5), PP) == (0, 1)
    # a relative tolerance never carries a number to 0 (it shrinks with the value)
    assert cpu_turns((0.01, 0.02), REL) == () and cpu_turns((-0.02, 0.02), REL) == ()
