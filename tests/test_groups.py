"""Group axioms, exact actions and orbits for every image group, and the token-permutation group."""

import itertools

import numpy as np

import pytest
import torch

from equinb.groups import GROUP_NAMES, Group, TokenPermutationGroup, get_group

IMAGE_GROUPS = ["trivial", "rot90", "rot180", "hflip", "vflip", "d4"]
ORDERS = {"trivial": 1, "rot90": 4, "rot180": 2, "hflip": 2, "vflip": 2, "d4": 8}


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    # distinct values everywhere, so any wrong permutation of pixels is visible
    return torch.randperm(2 * 3 * 5 * 5, generator=torch.Generator().manual_seed(0)).reshape(2, 3, 5, 5)


@pytest.mark.parametrize("name", IMAGE_GROUPS)
def test_order_and_identity(name: str, image: torch.Tensor) -> None:
    group = get_group(name)
    assert group.order == ORDERS[name]
    assert torch.equal(group.act(image, group.identity), image)


@pytest.mark.parametrize("name", IMAGE_GROUPS)
def test_axioms_and_homomorphism(name: str, image: torch.Tensor) -> None:
    group = get_group(name)
    elems = range(group.order)
    for a, b in itertools.product(elems, elems):
        # act(act(x, b), a) == act(x, a*b): the action is a homomorphism into pixel permutations
        assert torch.equal(group.act(group.act(image, b), a), group.act(image, group.compose(a, b)))
    for a in elems:
        assert group.compose(a, group.inverse(a)) == group.identity == group.compose(group.inverse(a), a)
        assert group.compose(a, group.identity) == a
    for a, b, c in itertools.product(elems, elems, elems):
        assert group.compose(group.compose(a, b), c) == group.compose(a, group.compose(b, c))
    # distinct elements act differently (the representation is faithful)
    images = [group.act(image, k) for k in elems]
    assert all(not torch.equal(images[i], images[j]) for i, j in itertools.combinations(elems, 2))


def test_actions_match_their_definitions(image: torch.Tensor) -> None:
    rot90 = get_group("rot90")
    for k in range(4):
        assert torch.equal(rot90.act(image, k), torch.rot90(image, k, dims=(-2, -1)))
    # counter-clockwise: the top-right pixel moves to the top-left
    tiny = torch.tensor([[0, 1], [2, 3]])
    assert torch.equal(rot90.act(tiny, 1), torch.tensor([[1, 3], [0, 2]]))
    # the article's "flip" (both axes flipped) is the 180-degree rotation
    flip = get_group("flip")
    assert flip.name == "rot180"
    assert torch.equal(flip.act(image, 1), torch.flip(image, dims=(-2, -1)))
    assert torch.equal(get_group("hflip").act(image, 1), torch.flip(image, dims=(-1,)))
    assert torch.equal(get_group("vflip").act(image, 1), torch.flip(image, dims=(-2,)))
    # d4: element r is r quarter turns, element 4 + r mirrors W and then turns r times (the documented indices)
    d4 = get_group("d4")
    for r in range(4):
        assert torch.equal(d4.act(image, r), torch.rot90(image, r, dims=(-2, -1)))
        assert torch.equal(d4.act(image, 4 + r), torch.rot90(torch.flip(image, dims=(-1,)), r, dims=(-2, -1)))
    acts = [d4.act(image, k) for k in range(8)]
    assert any(torch.equal(a, torch.flip(image, dims=(-1,))) for a in acts)
    assert any(torch.equal(a, torch.flip(image, dims=(-2,))) for a in acts)


@pytest.mark.parametrize("name", IMAGE_GROUPS)
def test_orbit_and_inverse_round_trip(name: str, image: torch.Tensor) -> None:
    group = get_group(name)
    orbit = group.orbit(image)
    assert orbit.shape == (2, group.order, 3, 5, 5)
    for k in range(group.order):
        assert torch.equal(orbit[:, k], group.act(image, k))
    aligned = group.invert_orbit(orbit)
    assert torch.equal(aligned, image.unsqueeze(1).expand_as(orbit))
    # the orbit of a transformed input is the same set of views, permuted: view k of h.x is view k*h of x
    for h in range(group.order):
        moved = group.orbit(group.act(image, h))
        for k in range(group.order):
            assert torch.equal(moved[:, k], orbit[:, group.compose(k, h)])
        assert torch.equal(moved, orbit[:, group.view_permutation(h)])


def test_groups_are_equal_when_their_elements_are() -> None:
    """A group built twice by name, or by hand with the same elements in the same order, is the same group (a dict
    key or a comparison with a wrapper's group finds it); another order numbers the views otherwise."""
    from equinb.groups import Group

    rot90 = get_group("rot90")
    assert rot90 == get_group("ROT90") == Group("mine", rot90.elements) and hash(rot90) == hash(get_group("rot90"))
    assert rot90 != get_group("d4") and rot90 != Group("reordered", [(0, 0), (3, 0), (2, 0), (1, 0)])
    assert rot90 != "rot90" and len({rot90, get_group("rot90"), get_group("rot180")}) == 2


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="unknown group .rot45.; valid: .*.rot90."):
        get_group("rot45")
    rot90 = get_group("rot90")
    with pytest.raises(ValueError, match="last two dims must be equal"):
        rot90.act(torch.zeros(1, 3, 4, 5), 1)
    with pytest.raises(ValueError, match="elements 0..3"):
        rot90.act(torch.zeros(4, 4), 4)
    with pytest.raises(ValueError, match=r"elements 0..3 \(integers\), got 1.5"):
        rot90.act(torch.zeros(4, 4), 1.5)  # not element 1
    import numpy as np

    x = torch.arange(16.0).reshape(4, 4)
    for k in (np.int64(1), torch.tensor(1)):  # what a random draw gives is an element too
        assert torch.equal(rot90.act(x, k), rot90.act(x, 1))
    with pytest.raises(ValueError, match="last two dims"):
        rot90.orbit(torch.zeros(4))
    with pytest.raises(TypeError):
        rot90.act([[0.0]], 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not closed"):
        Group("broken", [(0, 0), (1, 0)])
    # non-square inputs are fine for groups without quarter turns
    assert get_group("hflip").orbit(torch.zeros(1, 3, 4, 5)).shape == (1, 2, 3, 4, 5)
    assert set(IMAGE_GROUPS) <= set(GROUP_NAMES)


# ----------------------------------------------------------------------------- token permutations


@pytest.mark.parametrize("lists", [[(3, 7)], [(3, 7, 5)], [(3, 7, 5), (1, 9, 0)]])
def test_token_group_axioms(lists: list[tuple[int, ...]]) -> None:
    vocab = 12
    group = TokenPermutationGroup(vocab, lists)
    d = len(lists[0])
    assert group.order == d
    ids = torch.arange(vocab)
    for ids_tuple in lists:  # the generator maps each id to the next one of its tuple, cyclically
        for i, t in enumerate(ids_tuple):
            assert group.act(torch.tensor([t]), 1).item() == ids_tuple[(i + 1) % d]
    fixed = [t for t in range(vocab) if all(t not in tup for tup in lists)]
    assert torch.equal(group.act(torch.tensor(fixed), 1), torch.tensor(fixed))
    logits = torch.randn(2, vocab, dtype=torch.float64)
    for a, b in itertools.product(range(d), range(d)):
        assert torch.equal(group.act(group.act(ids, b), a), group.act(ids, group.compose(a, b)))
        twice = group.act_logits(group.act_logits(logits, b), a)
        assert torch.equal(twice, group.act_logits(logits, group.compose(a, b)))
    for a in range(d):
        assert torch.equal(group.act(group.act(ids, a), group.inverse(a)), ids)
    # act_logits is the matching action on distributions: (g.l)[g(t)] = l[t]
    for k in range(d):
        moved = group.act_logits(logits, k)
        assert torch.equal(moved[:, group.act(ids, k)], logits)
    assert group.orbit(ids[None]).shape == (1, d, vocab)


def test_token_group_bad_inputs() -> None:
    with pytest.raises(ValueError, match="same length d"):
        TokenPermutationGroup(10, [(1, 2), (3, 4, 5)])
    with pytest.raises(ValueError, match="distinct"):
        TokenPermutationGroup(10, [(1, 2), (2, 3)])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        TokenPermutationGroup(10, [(1, 20)])
    with pytest.raises(ValueError, match="at least 2"):
        TokenPermutationGroup(10, [(1,)])
    group = TokenPermutationGroup(10, [(1, 2)])
    with pytest.raises(TypeError, match="integer"):
        group.act(torch.zeros(3), 1)
    with pytest.raises(TypeError, match="integer tensor .*got list"):  # not an AttributeError on .dtype
        group.orbit([1, 2])
    for ids in ([-1, 1], [1, 10]):  # a padding -1 would otherwise index from the end and become token 9
        with pytest.raises(ValueError, match=r"token ids must lie in \[0, 10\)"):
            group.act(torch.tensor(ids), 1)
    with pytest.raises(ValueError, match="vocabulary size 10"):
        group.act_logits(torch.zeros(2, 11), 1)
    # a float id or vocabulary size is refused, not truncated to another token (1.9 would have become 1)
    with pytest.raises(TypeError, match="a token id must be an integer, got 1.9"):
        TokenPermutationGroup(10, [(1.9, 2)])
    with pytest.raises(TypeError, match="vocab_size must be an integer, got 10.5"):
        TokenPermutationGroup(10.5, [(1, 2)])
    assert TokenPermutationGroup(np.int64(10), [(np.int64(1), torch.tensor(2))]).equality_lists == [(1, 2)]
    # ids keep their dtype
    assert group.act(torch.tensor([1, 2, 3], dtype=torch.int32), 1).tolist() == [2, 1, 3]
    assert group.act(torch.tensor([1, 2, 3], dtype=torch.int32), 1).dtype == torch.int32


class _ToyLM(torch.nn.Module):
    """A random next-token model: ids [B, T] -> logits [B, V]; order- and position-sensitive."""

    def __init__(self, vocab: int, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.emb = torch.nn.Embedding(vocab, 8).double()
        self.pos = torch.nn.Parameter(torch.randn(6, 8, dtype=torch.float64))
        self.out = torch.nn.Linear(8, vocab).double()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.emb(ids) + self.pos[: ids.shape[-1]]).sum(dim=-2)
        return self.out(h)


def _equilm(model: _ToyLM, group: TokenPermutationGroup, ids: torch.Tensor, action: str) -> torch.Tensor:
    views = model(group.orbit(ids))  # [B, d, V]
    return group.symmetrize_logits(views, action)


@pytest.mark.parametrize("d", [2, 3])
def test_symmetrized_logits_equivariance(d: int) -> None:
    vocab = 11
    lists = [(2, 5), (7, 1)] if d == 2 else [(2, 5, 8), (7, 1, 4)]
    group = TokenPermutationGroup(vocab, lists)
    model = _ToyLM(vocab)
    ids = torch.tensor([[2, 3, 7, 5, 0], [8, 8, 1, 6, 4]])
    # negative control: the base model is not equivariant
    assert not torch.allclose(model(group.act(ids, 1)), group.act_logits(model(ids), 1))
    for action in ("inverse", "forward"):
        base = _equilm(model, group, ids, action)
        errors = [
            (_equilm(model, group, group.act(ids, k), action) - group.act_logits(base, k)).abs().max().item()
            for k in range(d)
        ]
        if action == "inverse" or d == 2:
            assert max(errors) < 1e-12, (action, errors)
        else:  # the article's original forward action breaks equivariance for d = 3
            assert max(errors) > 1e-3, errors
    if d == 2:  # every element is its own inverse: both actions coincide
        assert torch.equal(_equilm(model, group, ids, "forward"), _equilm(model, group, ids, "inverse"))
    with pytest.raises(ValueError, match="output_action"):
        group.symmetrize_logits(model(group.orbit(ids)), "backward")


def test_a_custom_group_of_non_integer_elements_is_refused_by_name() -> None:
    """A 45° turn written as half a quarter turn is not a D4 element: int() would have truncated it to the
    identity and reported a repeated element instead."""
    from equinb.groups import Group

    with pytest.raises(ValueError, match=r"integers, got \[\(0.5, 0\)\]"):
        Group("r45", [(0, 0), (0.5, 0)])
    assert Group("transpose", [(0, 0), (1, 1)]).order == 2  # a subgroup of D4 not in the registry is fine


@pytest.mark.parametrize("element", [2, None, "ab", (1,)])
def test_a_custom_group_element_that_is_not_a_pair_is_refused_by_name(element) -> None:
    """A bare quarter-turn count or any other non-pair gets the same message, not ``len()``'s TypeError."""
    from equinb.groups import Group

    with pytest.raises(ValueError, match="elements are D4 pairs"):
        Group("g", [(0, 0), element])


def test_a_custom_group_accepts_its_elements_from_a_generator() -> None:
    """The elements are read once: a generator is not spent by the check before the group is built."""
    from equinb.groups import Group

    group = Group("half_turn", ((r, 0) for r in (0, 2)))
    assert group.order == 2 and group.compose(1, 1) == 0
