"""The one source of the clip geometry used by the released MM-Diffusion models and data."""

FRAMES = 16
"""Video frames per clip."""

FPS = 10
"""Video frame rate of a clip, frames per second."""

IMAGE_SIZE = 64
"""Side of the square base-model frames, pixels."""

SR_IMAGE_SIZE = 256
"""Side of the square super-resolution frames, pixels."""

VIDEO_CHANNELS = 3
"""RGB."""

SAMPLE_RATE = 16_000
"""Audio samples per second of a clip."""

AUDIO_CHANNELS = 1
"""Mono audio."""

CLIP_SECONDS = FRAMES / FPS
"""Length of one clip in seconds (1.6)."""

AUDIO_SAMPLES = FRAMES * SAMPLE_RATE // FPS
"""Audio samples per clip (25,600)."""

SAMPLES_PER_FRAME = SAMPLE_RATE // FPS
"""Audio samples that cover one video frame (1,600)."""
