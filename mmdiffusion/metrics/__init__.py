"""Distribution metrics for generated audio-video clips: FVD and KVD on I3D features, FAD on
audio embeddings. Pure PyTorch/numpy; ONNX Runtime is loaded only for the YAMNet embedder."""

from mmdiffusion.metrics.extractors import (
    ExtractorConfig,
    FeatureSource,
    I3DFeatures,
    audio_feature_source,
    build_audio_extractor,
    build_video_extractor,
    video_feature_source,
)
from mmdiffusion.metrics.frechet import GaussianStatistics, frechet_distance, frechet_distance_of_features
from mmdiffusion.metrics.mmd import PolynomialKernel, mmd2_unbiased

__all__ = [
    "ExtractorConfig",
    "FeatureSource",
    "GaussianStatistics",
    "I3DFeatures",
    "PolynomialKernel",
    "audio_feature_source",
    "build_audio_extractor",
    "build_video_extractor",
    "frechet_distance",
    "frechet_distance_of_features",
    "mmd2_unbiased",
    "video_feature_source",
]
