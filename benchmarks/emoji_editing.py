"""Editing on emoji, scored by the emoji recogniser (``kuosan.metrics.emoji``): the four edits of
issue 19 on real pictures of seen one-code-point concepts drawn in two styles, each beside a
reference that says what the recogniser makes of the edit's ideal or of doing nothing.

Case k takes pair k of ``default_rng(seed + 1)``'s draw, in the first style for even k and in
the second for odd k, and edits it with the image's generator seeded ``sample_seed + k``:

- **style transfer**: ``img2img`` (default strength) with the caption of the same concept in the
  other style. Success: the concept in the top 5 and the style head says the new style.
  Reference: the real picture in the new style.
- **vary**: one ``vary`` (default strength, no prompt). Success: the concept in the top 5 and
  the source's style. Reference: the source itself.
- **inpaint**: the right half (even k) or the left half (odd k) masked and repainted with the
  caption of another seen concept B in the source's style (the next case's concept), as the
  issue asks: "replace half of a picture with another concept". Success: B in the top 5 and
  the source's style. Reference: the kept half beside the same half of B's real picture, the
  ideal of this edit (a chimera, so the reference is well below 100 %).
- **inpaint, half alone**: the same edits scored on the repainted half alone, on white (the kept
  half blanked), so the kept half cannot hide or fake the new concept. Success: B in the top 5
  and the source's style. Reference: the same half of B's real picture on white. ``source top5``
  says how often that half shows the source's concept A instead: a repaint that only continues
  the kept half.
- **outpaint**: 12 of the 32 px cut off one side (right, left, bottom, top in turn) and the
  picture extended back by 12 px with its own caption. Success: the concept in the top 5 and
  the source's style. Reference: the cut picture on white, what is known before the edit.

Every edit must keep the pixels outside its mask exactly; ``kept`` is the % of edits that did.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from kuosan.data.emoji import EmojiEntry
from kuosan.metrics.emoji import Recogniser, score

CUT = 12  # px cut off one side for outpainting, of 32 (scaled with the picture's size)
SIDES = ("right", "left", "bottom", "top")


def pairs_in_two_styles(entries: list[EmojiEntry], a: str, b: str) -> list[tuple[int, int]]:
    """(index in style a, index in style b) of every seen one-code-point picture drawn in both."""
    index = {(e.code_points, e.style): i for i, e in enumerate(entries)}
    return [(index[(e.code_points, a)], index[(e.code_points, b)]) for e in entries
            if e.style == a and len(e.code_points) == 1 and not e.held_out
            and (e.code_points, b) in index and not entries[index[(e.code_points, b)]].held_out]


def half_mask(size: int, right: bool) -> torch.Tensor:
    """(1, H, W) bool: True on the right (or left) half, the part to repaint."""
    m = torch.zeros(1, size, size, dtype=torch.bool)
    if right:
        m[..., size // 2:] = True
    else:
        m[..., :size // 2] = True
    return m


def cut_side(x: torch.Tensor, side: str, cut: int) -> torch.Tensor:
    """(C, H, W) with ``cut`` px removed from ``side``."""
    return {"right": x[..., :-cut], "left": x[..., cut:], "bottom": x[..., :-cut, :],
            "top": x[..., cut:, :]}[side]


def on_white(x: torch.Tensor, side: str, cut: int) -> torch.Tensor:
    """A cut picture padded back to full size with white where it was cut."""
    c, h, w = x.shape
    h0, w0 = h + cut * (side in ("top", "bottom")), w + cut * (side in ("left", "right"))
    out = torch.full((c, h0, w0), 255, dtype=torch.uint8)
    top, left = cut * (side == "top"), cut * (side == "left")
    out[:, top:top + h, left:left + w] = x
    return out


def to_pil(x: torch.Tensor) -> Image.Image:
    return Image.fromarray(x.permute(1, 2, 0).numpy())


def to_uint8(images: list[Image.Image]) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)
                        for im in images])


def rates(recogniser: Recogniser, x: torch.Tensor, labels: dict[str, np.ndarray], concepts: list[int],
          styles: list[int]) -> dict[str, float]:
    """% of pictures with the concept of entry ``concepts[i]`` in the top 5 (top5), the style of
    entry ``styles[i]`` (style), and both (success)."""
    hits = score(recogniser, x, {"concept": labels["concept"][concepts], "style": labels["style"][styles],
                                 "tone": labels["tone"][concepts], "gender": labels["gender"][concepts]})
    ok = hits["top5"] & hits["style"]
    return {"success": 100 * float(ok.float().mean()), "top5": 100 * float(hits["top5"].float().mean()),
            "style": 100 * float(hits["style"].float().mean())}


def editing(pipe, recogniser: Recogniser, pictures: torch.Tensor, entries: list[EmojiEntry],
            labels: dict[str, np.ndarray], styles: tuple[str, ...], n: int, seed: int,
            sample_seed: int, steps: int, guidance: float | None) -> tuple[dict, torch.Tensor | None]:
    """The four edits of ``n`` cases (module docstring): {edit: {n, success, top5, style, kept,
    reference}} and a grid (uint8, rows of 8: sources, then each edit's results) or None."""
    if len(styles) < 2 or n < 1:
        return {}, None
    pairs = pairs_in_two_styles(entries, *styles[:2])
    rng = np.random.default_rng(seed + 1)
    picks = [pairs[j] for j in rng.choice(len(pairs), size=min(n, len(pairs)), replace=False)]
    src = [p[k % 2] for k, p in enumerate(picks)]
    other = [p[1 - k % 2] for k, p in enumerate(picks)]  # same concept, other style
    new = [src[(k + 1) % len(src)] if len(src) > 1 else src[0] for k in range(len(src))]
    # B for inpainting: the next case's concept, in this case's style
    style_of = {(entries[i].code_points, entries[i].style): i for p in picks for i in p}
    b = [style_of[(entries[new[k]].code_points, entries[src[k]].style)] for k in range(len(src))]
    size = pictures.shape[-1]
    cut = max(1, round(CUT * size / 32))
    out: dict[str, dict] = {}
    made: dict[str, torch.Tensor] = {}
    kw = {"num_inference_steps": steps, "guidance_scale": guidance}

    transferred, varied, outpainted, kept_out = [], [], [], []
    for k, i in enumerate(src):
        image = to_pil(pictures[i])
        transferred += pipe.img2img(image, entries[other[k]].caption, seed=sample_seed + k, **kw)
        varied += pipe.vary(image, num_images=1, seed=sample_seed + k, **kw)
        side = SIDES[k % len(SIDES)]
        part = cut_side(pictures[i], side, cut)
        result = pipe.outpaint(to_pil(part), **{side: cut}, prompt=entries[i].caption,
                               seed=sample_seed + k, **kw)[0]
        outpainted.append(result)
        kept_out.append(bool(torch.equal(cut_side(to_uint8([result])[0], side, cut), part)))

    masks = [half_mask(size, right=k % 2 == 0) for k in range(len(src))]
    painted = pipe.inpaint([to_pil(pictures[i]) for i in src],
                           [Image.fromarray(m[0].numpy().astype(np.uint8) * 255) for m in masks],
                           [entries[j].caption for j in b], seed=sample_seed, **kw)
    painted = to_uint8(list(painted))
    kept_in = [bool(torch.equal(p[:, ~m[0]], pictures[i][:, ~m[0]]))
               for p, m, i in zip(painted, masks, src, strict=True)]
    ideal = torch.stack([torch.where(m, pictures[j], pictures[i]) for m, i, j in zip(masks, src, b, strict=True)])
    alone = torch.stack([torch.where(m, p, torch.full_like(p, 255)) for m, p in zip(masks, painted, strict=True)])
    alone_ideal = torch.stack([torch.where(m, pictures[j], torch.full_like(pictures[j], 255))
                               for m, j in zip(masks, b, strict=True)])
    white = torch.stack([on_white(cut_side(pictures[i], SIDES[k % len(SIDES)], cut), SIDES[k % len(SIDES)], cut)
                         for k, i in enumerate(src)])

    cases = {  # edit: (results, concept wanted, style wanted, kept, reference pictures)
        "style transfer": (to_uint8(transferred), other, other, None, pictures[other]),
        "vary": (to_uint8(varied), src, src, None, pictures[src]),
        "inpaint": (painted, b, src, kept_in, ideal),
        "inpaint, half alone": (alone, b, src, None, alone_ideal),
        "outpaint": (to_uint8(outpainted), src, src, kept_out, white),
    }
    for name, (x, concepts, wanted, kept, reference) in cases.items():
        r = rates(recogniser, x, labels, concepts, wanted)
        out[name] = {"n": len(src), **r,
                     "reference": rates(recogniser, reference, labels, concepts, wanted)["success"]}
        if kept is not None:
            out[name]["kept"] = 100 * float(np.mean(kept))
        made[name] = x
    for name in ("inpaint", "inpaint, half alone"):  # the repaint only continued the kept half?
        out[name]["source_top5"] = rates(recogniser, made[name], labels, src, src)["top5"]
    rows = [pictures[src][:8]] + [made[name][:8] for name in cases if name != "inpaint, half alone"]
    return out, torch.cat(rows)
