"""Finite groups acting on images (last two tensor dims) and on token ids.

Every image group here is a subgroup of the dihedral group D4 of the square. An element of D4 is
stored as ``(r, s)``: first mirror the W axis if ``s == 1``, then rotate by ``r`` counter-clockwise
quarter turns with ``torch.rot90(x, r, dims=(-2, -1))``. A group lists a subset of these elements;
element index ``k`` is the position in that list, and index 0 is always the identity.

Groups (``get_group(name)``; names are case-insensitive, and every wrapper and check accepts a name):

- ``trivial``: {e}.
- ``rot90``: C4, element k = k counter-clockwise quarter turns (0, 90, 180, 270 degrees).
- ``rot180``: C2 = {e, 180-degree rotation}. The article (and the code of Basu et al.) calls this
  group "flip": its "flip" is ``torch.flip(x, dims=(-2, -1))``, which flips both axes and therefore
  *is* a 180-degree rotation, not a mirror. ``get_group("flip")`` returns this group.
- ``hflip``: {e, mirror left-right}; ``vflip``: {e, mirror top-bottom}. True mirror flips.
- ``d4``: all 8 symmetries of the square; k = r for rotations, k = 4 + r for mirror-then-rotate.

``TokenPermutationGroup`` is the cyclic group that permutes the token ids of equality word lists
(for example [" Black", " White", " Asian"]); it acts on token-id tensors and on the vocabulary
axis of logits.
"""

from __future__ import annotations

import numbers
import operator
from typing import Any, Sequence

import torch

from .validation import check_choice

__all__ = [
    "Group",
    "TokenPermutationGroup",
    "GROUP_NAMES",
    "get_group",
    "d4_act",
    "OUTPUT_ACTIONS",
    "check_output_action",
]

# how a token-permutation group maps view k's logits back: by g_k^-1 (equivariant for any d), or by g_k (the
# article's original code; the same for d = 2)
OUTPUT_ACTIONS: tuple[str, ...] = ("inverse", "forward")

_D4Element = tuple[int, int]  # (quarter turns r in 0..3, mirror s in 0..1)


def _d4_compose(a: _D4Element, b: _D4Element) -> _D4Element:
    """Element ``a * b`` of D4: first act with ``b``, then with ``a``.

    Uses M R^r = R^-r M (a mirror conjugates a rotation into its inverse):
    R^ra M^sa R^rb M^sb = R^(ra + (-1)^sa rb) M^(sa + sb).
    """
    (ra, sa), (rb, sb) = a, b
    return ((ra + (-rb if sa else rb)) % 4, (sa + sb) % 2)


def _d4_inverse(a: _D4Element) -> _D4Element:
    """Inverse in D4: a rotation's inverse is the opposite rotation; a reflection is its own inverse."""
    r, s = a
    return (r, s) if s else ((-r) % 4, 0)


def d4_act(x: torch.Tensor, a: _D4Element) -> torch.Tensor:
    """Apply the D4 element ``a = (r, s)`` to the last two dims: mirror W if s, then r quarter turns.

    Shapes: x [..., H, W] -> [..., H, W] (H, W swapped for odd r).
    """
    r, s = a
    if s:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, r, dims=(-2, -1)) if r else x


def _is_integer_pair(element: object) -> bool:
    """Whether ``element`` is a pair of integers, as a D4 element (r, s) is."""
    return (isinstance(element, Sequence) and not isinstance(element, str) and len(element) == 2
            and all(isinstance(v, numbers.Integral) for v in element))


class Group:
    """A finite group of square symmetries acting on the last two dims of tensors.

    Args:
        name: the group's name, as in ``get_group``.
        elements: D4 elements ``(r, s)`` closed under composition; ``elements[0]`` must be ``(0, 0)``.

    Shapes: ``act(x [..., H, W], k) -> [..., H, W]``; ``orbit(x [B, ...]) -> [B, G, ...]``.
    """

    def __init__(self, name: str, elements: Sequence[_D4Element]) -> None:
        elements = list(elements)  # a generator would be spent by the check below
        bad = [e for e in elements if not _is_integer_pair(e)]
        if bad:  # int() would truncate 0.5 (a 45° turn, say) to 0, and report a repeated identity instead
            raise ValueError(f"group {name!r}: elements are D4 pairs (r quarter turns, s reflection) of integers, "
                             f"got {bad}; only subgroups of D4 act on square image grids here")
        elements = [(int(r) % 4, int(s) % 2) for r, s in elements]
        if not elements or elements[0] != (0, 0):
            raise ValueError(f"group {name!r}: element 0 must be the identity (0, 0), got {elements[:1]}")
        if len(set(elements)) != len(elements):
            raise ValueError(f"group {name!r}: repeated elements {elements}")
        index = {e: i for i, e in enumerate(elements)}
        table = []
        for a in elements:
            row = []
            for b in elements:
                ab = _d4_compose(a, b)
                if ab not in index:
                    raise ValueError(f"group {name!r} is not closed: {a} * {b} = {ab} is missing")
                row.append(index[ab])
            table.append(row)
        self.name = name
        self.elements: tuple[_D4Element, ...] = tuple(elements)
        self._table = table
        self._inverse = [index[_d4_inverse(e)] for e in elements]

    def __eq__(self, other: object) -> bool:
        """Two groups are equal when they list the same elements in the same order (the order numbers the views);
        the name is only a label."""
        return isinstance(other, Group) and self.elements == other.elements

    def __hash__(self) -> int:
        return hash(self.elements)

    @property
    def order(self) -> int:
        """Number of elements |G|."""
        return len(self.elements)

    @property
    def identity(self) -> int:
        """Index of the identity element (always 0: the first element)."""
        return 0

    @property
    def needs_square(self) -> bool:
        """True when some element swaps H and W (odd quarter turns): inputs must then be square."""
        return any(r % 2 for r, _ in self.elements)

    def compose(self, a: int, b: int) -> int:
        """Index of ``g_a * g_b`` (act with ``g_b`` first)."""
        return self._table[self._check_index(a)][self._check_index(b)]

    def inverse(self, k: int) -> int:
        """Index of ``g_k^-1``."""
        return self._inverse[self._check_index(k)]

    def view_permutation(self, k: int) -> list[int]:
        """Orbit columns of ``g_k x`` in terms of those of ``x``: view j of ``g_k x`` is view ``j*k`` of x.

        So ``orbit(act(x, k)) == orbit(x)[:, view_permutation(k)]``: transforming an input only permutes
        its cached views.
        """
        return [self.compose(j, k) for j in range(self.order)]

    def _check_index(self, k: int) -> int:
        return _element_index(k, self.order, self.name)

    def _check_tensor(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"group {self.name!r} acts on torch tensors, got {type(x).__name__}")
        if x.ndim < 2:
            raise ValueError(f"group {self.name!r} acts on the last two dims; got a tensor of shape {tuple(x.shape)}")
        if self.needs_square and x.shape[-1] != x.shape[-2]:
            raise ValueError(
                f"group {self.name!r} contains quarter turns, so the last two dims must be equal; "
                f"got shape {tuple(x.shape)}"
            )

    def act(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """Apply element ``k`` to the last two dims of ``x`` (exact: only permutes entries).

        Shapes: x [..., H, W] -> [..., H, W].
        """
        self._check_tensor(x)
        return d4_act(x, self.elements[self._check_index(k)])

    def orbit(self, x: torch.Tensor) -> torch.Tensor:
        """All transformed copies of ``x``, view k = ``act(x, k)``.

        Shapes: x [B, ..., H, W] -> [B, G, ..., H, W].
        """
        self._check_tensor(x)
        return torch.stack([d4_act(x, e) for e in self.elements], dim=1)

    def invert_orbit(self, y: torch.Tensor) -> torch.Tensor:
        """Map each view back: ``out[:, k] = act(y[:, k], inverse(k))``; aligns spatial outputs of an orbit.

        Shapes: y [B, G, ..., H, W] -> [B, G, ..., H, W].
        """
        if y.ndim < 4 or y.shape[1] != self.order:
            raise ValueError(
                f"invert_orbit expects [B, G={self.order}, ..., H, W], got shape {tuple(y.shape)}"
            )
        return torch.stack([self.act(y[:, k], self.inverse(k)) for k in range(self.order)], dim=1)

    def __repr__(self) -> str:
        return f"Group({self.name!r}, order={self.order})"


def _rotations(step: int) -> list[_D4Element]:
    return [(r, 0) for r in range(0, 4, step)]


_GROUPS: dict[str, list[_D4Element]] = {
    "trivial": [(0, 0)],
    "rot90": _rotations(1),
    "rot180": _rotations(2),
    "hflip": [(0, 0), (0, 1)],
    "vflip": [(0, 0), (2, 1)],  # mirror W, then rotate 180 degrees = mirror H
    "d4": _rotations(1) + [(r, 1) for r in range(4)],
}
_ALIASES = {"flip": "rot180"}  # the article's "flip" is a 180-degree rotation
GROUP_NAMES: tuple[str, ...] = tuple(_GROUPS) + tuple(_ALIASES)


def _element_index(k: Any, order: int, name: str) -> int:
    """``k`` as an element index of a group of ``order`` called ``name``; a ValueError for anything else (a float
    such as 1.5 would otherwise truncate to an element silently)."""
    try:
        index = operator.index(k)
    except TypeError:
        raise ValueError(f"group {name!r} has elements 0..{order - 1} (integers), got {k!r}") from None
    if not 0 <= index < order:
        raise ValueError(f"group {name!r} has elements 0..{order - 1}, got {k}")
    return index


def _integer(value: Any, what: str) -> int:
    """``value`` as an int (a Python or NumPy integer, a 0-d integer tensor); a TypeError for anything else."""
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an integer, got {value!r}") from None


def check_output_action(output_action: Any) -> None:
    """A ValueError naming the valid values unless ``output_action`` is one of ``OUTPUT_ACTIONS``."""
    check_choice(output_action, OUTPUT_ACTIONS, "output_action")


def get_group(name: str | Group) -> Group:
    """The image group called ``name`` (case-insensitive); a ``Group`` is returned as it is.

    Names: ``trivial``, ``rot90``, ``rot180``, ``hflip``, ``vflip``, ``d4``. The article's naming caveat: its
    ``"flip"`` is ``torch.flip(x, dims=(-2, -1))``, a 180-degree rotation, so ``get_group("flip")`` returns
    ``rot180`` (named so); the mirror flip is ``hflip``.
    """
    if isinstance(name, Group):
        return name
    key = name.strip().lower() if isinstance(name, str) else None
    canonical = _ALIASES[key] if key in _ALIASES else check_choice(
        name, GROUP_NAMES, "group", any_case=True,
        note=", in any case ('flip' = 'rot180', the article's 180-degree rotation; the mirror flip is 'hflip')")
    return Group(canonical, _GROUPS[canonical])


class TokenPermutationGroup:
    """Cyclic group permuting the token ids of equality word lists.

    ``equality_lists`` holds tuples of ``d`` token ids (one tuple per word family, e.g. the ids of
    " Black", " White", " Asian"). The generator g maps each id to the next id of its tuple,
    cyclically; every other id is fixed. Element k is g^k, k = 0..d-1.

    Actions (with ``perm[k][t] = g^k(t)``):
      - on token ids: ``act(ids, k)[...] = g^k(ids[...])``;
      - on logits over the vocabulary (a distribution over the next token):
        ``(g . l)[v] = l[g^-1(v)]``, so that a model M is equivariant when ``M(g x) = g . M(x)``.

    Shapes: ids [..., T]; logits [..., V]; ``orbit(ids [B, T]) -> [B, d, T]``.
    """

    def __init__(self, vocab_size: int, equality_lists: Sequence[Sequence[int]]) -> None:
        vocab_size = _integer(vocab_size, "vocab_size")
        if vocab_size <= 0:
            raise ValueError(f"vocab_size must be positive, got {vocab_size}")
        # a float id such as 1.9 would otherwise truncate to another token silently
        lists = [tuple(_integer(t, "a token id") for t in ids) for ids in equality_lists]
        if not lists:
            raise ValueError("equality_lists is empty; give at least one tuple of token ids")
        sizes = {len(ids) for ids in lists}
        if len(sizes) != 1:
            raise ValueError(f"every equality list must have the same length d; got lengths {sorted(sizes)}")
        d = sizes.pop()
        if d < 2:
            raise ValueError(f"each equality list needs at least 2 token ids, got d = {d}")
        flat = [t for ids in lists for t in ids]
        if len(set(flat)) != len(flat):
            raise ValueError(f"token ids must be distinct across all equality lists, got {lists}")
        bad = [t for t in flat if not 0 <= t < vocab_size]
        if bad:
            raise ValueError(f"token ids {bad} are outside the vocabulary 0..{vocab_size - 1}")
        gen = torch.arange(vocab_size)
        for ids in lists:
            for i, t in enumerate(ids):
                gen[t] = ids[(i + 1) % d]
        perms = [torch.arange(vocab_size)]
        for _ in range(d - 1):
            perms.append(gen[perms[-1]])  # g^(k+1)(t) = g(g^k(t))
        self.name = f"token_cyclic_d{d}"
        self.vocab_size = int(vocab_size)
        self.equality_lists = lists
        self.perms = torch.stack(perms)  # [d, V]: perms[k][t] = g^k(t)
        self.inverse_perms = torch.argsort(self.perms, dim=1)  # [d, V]: g^-k

    @property
    def order(self) -> int:
        """Number of permutations |G| (the cyclic group's size d)."""
        return int(self.perms.shape[0])

    @property
    def identity(self) -> int:
        """Index of the identity permutation (0)."""
        return 0

    def compose(self, a: int, b: int) -> int:
        """Index of ``g_a * g_b``: the cyclic group adds shifts modulo d."""
        return (self._check_index(a) + self._check_index(b)) % self.order

    def inverse(self, k: int) -> int:
        """Index of ``g_k^-1``: the opposite shift."""
        return (-self._check_index(k)) % self.order

    def _check_index(self, k: int) -> int:
        return _element_index(k, self.order, self.name)

    def act(self, ids: torch.Tensor, k: int) -> torch.Tensor:
        """Replace every token id t by g^k(t). Shapes: ids [..., T] -> [..., T]."""
        if not isinstance(ids, torch.Tensor):
            raise TypeError(f"token ids must be an integer tensor (torch.tensor(ids), or a tokenizer's "
                            f"return_tensors='pt'), got {type(ids).__name__}")
        if ids.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"token ids must be an integer tensor, got {ids.dtype}")
        # a negative id (a padding -1) would index from the end and silently become another token
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size}), got ids from {int(ids.min())} to "
                             f"{int(ids.max())} (mask padding before acting on the ids)")
        return self.perms[self._check_index(k)].to(ids.device)[ids].to(ids.dtype)  # int32 ids stay int32

    def act_logits(self, logits: torch.Tensor, k: int) -> torch.Tensor:
        """Apply g^k to the vocabulary axis: ``out[..., v] = logits[..., g^-k(v)]``. Shapes: [..., V] -> [..., V]."""
        if logits.shape[-1] != self.vocab_size:
            raise ValueError(f"logits last dim must be the vocabulary size {self.vocab_size}, got {logits.shape[-1]}")
        return logits[..., self.inverse_perms[self._check_index(k)].to(logits.device)]

    def orbit(self, ids: torch.Tensor) -> torch.Tensor:
        """Shapes: ids [B, T] -> [B, d, T] with view k = act(ids, k)."""
        return torch.stack([self.act(ids, k) for k in range(self.order)], dim=1)

    def symmetrize_logits(self, view_logits: torch.Tensor, output_action: str = "inverse") -> torch.Tensor:
        """Average the views' logits after mapping view k back: ``1/d sum_k g_k^-1 . l_k``.

        With ``l_k = M(g_k x)`` this is the equitune language model, equivariant for any d.
        ``output_action="forward"`` applies ``g_k`` instead of ``g_k^-1`` (the article's original code);
        the two agree for d = 2 (every element is its own inverse) and differ for d >= 3.

        Shapes: view_logits [..., d, V] -> [..., V].
        """
        check_output_action(output_action)
        if view_logits.ndim < 2 or view_logits.shape[-2] != self.order:
            raise ValueError(f"view_logits must be [..., d={self.order}, V], got {tuple(view_logits.shape)}")
        back = [self.act_logits(view_logits[..., k, :], self.inverse(k) if output_action == "inverse" else k)
                for k in range(self.order)]
        return torch.stack(back, dim=-2).mean(dim=-2)

    def __repr__(self) -> str:
        return f"TokenPermutationGroup(d={self.order}, lists={self.equality_lists})"
