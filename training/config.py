"""The typed configuration of a training run (the `mmdiff train` / `train-sr` flags).

A YAML file may hold any subset of `TrainConfig`'s fields; flags given on the command line
override it. The model architecture is a named preset (`paper`, `small`, `tiny`) plus
`model_overrides`, so one file describes the whole run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mmdiffusion.bundle import ModelBundle, default_diffusion
from mmdiffusion.config import CoupledUNetConfig
from mmdiffusion.device import PRECISIONS, Precision
from mmdiffusion.diffusion import DiffusionConfig
from mmdiffusion.sr_unet import SuperResUNetConfig
from pipeline.credentials import prefix_problems
from pipeline.shard_format import DEFAULT_HELD_OUT_SHARE, DataSplit
from training.ema import EMASchedule
from training.loader import DEFAULT_DECODE_THREADS, DEFAULT_PREFETCH

Task = Literal["coupled", "sr"]
MODEL_PRESETS = ("paper", "small", "tiny")
GPU_WORKER_CPUS = 8
"""CPUs a GPU worker reserves by default for its input (decoding, shuffling, host copies):
8 fit the 90-96 vCPUs of an 8-GPU node (infra/), with some left for Ray's own processes."""


@dataclass(frozen=True)
class TrainConfig:
    data: str
    """Preprocessing output (holding `shards/`) or the shard folder itself; local or s3://."""
    output: str
    """Storage root for checkpoints and run files (Ray's `storage_path`); local or s3://."""
    task: Task = "coupled"
    model: str = "tiny"
    """Architecture preset: paper, small or tiny."""
    model_overrides: dict[str, Any] = field(default_factory=dict)
    diffusion_overrides: dict[str, Any] = field(default_factory=dict)
    workers: int | tuple[int, int] = 1
    """Number of workers, or (min, max) for elastic training."""
    gpus: bool = False
    cpus_per_worker: float | None = None
    """CPUs each worker reserves (Ray sets its OMP_NUM_THREADS to them); None: 1 for a CPU
    worker, `GPU_WORKER_CPUS` for a GPU worker."""
    steps: int = 1000
    """Optimizer steps in total (a resumed run continues up to this count)."""
    batch_size: int = 4
    """Clips per worker per micro-batch."""
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping."""
    precision: Precision = "auto"
    """Autocast: auto is bf16 on a CUDA device that supports it, fp32 elsewhere (`mmdiffusion.device`)."""
    ema_rate: float = EMASchedule.rate
    """The EMA's decay once warmed up (docs/training.md)."""
    ema_warmup: bool = EMASchedule.warmup
    """Grow the decay as 1 − (1 + k / ema_inv_gamma) ** −ema_power, k the updates after the first."""
    ema_inv_gamma: float = EMASchedule.inv_gamma
    ema_power: float = EMASchedule.power
    ema_update_after_step: int = EMASchedule.update_after_step
    ema_min_decay: float = EMASchedule.min_decay
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    shuffle_buffer: int = 64
    flip: bool = True
    prefetch: int = DEFAULT_PREFETCH
    """Batches the loader makes ahead of the step in a background thread; 0: in the training thread."""
    decode_threads: int = DEFAULT_DECODE_THREADS
    """Threads decoding samples for the prefetching thread."""
    sr_frames_per_clip: int = 1
    """SR training: frames drawn from each clip per batch, picked by the loader before decoding."""
    held_out_share: float = DEFAULT_HELD_OUT_SHARE
    """Share of the source videos held out from training (`pipeline.shard_format.DataSplit`):
    training reads the others only; evaluation and validation read these."""
    filter: str | None = None
    """Train only on the manifest rows this expression keeps (`training.selection`), e.g.
    `audio_rms_db > -50 and scene_cuts == 0 and duplicate_of is null`; checked against the
    manifest's columns before any worker starts."""
    seed: int = 0
    run_name: str = "mmdiff-train"
    experiment: str = "mmdiffusion"
    register_as: str | None = None
    init_from: str | None = None
    """Starting weights: any model `training.resolver` takes (a released checkpoint is read
    with this run's model config; a checkpoint or run folder gives its EMA weights)."""
    tracking_uri: str | None = None
    """MLflow tracking URI; None: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here."""
    max_failures: int = 3
    shared_filesystem: bool = False
    """Local `data`/`output` paths are on a filesystem every node mounts (NFS, Lustre, EFS):
    allowed on a cluster of several nodes, where local paths are refused otherwise."""
    forward_env: tuple[str, ...] = ()
    """Prefixes of driver environment variables handed to the workers besides the standard
    ones (`training.run.FORWARDED_ENVIRONMENT_PREFIXES`); credentials never are."""
    max_nonfinite: int = 10
    """Stop after this many consecutive steps with a NaN or infinite loss."""

    def __post_init__(self) -> None:
        problems = []
        if self.task not in ("coupled", "sr"):
            problems.append(f"task must be 'coupled' or 'sr', got {self.task!r}")
        if self.model not in MODEL_PRESETS:
            problems.append(f"model must be one of {MODEL_PRESETS}, got {self.model!r}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be fp32, bf16 or fp16 (or auto), got {self.precision!r}")
        if self.cpus_per_worker is not None and not self.cpus_per_worker > 0:
            problems.append(f"cpus_per_worker must be positive, got {self.cpus_per_worker}")
        for name in (
            "steps",
            "batch_size",
            "grad_accum",
            "log_every",
            "checkpoint_every",
            "keep_checkpoints",
            "shuffle_buffer",
            "sr_frames_per_clip",
            "max_nonfinite",
            "decode_threads",
        ):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.prefetch < 0:
            problems.append(f"prefetch must be at least 0, got {self.prefetch}")
        problems.extend(self.ema_schedule().problems())
        problems.extend(prefix_problems(self.forward_env))
        if self.lr <= 0:
            problems.append(f"lr must be positive, got {self.lr}")
        if not 0.0 <= self.held_out_share < 1.0:
            problems.append(f"held_out_share must lie in [0, 1), got {self.held_out_share}")
        low, high = self.worker_range
        if not 1 <= low <= high:
            problems.append(f"workers must be N >= 1 or MIN:MAX with 1 <= MIN <= MAX, got {self.workers}")
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))
        try:  # bad overrides, or a diffusion that does not fit the network
            ModelBundle.describe(self.model_config(), self.diffusion_config())
        except (TypeError, ValueError) as error:
            raise ValueError(f"invalid training config: {error}") from None

    @property
    def worker_range(self) -> tuple[int, int]:
        if isinstance(self.workers, int):
            return self.workers, self.workers
        if isinstance(self.workers, tuple) and len(self.workers) == 2:
            return self.workers
        return 0, 0  # not a count or a (min, max) pair: reported as invalid

    @property
    def worker_cpus(self) -> float:
        """The CPUs each worker reserves."""
        if self.cpus_per_worker is not None:
            return self.cpus_per_worker
        return GPU_WORKER_CPUS if self.gpus else 1

    def model_config(self) -> CoupledUNetConfig | SuperResUNetConfig:
        config_class = CoupledUNetConfig if self.task == "coupled" else SuperResUNetConfig
        return config_class.named(self.model, **_tuples(self.model_overrides))

    def ema_schedule(self) -> EMASchedule:
        return EMASchedule(
            rate=self.ema_rate,
            warmup=self.ema_warmup,
            inv_gamma=self.ema_inv_gamma,
            power=self.ema_power,
            update_after_step=self.ema_update_after_step,
            min_decay=self.ema_min_decay,
        )

    def training_split(self) -> DataSplit:
        return DataSplit("train", self.held_out_share)

    def held_out_split(self) -> DataSplit:
        return DataSplit("held_out", self.held_out_share)

    def diffusion_config(self) -> DiffusionConfig:
        """The released diffusion for the network (the SR model predicts its variance too and
        trains on the hybrid loss), with `diffusion_overrides`."""
        return dataclasses.replace(default_diffusion(self.model_config()), **self.diffusion_overrides)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training config fields: {unknown}; known: {sorted(known)}")
        values = dict(values)
        if isinstance(values.get("forward_env"), (list, str)):
            given = values["forward_env"]
            values["forward_env"] = (given,) if isinstance(given, str) else tuple(given)
        if isinstance(values.get("workers"), list):
            values["workers"] = tuple(values["workers"])
        elif isinstance(values.get("workers"), str):
            values["workers"] = parse_workers(values["workers"])
        return cls(**values)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The fields of a YAML config file, checked to be a mapping."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"config file {path} must hold a mapping of TrainConfig fields, got {type(values).__name__}")
    return values


def parse_workers(text: str) -> int | tuple[int, int]:
    """`N` or `MIN:MAX`."""
    try:
        if ":" in text:
            low, high = text.split(":", 1)
            return int(low), int(high)
        return int(text)
    except ValueError:
        raise ValueError(f"--workers must be N or MIN:MAX, got {text!r}") from None


def _tuples(values: dict[str, Any]) -> dict[str, Any]:
    """YAML gives lists where the model configs hold tuples."""
    return {key: tuple(value) if isinstance(value, list) else value for key, value in values.items()}
