"""Edge clients: train-step graphs exported from the torch definitions (``export``, needs torch
and onnxscript; ``mobile`` for ORT format), checked and cached by content hash (``cache``), and
run by plain ONNX Runtime (``OrtLearner``: numpy + onnxruntime only). See docs/edge.md."""

from cola_fed.edge.cache import GraphCache
from cola_fed.edge.graphs import GraphKey, content_hash, graph_keys
from cola_fed.edge.ort_learner import OrtLearner

__all__ = ["GraphCache", "GraphKey", "OrtLearner", "content_hash", "graph_keys"]
