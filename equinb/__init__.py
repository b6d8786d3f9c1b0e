"""equinb: make pretrained models invariant or equivariant to finite groups, and re-run the articles.

Modules: ``groups`` (image and token-permutation groups), ``wrappers`` (equitune, equizero,
lambda-equitune, equiattention), ``weighting`` (lambda networks, view attention), ``backbones``
(MobileNetV2, CLIP), ``data`` (dataset registry), ``zeroshot`` (one-pass zero-shot evaluation),
``train`` (lambda-equitune training on cached per-view features), ``lm`` (EquiLM for language models),
``report`` and ``reference`` (results, caches, the articles' numbers), ``noise`` (measured tolerances of
trained numbers, tolerance-aware comparison, verdicts), ``viz`` (plots).

``import equinb`` stays light: it does not import clip, matplotlib or transformers.
"""

from .groups import GROUP_NAMES, Group, TokenPermutationGroup, get_group
from .wrappers import EquiAttention, EquiZero, Equitune, LambdaEquitune, OrbitWrapper

__all__ = [
    "GROUP_NAMES", "Group", "TokenPermutationGroup", "get_group",
    "OrbitWrapper", "Equitune", "EquiZero", "LambdaEquitune", "EquiAttention",
]
__version__ = "0.1.0"
