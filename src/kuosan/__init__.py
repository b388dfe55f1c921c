"""kuosan (扩散, "diffusion"): diffusion-model image generation on PyTorch."""

from .errors import KuosanError
from .samplers import sample
from .schedule import NoiseSchedule

__version__ = "0.1.0"

__all__ = ["KuosanError", "NoiseSchedule", "__version__", "sample"]
