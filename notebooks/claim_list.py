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
# # Every claim, and its verdict
#
# Every claim of both articles that this book tests, or cannot test on this build, in one list: the claim in full
# with the article's numbers, the article's signed difference, this build's with its 95% interval, the verdict
# and the profile that produced it, and a link to the chapter section that computed it. A claim is
# *not tested here* when a computed check says this build could not test it; the reason is given. The counts
# below are computed from the chapters this build executed.

# %% tags=["parameters", "hide-input"]
profile: str = "small"  # the profile of this build (the claims of a chapter report their own)
chapters_dir: str = "."  # folder of the executed chapters (<id>.ipynb); "." is the committed small-profile outputs

# %% tags=["hide-input", "exact"]
import re
from pathlib import Path

import pandas as pd
from docutils.nodes import make_id
from myst_nb import glue

from equinb.chapter import check_params
from equinb.claims import claims
from equinb.noise import NUMBER, chapter_tolerances, measured_profile, tagged_class, cpu_turns, verdict_class
from equinb.tables import Link, chapter_number, glued_cell_tags, glued_json, show, start_chapter
from equinb.verdicts import (CHANGED_NOTHING, MARGINS_KEY, NOT_TESTED, VERDICT_COLUMN, VERDICT_RULE, verdict_counts,
                             verdict_kind)

start_chapter("claim_list")  # number its tables as the book numbers the chapter
check_params(profile=profile, chapters_dir=chapters_dir)
folder = Path(chapters_dir).expanduser()
reported, missing = {}, []
for chapter in dict.fromkeys(c.chapter for c in claims() if c.chapter):
    rows = glued_json(folder / f"{chapter}.ipynb") if (folder / f"{chapter}.ipynb").is_file() else None
    if rows is None:
        missing.append(chapter)
    for row in rows or []:
        reported[row["id"]] = row
testing = {c.chapter for c in claims() if c.chapter}
print(f"claims registered: {len(claims())}; chapters that test them, executed in this build: "
      f"{len(testing) - len(missing)} of {len(testing)}; not executed: {', '.join(missing) or 'none'}")

# %% tags=["hide-input", "exact"]
records = []
for c in claims():
    row = reported.get(c.id)
    if row is not None:
        verdict, build = row[VERDICT_COLUMN], row["profile"]
    elif not c.chapter:
        verdict, build = f"{NOT_TESTED}: {c.no_chapter_because}", profile
    elif c.chapter in missing:
        verdict, build = f"{NOT_TESTED}: the chapter {c.chapter} was not executed in this build", profile
    else:
        verdict, build = f"{NOT_TESTED}: the chapter {c.chapter} did not report it", profile
    number = chapter_number(c.chapter) if c.chapter else None  # the reader sees chapter numbers, not file names
    evidence = Link(f"Chapter {number}" if number else c.chapter, f"{c.chapter}.html#{make_id(f'verdicts-{c.chapter}')}"
                    ) if c.chapter else "—"
    article = "—" if c.article_value is None else f"{c.article_value:+.2f}"
    records.append({"id": c.id, "paper": c.article, "claim": c.text, "article": row["article"] if row else article,
                    **{k: row[k] if row else "—" for k in ("ours", "95% interval")}, "verdict": verdict,
                    "noise": row["noise"] if row else "—", "profile": build, "evidence": evidence})
listing = pd.DataFrame(records)
counts = verdict_counts(listing.verdict.tolist())
names = {"basu2023": "Basu et al. 2023", "vlasenko2024": "Vlasenko et al. 2024"}
show(pd.DataFrame([{"article": names[key], **verdict_counts(part.verdict.tolist())}
                   for key, part in listing.groupby("paper", sort=True)] + [{"article": "both", **counts}]),
     f"Claims per article and verdict (this build: profile {profile})")
for key, value in counts.items():
    glue(f"claims_{key.replace(' ', '_')}", value, display=False)
# a claim of no difference can be refuted but never confirmed (no margin in the articles): its inconclusive is no
# support, so the index says how many of the inconclusive are such claims
no_difference = {c.id for c in claims() if c.direction == 0}
inconclusive_none = int(listing[listing.id.isin(no_difference)].verdict.eq("inconclusive").sum())
print(f"of the {counts['inconclusive']} inconclusive claims, {inconclusive_none} claim no difference (they can come "
      "out reversed or inconclusive, never agree)")
glue("claims_inconclusive_no_difference", inconclusive_none, display=False)
# a finetune stage that changed no test prediction leaves its claims untested (the first reason of their rows)
finetune_unchanged = int(listing.verdict.str.startswith(f"{NOT_TESTED}: finetuning {CHANGED_NOTHING}").sum())
print(f"of the {counts[NOT_TESTED]} claims not tested here, {finetune_unchanged} because finetuning "
      "changed no test prediction of a compared run")
glue("claims_finetune_unchanged", finetune_unchanged, display=False)
glue("verdict_rule", VERDICT_RULE, display=False)  # the first page states the rule in full
glue("claims_profile", profile, display=False)

# %% [markdown]
# (claims-another-cpu)=
# ## Which verdicts another CPU could turn
# Trained numbers move a little between CPUs (other vector kernels, other thread counts), and the regression tests
# allow each class of number a tolerance, measured by running the chapters under several numerical modes (the
# chapters print it above their numbers). A verdict whose interval has an end within that tolerance of 0 could read
# otherwise on another CPU: an agreeing or reversed one inconclusive, an inconclusive one decided. The test is
# conservative: the interval's ends are among the numbers the tolerance was measured on, and it is 1.5 times the
# largest move of any of them (or a floor, where no number of the class moved), so the list may name verdicts that no
# measured CPU changed. It is no uncertainty of
# the result; the interval is that.
#
# A *not tested here* verdict can turn too, where its computed reason rests on a trained number compared with a
# threshold (a run at chance, two runs below the majority class, a statistic a control matches, a stand-in whose
# images keep their orientation): where that number lies within its tolerance of the threshold, the reason might
# not apply on another CPU, and the claim would be tested there. The converse as well: a tested verdict whose checks
# compared such a number and did not apply (each keeps its number), one of them within its tolerance of the
# threshold, could read *not tested here* on another CPU. The regression tests would flag either build, as they
# flag any verdict that changes otherwise than between an interval's neighbouring readings.

# %% tags=["hide-input", "exact"]
cell_classes = {chapter: tagged_class(glued_cell_tags(folder / f"{chapter}.ipynb") or [])
                for chapter in testing if chapter not in missing}
by_id = {c.id: c for c in claims()}
kinds = listing.verdict.map(verdict_kind)  # "reversed: <reason>" (by construction) is reversed
tested = listing[kinds.isin(["agrees", "reversed", "inconclusive"])]


def class_tolerance(name: str | None):
    """The tolerance of a class on this profile (None: no class, or a profile without measured tolerances)."""
    return chapter_tolerances(profile, name)[name] if name else None


def near_thresholds(claim_id: str) -> dict[str, str]:
    """The numbers the verdict's checks compared (``equinb.verdicts.Reason``: the deciding reason's, or a tested
    verdict's near misses) that lie within their cross-CPU tolerance of the threshold, each with that tolerance. A
    number moves in its class: the claim's statistic in its unit's class, a run's top-1 in the class of the chapter's
    table, a share of images in the share class."""
    cell_class = cell_classes.get(reported[claim_id]["chapter"]) if claim_id in reported else None
    margin_class = {"statistic": verdict_class(by_id[claim_id].unit, cell_class), "top-1": cell_class,
                    "share": "share"}
    near = {}
    for value, threshold, kind in reported.get(claim_id, {}).get(MARGINS_KEY, []):
        tol = class_tolerance(margin_class[kind])
        if tol and tol.allows(value, threshold):
            near[f"{value:.4g} against {threshold:.4g}"] = tol.describe()
    return near


def numbers_named(near: dict[str, str]) -> str:
    return f"number{'s' if len(near) > 1 else ''} {'; '.join(near)}"


turnable = []
for _, row in tested.iterrows():
    tol = class_tolerance(verdict_class(by_id[row["id"]].unit, cell_classes.get(reported[row["id"]]["chapter"])))
    low, high = (float(x) for x in NUMBER.findall(row["95% interval"]))
    # 0: the interval could hold 0 (inconclusive); a side: it could exclude 0 there (the claim's side: agrees)
    readings = {"inconclusive" if side == 0 else "agrees" if side == by_id[row["id"]].side else "reversed"
                for side in (cpu_turns((low, high), tol) if tol else ())}
    near = near_thresholds(row["id"])  # a check that did not apply, with its number near its threshold
    if near:
        readings.add(NOT_TESTED)
    if readings:
        moves = [tol.describe()] if tol and readings - {NOT_TESTED} else []
        turnable.append({"claim": row["claim"],
                         "verdict": row["verdict"] + (f" (a check's {numbers_named(near)})" if near else ""),
                         "95% interval": row["95% interval"],
                         "its numbers move between CPUs within": " and ".join(dict.fromkeys([*moves, *near.values()])),
                         "on another CPU it could read": " or ".join(sorted(readings)), "evidence": row["evidence"]})
untested = listing[kinds == NOT_TESTED]
for _, row in untested.iterrows():
    near = near_thresholds(row["id"])  # the reason's numbers near their threshold, and their tolerance
    if near:  # the reason's opening words and its numbers near their threshold (the list below has it in full)
        opening = re.split(r"[:(;,]", row["verdict"].split(": ", 1)[1], maxsplit=1)[0].strip()
        turnable.append({"claim": row["claim"], "verdict": f"{NOT_TESTED}: {opening} … (its {numbers_named(near)})",
                         "95% interval": row["95% interval"],
                         "its numbers move between CPUs within": " and ".join(dict.fromkeys(near.values())),
                         "on another CPU it could read": "tested",
                         "evidence": row["evidence"]})
turnable = pd.DataFrame(turnable, columns=["claim", "verdict", "95% interval", "its numbers move between CPUs within",
                                           "on another CPU it could read", "evidence"])
decided = int(kinds[tested.index].isin(["agrees", "reversed"]).sum())
turnable_kinds = turnable.verdict.map(verdict_kind)
could_read = turnable["on another CPU it could read"].str.split(" or ").map(set)
by_interval = could_read.map(lambda readings: bool(readings - {NOT_TESTED, "tested"}))  # an interval end near 0
untested_turnable = int(turnable_kinds.eq(NOT_TESTED).sum())
decided_turnable = int((turnable_kinds.isin(["agrees", "reversed"]) & by_interval).sum())
inconclusive_turnable = int((turnable_kinds.eq("inconclusive") & by_interval).sum())
tested_by_check = int(could_read.map(lambda readings: NOT_TESTED in readings).sum())
if profile == measured_profile():
    print(f"profile: {profile}; of the {len(tested)} tested verdicts, {decided_turnable + inconclusive_turnable} "
          f"could read otherwise on another CPU by their interval: {decided_turnable} of the {decided} that agree or "
          f"are reversed, {inconclusive_turnable} of the {len(tested) - decided} inconclusive; {tested_by_check} could "
          f"read not tested there (a check that did not apply compared a trained number within its tolerance of its "
          f"threshold); of the {len(untested)} not tested here, {untested_turnable} could be tested (their reason "
          "rests on a trained number within its tolerance of its threshold)")
    show(turnable, f"Verdicts with an interval end, or a check's number, within the cross-CPU tolerance of its "
                   f"threshold (profile: {profile})",
         beneath={"evidence": "claim"})
    # a decided verdict whose interval could cross 0 entirely could read the opposite verdict, not only inconclusive
    flips = int(sum(bool(readings - {"inconclusive", NOT_TESTED, kind})
                    for kind, readings in zip(turnable_kinds, could_read) if kind in ("agrees", "reversed")))
    cross_cpu_reading = (f"Of the {decided} verdicts that agree or are reversed, {decided_turnable} rest on an "
                         "interval with an end closer to 0 than their numbers move between CPUs (the chapters print "
                         "that tolerance beside their tables), and could read inconclusive on another CPU"
                         + (f"; {flips} of them could even read the other way" if flips else "")
                         + (f"; {tested_by_check} of the {len(tested)} tested could read not tested there, a check "
                            "that did not apply having compared a trained number that near its threshold"
                            if tested_by_check else "")
                         + (f"; and {untested_turnable} of the {len(untested)} not tested here give a reason whose "
                            "trained number lies that near its threshold, and could be tested there"
                            if untested_turnable else ""))
else:
    print(f"profile: {profile}; how far its numbers move between CPUs was measured on the {measured_profile()} "
          "profile only: not assessed here")
    cross_cpu_reading = ("How far this profile's numbers move between CPUs was not measured (only the "
                         f"{measured_profile()} profile's was), so which verdicts another CPU could turn is not "
                         "assessed")
glue("cross_cpu_reading", cross_cpu_reading, display=False)  # the summary page's sentence

# %% [markdown]
# ## The list
# One table per part of the articles. `noise` says what the interval covers: seeds of every compared run and the
# test items, the test items alone where the statistic has no random step, or two test sets compared unpaired.

# %% tags=["hide-input", "exact"]
parts = {"fig4": "Basu et al., Figure 4: zero-shot equitune and equizero",
         "basu": "Basu et al., finetuning curves", "tab1": "Vlasenko et al., Table 1",
         "tab2": "Vlasenko et al., Table 2", "tab3": "Vlasenko et al., Table 3", "fig2": "Vlasenko et al., Figure 2",
         "fig3": "Vlasenko et al., Figure 3", "tab4": "Vlasenko et al., the ISIC table",
         "fig6": "Vlasenko et al., Figure 6 (and Basu et al.'s fairness claim)"}
for prefix, title in parts.items():
    part = listing[listing.id.str.split(".").str[0] == prefix]
    show(part.drop(columns=["id", "paper"]), f"{title} ({len(part)} claims)",
         beneath={"noise": "95% interval", "profile": "evidence"})
