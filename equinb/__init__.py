"""equinb: make pretrained models invariant or equivariant to finite groups, and re-run the articles.

Module map, bottom to top; a module imports only modules listed before it (``tests/test_layering.py``):

    validation  argument checks several modules share: a name from a fixed list, a flag
    reference   the articles' numbers, reshaped for the chapters' tables
    claims      every claim of both articles: full text, the article's value, the chapter that tests it
    noise       measured tolerances of printed numbers between CPUs (the notebook regression only)
    verdicts    two-level intervals over seeds and items, computed reasons, verdicts (agrees / reversed / ...)
    metrics     scores of predicted classes on imbalanced sets: confusion matrix, balanced accuracy, macro F1
    prompts     CLIP's class names and prompt templates
    progress    how far long runs and sample grids have got, as lines in a file of the user's (never the notebook)
    cache       folders, keys, atomic compute-once files (damaged files are recomputed)
    groups      image groups and the token-permutation group
    outputs     which tensor of a model's output to use (the ``output=`` selector)
    precision   parameter dtypes: CLIP's fp16 rule for any module, fp16 storage emulated in fp32, its SGD step
    kernels     cuDNN autotuning and channels-last weights for convolutional trunks on a GPU
    checks      invariance / equivariance errors and how to print them
    weighting   lambda networks and view attention
    wrappers    Equitune, EquiZero, LambdaEquitune, EquiAttention (one orbit pipeline)
    data        the dataset registry (``DATASETS``), loaders, random group transforms
    backbones   MobileNetV2 and CLIP encoders
    heads       text heads, fitted linear heads, pooled map heads
    engine      training configuration, prefinetune / finetune / evaluate on per-view data (no file I/O)
    setups      the small and CLIP setups, cached training runs, trained models
    zeroshot    Figure 4: one orbit pass, every method and setting
    analysis    what trained weighting modules do: weights, measured symmetries
    evidence    trained runs as verdict evidence: per-seed scores of a stage, the checks that rule a test out
    equilm      EquiLM over token-permutation groups, generation, model loading
    nlg         the Figure 6 experiment: prompts, scorers, fairness statistics
    chapter     every chapter parameter's rule, checked before heavy work
    tables      numbered tables without row index, with captions and their data; a chapter's verdicts glued
    viz         plots, drawn at the book's column width, their data filed beside the tables'

``import equinb`` stays light: it imports torch and the method modules only (not torchvision, numpy, pandas,
scikit-learn, clip, matplotlib or transformers); the book's modules need the extras (``pip install
equinb[experiments]``).

The library in short (the chapter "Use equinb on your own model" shows each step)::

    import equinb
    invariant = equinb.Equitune(model, "rot90").eval()          # mean over the four rotations
    equinb.check_invariance(invariant, x, "rot90")              # about 1e-7: float rounding
    equivariant = equinb.Equitune(model.features, "rot90", align_views=True)   # feature maps
    equinb.check_equivariance(equivariant, x, "rot90")
"""

from . import checks, groups, outputs, weighting, wrappers
from .checks import check_equivariance, check_invariance, format_error
from .groups import GROUP_NAMES, Group, TokenPermutationGroup, get_group
from .weighting import EmbeddingWeightNet, FeatureMapWeightNet, ViewAttention
from .wrappers import (CPU_CHUNK_PIXELS, EquiAttention, EquiZero, Equitune, LambdaEquitune, OrbitWrapper,
                       WrapperMismatchWarning)

__all__ = [
    "GROUP_NAMES", "Group", "TokenPermutationGroup", "get_group",
    "OrbitWrapper", "Equitune", "EquiZero", "LambdaEquitune", "EquiAttention", "CPU_CHUNK_PIXELS",
    "WrapperMismatchWarning",
    "EmbeddingWeightNet", "FeatureMapWeightNet", "ViewAttention",
    "check_invariance", "check_equivariance", "format_error",
    "checks", "groups", "outputs", "weighting", "wrappers",
]
__version__ = "0.1.0"
