"""Denoising networks: shapes, gradients, continuous t, configs, determinism, bf16 autocast,
conditioning (class labels, pooled vectors, cross-attention to token states)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from kuosan.errors import KuosanError
from kuosan.models import (
    MODELS,
    UNET_PRESETS,
    MLPConfig,
    MLPDenoiser,
    UNet,
    UNetConfig,
    build_model,
    config_from_dict,
    config_to_dict,
    count_parameters,
    timestep_embedding,
    unet_preset,
)
from kuosan.models.attention import SMALL_ATTENTION, CrossAttnBlock, attention

# A tiny UNet with attention at two levels and in the middle, dropout on.
TINY = UNetConfig(in_channels=2, out_channels=3, image_size=8, base_channels=16,
                  channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8, 4),
                  head_dim=8, dropout=0.1, num_groups=4)


def perturbed(model: nn.Module, seed: int = 0) -> nn.Module:
    """The model with every parameter moved off its (partly zero) initialisation."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def test_timestep_embedding_values() -> None:
    emb = timestep_embedding(torch.tensor([0.0, 3.5]), 9)
    assert emb.shape == (2, 9) and emb.dtype == torch.float32
    torch.testing.assert_close(emb[0, :4], torch.ones(4), rtol=0, atol=0)  # cos(0), exact
    torch.testing.assert_close(emb[0, 4:], torch.zeros(5), rtol=0, atol=0)  # sin(0), the pad column
    # ω_0 = 1; float32 cos on a vector and on a scalar path: an ulp (6e-8) apart at most
    assert emb[1, 0] == pytest.approx(torch.cos(torch.tensor(3.5)).item())


@pytest.mark.parametrize("name", sorted(UNET_PRESETS))
def test_every_preset_at_a_small_size(name: str) -> None:
    cfg = UNET_PRESETS[name]
    size = max(8, 2 ** (len(cfg.channel_mult) - 1))  # l at 8×8: its 16-pixel attention never occurs
    cfg = dataclasses.replace(cfg, in_channels=2, out_channels=5, image_size=size)
    model = perturbed(UNet(cfg)).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 2, size, size), torch.tensor([0.0, 999.0]))
    assert out.shape == (2, 5, size, size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name, low, high", [("xs", 0.3e6, 0.7e6), ("s", 2e6, 4e6),
                                             ("m", 8e6, 12e6), ("l", 30e6, 40e6)])
def test_preset_parameter_counts(name: str, low: float, high: float) -> None:
    assert low <= count_parameters(UNet(UNET_PRESETS[name])) <= high


def test_untrained_unet_outputs_zero() -> None:
    # The output conv is zero-initialised.
    out = UNet(TINY)(torch.randn(2, 2, 8, 8), torch.tensor([5.0, 7.0]))
    assert torch.count_nonzero(out) == 0


@pytest.mark.parametrize("kind, cfg, x", [
    ("unet", TINY, torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(0))),
    ("mlp", MLPConfig(dim=2, hidden=32, depth=2, time_embed_dim=16),
     torch.randn(3, 2, generator=torch.Generator().manual_seed(0))),
])
def test_gradients_reach_every_parameter(kind: str, cfg: object, x: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = perturbed(build_model(kind, cfg)).train()
    loss = model(x, torch.tensor([1.0, 250.5, 998.0])).square().mean()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.count_nonzero(p.grad) > 0, name
    # and one AdamW step moves the output layer off zero from a fresh init
    fresh = build_model(kind, cfg)
    opt = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    out = fresh(x, torch.tensor([1.0, 2.0, 3.0]))
    (out - torch.randn_like(out)).square().mean().backward()
    opt.step()
    with torch.no_grad():
        assert torch.count_nonzero(fresh.eval()(x, torch.tensor([1.0, 2.0, 3.0]))) > 0


@pytest.mark.parametrize("kind, cfg, shape", [
    ("unet", TINY, (1, 2, 8, 8)),
    ("mlp", MLPConfig(hidden=32, depth=2), (1, 2)),
])
def test_fractional_t_is_continuous(kind: str, cfg: object, shape: tuple[int, ...]) -> None:
    model = perturbed(build_model(kind, cfg)).eval()
    x = torch.randn(shape)

    def f(t: float) -> torch.Tensor:
        with torch.no_grad():
            return model(x, torch.tensor([t]))

    step = (f(101.0) - f(100.0)).abs().max()
    tiny = (f(100.5 + 1e-3) - f(100.5)).abs().max()
    # continuous in t, and t matters: smooth, so tiny/step ≈ 1e-3/1 (1.0e-3 seen); 0.05 ≪ a jump
    assert step > 0 and tiny < 0.05 * step
    between = f(100.5)
    assert not torch.equal(between, f(100.0)) and not torch.equal(between, f(101.0))
    # a scalar t is broadcast over the batch
    torch.testing.assert_close(model(x, torch.tensor(100.5)), between, rtol=0, atol=0)  # same call


@pytest.mark.parametrize("kind, cfg", [("unet", UNET_PRESETS["s"]), ("unet", TINY),
                                       ("mlp", MLPConfig(dim=3, hidden=64))])
def test_config_dict_json_round_trip(kind: str, cfg: object) -> None:
    d = json.loads(json.dumps(config_to_dict(cfg)))
    assert all(not isinstance(v, tuple) for v in config_to_dict(cfg).values())
    back = config_from_dict(kind, d)
    assert back == cfg and type(back) is MODELS[kind][0]
    a, b = build_model(kind, d), build_model(kind, cfg)
    assert {k: v.shape for k, v in a.state_dict().items()} == \
        {k: v.shape for k, v in b.state_dict().items()}


def test_config_from_dict_defaults_and_unknown_keys() -> None:
    assert config_from_dict("mlp", {}) == MLPConfig()
    with pytest.raises(KuosanError, match="bogus"):
        config_from_dict("unet", {"base_channels": 32, "bogus": 1})
    with pytest.raises(KuosanError, match="transformer"):
        build_model("transformer", {})
    with pytest.raises(KuosanError, match="preset"):
        unet_preset("huge")
    assert unet_preset("xs", image_size=16).image_size == 16


@pytest.mark.parametrize("changes, match", [
    ({"image_size": 10}, "divisible by 4"),          # 3 levels need a multiple of 4
    ({"base_channels": 24}, "num_groups"),            # 24 channels, 32 groups
    ({"num_groups": 8, "head_dim": 48}, "head_dim"),  # 64 channels, heads of 48
    ({"dropout": 1.5}, "dropout"),
    ({"channel_mult": ()}, "channel_mult"),
    ({"channel_mult": [1, 2]}, "tuple"),
    ({"num_res_blocks": 0}, "num_res_blocks"),
    ({"in_channels": "3"}, "in_channels"),
])
def test_bad_unet_configs_raise(changes: dict, match: str) -> None:
    base = UNetConfig(base_channels=64, channel_mult=(1, 2, 2), num_groups=32, head_dim=32)
    with pytest.raises(KuosanError, match=match):
        dataclasses.replace(base, **changes)


def test_bad_mlp_config_and_bad_input_size_raise() -> None:
    with pytest.raises(KuosanError, match="depth"):
        MLPConfig(depth=0)
    with pytest.raises(KuosanError, match="divisible"):
        UNet(TINY)(torch.randn(1, 2, 9, 9), torch.tensor([1.0]))


def test_eval_mode_is_deterministic() -> None:
    model = perturbed(UNet(TINY))
    x, t = torch.randn(2, 2, 8, 8), torch.tensor([3.0, 400.0])
    model.train()
    assert not torch.equal(model(x, t), model(x, t))  # dropout is on in training
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x, t), model(x, t), rtol=0, atol=0)


def test_bf16_autocast_on_cpu() -> None:
    model = perturbed(UNet(TINY)).eval()
    x, t = torch.randn(2, 2, 8, 8), torch.tensor([3.0, 400.5])
    with torch.no_grad():
        ref = model(x, t)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x, t)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    # bf16 keeps 8 significant bits: ≤ 2⁻⁹ ≈ 0.002 per rounding, a random walk over ~20 layers
    # ≈ 0.002·√20 ≈ 0.01 of the output's scale (0.013 seen); 0.05 is still ≪ an O(1) error
    assert (out.float() - ref).abs().max() < 0.05 * ref.abs().max()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # and training works under autocast
        model.train()(x, t).float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_mlp_shapes() -> None:
    model = MLPDenoiser(MLPConfig(dim=5, hidden=32, depth=3))
    assert model(torch.randn(4, 5), torch.rand(4) * 999).shape == (4, 5)


# ---- conditioning: class labels, pooled vectors, token states -----------------------------------

CONDITIONING = {  # UNetConfig fields that switch each kind of condition on
    "class": {"num_classes": 5},
    "pooled": {"cond_dim": 6},
    "tokens": {"context_dim": 12, "cross_attn_resolutions": (8,)},
    "all": {"num_classes": 5, "cond_dim": 6, "context_dim": 12, "cross_attn_resolutions": (8,)},
}
COND_TINY = dataclasses.replace(TINY, **CONDITIONING["all"])


def make_condition(kind: str, batch: int, seed: int, length: int = 3) -> dict[str, torch.Tensor]:
    """A random condition of `kind` for a batch (class labels include the null index 5)."""
    g = torch.Generator().manual_seed(seed)
    cond: dict[str, torch.Tensor] = {}
    if kind in ("class", "all"):
        cond["class_labels"] = (torch.arange(batch) + seed) % 6  # other seed: other labels
    if kind in ("pooled", "all"):
        cond["pooled"] = torch.randn(batch, 6, generator=g)
    if kind in ("tokens", "all"):
        cond["context"] = torch.randn(batch, length, 12, generator=g)
        cond["context_mask"] = torch.ones(batch, length, dtype=torch.bool)
    return cond


def conditioning_parameters(model: UNet) -> list[nn.Parameter]:
    """The zero-initialised parameters through which a condition reaches the output."""
    params = []
    for name in ("class_embed", "cond_proj"):
        if hasattr(model, name):
            params += list(getattr(model, name).parameters())
    for module in model.modules():
        if isinstance(module, CrossAttnBlock):
            params += list(module.proj.parameters())
    return params


@pytest.mark.parametrize("kind", sorted(CONDITIONING))
def test_condition_reaches_the_output_after_training_not_at_init(kind: str) -> None:
    model = UNet(dataclasses.replace(TINY, **CONDITIONING[kind])).eval()
    x, t = torch.randn(2, 2, 8, 8), torch.tensor([3.0, 400.0])
    a, b = make_condition(kind, 2, seed=1), make_condition(kind, 2, seed=2)
    # Every parameter off its initialisation except the zero-initialised conditioning paths:
    # the condition cannot reach the output, bit for bit.
    zero = {id(p) for p in conditioning_parameters(model)}
    assert zero
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if id(p) not in zero:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        out_a, out_b, out_none = model(x, t, **a), model(x, t, **b), model(x, t)
    assert out_a.shape == (2, 3, 8, 8) and torch.count_nonzero(out_a) > 0
    assert torch.equal(out_a, out_b) and torch.equal(out_a, out_none)
    # Moved off zero too (as training does), the output depends on the condition.
    perturbed(model, seed=1)
    with torch.no_grad():
        out_a, out_b = model(x, t, **a), model(x, t, **b)
    assert out_a.shape == (2, 3, 8, 8) and torch.isfinite(out_a).all()
    # 0.07..0.23 of the output's scale seen; 1e-3 is ≫ float32 rounding (~1e-6)
    assert (out_a - out_b).abs().amax(dim=(1, 2, 3)).min() > 1e-3 * out_a.abs().max()


@pytest.mark.parametrize("resolutions, count", [((), 1), ((8,), 4), ((4,), 4), ((8, 4), 7)])
def test_cross_attention_placement(resolutions: tuple[int, ...], count: int) -> None:
    # TINY: one residual block per level down, two up, so (8,) gives 1 + 2 and the middle 1.
    model = UNet(dataclasses.replace(TINY, context_dim=12, cross_attn_resolutions=resolutions))
    assert sum(isinstance(m, CrossAttnBlock) for m in model.modules()) == count


def test_padding_tokens_do_not_change_the_output() -> None:
    model = perturbed(UNet(COND_TINY)).eval()
    x, t = torch.randn(2, 2, 8, 8), torch.tensor([3.0, 400.0])
    cond = make_condition("all", 2, seed=3, length=3)
    padded = dict(cond, context=torch.cat([cond["context"], 5 * torch.randn(2, 4, 12)], dim=1),
                  context_mask=torch.tensor([[1, 1, 1, 0, 0, 0, 0]] * 2))  # 0/1 ints work too
    with torch.no_grad():
        ref, out = model(x, t, **cond), model(x, t, **padded)
        unmasked = model(x, t, **dict(padded, context_mask=None))  # None: every token is real
    # only the cross-attention sums over keys change length (3 real terms, the masked add exact
    # zeros): ≲ 2·2⁻²⁴ per block, ~1e-6 of |out| ≈ 1.5 after 3 blocks (0 seen here)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert (unmasked - ref).abs().max() > 1e-3 * ref.abs().max()  # so the mask did the work: 0.5
    # A row without any real token attends to nothing: the same as context=None, bit for bit.
    no_tokens = dict(cond, context_mask=torch.zeros(2, 3, dtype=torch.bool))
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, **no_tokens),
                                   model(x, t, **dict(cond, context=None, context_mask=None)),
                                   rtol=0, atol=0)


def test_conditional_unet_runs_unconditionally_and_null_class_differs() -> None:
    model = perturbed(UNet(COND_TINY)).eval()
    x, t = torch.randn(2, 2, 8, 8), torch.tensor([3.0, 400.0])
    with torch.no_grad():
        out = model(x, t)
        null = model(x, t, class_labels=torch.tensor([5, 5]))
        one = model(x, t, class_labels=torch.tensor([5, 0]))
    assert out.shape == (2, 3, 8, 8) and torch.isfinite(out).all()
    assert not torch.allclose(out, null)  # None adds nothing; the null class is a learned row
    torch.testing.assert_close(one[0], null[0], rtol=0, atol=0)  # rows do not leak: same kernels
    assert not torch.allclose(one[1], null[1])


def test_conditional_unet_gradients_reach_every_parameter() -> None:
    model = perturbed(UNet(COND_TINY)).train()
    cond = make_condition("all", 3, seed=4, length=4)
    cond["context_mask"][0, 2:] = False
    x, t = torch.randn(3, 2, 8, 8), torch.tensor([1.0, 250.5, 998.0])
    model(x, t, **cond).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name


def test_conditional_unet_under_bf16_autocast() -> None:
    model = perturbed(UNet(COND_TINY)).eval()
    x, t = torch.randn(2, 2, 8, 8), torch.tensor([3.0, 400.5])
    cond = make_condition("all", 2, seed=5)
    with torch.no_grad():
        ref = model(x, t, **cond)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x, t, **cond)
    assert (out.float() - ref).abs().max() < 0.05 * ref.abs().max()  # bf16: as above (0.014 seen)


def test_unconditional_configs_and_parameter_names_are_unchanged() -> None:
    old = {k: v for k, v in config_to_dict(TINY).items()
           if k not in ("num_classes", "cond_dim", "context_dim", "cross_attn_resolutions")}
    assert config_from_dict("unet", json.loads(json.dumps(old))) == TINY
    names = set(UNet(TINY).state_dict())
    # the layout of a checkpoint written before conditioning existed
    assert {"time_embed.0.weight", "down.0.1.qkv.weight", "middle.1.proj.weight",
            "middle.2.conv2.weight", "up.2.1.proj.bias", "out.2.weight"} <= names
    assert not any(k.startswith(("class_embed", "cond_proj")) or ".kv." in k for k in names)


def test_conditional_config_round_trip_builds_the_same_model() -> None:
    d = json.loads(json.dumps(config_to_dict(COND_TINY)))
    assert d["cross_attn_resolutions"] == [8] and d["num_classes"] == 5
    assert config_from_dict("unet", d) == COND_TINY
    a, b = build_model("unet", d), UNet(COND_TINY)
    assert {k: v.shape for k, v in a.state_dict().items()} == \
        {k: v.shape for k, v in b.state_dict().items()}
    assert a.class_embed.num_embeddings == 6  # 5 classes + the null class


@pytest.mark.parametrize("changes, match", [
    ({"cross_attn_resolutions": (8,)}, "context_dim"),
    ({"num_classes": -1}, "num_classes"),
    ({"cond_dim": 2.5}, "cond_dim"),
    ({"context_dim": "8"}, "context_dim"),
    ({"context_dim": 8, "cross_attn_resolutions": [8]}, "tuple"),
    ({"context_dim": 8, "cross_attn_resolutions": (0,)}, "cross_attn_resolutions"),
])
def test_bad_conditioning_configs_raise(changes: dict, match: str) -> None:
    with pytest.raises(KuosanError, match=match):
        dataclasses.replace(TINY, **changes)


@pytest.mark.parametrize("cfg, cond, match", [
    (TINY, {"class_labels": torch.tensor([0, 1])}, "num_classes=0"),
    (TINY, {"pooled": torch.zeros(2, 6)}, "cond_dim=0"),
    (TINY, {"context": torch.zeros(2, 3, 12)}, "context_dim=0"),
    (COND_TINY, {"class_labels": torch.tensor([0.0, 1.0])}, "integers"),
    (COND_TINY, {"class_labels": torch.tensor([0, 1, 2])}, r"class_labels has shape \[3\]"),
    (COND_TINY, {"pooled": torch.zeros(2, 5)}, r"expected \[2, 6\]"),
    (COND_TINY, {"context": torch.zeros(2, 3, 11)}, r"expected \[2, L, 12\]"),
    (COND_TINY, {"context": torch.zeros(2, 3, 12), "context_mask": torch.ones(2, 4)},
     "context_mask"),
    (COND_TINY, {"context_mask": torch.ones(2, 3)}, "without context"),
])
def test_bad_conditions_raise(cfg: UNetConfig, cond: dict, match: str) -> None:
    with pytest.raises(KuosanError, match=match):
        UNet(cfg)(torch.randn(2, 2, 8, 8), torch.tensor([1.0, 2.0]), **cond)


def test_upsample_nearest_2x_equals_interpolate():
    import torch.nn.functional as F

    from kuosan.models.unet import upsample_nearest_2x

    x = torch.randn(2, 3, 5, 7, requires_grad=True)
    torch.testing.assert_close(upsample_nearest_2x(x), F.interpolate(x, scale_factor=2.0, mode="nearest"),
                               rtol=0, atol=0)
    upsample_nearest_2x(x).sum().backward()
    assert torch.equal(x.grad, torch.full_like(x, 4.0))


def test_dropout_drops_p_of_each_lane_and_keeps_the_mean() -> None:
    """The CPU mask comes from 16-bit lanes of random int64 words: every lane (position mod 4)
    drops about p, survivors are scaled so E[y] = x, and a seeded draw repeats."""
    from kuosan.models.unet import Dropout

    drop = Dropout(0.1)
    torch.manual_seed(0)
    x = torch.ones(2 ** 20)
    y = drop(x)
    dropped = y == 0
    for lane in range(4):  # a lane stuck at "keep" (a word's sign bit never set) would show here
        assert abs(dropped[lane::4].float().mean().item() - 0.1) < 0.003
    scale = 65536 / (65536 - 6554)
    assert torch.equal(y[~dropped], torch.full_like(y[~dropped], scale))
    assert abs(y.mean().item() - 1.0) < 0.003  # 1 / (1 - p) times the kept share: about 1
    torch.manual_seed(0)
    assert torch.equal(drop(x), y)
    assert not torch.equal(drop(x), y)  # the generator moved on


def test_dropout_in_eval_at_zero_and_in_backward() -> None:
    from kuosan.models.unet import Dropout

    x = torch.randn(2, 8, 5, 5).contiguous(memory_format=torch.channels_last)
    assert Dropout(0.0)(x) is x and Dropout(0.3).eval()(x) is x
    xb = x.to(torch.bfloat16).requires_grad_()
    y = Dropout(0.3)(xb)
    assert y.dtype == torch.bfloat16 and y.shape == x.shape
    y.float().sum().backward()
    kept = y != 0
    assert torch.equal(xb.grad != 0, kept)  # the gradient flows through the kept elements only


def test_adamw_is_fused_on_cpu() -> None:
    from kuosan.optim import adamw

    p = nn.Parameter(torch.ones(3))
    p.grad = torch.ones(3)
    opt = adamw([p], 0.1, 0.0, "cpu")
    assert opt.defaults["fused"] is True
    opt.step()
    torch.testing.assert_close(p.detach(), torch.full((3,), 0.9))  # first step: θ − lr·sign(g)


def _qkv(b: int, heads: int, n: int, keys: int, d: int, dtype: torch.dtype) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(n * keys)
    shapes = [(b, heads, n, d), (b, heads, keys, d), (b, heads, keys, d)]
    return [torch.randn(s, generator=g).to(dtype).requires_grad_() for s in shapes]


@pytest.mark.parametrize("n, keys", [(16, 16), (64, 7), (256, 256)])
@pytest.mark.parametrize("masked", [False, True])
def test_small_bf16_attention_trained_on_the_cpu_is_the_three_op_form(
        n: int, keys: int, masked: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # softmax(q·kᵀ/√d)·v in bf16, against the fp64 formula on the same (bf16-rounded) inputs:
    # bf16 keeps 8 mantissa bits (2⁻⁸ ≈ 0.004 relative); a wrong scale, mask or transpose is
    # off by ~0.1–1 on these unit-variance values. SDPA is not called on this path.
    def no_sdpa(*args: object, **kwargs: object) -> None:
        raise AssertionError("SDPA was called")

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", no_sdpa)
    q, k, v = _qkv(2, 2, n, keys, 8, torch.bfloat16)
    mask = None
    if masked:
        mask = torch.rand(2, 1, 1, keys, generator=torch.Generator().manual_seed(1)) < 0.6
        mask[..., 0] = True  # every row keeps a key
    out = attention(q, k, v, mask)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 2, n, 8)
    q64, k64, v64 = (a.detach().double().requires_grad_() for a in (q, k, v))
    scores = q64 @ k64.transpose(-1, -2) / 8 ** 0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    ref = scores.softmax(-1) @ v64
    err = (out.double() - ref).abs()
    assert err.mean() < 0.01 and err.max() < 0.1
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    out.backward(grad.bfloat16())
    ref.backward(grad.double())
    for a, a64 in ((q, q64), (k, k64), (v, v64)):
        gerr = (a.grad.double() - a64.grad).abs()
        assert gerr.mean() < 0.02 * a64.grad.abs().mean() + 0.01, gerr.mean()


@pytest.mark.parametrize("dtype, n, grad", [(torch.float32, 64, True), (torch.bfloat16, 512, True),
                                            (torch.bfloat16, 64, False)])
def test_other_attention_is_sdpa_itself(dtype: torch.dtype, n: int, grad: bool) -> None:
    # fp32 anywhere, bf16 beyond SMALL_ATTENTION scores per head, and bf16 forward-only
    # (sampling): SDPA's fused kernel, bit for bit
    assert dtype == torch.float32 or n * n > SMALL_ATTENTION or not grad
    q, k, v = _qkv(1, 2, n, n, 8, dtype)
    with torch.set_grad_enabled(grad):
        assert torch.equal(attention(q, k, v), torch.nn.functional.scaled_dot_product_attention(q, k, v))
