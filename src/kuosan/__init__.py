"""kuosan (扩散, "diffusion"): diffusion-model image generation on PyTorch."""

__version__ = "0.1.0"

from .errors import KuosanError
from .pipeline import Pipeline
from .samplers import SAMPLERS, invert, sample
from .schedule import NoiseSchedule

__all__ = ["SAMPLERS", "KuosanError", "NoiseSchedule", "Pipeline", "__version__", "invert", "sample"]
