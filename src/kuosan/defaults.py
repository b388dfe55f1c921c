"""Default settings that the Python API, the `kuosan` command and the web page share.

A module without heavy imports, so that the command's parser can read them without loading torch.
"""

import os
from pathlib import Path

VARY_STRENGTH = 0.4  # Pipeline.vary: kept shapes-32's source caption true in most variations (docs/editing.md)
IMG2IMG_STRENGTH = 0.7  # Pipeline.img2img: far enough to follow a new caption, near enough to keep the layout
STRENGTH = {"vary": VARY_STRENGTH, "img2img": IMG2IMG_STRENGTH}  # by edit mode (web page, /api/info)

# Images per batch of `kuosan generate` and the edits without --batch, by device type: on a CPU a
# batch of 16 already keeps the cores busy (64 was slower per image in fp32, no faster in bf16)
# and each finished batch is written at once; on a GPU a step of 16 small images is bound by
# kernel launches, not arithmetic (docs/speed.md)
GENERATE_BATCH = {"cpu": 16, "cuda": 256}


def cache_folder(name: str) -> Path:
    """Where kuosan keeps what it computes once (emoji pictures, the recogniser, Inception
    features, caption embeddings): ``$KUOSAN_CACHE/name``, else ``~/.cache/kuosan/name``."""
    return Path(os.environ.get("KUOSAN_CACHE") or Path.home() / ".cache" / "kuosan") / name
