"""vimdeploy: Vision Mamba (Vim) checkpoints to validated ONNX / TensorRT inference engines."""

__version__ = "0.1.0"
