"""Denoising networks: shapes, gradients, continuous t, configs, determinism, bf16 autocast."""

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
    torch.testing.assert_close(emb[0, :4], torch.ones(4))  # cos(0)
    torch.testing.assert_close(emb[0, 4:], torch.zeros(5))  # sin(0), then the pad column
    assert emb[1, 0] == pytest.approx(torch.cos(torch.tensor(3.5)).item())  # ω_0 = 1


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
    ("unet", TINY, torch.randn(3, 2, 8, 8)),
    ("mlp", MLPConfig(dim=2, hidden=32, depth=2, time_embed_dim=16), torch.randn(3, 2)),
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
    assert step > 0 and tiny < 0.05 * step  # continuous in t, and t matters
    between = f(100.5)
    assert not torch.equal(between, f(100.0)) and not torch.equal(between, f(101.0))
    # a scalar t is broadcast over the batch
    torch.testing.assert_close(model(x, torch.tensor(100.5)), between)


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
    assert (out.float() - ref).abs().max() < 0.05 * ref.abs().max()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # and training works under autocast
        model.train()(x, t).float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_mlp_shapes() -> None:
    model = MLPDenoiser(MLPConfig(dim=5, hidden=32, depth=3))
    assert model(torch.randn(4, 5), torch.rand(4) * 999).shape == (4, 5)
