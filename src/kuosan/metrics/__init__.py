"""Sample-quality metrics: Fréchet distance / KID on features, and the digits evaluator."""

from kuosan.metrics.fid import feature_stats, frechet_distance, kid

__all__ = ["feature_stats", "frechet_distance", "kid"]
