"""One resolver for every command that takes a model: `sample`, `evaluate`, `promote`,
`train --init-from` and `train-sr --init-from` accept the same forms with the same errors.

- `path/model.safetensors`: one of our files (a released state dict saved as safetensors too);
- a checkpoint folder (`checkpoint-NNNNNNNN/`): its EMA weights (`weights="raw"`, or naming its
  `model.safetensors`, gives the optimizer's weights);
- a run folder (`OUTPUT/RUN_NAME/`): its latest checkpoint, as above;
- an MLflow model folder (holding `MLmodel`);
- `runs:/RUN_ID/PATH`, `models:/NAME/VERSION`, `models:/NAME@ALIAS`, `models:/m-<model id>`;
- a released `.pt`/`.pth` state dict, read with a named config of the expected kind.

Files and folders may be local or on object storage (`s3://...`); only the one weights file
is fetched. The local-file part is `mmdiffusion.checkpoint.load_local_model`, which works
without this package.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from mmdiffusion.bundle import KIND_KEY, BundledModel, ModelBundle, ModelKind, Weights
from mmdiffusion.checkpoint import SAFETENSORS_SUFFIX, check_kind, load_local_model, read_bundle, read_metadata
from pipeline.storage import resolve
from training.model_store import MLMODEL_FILE, weights_in_model_folder
from training.session import checkpoint_step
from training.state import EMA_FILE, MODEL_FILE

MODEL_FORMS = (
    "a .safetensors file, a checkpoint or run folder (EMA weights; name its model.safetensors for the raw ones), "
    "runs:/RUN_ID/PATH, models:/NAME/VERSION, models:/NAME@ALIAS, models:/m-<id>, "
    "or a released .pt/.pth checkpoint (with its named config)"
)
"""The accepted forms, as the commands' help and errors say them."""
_RUNS_URI = re.compile(r"^runs:/(?P<run>[^/]+)/.+$")
_MODELS_URI = re.compile(r"^models:/(?:(?P<id>m-[^/@]+)|(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[^/@]+)))$")
_WEIGHTS_FILES: dict[str, str] = {"ema": EMA_FILE, "raw": MODEL_FILE}


def resolve_model(
    uri: str | Path,
    kind: ModelKind | None,
    *,
    released_config: str | Any = "paper",
    weights: Weights = "ema",
    device: str = "cpu",
) -> BundledModel:
    """The model behind `uri` with its bundle, in eval mode on `device`.

    `kind` ("coupled_unet" or "sr_unet") is what the caller needs: another kind is an error
    naming both, and a released checkpoint is read as that kind, with `released_config` (a
    preset name or a config object). `weights` picks a checkpoint folder's EMA or raw weights.
    """
    source = str(uri)
    with tempfile.TemporaryDirectory(prefix="mmdiff-model-") as staging:
        local = _local_weights_file(source, Path(staging), weights)
        return load_local_model(local, kind, released_config=released_config, device=device, source=source)


def check_model_source(uri: str, kind: ModelKind, weights: Weights = "ema") -> None:
    """Fail early, without loading weights, on what can be checked cheaply: an unknown form,
    a file or folder that is not there, and the kind of a local file."""
    if _is_mlflow_uri(uri):
        _check_mlflow_form(uri)
        return
    filesystem, path = _filesystem(uri)
    chosen = _weights_path(filesystem, path, uri, weights)
    local = isinstance(filesystem, pafs.LocalFileSystem)
    if local and chosen.endswith(SAFETENSORS_SUFFIX) and KIND_KEY in read_metadata(chosen):
        check_kind(read_bundle(chosen, uri), kind, uri)


def model_source_run(uri: str, bundle: ModelBundle | None = None) -> str | None:
    """The MLflow run that produced the model: the run of a `runs:/` or `models:/` URI, else
    the training run its bundle names if this tracking server knows it, else None."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    if _is_mlflow_uri(uri):
        _check_mlflow_form(uri)
        runs, models = _RUNS_URI.match(uri), _MODELS_URI.match(uri)
        if runs:
            return runs["run"]
        assert models is not None
        if models["id"]:
            return client.get_logged_model(models["id"]).source_run_id
        if models["alias"]:
            return client.get_model_version_by_alias(models["name"], models["alias"]).run_id
        return client.get_model_version(models["name"], models["version"]).run_id
    run_id = None if bundle is None else bundle.provenance.run_id
    if run_id is None:
        return None
    try:
        client.get_run(run_id)
    except MlflowException:
        return None  # trained against another tracking server
    return run_id


# ---------------------------------------------------------------------- finding the file
def _is_mlflow_uri(uri: str) -> bool:
    return uri.startswith(("runs:/", "models:/"))


def _check_mlflow_form(uri: str) -> None:
    if not (_RUNS_URI.match(uri) or _MODELS_URI.match(uri)):
        raise ValueError(f"model {uri!r}: unknown URI form; expected {MODEL_FORMS}")


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    if ":/" in uri and "://" not in uri:
        raise ValueError(f"model {uri!r}: unknown URI form; expected {MODEL_FORMS}")
    try:
        return resolve(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        raise ValueError(f"model {uri!r}: unknown URI form ({error}); expected {MODEL_FORMS}") from None


def _local_weights_file(uri: str, staging: Path, weights: Weights) -> Path:
    """A local path to the weights file behind `uri`: the file itself when it is local, else
    a copy in `staging`."""
    if _is_mlflow_uri(uri):
        _check_mlflow_form(uri)
        import mlflow

        try:
            downloaded = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(staging))
        except Exception as error:  # MLflow raises several types for "not there"
            raise FileNotFoundError(f"model {uri!r}: cannot be downloaded from MLflow ({error})") from error
        return Path(_weights_path(pafs.LocalFileSystem(), downloaded, uri, weights))
    filesystem, path = _filesystem(uri)
    chosen = _weights_path(filesystem, path, uri, weights)
    if isinstance(filesystem, pafs.LocalFileSystem):
        return Path(chosen)
    copy = staging / chosen.rsplit("/", 1)[-1]
    with filesystem.open_input_stream(chosen) as remote, copy.open("wb") as local:
        shutil.copyfileobj(remote, local, length=16 << 20)
    return copy


def _weights_path(filesystem: pafs.FileSystem, path: str, uri: str, weights: Weights) -> str:
    """The weights file `path` names: itself, or the one its folder holds (see the module doc)."""
    info = filesystem.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"model {uri!r}: no such file or folder")
    if info.type == pafs.FileType.File:
        return path
    entries = {entry.base_name: entry.type for entry in filesystem.get_file_info(pafs.FileSelector(path))}
    if entries.get(MLMODEL_FILE) == pafs.FileType.File:
        with filesystem.open_input_stream(f"{path}/{MLMODEL_FILE}") as stream:
            candidates = weights_in_model_folder(stream.read().decode("utf-8"), uri)
        for candidate in candidates:
            if filesystem.get_file_info(f"{path}/{candidate}").type == pafs.FileType.File:
                return f"{path}/{candidate}"
        raise FileNotFoundError(f"model {uri!r}: its MLmodel names weights at {candidates[0]!r}, which are missing")
    wanted = _WEIGHTS_FILES[weights]
    if entries.get(wanted) == pafs.FileType.File:
        return f"{path}/{wanted}"
    checkpoints = sorted(
        (step, name)
        for name, kind in entries.items()
        if kind == pafs.FileType.Directory and (step := checkpoint_step(name)) is not None
    )
    for _, name in reversed(checkpoints):
        if filesystem.get_file_info(f"{path}/{name}/{wanted}").type == pafs.FileType.File:
            return f"{path}/{name}/{wanted}"
    raise FileNotFoundError(
        f"model {uri!r}: the folder holds no {wanted}, no checkpoint-NNNNNNNN folder with one, and no {MLMODEL_FILE}"
    )
