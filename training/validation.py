"""Validation and samples while training: what rank 0 adds to the MLflow run as it trains.

Every `val_every` steps the held-out loss of the EMA weights, the model that is registered
(`val_loss`, `val_video_loss`, `val_audio_loss`, each per timestep quartile `_q0` … `_q3`), on
the first `val_clips` clips of the held-out split. It is evaluation's `held_out_loss`: fixed
timesteps (the middle of each quarter of the schedule) and noise seeded per clip, so two
validations of the same weights give the same numbers and the curve moves only when the
weights do. Every `sample_every` steps `sample_clips` clips drawn from the EMA weights
with DPM-Solver++ (`sample_steps` steps, the run's seed) go to the run as the files
`mmdiff sample` writes (mp4 with sound, frame and waveform PNGs) under `samples/step_NNNNNN/`.

Only rank 0 does this, between two steps, without any collective: the other workers wait at
the next step's all-reduce, and every rank still reports to Ray Train the same number of times.
Only the coupled U-Net is validated (the SR task logs none of it).
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from mmdiffusion.bundle import BundledModel, ModelBundle
from mmdiffusion.media import write_sample
from mmdiffusion.pipeline import MMDiffusionPipeline
from mmdiffusion.sampling import SamplerConfig
from training.config import TrainConfig
from training.evaluation import EvaluationConfig, EvaluationDataError, ReferenceClips, held_out_loss
from training.evaluation.reference import read_reference_clips
from training.tasks import Task
from training.tracking import MetricLogger

if TYPE_CHECKING:
    from training.loop import Trainee

log = logging.getLogger(__name__)

SAMPLER = "dpm-solver++"
VALIDATION_TAG = "mmdiff.validation"
"""Set on the run when validation cannot run (no held-out clips): why."""
TIMESTEPS_PER_QUARTILE = 1
"""One network evaluation per clip and quartile: validation stays cheap beside training."""


def sample_folder(step: int) -> str:
    """The run's artifact folder of the samples drawn after `step`."""
    return f"samples/step_{step:06d}"


def validation_timesteps(num_steps: int) -> tuple[int, ...]:
    """`TIMESTEPS_PER_QUARTILE` fixed timesteps in every quarter of a schedule of `num_steps`,
    each in the middle of its share (125, 375, 625, 875 of 1000)."""
    parts = 4 * TIMESTEPS_PER_QUARTILE
    return tuple((2 * k + 1) * num_steps // (2 * parts) for k in range(parts))


class TrainingWatch:
    """Rank 0's validation and samples; `after_step` does whatever is due at a step."""

    def __init__(self, config: TrainConfig, task: Task, bundle: ModelBundle, logger: MetricLogger) -> None:
        self.config = config
        self.task = task
        self.bundle = bundle
        self.logger = logger
        self.evaluation = EvaluationConfig(
            metrics=("val_loss",),
            num_samples=config.val_clips,
            loss_timesteps=validation_timesteps(task.diffusion.num_steps),
            noise_seed=config.seed,
            batch_size=config.batch_size,
        )
        self._clips: ReferenceClips | None = None
        self._validation_off = False

    @classmethod
    def for_worker(
        cls, config: TrainConfig, task: Task, bundle: ModelBundle, logger: MetricLogger, rank: int
    ) -> TrainingWatch | None:
        """The watch of rank 0 when the run asks for validation or samples, else None."""
        if rank != 0 or not (config.val_every or config.sample_every):
            return None
        if config.task != "coupled":
            log.warning("validation and samples while training are for the coupled U-Net; the SR run logs none")
            return None
        return cls(config, task, bundle, logger)

    def after_step(self, step: int, trainee: Trainee) -> None:
        if self.config.val_every and step % self.config.val_every == 0:
            self.validate(step, trainee.ema.model)
        if self.config.sample_every and step % self.config.sample_every == 0:
            self.sample(step, trainee.ema.model)

    # ------------------------------------------------------------------ held-out loss
    def held_out_clips(self) -> ReferenceClips | None:
        """The first `val_clips` clips of the held-out split, read once; None (said once, in the
        log and as the run's tag `mmdiff.validation`) when the split has none."""
        if self._clips is None and not self._validation_off:
            split = self.config.held_out_split()
            try:
                self._clips = read_reference_clips(
                    self.config.data, self.config.val_clips, split, self.task.sample_spec()
                )
            except EvaluationDataError as error:
                self._validation_off = True
                reason = (
                    f"no held-out loss: {error}. Validation is skipped for this run; a larger "
                    f"--held-out-share (now {split.held_out_share:g}) or more source videos give it clips"
                )
                log.warning(reason)
                self.logger.tag(VALIDATION_TAG, reason)
        return self._clips

    def validate(self, step: int, ema: nn.Module) -> dict[str, float]:
        """Log the held-out losses of the EMA network `ema` (always in eval mode)."""
        clips = self.held_out_clips()
        if clips is None:
            return {}
        started = time.perf_counter()
        metrics = held_out_loss(self._model(ema, step), clips, self.evaluation)
        metrics["val_seconds"] = time.perf_counter() - started
        self.logger.log(metrics, step=step)
        return metrics

    # ------------------------------------------------------------------ samples
    def sample(self, step: int, ema: nn.Module) -> None:
        """Draw `sample_clips` clips from the EMA network `ema` and log their files."""
        started = time.perf_counter()
        pipeline = MMDiffusionPipeline(self._model(ema, step), sampler=SamplerConfig(SAMPLER, self.config.sample_steps))
        clips = pipeline(self.config.sample_clips, seed=self.config.seed, batch_size=self.config.batch_size)
        with tempfile.TemporaryDirectory(prefix="mmdiff-samples-") as staging:
            for index in range(len(clips)):
                write_sample(Path(staging), index, clips.video[index], clips.audio[index], None)
            self.logger.log_artifacts(Path(staging), sample_folder(step))
        self.logger.log({"sample_seconds": time.perf_counter() - started}, step=step)

    def _model(self, ema: nn.Module, step: int) -> BundledModel:
        return BundledModel(ema, self.bundle.with_provenance(step=step, weights="ema"), f"the EMA at step {step}")
