"""Every claim of both articles that the book tests, or cannot test, with the article's value and its source.

One registry serves the chapters (a verdict row names its claim by ``id`` and takes its text and the article's
value from here) and the claim list (every registered claim gets a row: the chapter's verdict, or the computed
reason why no chapter of this build tested it).

Most claims are written out in ``claims.csv`` beside this module (columns below). Two families are built from
the articles' numbers in ``article_numbers.csv`` instead, one claim per cell:

- Basu et al.'s Figure 4 as re-run by Vlasenko et al.: per dataset, backbone, transformation and metric, equitune
  above vanilla and equizero above equitune (the reproduction's result files);
- Basu et al.'s finetuning curves (CIFAR100, rot90): per backbone, λ-equitune's top-1 after 4,000 steps minus
  equitune's and minus equizero's, with the sign the article's values give (no chapter re-runs them).

Columns: ``id``, ``article`` (basu2023 | vlasenko2024), ``where`` (section, table or figure), ``claim`` (the full
claim, with the article's numbers), ``statistic`` (the signed difference a chapter computes), ``unit`` (pp,
weight, share, relative), ``article_value`` (that difference in the article; empty when it states only a
direction), ``derivation`` (how the value follows from the printed numbers), ``direction`` (+, -, or 0 for a claim
of no difference; empty: the sign of the value), ``chapter`` (the chapter that tests it; empty: none),
``no_chapter_because`` (why no chapter tests it; required exactly when ``chapter`` is empty).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = ["CLAIMS_CSV", "Claim", "claims", "claim", "claims_of", "fig4_claim_id"]

CLAIMS_CSV = Path(__file__).with_name("claims.csv")
FIG4_DATASETS = {"cifar100": "CIFAR100", "imagenetv2": "ImageNetV2"}
FIG4_TRANSFORMS = {"rot90": "random 90° rotations", "rot180": "random flips (the code's flip is a 180° rotation)"}
FIG4_PAIRS = (("vanilla", "equitune"), ("equitune", "equizero"))


@dataclass(frozen=True)
class Claim:
    """One claim of an article (see the module docstring for the fields)."""

    id: str
    article: str
    where: str
    text: str
    statistic: str
    unit: str
    article_value: float | None
    derivation: str
    direction: int | None  # +1, -1, 0 (no difference), or None: the sign of article_value
    chapter: str
    no_chapter_because: str = ""  # why no chapter tests it: given exactly when ``chapter`` is empty

    def __post_init__(self) -> None:
        if bool(self.chapter) == bool(self.no_chapter_because):
            raise ValueError(f"claim {self.id}: give a chapter or the reason why none tests it, not both or neither")

    @property
    def side(self) -> int | None:
        """The article's side of 0: +1, -1, 0 (a claim of no difference) or None (no value, no direction)."""
        if self.direction is not None:
            return self.direction
        if self.article_value is None or self.article_value == 0:
            return None
        return 1 if self.article_value > 0 else -1


def _direction(text: str) -> int | None:
    return {"+": 1, "-": -1, "0": 0, "": None}[text.strip()]


def _from_csv() -> list[Claim]:
    with CLAIMS_CSV.open(newline="") as handle:
        return [Claim(r["id"], r["article"], r["where"], r["claim"], r["statistic"], r["unit"],
                      float(r["article_value"]) if r["article_value"] else None, r["derivation"],
                      _direction(r["direction"]), r["chapter"], r["no_chapter_because"])
                for r in csv.DictReader(handle)]


def fig4_claim_id(dataset: str, backbone: str, transform: str, better: str, metric: str) -> str:
    """The id of a Figure 4 claim: ``fig4.<dataset>.<backbone>.<transform>.<better>.<metric>`` (``better`` is
    equitune, over vanilla, or equizero, over equitune)."""
    return f"fig4.{dataset}.{backbone}.{transform}.{better}.{metric}"


def _fig4_claims() -> list[Claim]:
    from .reference import article_fig4

    article = article_fig4().set_index(["dataset", "backbone", "transform", "method"])
    out = []
    for (dataset, backbone, transform, _), _row in article.groupby(level=[0, 1, 2, 3], sort=False):
        if transform not in FIG4_TRANSFORMS or _ != "vanilla":
            continue
        for worse, better in FIG4_PAIRS:
            for metric in ("top1", "top5"):
                a = float(article.loc[(dataset, backbone, transform, worse), f"seed_{metric}"])
                b = float(article.loc[(dataset, backbone, transform, better), f"seed_{metric}"])
                what = "top-1" if metric == "top1" else "top-5"
                out.append(Claim(
                    fig4_claim_id(dataset, backbone, transform, better, metric), "basu2023",
                    "Basu et al. Figure 4, re-run by Vlasenko et al. (their result files)",
                    f"On {FIG4_DATASETS[dataset]} under {FIG4_TRANSFORMS[transform]}, zero-shot CLIP {backbone} scores "
                    f"higher with {better} than with {worse} ({b:.2f}% vs {a:.2f}% {what}).",
                    f"{what} of {better} − {what} of {worse}, {transform}, as published", "pp", round(b - a, 4),
                    f"{b:.2f} − {a:.2f}", None, "fig4_zeroshot"))
    return out


_CURVES_UNTESTED = ("no chapter re-runs Basu et al.'s finetuning of the whole CLIP model (equitune, equizero and "
                    "λ-equitune, 4,000 steps per backbone); its numbers come from their plotting code only")


def _curve_claims() -> list[Claim]:
    from .reference import reference_rows

    final = {(r["backbone"], r["method"]): float(r["value"]) for r in reference_rows("orig_finetune_curves")
             if r["metric"] == "top1@step4000"}
    start = {(r["backbone"], r["method"]): float(r["value"]) for r in reference_rows("orig_finetune_curves")
             if r["metric"] == "top1@step0"}
    out = []
    for backbone in dict.fromkeys(b for b, _ in final):
        lam = final[backbone, "lambda_equitune"]
        for other in ("equitune", "equizero"):
            o = final[backbone, other]
            out.append(Claim(
                f"basu.finetune.{backbone}.lambda_minus_{other}", "basu2023",
                "Basu et al., finetuning figure (CIFAR100, random 90° rotations; values from their plotting code)",
                f"Finetuned for 4,000 steps on CIFAR100 under random 90° rotations, CLIP {backbone} with λ-equitune "
                f"reaches {lam:.2f}% top-1 (from {start[backbone, 'lambda_equitune']:.2f}%), against {o:.2f}% with "
                f"{other} (from {start[backbone, other]:.2f}%).",
                f"top-1 after 4,000 finetuning steps, λ-equitune − {other}", "pp", round(lam - o, 4),
                f"{lam:.2f} − {o:.2f}", None, "", _CURVES_UNTESTED))
    return out


@lru_cache(maxsize=1)
def claims() -> tuple[Claim, ...]:
    """Every registered claim: Figure 4's grid, then the written claims, then Basu et al.'s finetuning curves."""
    everything = (*_fig4_claims(), *_from_csv(), *_curve_claims())
    ids = [c.id for c in everything]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"claim ids must be unique; repeated: {duplicates}")
    return everything


def claim(claim_id: str) -> Claim:
    """The registered claim ``claim_id``; an unknown id names the close ones."""
    for c in claims():
        if c.id == claim_id:
            return c
    prefix = claim_id.rsplit(".", 1)[0]
    close = [c.id for c in claims() if c.id.startswith(prefix)] or [c.id for c in claims()][:10]
    raise KeyError(f"unknown claim id {claim_id!r}; close ones: {', '.join(close)}")


def claims_of(chapter: str) -> list[Claim]:
    """The claims that ``chapter`` tests (its verdict table must give each of them a row)."""
    return [c for c in claims() if c.chapter == chapter]
