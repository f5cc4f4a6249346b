"""Export: trained tasks -> bundles (`python -m export.onnx`), bundles -> TensorRT engines
(`python -m export.trt`). The bundle format lives in `runtime.manifest`, shared with the runtime."""
