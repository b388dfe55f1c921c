"""Every sampler, and the editing built on them, against outputs stored before a refactor.

``tests/data/sampler_reference.safetensors`` holds what ``sample``, ``invert``, classifier-free
guidance, ``inpaint`` and ``sdedit`` returned for a tiny deterministic model (elementwise, no
weights) at fixed seeds, computed by this file's cases before samplers.py became the
``samplers`` package (``python tests/test_sampler_reference.py`` rewrote it then; rerun it only
for a change that is meant to change results, and say so in the commit).

Why equality is expected: the cases use only elementwise float32/float64 tensor arithmetic, the
schedule's float64 tables and Python floats, on tensors far below torch's threading grain, so
the same torch build on a CPU of the same vector capability (``torch.backends.cpu.
get_cpu_capability()``, both stored with the file) runs the same kernels in the same order and
gives the same bits. On another build or capability ``exp``, ``log``, ``tanh`` and the normal
sampler's Box–Muller may use other vector kernels, each within a few float32 ulps (2^-23
relative); over these ≤ 6-step chains (a few such kernels per step, each step a contraction
towards x̂_0 or an expansion by at most √(1 + σ_max²)/σ_max ≈ 1) that stays below 1e-5
(≈ 84 ulps), the tolerance used there.

Editing (``inpaint``) is compared with that tolerance everywhere: its known-region pinning
became a wrapper over the denoiser, which no longer converts x̂_0 to the model's target and back
(two float32 roundings fewer), so its results moved by rounding only.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file

from kuosan.edit import inpaint, sdedit
from kuosan.guidance import cfg_model
from kuosan.samplers import invert, sample
from kuosan.schedule import NoiseSchedule

REFERENCE = Path(__file__).parent / "data" / "sampler_reference.safetensors"
SCHEDULE = NoiseSchedule.cosine(100)
SHAPE = (3, 2, 3, 3)
STEPS = 5
ROUNDING = 1e-5  # ≈ 84 float32 ulps: a few ulps per vector kernel over ≤ 6 steps (docstring)
SAMPLER_NAMES = ("ddpm", "ddim", "euler", "heun", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "unipc")
FINAL_STEPPERS = ("ddim", "euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc")


def model(x_t: torch.Tensor, t: torch.Tensor, pooled: torch.Tensor | None = None) -> torch.Tensor:
    """A smooth, input-dependent stand-in for a network: no weights, elementwise only."""
    scale = (1 + t / SCHEDULE.T).reshape(-1, *[1] * (x_t.ndim - 1))
    out = 0.3 * x_t * scale + 0.1 * torch.tanh(x_t)
    return out if pooled is None else out + 0.2 * pooled


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def cases() -> dict[str, torch.Tensor]:
    """Name → output for every case; the editing cases' names start with "edit/"."""
    out: dict[str, torch.Tensor] = {}
    for name in SAMPLER_NAMES:
        for prediction in ("eps", "x0", "v"):
            out[f"{name}/{prediction}"] = sample(model, SHAPE, schedule=SCHEDULE, sampler=name,
                                                 steps=STEPS, generator=gen(), prediction=prediction)
        out[f"{name}/karras_clip"] = sample(model, SHAPE, schedule=SCHEDULE, sampler=name,
                                            steps=STEPS, generator=gen(1), clip_x0=True,
                                            spacing=None if name == "ddpm" else "karras")
        gens = [gen(10 + i) for i in range(SHAPE[0])]
        out[f"{name}/generators"] = sample(model, SHAPE, schedule=SCHEDULE, sampler=name,
                                           steps=STEPS, generator=gens)
        x_T = torch.randn(SHAPE, generator=gen(2))
        out[f"{name}/start2"] = sample(model, SHAPE, schedule=SCHEDULE, sampler=name, steps=STEPS,
                                       x_T=x_T, start_step=2, generator=gen(3))
    for name in FINAL_STEPPERS:
        for final in ("trapezoid", "denoise"):
            out[f"{name}/final_{final}"] = sample(model, SHAPE, schedule=SCHEDULE, sampler=name,
                                                  steps=STEPS, generator=gen(), final_step=final)
    for name, eta in (("ddim", 0.5), ("ddim", 1.0), ("dpmpp_2m_sde", 0.0), ("dpmpp_2m_sde", 0.7)):
        out[f"{name}/eta{eta}"] = sample(model, SHAPE, schedule=SCHEDULE, sampler=name,
                                         steps=STEPS, generator=gen(), eta=eta)
    out["ddpm/steps_default"] = sample(model, SHAPE, schedule=SCHEDULE, generator=gen())
    x0 = torch.rand(SHAPE, generator=gen(4)) * 2 - 1
    out["invert/plain"] = invert(model, x0, schedule=SCHEDULE, steps=STEPS)
    out["invert/fixed_point"] = invert(model, x0, schedule=SCHEDULE, steps=STEPS,
                                       fixed_point_iters=2, final_step="trapezoid")
    cond = {"pooled": torch.linspace(-1, 1, SHAPE[0]).reshape(-1, 1, 1, 1)}
    guided = cfg_model(model, cond, {"pooled": torch.zeros(1, 1, 1, 1)}, 3.0)
    for name in ("dpmpp_2m", "ddpm"):
        out[f"guidance/{name}"] = sample(guided, SHAPE, schedule=SCHEDULE, sampler=name,
                                         steps=STEPS, generator=gen())
    out["sdedit/dpmpp_2m"] = sdedit(model, x0, 0.6, schedule=SCHEDULE, steps=STEPS,
                                    generator=gen(5))
    out["sdedit/ddim_eta"] = sdedit(model, x0, 0.4, schedule=SCHEDULE, sampler="ddim",
                                    steps=STEPS, generator=gen(5), eta=0.5)
    mask = torch.zeros(1, 1, 3, 3)
    mask[..., 1:, :2] = 1
    for name in SAMPLER_NAMES:
        out[f"edit/inpaint/{name}"] = inpaint(model, x0, mask, schedule=SCHEDULE, sampler=name,
                                              steps=STEPS, generator=gen(6))
    for name in ("ddpm", "ddim"):
        out[f"edit/repaint/{name}"] = inpaint(model, x0, mask, schedule=SCHEDULE, sampler=name,
                                              steps=STEPS, generator=gen(7), resample=2)
    out["edit/inpaint_v_final"] = inpaint(model, x0, mask, schedule=SCHEDULE, prediction="v",
                                          steps=STEPS, generator=gen(8), final_step="trapezoid")
    return out


def machine() -> dict[str, str]:
    return {"torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability()}


def test_every_sampler_reproduces_its_stored_outputs():
    reference = load_file(REFERENCE)
    with safe_open(REFERENCE, "pt") as f:
        same_kernels = f.metadata() == machine()
    now = cases()
    assert sorted(now) == sorted(reference)
    for name, expected in reference.items():
        assert bool(torch.isfinite(expected).all()) and expected.abs().max() > 0.01, name
        exact = same_kernels and not name.startswith("edit/")
        if exact:
            assert now[name].dtype == expected.dtype and torch.equal(now[name], expected), name
        else:  # other kernels, or editing's changed rounding: see the module docstring
            torch.testing.assert_close(now[name], expected, rtol=ROUNDING, atol=ROUNDING,
                                       msg=name)


if __name__ == "__main__":
    REFERENCE.parent.mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in cases().items()}, REFERENCE, metadata=machine())
    print(f"wrote {REFERENCE}")
