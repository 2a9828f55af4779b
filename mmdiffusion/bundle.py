"""What a model is besides its weights: the model bundle.

A `ModelBundle` names the network (its kind and config), the diffusion process it was trained
with, and where it came from (`Provenance`: training run, data manifest, step, EMA or raw
weights, or the released file it was read from). It travels with the weights in the
safetensors metadata (`mmdiffusion.checkpoint`) and so inside every logged MLflow model:
loading a model gives back everything needed to sample it exactly as it was trained.

A `BundledModel` is a network together with its bundle: what the loaders return and what the
sampling pipeline and the evaluation take.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import torch
from torch import nn

from mmdiffusion.config import dataclass_from_dict
from mmdiffusion.diffusion import DiffusionConfig, GaussianDiffusion

log = logging.getLogger(__name__)

ModelKind = Literal["coupled_unet", "sr_unet"]
Weights = Literal["ema", "raw"]
DiffusionOrigin = Literal["saved", "default"]

# kind -> (module, model class, config class). Imported lazily so each model stays optional.
MODEL_KINDS: dict[str, tuple[str, str, str]] = {
    "coupled_unet": ("mmdiffusion.unet", "CoupledUNet", "CoupledUNetConfig"),
    "sr_unet": ("mmdiffusion.sr_unet", "SuperResUNet", "SuperResUNetConfig"),
}
_CONFIG_MODULES = {"coupled_unet": "mmdiffusion.config", "sr_unet": "mmdiffusion.sr_unet"}
KIND_NAMES: dict[str, str] = {"coupled_unet": "a coupled U-Net", "sr_unet": "an SR U-Net"}
"""How messages name each kind."""

KIND_KEY = "mmdiffusion_kind"
NETWORK_KEY = "config"
DIFFUSION_KEY = "diffusion"
PROVENANCE_KEY = "provenance"
"""Safetensors metadata keys. Files written before bundles existed hold only the first two."""


def _check_kind(kind: str) -> None:
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; known: {sorted(MODEL_KINDS)}")


def model_class(kind: str) -> type[nn.Module]:
    _check_kind(kind)
    module, model_name, _ = MODEL_KINDS[kind]
    return getattr(importlib.import_module(module), model_name)


def config_class(kind: str) -> type:
    _check_kind(kind)
    return getattr(importlib.import_module(_CONFIG_MODULES[kind]), MODEL_KINDS[kind][2])


def model_kind(model_or_config: Any) -> ModelKind:
    """The kind of a model or a config object."""
    name = type(model_or_config).__name__
    for kind, (_, model_name, config_name) in MODEL_KINDS.items():
        if name in (model_name, config_name):
            return kind  # type: ignore[return-value]
    raise TypeError(f"{name} is not a model or config this library knows")


def build_model(config: Any) -> nn.Module:
    """The model a config object describes."""
    return model_class(model_kind(config))(config)


def default_diffusion(network_config: Any) -> DiffusionConfig:
    """The released diffusion process (1000 linear steps), with a learned variance exactly when
    the network predicts one: what a network that records no diffusion is taken to use."""
    return DiffusionConfig(learn_sigma=network_config.learn_sigma)


@dataclass(frozen=True)
class Provenance:
    """Where a model's weights come from. Every field is optional: None means not known."""

    run_id: str | None = None
    """The MLflow run that trained them."""
    data_manifest_sha256: str | None = None
    """SHA-256 of the training data's manifest.parquet ("missing" when the data had none)."""
    step: int | None = None
    """Optimizer steps taken."""
    weights: Weights | None = None
    """`ema` (the moving average, what sampling wants) or `raw` (the optimizer's weights)."""
    initialised_from: str | None = None
    """The model the training run started from (its `--init-from`)."""
    released_from: str | None = None
    """The released checkpoint file the weights were read from."""
    held_out_share: float | None = None
    """The share of source videos the training run held out (hashed by source URI): the
    clips that evaluation of this model should use."""
    diffusion_origin: DiffusionOrigin = "saved"
    """`saved`: the diffusion was stated by whoever saved the weights. `default`: nobody stated
    it and it is `default_diffusion` (a file written before bundles existed, a released
    checkpoint, or `save_model` called without a bundle)."""

    def __post_init__(self) -> None:
        if self.weights not in (None, "ema", "raw"):
            raise ValueError(f"provenance weights must be 'ema', 'raw' or None, got {self.weights!r}")
        if self.diffusion_origin not in ("saved", "default"):
            raise ValueError(f"diffusion_origin must be 'saved' or 'default', got {self.diffusion_origin!r}")


@dataclass(frozen=True)
class ModelBundle:
    """A network's kind and config, its diffusion process, and its provenance."""

    kind: ModelKind
    network: Any
    """A `CoupledUNetConfig` or `SuperResUNetConfig`."""
    diffusion: DiffusionConfig
    provenance: Provenance = field(default_factory=Provenance)

    def __post_init__(self) -> None:
        _check_kind(self.kind)
        if model_kind(self.network) != self.kind:
            raise ValueError(f"a {type(self.network).__name__} does not describe {KIND_NAMES[self.kind]}")
        if self.diffusion.learn_sigma != self.network.learn_sigma:
            raise ValueError(
                f"diffusion learn_sigma={self.diffusion.learn_sigma} does not fit {KIND_NAMES[self.kind]} whose "
                f"output {'has' if self.network.learn_sigma else 'lacks'} variance channels: "
                + _variance_hint(self.kind, self.diffusion.learn_sigma)
            )

    @classmethod
    def describe(
        cls, network: Any, diffusion: DiffusionConfig | None = None, provenance: Provenance | None = None
    ) -> ModelBundle:
        """The bundle of a network config; without `diffusion`, `default_diffusion` (and the
        provenance says so)."""
        provenance = provenance or Provenance()
        if diffusion is None:
            diffusion = default_diffusion(network)
            provenance = dataclasses.replace(provenance, diffusion_origin="default")
        return cls(model_kind(network), network, diffusion, provenance)

    def with_provenance(self, **changes: Any) -> ModelBundle:
        return dataclasses.replace(self, provenance=dataclasses.replace(self.provenance, **changes))

    def build_network(self) -> nn.Module:
        return model_class(self.kind)(self.network)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "network": self.network.to_dict(),
            "diffusion": dataclasses.asdict(self.diffusion),
            "provenance": dataclasses.asdict(self.provenance),
        }

    def to_metadata(self) -> dict[str, str]:
        """The safetensors metadata (string to string) that carries the bundle."""
        values = self.to_dict()
        return {
            KIND_KEY: self.kind,
            NETWORK_KEY: json.dumps(values["network"]),
            DIFFUSION_KEY: json.dumps(values["diffusion"]),
            PROVENANCE_KEY: json.dumps(values["provenance"]),
        }

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str], source: str) -> ModelBundle:
        """The bundle in a file's metadata. A file written before bundles existed has no
        diffusion: it gets `default_diffusion`, marked in its provenance and logged."""
        if KIND_KEY not in metadata or NETWORK_KEY not in metadata:
            raise ValueError(
                f"{source} is not an mmdiffusion checkpoint (its metadata lacks the model kind and config)"
            )
        kind = metadata[KIND_KEY]
        try:
            network = config_class(kind).from_dict(json.loads(metadata[NETWORK_KEY]))
            provenance = dataclass_from_dict(Provenance, json.loads(metadata.get(PROVENANCE_KEY, "{}")))
            if DIFFUSION_KEY in metadata:
                return cls(
                    kind, network, dataclass_from_dict(DiffusionConfig, json.loads(metadata[DIFFUSION_KEY])), provenance
                )  # type: ignore[arg-type]
        except (json.JSONDecodeError, TypeError) as error:
            raise ValueError(f"{source}: unreadable model bundle in its metadata ({error})") from None
        bundle = cls.describe(network, None, provenance)
        log.warning(
            "%s records no diffusion process (written before model bundles): using the default for %s (%s)",
            source,
            KIND_NAMES[kind],
            describe_diffusion(bundle.diffusion),
        )
        return bundle


def describe_diffusion(config: DiffusionConfig) -> str:
    variance = "learned variance" if config.learn_sigma else config.fixed_variance
    return f"{config.steps} {config.schedule} steps, {variance}, predicts {config.prediction}"


def describe_bundle(bundle: ModelBundle) -> str:
    """One line for people: the kind, the diffusion (and whether it was assumed), provenance."""
    provenance = bundle.provenance
    assumed = " (the default: the weights record none)" if provenance.diffusion_origin == "default" else ""
    parts = [KIND_NAMES[bundle.kind], f"diffusion {describe_diffusion(bundle.diffusion)}{assumed}"]
    if provenance.released_from:
        parts.append(f"released checkpoint {provenance.released_from}")
    if provenance.run_id:
        parts.append(f"run {provenance.run_id}")
    if provenance.step is not None:
        parts.append(f"step {provenance.step}")
    if provenance.weights:
        parts.append(f"{provenance.weights} weights")
    return ", ".join(parts)


def _variance_hint(kind: str, learn_sigma: bool) -> str:
    if kind == "sr_unet":
        return f"give the SR U-Net out_channels {'2 × in_channels' if learn_sigma else 'in_channels'}"
    if learn_sigma:
        return "give the coupled U-Net video_out_channels 2 × video_channels and audio_out_channels 2 × audio_channels"
    return "give the coupled U-Net video_out_channels = video_channels and audio_out_channels = audio_channels"


@dataclass
class BundledModel:
    """A network and its bundle; `source` names where it was loaded from, for messages."""

    network: nn.Module
    bundle: ModelBundle
    source: str = "the given network"

    def __post_init__(self) -> None:
        config = getattr(self.network, "config", None)
        if config != self.bundle.network:
            raise ValueError(f"{self.source}: the network's config is not the one its bundle describes")

    @classmethod
    def of(cls, network: nn.Module, diffusion: DiffusionConfig | None = None, **provenance: Any) -> BundledModel:
        """A network in hand, with its diffusion (default: `default_diffusion`, so marked)."""
        return cls(network, ModelBundle.describe(network.config, diffusion, Provenance(**provenance)))  # type: ignore[attr-defined]

    @cached_property
    def diffusion(self) -> GaussianDiffusion:
        return GaussianDiffusion(self.bundle.diffusion)

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def to(self, device: str | torch.device) -> BundledModel:
        self.network.to(device)
        return self
