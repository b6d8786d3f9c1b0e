"""The method primer's diagrams, drawn as SVG from `equinb`'s own vocabulary.

Usage (from the repository root; `tools/build_book.py` calls `write_all` when it stages the book):

    .venv/bin/python tools/diagrams.py [OUT_DIR]      # default: _build/diagrams

Two diagrams: the λ-equitune pipeline on embeddings (orbit -> trunk -> λ weights -> weighted combination -> head,
the articles' Figure 1) and the feature-map level with alignment and equiattention (their Figure 5). Every code
name a box shows is looked up in `equinb` first (`CODE_NAMES`), and the views come from `equinb.get_group`, so a
renamed class or option fails the drawing instead of leaving a stale label. Text is 13 px and each drawing at most
660 px wide: shown 1:1 in the book's text column.
"""

from __future__ import annotations

import argparse
from html import escape
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WIDTH = 660
FONT = 13
# (object in equinb, attribute or option) that a label names; checked before drawing
CODE_NAMES = {"LambdaEquitune": None, "EmbeddingWeightNet": None, "FeatureMapWeightNet": None,
              "ViewAttention": None, "EquiAttention": None, "get_group": None,
              "normalise_weights": "wrappers", "OrbitWrapper": None}
OPTIONS = {"LambdaEquitune": ("normalisation",), "OrbitWrapper": ("align_views",)}


def check_vocabulary() -> None:
    """Fail if a name or option the diagrams show is not in ``equinb`` (a rename must update the drawing)."""
    import inspect

    import equinb

    for name, module in CODE_NAMES.items():
        owner = getattr(equinb, module) if module else equinb
        if not hasattr(owner, name):
            raise SystemExit(f"diagrams: equinb has no {name!r}; update tools/diagrams.py")
    for name, options in OPTIONS.items():
        parameters = inspect.signature(getattr(equinb, name)).parameters
        for option in options:
            if option not in parameters:
                raise SystemExit(f"diagrams: {name} has no option {option!r}; update tools/diagrams.py")


class Drawing:
    """A minimal SVG canvas: boxes with centred text, arrows, free text."""

    def __init__(self, height: int, title: str, description: str) -> None:
        self.height = height
        self.parts = [f"<title>{escape(title)}</title>", f"<desc>{escape(description)}</desc>"]

    def box(self, x: float, y: float, w: float, h: float, lines: list[str], fill: str = "#eef3fb",
            dashed: bool = False, code: bool = False) -> None:
        dash = ' stroke-dasharray="5 3"' if dashed else ""
        self.parts.append(f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="5" fill="{fill}" stroke="#34495e"'
                          f'{dash}/>')
        top = y + h / 2 - (len(lines) - 1) * (FONT + 2) / 2 + FONT * 0.35
        for i, line in enumerate(lines):
            family = ' font-family="monospace"' if code and i > 0 else ""
            self.parts.append(f'<text x="{x + w / 2}" y="{top + i * (FONT + 2)}" text-anchor="middle"{family}>'
                              f"{escape(line)}</text>")

    def arrow(self, x1: float, y1: float, x2: float, y2: float, dashed: bool = False) -> None:
        dash = ' stroke-dasharray="4 3"' if dashed else ""
        self.parts.append(f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="#34495e" stroke-width="1.3"'
                          f' marker-end="url(#head)"{dash}/>')

    def text(self, x: float, y: float, words: str, anchor: str = "middle", italic: bool = False) -> None:
        style = ' font-style="italic"' if italic else ""
        self.parts.append(f'<text x="{x}" y="{y}" text-anchor="{anchor}"{style}>{escape(words)}</text>')

    def svg(self) -> str:
        marker = ('<defs><marker id="head" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
                  'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#34495e"/></marker></defs>')
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{self.height}" '
                f'viewBox="0 0 {WIDTH} {self.height}" font-family="sans-serif" font-size="{FONT}" role="img">'
                + marker + "".join(self.parts) + "</svg>\n")


def _views(group_name: str) -> list[str]:
    """The views of a group's orbit, labelled by their rotation in degrees."""
    from equinb import get_group

    group = get_group(group_name)
    return [f"g{k}·x ({360 * k // group.order}°)" for k in range(group.order)]


def lambda_equitune() -> str:
    """The articles' Figure 1: λ-equitune on embeddings, rot90."""
    views = _views("rot90")
    row, top = 46, 40
    d = Drawing(top + row * len(views) + 70, "λ-equitune on embeddings",
                "The input x is turned by every element g of the group. Each view goes through the same trunk M; "
                "a small network λ scores each view. The outputs, mapped back by the inverse of g, are combined with "
                "the λ weights and passed to the head.")
    d.text(10, 22, "input x", anchor="start", italic=True)
    d.text(110, 22, "orbit (get_group)", italic=True)
    d.text(250, 22, "shared trunk M", italic=True)
    d.text(385, 22, "λ per view", italic=True)
    for k, label in enumerate(views):
        y = top + k * row
        d.box(60, y, 110, 34, [label], fill="#fdf2e3")
        d.arrow(170, y + 17, 195, y + 17)
        d.box(195, y, 110, 34, ["M(gₖx)"])
        d.arrow(305, y + 17, 330, y + 17)
        d.box(330, y, 110, 34, ["λ(gₖx)"], fill="#e8f5e9")
        d.arrow(440, y + 17, 465, top + row * len(views) / 2 - 6)
        d.arrow(40, top + row * len(views) / 2 - 6, 60, y + 17)
    middle = top + row * len(views) / 2 - 6
    d.box(465, middle - 34, 115, 68, ["Σ λ gₖ⁻¹M(gₖx)", "/ Σ λ"], fill="#fff")
    d.arrow(580, middle, 595, middle)
    d.box(595, middle - 17, 55, 34, ["head"])
    d.box(10, middle - 14, 30, 28, ["x"], fill="#fdf2e3")
    bottom = top + row * len(views) + 8
    d.text(10, bottom + 16, "equinb: LambdaEquitune(model, \"rot90\", weight_net=EmbeddingWeightNet(dim),",
           anchor="start")
    d.text(10, bottom + 34, "normalisation=\"sum\" (text) | \"none\" (articles' code) | \"softmax\") ·"
           " normalise_weights", anchor="start")
    d.text(10, bottom + 52, "constant λ: equitune; one-hot λ: equizero", anchor="start", italic=True)
    return d.svg()


def feature_map() -> str:
    """The articles' Figure 5: feature-map λ-equitune and equiattention, M = M2 ∘ M1."""
    views = _views("rot90")
    row, top = 40, 40
    height = top + row * len(views) + 150
    d = Drawing(height, "Feature-map λ-equitune and equiattention",
                "Each turned view goes through the first part M1 of the network, giving a feature map. As described, "
                "each map is turned back by the inverse of its group element; as published, that step does "
                "nothing. Weights come from a λ network with a softmax over the views, or from attention between "
                "the views. The weighted sum of the maps goes through the second part M2.")
    d.text(55, 22, "orbit", italic=True)
    d.text(170, 22, "M1 (trunk to layer4)", italic=True)
    d.text(300, 22, "align: gₖ⁻¹", italic=True)
    for k, label in enumerate(views):
        y = top + k * row
        d.box(5, y, 100, 30, [label], fill="#fdf2e3")
        d.arrow(105, y + 15, 125, y + 15)
        d.box(125, y, 95, 30, ["Vₖ = M1(gₖx)"])
        d.arrow(220, y + 15, 250, y + 15)
        d.box(250, y, 100, 30, ["Uₖ = gₖ⁻¹Vₖ"], dashed=True)
        d.arrow(350, y + 15, 380, top + row * len(views) / 2)
    middle = top + row * len(views) / 2
    d.box(380, middle - 30, 120, 60, ["Z = Σ wₖ Uₖ", "(equivariant)"], fill="#fff")
    d.arrow(500, middle, 518, middle)
    d.box(518, middle - 17, 137, 34, ["M2 (attnpool, head)"])
    base = top + row * len(views) + 14
    d.box(5, base, 320, 52, ["weights w: FeatureMapWeightNet", "softmaxₖ λ(Vₖ)"], fill="#e8f5e9", code=False)
    d.box(335, base, 320, 52, ["or ViewAttention (EquiAttention)", "w = column means of softmax(QKᵀ/√d)"],
          fill="#e8f5e9")
    d.arrow(165, base, 415, middle + 30)  # either weighting feeds the sum
    d.arrow(495, base, 465, middle + 30)
    d.text(5, base + 80, "dashed box: align_views=True (as described); the articles' code leaves Uₖ = Vₖ",
           anchor="start")
    d.text(5, base + 98, "(align_views=False: Z invariant, not equivariant); w moves with its view.", anchor="start")
    return d.svg()


DIAGRAMS = {"lambda_equitune.svg": lambda_equitune, "feature_map.svg": feature_map}


def write_all(folder: Path) -> list[Path]:
    """Check the vocabulary, then write every diagram into ``folder``; returns the paths."""
    check_vocabulary()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, draw in DIAGRAMS.items():
        path = folder / name
        path.write_text(draw())
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?", type=Path, default=ROOT / "_build" / "diagrams",
                        help="where the SVG files go (default: _build/diagrams)")
    for written in write_all(parser.parse_args(argv).out_dir):
        print(f"diagrams: wrote {written}")


if __name__ == "__main__":
    main()
