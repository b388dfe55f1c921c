"""Moved: the text-conditioned UNet is :mod:`kuosan.models.conditional`; this name is kept so
older code keeps importing."""

import warnings

from .models.conditional import (  # noqa: F401
    CAPTION_MAPS,
    TextConditionedUNet,
    build_text_conditioned,
    drop_captions,
    fold_empty_caption,
    make_text_encoder,
    reads_caption,
)

warnings.warn("kuosan.conditional moved to kuosan.models.conditional", DeprecationWarning,
              stacklevel=2)
