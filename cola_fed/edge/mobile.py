"""ORT format: the flatbuffer model format ONNX Runtime Mobile loads (smaller, no protobuf
parser on the device). Torch-free: only onnxruntime."""

from __future__ import annotations

import tempfile
from pathlib import Path


def to_ort_format(model: bytes) -> bytes:
    """An ONNX train-step graph as an ORT-format model, with ONNX Runtime's basic (semantics-
    preserving) graph optimisations applied; every graph input stays an input."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.ort"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(path)
        options.add_session_config_entry("session.save_model_format", "ORT")
        ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        return path.read_bytes()
