"""Benchmarks of the deployed pipeline and of training (`python -m bench`, `pytest bench --benchmark-only`).

  cases     bundles, stage calls, inputs per batch, backends (eager: the PyTorch baseline)
  machine   host facts and the floors: read bandwidth, sgemm / onnxruntime MatMul peaks, peak RSS
  cost      bytes and flops of a stage, counted from its ONNX graph
  timing    interleaved rounds, median / p99, agreement of two halves of a run
  suite     one run over bundles -> results dict; rss: peak memory per backend in a fresh process
  targets   verdicts on the performance targets; report: JSON, markdown, PNG
  training  our cINN vs FrEIA training throughput
  compiled  the torch.compile (inductor) peer; paper: a paper-size flow, fp32 vs static int8, external data
  gpu       standalone script for an NVIDIA GPU: CUDA eager / CUDA graph / torch.compile per stage
"""
