"""The training engine, which trains the wrappers themselves: exact caching, frozen parts, each as-published option,
seeding."""

from __future__ import annotations

import copy
import dataclasses

from pathlib import Path

import pytest
import torch
from torch import nn

from equinb.groups import get_group
from equinb.engine import (
    TrainConfig,
    ViewData,
    batch_schedule,
    evaluate,
    extract_view_features,
    features,
    finetune,
    finetuned_part,
    predict,
    prefinetune,
    set_finetune_precision,
    train_step_loss,
    weighted_model,
)
from equinb.setups import TrainingSetup, run_training
from equinb.weighting import EmbeddingWeightNet, FeatureMapWeightNet

D, K, N = 6, 4, 40


def _trunk(seed: int = 0, batchnorm: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    norm = [nn.BatchNorm2d(4)] if batchnorm else []
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), *norm, nn.Tanh(), nn.Flatten(), nn.Linear(4 * 8 * 8, D))


def _setup(group_name: str = "rot90", batchnorm: bool = False) -> TrainingSetup:
    group = get_group(group_name)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(N, 3, 8, 8, generator=gen)
    labels = torch.randint(0, K, (N,), generator=gen)
    trunk = _trunk(batchnorm=batchnorm).requires_grad_(False).eval()
    train = ViewData(group.orbit(images[:30]), labels[:30])
    test = ViewData(group.orbit(images[30:]), labels[30:])
    feats = lambda data: extract_view_features(lambda v: nn.functional.normalize(trunk(v), dim=-1), data)  # noqa: E731
    torch.manual_seed(1)
    head = nn.Linear(D, K).requires_grad_(False)
    return TrainingSetup(group, lambda: copy.deepcopy(trunk).requires_grad_(True), head, train, test, feats(train),
                       feats(test), "toy")


def _model(setup: TrainingSetup, config: TrainConfig) -> nn.Module:
    torch.manual_seed(3)
    return weighted_model(setup.make_trunk(), EmbeddingWeightNet(D, hidden=5), setup.head, setup.group, config)


SMALL = dict(prefinetune_rounds=3, prefinetune_steps=4, finetune_rounds=2, finetune_steps=3, batch_size=8,
             selection_batches=2, lr=0.05, prelr=0.1)


@pytest.mark.parametrize("group_name", ["rot90", "d4"])
@pytest.mark.parametrize("config", [TrainConfig.original(), TrainConfig.updated()])
def test_cached_prefinetune_step_equals_full_forward(config: TrainConfig, group_name: str) -> None:
    """Loss and lambda gradients from cached per-view features equal those of the full forward."""
    setup = _setup(group_name)
    model = _model(setup, config).train()
    index, element = torch.arange(8), 5 if group_name == "d4" else 3
    views, labels = setup.train.batch(index, element, setup.group)
    # full forward: the random group element applied to the images, then the orbit through the trunk
    images = setup.train.inputs[index, 0]
    full_views = setup.group.orbit(setup.group.act(images, element))
    torch.testing.assert_close(full_views, views)
    torch.manual_seed(7)
    full = train_step_loss(model, features(model, full_views), labels)
    full.backward()
    grads_full = [p.grad.clone() for p in model.weight_net.parameters()]
    model.zero_grad()
    cached, _ = ViewData(setup.train_feats, setup.train.labels).batch(index, element, setup.group)
    torch.manual_seed(7)  # same dropout masks
    loss = train_step_loss(model, cached, labels, weight_views=cached)
    loss.backward()
    torch.testing.assert_close(loss, full)
    for g_cached, g_full in zip([p.grad for p in model.weight_net.parameters()], grads_full):
        torch.testing.assert_close(g_cached, g_full)


def test_prefinetune_never_touches_the_backbone_and_finetune_respects_its_parameter_set() -> None:
    setup = _setup()
    for finetune_params in ("backbone", "backbone+lambda"):
        config = TrainConfig.updated(finetune_params=finetune_params, **SMALL)
        model = _model(setup, config)
        trunk0, lam0 = copy.deepcopy(model.trunk.state_dict()), copy.deepcopy(model.weight_net.state_dict())
        cached = ViewData(setup.train_feats, setup.train.labels)
        best, _ = prefinetune(model, cached, cached, config)
        assert all(torch.equal(v, model.trunk.state_dict()[k]) for k, v in trunk0.items())
        assert any(not torch.equal(v, model.weight_net.state_dict()[k]) for k, v in lam0.items())
        model.weight_net.load_state_dict(best)
        lam1 = copy.deepcopy(model.weight_net.state_dict())
        finetune(model, setup.train, setup.test, config, train_lambda_feats=setup.train_feats,
                 test_lambda_feats=setup.test_feats)
        assert any(not torch.equal(v, model.trunk.state_dict()[k]) for k, v in trunk0.items())
        lambda_changed = any(not torch.equal(v, model.weight_net.state_dict()[k]) for k, v in lam1.items())
        assert lambda_changed == (finetune_params == "backbone+lambda")
        assert not any(p.requires_grad for p in setup.head.parameters())


def test_output_softmax_is_the_double_softmax() -> None:
    setup = _setup()
    feats = setup.train_feats[:8]
    labels = setup.train.labels[:8]
    for softmax in (False, True):
        model = _model(setup, TrainConfig.updated(output_softmax=softmax)).eval()
        model.weight_net.eval()
        lam = model.weight_net(feats)
        per_view = setup.head(lam[..., None] * feats)  # [B, G, K]
        expected = (torch.softmax(per_view, -1) if softmax else per_view).mean(1)
        loss = train_step_loss(model, feats, labels, weight_views=feats)
        torch.testing.assert_close(loss, nn.functional.cross_entropy(expected, labels))


def test_lambda_input_frozen_copy_ignores_the_trainable_features() -> None:
    setup = _setup()
    feats = setup.train_feats[:8]
    model = _model(setup, TrainConfig.original(dropout_in_eval=False)).eval()
    moved = feats + 0.5
    _, w_frozen = model.forward_views(views=moved, weight_views=feats, return_weights=True)
    _, w_trainable = model.forward_views(views=moved, return_weights=True)
    torch.testing.assert_close(w_frozen, model.weight_net(feats))
    assert not torch.allclose(w_frozen, w_trainable)
    with pytest.raises(ValueError, match="frozen copy"):
        finetune(model, setup.train, setup.test, TrainConfig.original(**SMALL))


def test_data_order_and_selection() -> None:
    restart = batch_schedule(30, 8, rounds=3, steps=10, order="restart", seed=0)
    assert len(restart[0]) == 4  # a round ends when the unshuffled loader runs out (30 images, batch 8)
    assert all(torch.equal(a, b) for a, b in zip(restart[0], restart[2]))  # every round restarts at batch 0
    first = batch_schedule(100, 8, rounds=2, steps=3, order="restart", seed=0)
    assert torch.equal(torch.cat(first[0]), torch.arange(24))  # only the first steps * batch images are seen
    shuffled = batch_schedule(30, 8, rounds=3, steps=10, order="shuffle", seed=0)
    assert len(shuffled[0]) == 10 and not torch.equal(shuffled[0][0], shuffled[1][0])
    seen = torch.cat([i for r in shuffled for i in r])
    assert set(seen.tolist()) == set(range(30))
    with pytest.raises(ValueError, match="data order"):
        batch_schedule(30, 8, 1, 1, "random", 0)


def test_dropout_in_eval_makes_evaluation_stochastic() -> None:
    setup = _setup()
    on = _model(setup, TrainConfig.updated(dropout_in_eval=True))
    off = _model(setup, TrainConfig.updated(dropout_in_eval=False))
    accs_on = {evaluate(on, setup.train, feats=setup.train_feats, seed=s) for s in range(6)}
    accs_off = {evaluate(off, setup.train, feats=setup.train_feats, seed=s) for s in range(6)}
    assert len(accs_off) == 1 and len(accs_on) > 1


def test_clip_precision_finetune_keeps_fp16_values_in_the_halved_weights_only() -> None:
    """As published (CLIP's rule, emulated on the CPU): the halved weights stay fp16 values, the rest fp32."""
    from equinb.precision import clip_half_names, round_fp16

    setup = _setup()
    config = TrainConfig.updated(**SMALL)  # the default precision is the article's, clip_fp16
    assert config.param_dtype == "clip_fp16"
    model = _model(setup, config)
    finetune(model, setup.train, setup.test, replace_steps(config), train_lambda_feats=setup.train_feats,
             test_lambda_feats=setup.test_feats)
    half = set(clip_half_names(model.trunk))
    assert half and all(p.dtype == torch.float32 for p in model.trunk.parameters())  # emulated on a CPU
    for name, p in model.trunk.named_parameters():
        if name in half:
            assert torch.equal(p, round_fp16(p)), name  # fp16 storage: every value an fp16 number
    assert not torch.equal(model.weight_net.net[0].weight, round_fp16(model.weight_net.net[0].weight))  # fp32 λ


def replace_steps(config: TrainConfig) -> TrainConfig:
    from dataclasses import replace

    return replace(config, finetune_rounds=1, finetune_steps=1)


def test_seeded_runs_are_identical_and_heldout_selection_runs() -> None:
    setup = _setup()
    config = TrainConfig.updated(**SMALL)
    a = run_training(setup, config)
    b = run_training(setup, config)
    assert a[0] == b[0] and a[1] == b[1]
    for stage in ("prefinetune", "finetune"):
        for k in a[2][stage]:
            assert torch.equal(a[2][stage][k], b[2][stage][k])
    row, history = run_training(setup, TrainConfig.updated(selection="heldout", **SMALL))[:2]
    assert set(row) == {"prefinetune_top1", "finetune_top1"}
    assert any("select_top1" in h for h in history)


def test_subgroup_setup_reuses_views() -> None:
    setup = _setup("rot90")
    rot180 = setup.restricted(get_group("rot180"), [0, 2])
    assert rot180.train.inputs.shape[1] == 2 and rot180.train_feats.shape[1] == 2
    torch.testing.assert_close(rot180.train.inputs[:, 1], get_group("rot180").act(setup.train.inputs[:, 0], 1))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("lambda_input", "copy", "lambda_input"), ("data_order", "random", "data_order"),
     ("param_dtype", "bf16", "param_dtype"), ("selection", "test", "selection"),
     ("batch_size", 0, "batch_size"), ("lr", -1.0, "lr"), ("prefinetune_rounds", -1, "prefinetune_rounds"),
     ("seed", -1, r"seed must be an integer in \[0, 2\*\*32\)"), ("seed", "3", "seed must be an integer"),
     ("seed", 2.0, "seed must be an integer"), ("logit_factor", 0.0, "logit_factor must be a number > 0"),
     ("logit_factor", "abc", "logit_factor must be a number > 0")],
)
def test_bad_configuration_fails_early(field: str, value, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})


def test_a_setup_with_the_wrong_views_or_an_empty_split_is_refused_when_built() -> None:
    from dataclasses import replace

    setup = _setup()
    with pytest.raises(ValueError, match=r"train_feats must be \[N, G, \.\.\.\] with G = 4 views \(the order of rot9"):
        replace(setup, train_feats=setup.train_feats[:, :3])
    with pytest.raises(ValueError, match="test needs at least one item"):
        replace(setup, test=setup.test.subset(torch.arange(0)), test_feats=setup.test_feats[:0])
    with pytest.raises(ValueError, match="train needs at least one item and train_feats one row per item"):
        replace(setup, train_feats=setup.train_feats[:5])
    with pytest.raises(ValueError, match="labels must be integer class indices"):
        replace(setup, train=ViewData(setup.train.inputs, setup.train.labels.float()))


def test_run_training_refuses_a_module_instance_and_a_bad_heldout_fraction() -> None:
    setup, config = _setup(), TrainConfig.updated(**SMALL)
    with pytest.raises(TypeError, match="weight_net must build the module"):
        run_training(setup, config, weight_net=EmbeddingWeightNet(D))
    for fraction in (0.0, 1.5, -0.5):
        with pytest.raises(ValueError, match=r"heldout_fraction must be in \(0, 1\)"):
            run_training(setup, dataclasses.replace(config, selection="heldout"), heldout_fraction=fraction)
    with pytest.raises(ValueError, match="holds them all out"):
        run_training(setup, dataclasses.replace(config, selection="heldout"), heldout_fraction=0.99)


def test_a_cached_run_of_ones_own_weighting_network_is_keyed_by_its_code() -> None:
    """Editing the code of a weighting class of one's own (same name, same repr, defined where no source file
    exists, as in a notebook cell) changes what keys its cached runs; renaming a local variable's file does not."""
    from equinb.setups import _outside_code

    source = ("import torch\nfrom torch import nn\nclass Net(nn.Module):\n    def __init__(self):\n"
              "        super().__init__(); self.lin = nn.Linear(6, 1)\n"
              "    def forward(self, x):\n        return self.lin(x).squeeze(-1){}\n")
    codes = []
    for tail, filename in (("", "<cell 1>"), ("", "<cell 2>"), (" * 2", "<cell 3>")):
        namespace: dict = {"__name__": "user_net"}
        exec(compile(source.format(tail), filename, "exec"), namespace)  # noqa: S102 - the test's own class
        codes.append(_outside_code(namespace["Net"]()))
    assert list(codes[0]) == ["user_net.Net"]
    assert codes[0] == codes[1] and codes[0] != codes[2]  # the same code in another cell; then an edited forward
    assert _outside_code(EmbeddingWeightNet(D)) == {}  # equinb's own classes: the training fingerprint covers them


def _map_setup(group_name: str = "rot90") -> TrainingSetup:
    """A toy feature-map setup: the trunk gives [3, 4, 4] maps; the head is position-sensitive (like attnpool's
    positional embedding), so aligned views change the logits while pooling would hide it."""
    from equinb.weighting import FeatureMapWeightNet  # noqa: F401  (used by the tests below)

    group = get_group(group_name)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(N, 3, 4, 4, generator=gen)
    labels = torch.randint(0, K, (N,), generator=gen)
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.Tanh()).requires_grad_(False)
    head = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, K)).requires_grad_(False)
    train, test = ViewData(group.orbit(images[:30]), labels[:30]), ViewData(group.orbit(images[30:]), labels[30:])
    return TrainingSetup(group, lambda: copy.deepcopy(trunk).requires_grad_(True), head, train, test,
                       extract_view_features(trunk, train), extract_view_features(trunk, test), "toy maps",
                       normalise_views=False)


@pytest.mark.parametrize("method", ["lambda_equitune", "equiattention"])
@pytest.mark.parametrize("align", [False, True])
def test_feature_map_model_cached_step_and_invariance(method: str, align: bool) -> None:
    """Feature-map level: cached maps give the full forward's loss and gradients; with the as-published
    no-op alignment the logits are exactly invariant, aligned they are not (the head is position-sensitive)."""
    from equinb.weighting import FeatureMapWeightNet, ViewAttention

    setup = _map_setup("d4")
    torch.manual_seed(3)
    module = FeatureMapWeightNet(3, (4, 4), conv_channels=2, per_channel=2, hidden=8) if method == "lambda_equitune" \
        else ViewAttention(3, (4, 4), hidden=8, out_dim=8, conv_channels=2, per_channel=2)
    config = TrainConfig.updated(normalisation="softmax", dropout_in_eval=False)
    model = weighted_model(setup.make_trunk(), module, setup.head, setup.group, config, method=method,
                           align_views=align, normalise_views=False).train()
    index, element = torch.arange(8), 5
    views, labels = setup.train.batch(index, element, setup.group)
    full = train_step_loss(model, features(model, views), labels)
    full.backward()
    grads = [p.grad.clone() for p in model.weight_net.parameters()]
    model.zero_grad()
    cached, _ = ViewData(setup.train_feats, setup.train.labels).batch(index, element, setup.group)
    loss = train_step_loss(model, cached, labels, weight_views=cached)
    loss.backward()
    torch.testing.assert_close(loss, full)
    for g_cached, g_full in zip([p.grad for p in model.weight_net.parameters()], grads):
        torch.testing.assert_close(g_cached, g_full)
    with torch.no_grad():
        base = model.forward_views(setup.test.batch(torch.arange(5))[0])
        errors = [(model.forward_views(setup.test.batch(torch.arange(5), k, setup.group)[0]) - base).abs().max().item()
                  for k in range(1, setup.group.order)]
    assert max(errors) < 1e-5 if not align else max(errors) > 1e-4, errors


def test_feature_map_run_and_bad_method() -> None:
    from equinb.weighting import FeatureMapWeightNet

    setup = _map_setup()
    config = TrainConfig.updated(normalisation="softmax", **SMALL)
    row, _, states = run_training(setup, config, align_views=True,
                                  weight_net=lambda: FeatureMapWeightNet(3, (4, 4), conv_channels=2, per_channel=2,
                                                                         hidden=8))[:3]
    assert set(row) == {"prefinetune_top1", "finetune_top1"} and set(states) == {"prefinetune", "finetune"}
    assert setup.map_shape == (3, 4, 4)
    with pytest.raises(ValueError, match="valid: 'lambda_equitune', 'equiattention'"):
        weighted_model(nn.Identity(), nn.Identity(), setup.head, setup.group, config, method="mean")
    with pytest.raises(ValueError, match="not feature maps"):
        _ = _setup().map_shape
    with pytest.raises(ValueError, match="holds feature maps"):
        _ = setup.embed_dim
    assert (setup.level, _setup().level) == ("maps", "embeddings")


@pytest.mark.parametrize("finetune_pool", [True, False])
def test_finetuning_trains_the_heads_pool_where_the_head_says_so(finetune_pool: bool) -> None:
    """The article's feature-map finetuning trains all of CLIP's image encoder, attnpool included: with
    ``PooledHead(finetune_pool=True)`` the run trains its own copy of the pool (the setup's stays as it was, for
    the next run), in CLIP's precision, and the drift and ablations count it; the linear text head stays fixed.
    Without it the pool is frozen."""
    from dataclasses import replace

    from equinb.heads import PooledHead
    from equinb.precision import round_fp16

    setup = _map_setup()
    torch.manual_seed(1)
    pool = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Flatten())  # a pooling module with parameters, like attnpool
    linear = nn.Linear(3 * 4 * 4, K).requires_grad_(False)
    setup = replace(setup, head=PooledHead(pool, linear, finetune_pool=finetune_pool))
    kept = {k: v.clone() for k, v in setup.head.state_dict().items()}
    run = run_training(setup, TrainConfig.updated(normalisation="softmax", **SMALL), method="lambda_equitune",
                       ablate=True)
    for k, v in setup.head.state_dict().items():
        assert torch.equal(v, kept[k]), k  # the setup's head is untouched: each run finetunes a copy
    pooled = [d for d in run.drift if d["parameter"].startswith("pool.")]
    assert {d["parameter"] for d in pooled} == ({"pool.0.weight", "pool.0.bias"} if finetune_pool else set())
    assert all(d["changed_share"] > 0 for d in pooled)
    assert all(d["parameter"].startswith(("trunk.", "pool.")) == finetune_pool for d in run.drift)
    model = weighted_model(setup.make_trunk(), FeatureMapWeightNet(3, (4, 4), conv_channels=2, per_channel=2,
                                                                   hidden=8), setup.head,
                           setup.group, TrainConfig.updated(normalisation="softmax"), normalise_views=False)
    assert (model.head is setup.head) != finetune_pool  # the model's own copy where finetuning trains the pool
    part = finetuned_part(model)
    assert (part is model.trunk) != finetune_pool
    if finetune_pool:  # CLIP's precision reaches the pool: its conv weights hold fp16 values (emulated on a CPU)
        set_finetune_precision(model, TrainConfig.updated())
        assert torch.equal(part["pool"][0].weight, round_fp16(part["pool"][0].weight))
        assert not torch.equal(setup.head.pool[0].weight, round_fp16(setup.head.pool[0].weight))
        assert not any(p.requires_grad for p in model.head.linear.parameters())


@pytest.mark.parametrize("method", ["lambda_equitune", "equiattention"])
def test_a_feature_map_run_without_weight_net_builds_the_module_for_maps(method: str) -> None:
    """The default module follows the setup's views and the method: a feature-map lambda network or a view
    attention over maps [C, h, w] (an embedding network sized by the maps' width would fail on the first batch)."""
    from equinb.weighting import FeatureMapWeightNet, ViewAttention

    run = run_training(_map_setup(), TrainConfig.updated(normalisation="softmax", **SMALL), method=method)
    kind = FeatureMapWeightNet if method == "lambda_equitune" else ViewAttention
    built = kind(3, (4, 4))
    assert set(run.states["prefinetune"]) == set(built.state_dict())


@pytest.mark.parametrize("method", ["lambda_equitune", "equiattention"])
def test_weight_net_for_builds_the_methods_module_for_the_view_shape(method: str) -> None:
    from equinb.engine import weight_net_for
    from equinb.weighting import EmbeddingWeightNet, FeatureMapWeightNet, ViewAttention

    maps, embeddings = weight_net_for(method, (3, 4, 4)), weight_net_for(method, (8,))
    if method == "lambda_equitune":
        assert isinstance(maps, FeatureMapWeightNet) and isinstance(embeddings, EmbeddingWeightNet)
    else:
        assert isinstance(maps, ViewAttention) and isinstance(embeddings, ViewAttention)
    views = torch.randn(2, 4, 3, 4, 4)
    assert maps(views).shape == (2, 4) and embeddings(torch.randn(2, 4, 8)).shape == (2, 4)


def test_a_run_keeps_its_predictions_and_seed_repeats_vary_only_the_seed() -> None:
    from dataclasses import replace

    from equinb.setups import seed_repeats

    setup = _setup()
    run = run_training(setup, TrainConfig.updated(**SMALL))
    for stage in ("prefinetune", "finetune"):
        assert run.predictions[stage].shape == setup.test.labels.shape
        assert 100 * float((run.predictions[stage] == setup.test.labels).double().mean()) == pytest.approx(
            run.row[f"{stage}_top1"])
    repeats = seed_repeats(setup, TrainConfig.updated(**SMALL), [0, 1])
    assert torch.equal(repeats[0].predictions["prefinetune"], run.predictions["prefinetune"])  # seed 0: the same
    assert all(torch.equal(r.predictions["finetune"], r.predictions["prefinetune"]) for r in repeats)  # no finetune
    assert not torch.equal(repeats[0].states["prefinetune"]["net.0.weight"],
                           repeats[1].states["prefinetune"]["net.0.weight"])
    assert replace(TrainConfig.updated(**SMALL), seed=1, finetune_rounds=0) != TrainConfig.updated(**SMALL)


@pytest.mark.parametrize("lr", [1e-5, 0.05])
def test_fp16_updates_vanish_where_fp32_updates_do_not(lr: float) -> None:
    """Deviation A.8: SGD on fp16 weights rounds updates below half their fp16 spacing away; fp32 keeps them."""
    from equinb.engine import group_drift

    setup = _setup()
    shares = {}
    for dtype in ("fp32", "clip_fp16"):
        run = run_training(setup, TrainConfig.updated(**{**SMALL, "lr": lr}, param_dtype=dtype))
        assert {d["parameter"] for d in run.drift} >= {n for n, _ in setup.make_trunk().named_parameters()}
        shares[dtype] = group_drift(run.drift)["fp16 weights"]["changed_share"]
    assert shares["fp32"] > 0.9  # every weight moves a little
    if lr == 1e-5:
        assert shares["clip_fp16"] < 0.05 * shares["fp32"], shares  # almost every fp16 update is lost
    else:
        assert shares["clip_fp16"] > 0.5, shares  # large steps survive in fp16 too: the test can tell


def test_clip_precision_matches_clips_own_conversion_tensor_by_tensor() -> None:
    import copy

    from clip.model import convert_weights

    from equinb.backbones import load_backbone, tiny_clip
    from equinb.precision import apply_clip_precision, parameter_groups

    for kind in ("rn", "vit"):
        model = tiny_clip(kind)
        theirs, ours = copy.deepcopy(model), copy.deepcopy(model)
        convert_weights(theirs)
        apply_clip_precision(ours, emulate=False)
        assert {n: p.dtype for n, p in ours.named_parameters()} == {n: p.dtype for n, p in theirs.named_parameters()}
        assert {p.dtype for p in ours.parameters()} == {torch.float16, torch.float32}  # the rule splits: power
    mobilenet = load_backbone("mobilenet_v2", input_size=32).model.features[17:]
    apply_clip_precision(mobilenet, emulate=False)
    groups = parameter_groups(mobilenet)
    for name, p in mobilenet.named_parameters():
        assert (p.dtype == torch.float16) == (groups[name] == "fp16 weights"), name
    assert sum(g == "norm affine (fp32)" for g in groups.values()) == 8  # BatchNorm stays fp32
    assert all(b.dtype == torch.float32 for b in mobilenet.buffers() if b.is_floating_point())


_REAL_FP16_SGD = """
import sys, torch
torch.manual_seed(0)
w, out = torch.randn(500) * 0.05, {"capability": torch.backends.cpu.get_cpu_capability(), "steps": []}
for lr in (2.0 ** -11, 2.0 ** -20):
    real = torch.nn.Parameter(w.half())
    opt, grads = torch.optim.SGD([real], lr=lr, momentum=0.9), []
    for _ in range(8):
        grads.append(torch.randn(500) * 3)
        real.grad = grads[-1].half()
        opt.step()
    out["steps"].append((lr, grads, real.detach().float()))
torch.save(dict(out, w=w), sys.argv[1])
"""


def test_emulated_fp16_sgd_steps_exactly_as_real_fp16_sgd(tmp_path) -> None:
    """The oracle is PyTorch's own SGD on fp16 parameters, computed as CUDA and ATen's vector kernels compute fp16
    (in fp32, rounded once per operation). ATen's plain kernels (ATEN_CPU_CAPABILITY=default, a numerical mode of
    make test-portable) round the product lr x buf to fp16 before adding it, as no GPU does; so the oracle runs in a
    fresh process with the CPU's own vector kernels."""
    import os
    import subprocess
    import sys

    from equinb.precision import HalfStorageSGD, round_fp16

    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    subprocess.run([sys.executable, "-c", _REAL_FP16_SGD, str(tmp_path / "real.pt")], env=env, check=True)
    oracle = torch.load(tmp_path / "real.pt", weights_only=True)
    if oracle["capability"] == "DEFAULT":
        pytest.skip("this CPU has no vector unit that ATen uses, so its fp16 SGD rounds as no GPU does")
    for lr, grads, real in oracle["steps"]:  # fp16-exact rates: the CPU's fp16 kernel rounds the rate itself
        emulated = nn.Parameter(round_fp16(oracle["w"].clone()))
        opt = HalfStorageSGD([emulated], lr=lr, momentum=0.9)
        for g in grads:
            emulated.grad = g.clone()
            opt.step()
        assert torch.equal(real, emulated.detach())
        assert 0 < (real != round_fp16(oracle["w"])).float().mean() <= 1  # some updates survive: the test can tell


def test_trunk_mode_train_updates_batchnorm_statistics_and_eval_does_not() -> None:
    from equinb.engine import group_drift

    setup = _setup(batchnorm=True)
    for mode, moved in (("eval", False), ("train", True)):
        run = run_training(setup, TrainConfig.updated(**{**SMALL, "lr": 0.0}, trunk_mode=mode))
        stats = group_drift(run.drift).get("norm statistics", {"changed_share": 0.0})
        assert (stats["changed_share"] > 0) == moved, (mode, stats)


def test_ablations_put_each_changed_group_back() -> None:
    setup = _setup()
    config = TrainConfig.updated(**{**SMALL, "lr": 0.05}, param_dtype="fp32")
    run = run_training(setup, config, ablate=True)
    resets = [k for k in run.predictions if k.endswith("reset")]
    assert "finetune, fp16 weights reset" in resets and "finetune, λ network reset" in resets
    assert all(run.predictions[k].shape == run.predictions["finetune"].shape for k in resets)
    assert "finetune, norm statistics reset" not in resets  # evaluation mode: the statistics never changed


def test_finetune_returns_the_predictions_of_its_last_evaluation() -> None:
    setup = _setup()
    config = TrainConfig.updated(**SMALL)
    model = _model(setup, config)
    history, predicted = finetune(model, setup.train, setup.test, config)
    last = [h["test_top1"] for h in history if "test_top1" in h][-1]
    assert predicted.shape == setup.test.labels.shape
    assert 100 * (predicted == setup.test.labels).double().mean().item() == pytest.approx(last)
    assert torch.equal(predicted, predict(model, setup.test, seed=config.seed))
    assert finetune(model, setup.train, setup.test, TrainConfig.updated(**{**SMALL, "finetune_rounds": 0}))[1] is None


def test_a_run_records_each_rounds_wall_times_beside_its_history(tmp_path: Path) -> None:
    """One clock row per round of each stage, with the round's step count, and the settings the smoke counts by;
    the history itself holds no time (a cached run is the same run)."""
    setup = dataclasses.replace(_setup(), key="toy")
    config = TrainConfig.updated(**SMALL)
    run_training(setup, config, cache_dir=tmp_path)
    saved = torch.load(next(tmp_path.glob("run_*.pt")), weights_only=True)
    clock, history = saved["clock"], saved["history"]
    assert [(c["stage"], c["round"]) for c in clock] == [("prefinetune", r) for r in range(3)] + [
        ("finetune", r) for r in range(2)]
    for c in clock:
        assert c["steps"] == sum(1 for h in history if h["stage"] == c["stage"] and h["round"] == c["round"]
                                 and "loss" in h)
        assert c["seconds"] > 0 and c["evaluation_seconds"] > 0
    assert saved["config"] == config.as_dict() and saved["maps"] is False
    assert not any("seconds" in h for h in history)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_finetune_step_on_images_held_on_the_gpu_never_waits_for_it() -> None:
    """The per-step path of ``finetune`` on ``ImageViewData`` (images on the GPU, labels on the CPU): any copy or
    read that makes the host wait for the GPU raises under the sync debug mode."""
    from equinb.engine import ImageViewData

    setup, group = _setup(), get_group("rot90")
    images = torch.randn(N, 3, 8, 8, device="cuda")
    data = ImageViewData(images, setup.train.labels[:1].repeat(N), group)
    model = weighted_model(setup.make_trunk(), EmbeddingWeightNet(D, hidden=5), setup.head, group,
                           TrainConfig.updated(**SMALL)).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def one_step(first: int, element: int) -> None:
        views, labels = data.batch(torch.arange(first, first + 8), element, group)
        loss = train_step_loss(model, features(model, views), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    one_step(0, 1)  # first call: allocations, kernel selection, momentum buffers
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        one_step(8, 2)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_an_evaluation_leaves_every_generator_where_training_left_it() -> None:
    """``predict`` seeds its own dropout; the CUDA generator that training's dropout draws from continues after
    it as if no evaluation had run (a reseeded one would replay the same masks in every round)."""
    setup = _setup()
    model = _model(setup, TrainConfig.updated(**SMALL)).cuda()
    before = torch.cuda.get_rng_state(), torch.get_rng_state()
    predict(model, setup.test, seed=5)
    assert torch.equal(torch.cuda.get_rng_state(), before[0]) and torch.equal(torch.get_rng_state(), before[1])


def test_half_precision_cached_views_are_combined_as_computed_views_are() -> None:
    """Views cached from an fp16 trunk (CLIP on CUDA) are combined in float32, as ``view_outputs`` combines an fp16
    trunk's views computed in the forward: the same output from the cache as from the live path."""
    setup = _setup()
    model = _model(setup, TrainConfig.updated(**SMALL)).eval()
    half = setup.test_feats[:6].half()
    torch.manual_seed(0)
    cached = model.forward_views(views=half)
    torch.manual_seed(0)
    computed = model.forward_views(views=half.float())
    assert cached.dtype == torch.float32
    torch.testing.assert_close(cached, computed, rtol=0, atol=0)


def test_half_storage_sgd_calls_its_closure_and_evaluation_mode_restores_after_an_error() -> None:
    from equinb.checks import evaluation_mode
    from equinb.precision import HalfStorageSGD

    w = nn.Parameter(torch.ones(3))
    opt = HalfStorageSGD([w], lr=0.5)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (w ** 2).sum()
        loss.backward()
        return loss

    assert float(opt.step(closure)) == 3.0 and torch.equal(w.detach(), torch.zeros(3))  # w - 0.5 * 2w
    model = nn.Dropout().train()
    with pytest.raises(RuntimeError, match="boom"), evaluation_mode(model):
        assert not model.training
        raise RuntimeError("boom")
    assert model.training
