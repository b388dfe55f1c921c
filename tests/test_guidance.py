"""Classifier-free guidance and condition dropout (kuosan.guidance) on a tiny conditional UNet."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from kuosan.errors import KuosanError
from kuosan.guidance import (
    DEFAULT_COND_DROP_PROB,
    cfg_model,
    composed_cfg_model,
    concat_conditions,
    drop_conditions,
    parse_composition,
)
from kuosan.models import UNet, UNetConfig
from kuosan.samplers import SAMPLERS, model_evaluations, sample
from kuosan.schedule import NoiseSchedule, x0_eps_from_output

SCHEDULE = NoiseSchedule.linear(1000)
CONFIG = UNetConfig(in_channels=1, out_channels=1, image_size=8, base_channels=16,
                    channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), head_dim=8,
                    dropout=0.0, num_groups=4, num_classes=4, cond_dim=6, context_dim=10,
                    cross_attn_resolutions=(8,))


def tiny_model() -> UNet:
    """The conditional UNet with every parameter moved off its (partly zero) initialisation."""
    with torch.random.fork_rng(devices=[]):  # the same weights whatever ran before (import order)
        torch.manual_seed(0)
        model = UNet(CONFIG).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


MODEL = tiny_model()


def condition(batch: int, length: int, seed: int, label: int | None = None) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (batch,), generator=g) if label is None else \
        torch.full((batch,), label)
    return {"class_labels": labels, "pooled": torch.randn(batch, 6, generator=g),
            "context": torch.randn(batch, length, 10, generator=g)}


COND = condition(2, 5, seed=1)
COND["context_mask"] = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
UNCOND = condition(2, 2, seed=2, label=4)  # the null class; "empty caption" of 2 tokens, no mask


class Counting:
    """The model, recording the batch size of every call."""

    def __init__(self, model: UNet) -> None:
        self.model, self.batches = model, []

    def __call__(self, x: Tensor, t: Tensor, **cond: Tensor) -> Tensor:
        self.batches.append(x.shape[0])
        return self.model(x, t, **cond)


def inputs(batch: int = 2, seed: int = 3) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 1, 8, 8, generator=g), torch.tensor([17.0, 640.5][:batch])


@torch.no_grad()
def separate(scale: float, cond: dict = COND, uncond: dict = UNCOND) -> Tensor:
    x, t = inputs()
    out_cond, out_uncond = MODEL(x, t, **cond), MODEL(x, t, **uncond)
    return out_uncond + scale * (out_cond - out_uncond)


with torch.no_grad():
    OUT_SCALE = float(MODEL(*inputs(), **COND).abs().max())  # about 2


def guided_atol(*weights: float) -> float:
    """Bound on |a − b| for two float32 ways to compute u + Σ w_i·(c_i − u) in other batches.

    Other batch sizes and padded tokens run other kernel blockings, so each model output rounds
    differently by ≈ √300·20·2⁻²⁴ ≈ 2e-5 of its scale (a random walk over the ~20 layers' dot
    products of ≤ 300 terms); the mix multiplies that by at most 1 + 2·Σ|w_i|.
    """
    return 2e-5 * OUT_SCALE * (1 + 2 * sum(abs(w) for w in weights))


@torch.no_grad()
def test_scale_one_is_the_conditional_model_in_one_call() -> None:
    x, t = inputs()
    counting = Counting(MODEL)
    out = cfg_model(counting, COND, UNCOND, 1.0)(x, t)
    assert counting.batches == [2]  # the unconditional branch is never evaluated
    torch.testing.assert_close(out, MODEL(x, t, **COND), rtol=0, atol=0)


@pytest.mark.parametrize("scale", [0.0, -0.5, 2.0, 7.5])
@torch.no_grad()
def test_batched_guidance_equals_two_separate_calls(scale: float) -> None:
    # token lengths 5 (with a mask) and 2 (without): padded to one batch of 4
    x, t = inputs()
    counting = Counting(MODEL)
    out = cfg_model(counting, COND, UNCOND, scale)(x, t)
    assert counting.batches == [4]
    torch.testing.assert_close(out, separate(scale), rtol=0, atol=guided_atol(scale))


@torch.no_grad()
def test_scale_zero_is_the_unconditional_model_and_guidance_is_linear_in_scale() -> None:
    x, t = inputs()
    out = {s: cfg_model(MODEL, COND, UNCOND, s)(x, t) for s in (0.0, 1.0, 3.0)}
    torch.testing.assert_close(out[0.0], MODEL(x, t, **UNCOND), rtol=0, atol=guided_atol(0.0))
    torch.testing.assert_close(out[3.0], out[0.0] + 3.0 * (out[1.0] - out[0.0]),
                               rtol=0, atol=guided_atol(3.0, 3.0))
    # guidance does act: it moves the output by O(1) (0.97 of its scale seen), ≫ the rounding
    assert (out[3.0] - out[1.0]).abs().max() > 1e-2 * out[1.0].abs().max()


@torch.no_grad()
def test_conditions_with_different_keys_run_as_two_calls() -> None:
    # a negative "prompt" given as class label only, against the full condition
    x, t = inputs()
    uncond = {"class_labels": torch.tensor([4, 4]), "context": None}
    counting = Counting(MODEL)
    out = cfg_model(counting, COND, uncond, 2.5)(x, t)
    assert counting.batches == [2, 2]
    torch.testing.assert_close(out, separate(2.5, uncond={"class_labels": torch.tensor([4, 4])}),
                               rtol=0, atol=0)  # the same two calls of batch 2: bit for bit


@torch.no_grad()
def test_a_batch_of_one_condition_is_broadcast() -> None:
    x, t = inputs()
    one = {k: v[:1] for k, v in COND.items()}
    full = {k: v[:1].expand(2, *v.shape[1:]) for k, v in COND.items()}
    torch.testing.assert_close(cfg_model(MODEL, one, UNCOND, 4.0)(x, t), separate(4.0, cond=full),
                               rtol=0, atol=guided_atol(4.0))
    torch.testing.assert_close(cfg_model(MODEL, one, UNCOND, 1.0)(x, t), MODEL(x, t, **full),
                               rtol=0, atol=0)  # the same one call: bit for bit


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@torch.no_grad()
def test_guiding_the_output_guides_the_x0_estimate(prediction: str) -> None:
    # out_u + s·(out_c − out_u) converts to x̂0_u + s·(x̂0_c − x̂0_u) for ε, x0 and v alike
    x, t = inputs()
    alpha_bar = SCHEDULE.alpha_bar_at(t).float()
    x0_c = x0_eps_from_output(MODEL(x, t, **COND), x, alpha_bar, prediction)[0]
    x0_u = x0_eps_from_output(MODEL(x, t, **UNCOND), x, alpha_bar, prediction)[0]
    guided = x0_eps_from_output(cfg_model(MODEL, COND, UNCOND, 5.0)(x, t), x, alpha_bar,
                                prediction)[0]
    # x̂0 = (x − √(1−ᾱ)·ε̂)/√ᾱ scales the output's rounding by up to √((1−ᾱ)/ᾱ) ≤ 1/√ᾱ
    amplify = float(alpha_bar.min().rsqrt())
    torch.testing.assert_close(guided, x0_u + 5.0 * (x0_c - x0_u), rtol=0,
                               atol=guided_atol(5.0) * amplify)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_guidance_through_every_sampler(sampler: str) -> None:
    steps, shape = 3, (2, 1, 8, 8)

    def run(model: object) -> Tensor:
        return sample(model, shape, schedule=SCHEDULE, sampler=sampler, steps=steps,
                      generator=torch.Generator().manual_seed(0))

    counting = Counting(MODEL)
    guided = run(cfg_model(counting, COND, UNCOND, 3.0))
    assert guided.shape == shape and torch.isfinite(guided).all()
    assert counting.batches == [4] * model_evaluations(sampler, steps)
    counting = Counting(MODEL)
    plain = run(cfg_model(counting, COND, UNCOND, 1.0))
    assert counting.batches == [2] * model_evaluations(sampler, steps)
    torch.testing.assert_close(plain, run(lambda x, t: MODEL(x, t, **COND)), rtol=0, atol=0)
    assert not torch.allclose(guided, plain)


def test_concat_conditions_pads_tokens() -> None:
    out = concat_conditions(COND, UNCOND)
    assert out["context"].shape == (4, 5, 10) and out["class_labels"].tolist()[2:] == [4, 4]
    assert out["context_mask"].tolist()[1:] == [[True] * 5, [True, True] + [False] * 3,
                                                 [True, True] + [False] * 3]
    assert torch.equal(out["context"][2:, 2:], torch.zeros(2, 3, 10))
    with pytest.raises(KuosanError, match="different keys"):
        concat_conditions(COND, {"class_labels": torch.tensor([4, 4])})


def test_bad_guidance_arguments_raise() -> None:
    with pytest.raises(KuosanError, match="finite"):
        cfg_model(MODEL, COND, UNCOND, float("nan"))
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([1.0, 2.0, 3.0])
    with pytest.raises(KuosanError, match="batch dimension of 1 or 3"):
        cfg_model(MODEL, COND, UNCOND, 2.0)(x, t)  # 2 conditions for 3 images


# ---- composable diffusion: "A AND B" ---------------------------------------------------------

OTHER = condition(2, 3, seed=4)  # a second caption: other labels, pooled vector and 3 tokens


@pytest.mark.parametrize("scale", [1.0, 2.5])
@torch.no_grad()
def test_composition_is_the_weighted_sum_of_guidance_directions(scale: float) -> None:
    x, t = inputs()
    out_a, out_b, out_u = MODEL(x, t, **COND), MODEL(x, t, **OTHER), MODEL(x, t, **UNCOND)
    counting = Counting(MODEL)
    weights = torch.tensor([1.5, -0.5])
    out = composed_cfg_model(counting, [COND, OTHER], weights, UNCOND, scale)(x, t)
    assert counting.batches == [6]  # the three branches in one call
    expected = out_u + scale * (1.5 * (out_a - out_u) - 0.5 * (out_b - out_u))
    torch.testing.assert_close(out, expected, rtol=0, atol=guided_atol(1.5 * scale, 0.5 * scale))
    both = composed_cfg_model(MODEL, [COND, OTHER], None, UNCOND, scale)(x, t)  # weights 1
    torch.testing.assert_close(both, out_u + scale * (out_a + out_b - 2 * out_u), rtol=0,
                               atol=guided_atol(scale, scale))


@torch.no_grad()
def test_per_row_weights_and_a_zero_weight_leaves_a_part_out() -> None:
    # row 0 composes COND and OTHER, row 1 is COND alone (OTHER at weight 0: padding)
    x, t = inputs()
    weights = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    out = composed_cfg_model(MODEL, [COND, OTHER], weights, UNCOND, 3.0)(x, t)
    torch.testing.assert_close(out[1], separate(3.0)[1], rtol=0, atol=guided_atol(3.0))
    assert not torch.allclose(out[0], separate(3.0)[0], atol=1e-3)  # 5 apart, ≫ the rounding


@torch.no_grad()
def test_one_condition_of_weight_one_is_plain_guidance() -> None:
    x, t = inputs()
    for scale in (1.0, 4.0):
        torch.testing.assert_close(composed_cfg_model(MODEL, [COND], None, UNCOND, scale)(x, t),
                                   cfg_model(MODEL, COND, UNCOND, scale)(x, t), rtol=0, atol=0)
    # weights given: s = 1 still guides (w = 2 doubles the direction), so both branches run
    counting = Counting(MODEL)
    out = composed_cfg_model(counting, [COND], torch.tensor([2.0]), UNCOND, 1.0)(x, t)
    assert counting.batches == [4]
    torch.testing.assert_close(out, separate(2.0), rtol=0, atol=guided_atol(2.0))


def test_bad_composition_arguments_raise() -> None:
    x, t = inputs()
    with pytest.raises(KuosanError, match="at least one condition"):
        composed_cfg_model(MODEL, [], None, UNCOND, 2.0)
    with pytest.raises(KuosanError, match=r"\[K\] or \[K, B\] with K = 2"):
        composed_cfg_model(MODEL, [COND, OTHER], torch.ones(3), UNCOND, 2.0)
    with pytest.raises(KuosanError, match="finite"):
        composed_cfg_model(MODEL, [COND, OTHER], torch.tensor([1.0, float("inf")]), UNCOND, 2.0)
    with pytest.raises(KuosanError, match="3 rows and x_t has 2"):
        composed_cfg_model(MODEL, [COND, OTHER], torch.ones(2, 3), UNCOND, 2.0)(x, t)


@pytest.mark.parametrize(("prompt", "parts"), [
    ("a red circle", [("a red circle", 1.0)]),
    ("a red circle :2", [("a red circle :2", 1.0)]),  # a weight only inside a composition
    ("a red circle AND a blue square", [("a red circle", 1.0), ("a blue square", 1.0)]),
    ("a red circle :1.5 AND a blue square :-0.5 AND a cross :.25",
     [("a red circle", 1.5), ("a blue square", -0.5), ("a cross", 0.25)]),
    ("ratio 16:9 AND x", [("ratio 16:9", 1.0), ("x", 1.0)]),  # no space before the colon
    ("a BAND and ANDes", [("a BAND and ANDes", 1.0)]),  # only the upper-case word AND
])
def test_parse_composition(prompt: str, parts: list) -> None:
    assert parse_composition(prompt) == parts


@pytest.mark.parametrize("prompt", ["a red circle AND", "AND a red circle", "a AND  AND b",
                                    "a AND :2"])
def test_parse_composition_names_an_empty_part(prompt: str) -> None:
    with pytest.raises(KuosanError, match="empty part"):
        parse_composition(prompt)


# ---- condition dropout in training ----------------------------------------------------------

NULL = {"class_labels": torch.tensor([4]), "pooled": torch.zeros(1, 6) + 0.5,
        "context": torch.ones(1, 1, 10), "context_mask": torch.tensor([[True]])}


@pytest.mark.parametrize("p", [DEFAULT_COND_DROP_PROB, 0.5])
def test_drop_rate_is_p_and_seeded(p: float) -> None:
    n = 4000
    cond = {"class_labels": torch.randint(0, 4, (n,), generator=torch.Generator().manual_seed(1))}
    out = drop_conditions(cond, p, torch.Generator().manual_seed(7), NULL)
    rate = (out["class_labels"] == 4).float().mean().item()
    assert abs(rate - p) < 4 * (p * (1 - p) / n) ** 0.5 + 1e-9  # within 4 standard deviations
    same = drop_conditions(cond, p, torch.Generator().manual_seed(7), NULL)
    other = drop_conditions(cond, p, torch.Generator().manual_seed(8), NULL)
    assert torch.equal(out["class_labels"], same["class_labels"])
    assert not torch.equal(out["class_labels"], other["class_labels"])


def test_drop_replaces_whole_examples_with_the_null_condition() -> None:
    n = 64
    cond = condition(n, 3, seed=5, label=1)
    out = drop_conditions(cond, 0.3, torch.Generator().manual_seed(0), NULL)
    dropped = out["class_labels"] == 4
    assert 0 < int(dropped.sum()) < n
    assert out["context"].shape == (n, 3, 10) and out["context_mask"].dtype == torch.bool
    kept = ~dropped
    # kept rows: unchanged (all tokens real); dropped rows: every key is null, padded to 3 tokens
    assert torch.equal(out["pooled"][kept], cond["pooled"][kept])
    assert torch.equal(out["context"][kept], cond["context"][kept])
    assert out["context_mask"][kept].all()
    assert (out["pooled"][dropped] == 0.5).all()
    null_context = out["context"][dropped]
    assert (null_context[:, 0] == 1).all() and (null_context[:, 1:] == 0).all()
    assert out["context_mask"][dropped].tolist() == [[True, False, False]] * int(dropped.sum())
    with torch.no_grad():  # and the model takes the result
        MODEL(torch.randn(n, 1, 8, 8), torch.full((n,), 5.0), **out)


def test_drop_edge_cases_and_errors() -> None:
    cond = condition(8, 2, seed=6)
    kept = drop_conditions(cond, 0.0, torch.Generator().manual_seed(0), NULL)
    assert all(torch.equal(kept[k], cond[k]) for k in cond)
    assert (drop_conditions(cond, 1.0, None, NULL)["class_labels"] == 4).all()
    with pytest.raises(KuosanError, match=r"\[0, 1\]"):
        drop_conditions(cond, 1.5, None, NULL)
    with pytest.raises(KuosanError, match="pooled"):
        drop_conditions(cond, 0.1, None, {"class_labels": torch.tensor([4])})

