"""The torch-free runtime: `runtime.Pipeline` runs a bundle written by `python -m export.onnx`.

Imports only numpy, onnxruntime, tokenizers, Pillow (the CLI) and, when present, tensorrt with
cuda-python or pycuda; never torch, transformers or sentence_transformers (a test enforces it).
"""
from runtime.manifest import SCHEMA_VERSION, PipelineError
from runtime.pipeline import Pipeline

__all__ = ["Pipeline", "PipelineError", "SCHEMA_VERSION"]
