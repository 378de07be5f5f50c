"""Edge clients: train-step graphs exported from the torch definitions (``export``, needs
torch and onnx) and run by plain ONNX Runtime (``ort_learner``, numpy + onnxruntime only)."""
