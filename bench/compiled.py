"""The peer a user would pick instead of the runtime: the same PyTorch modules under `torch.compile`.

Backend `pytorch-compile`: bench.eager's calls with each module call (τ, τ⁻¹, source / target encoder, target
decoder) wrapped in `torch.compile(backend="inductor", dynamic=False)` on the CPU (inductor writes C++ and
builds it with the system compiler), so every batch size gets its own specialised graph, the fastest form
for a fixed-shape server. Compilation happens on the first call of each stage at each input shape; that call's
time is recorded as the compile time (`info["compile_s"][stage][batch]`, the call itself included) and the
timing's warm-up keeps it out of the latency, as a deployed service would.
"""
from __future__ import annotations

import time

from bench.types import BundleData, Skip


def _compiler():
    import torch
    try:
        import torch._inductor  # noqa: F401
    except ImportError as e:                                   # pragma: no cover - part of torch >= 2.0
        raise Skip(f"torch.compile's inductor backend is not importable: {e}") from None
    return lambda fn: torch.compile(fn, backend="inductor", dynamic=False)


class CompiledCalls(dict):
    """stage -> callable, plus `info`: compile time of each stage's first call at each batch."""

    def __init__(self, calls: dict):
        self.info = {"compiler": "torch.compile(backend='inductor', dynamic=False), CPU", "compile_s": {}}
        super().__init__({stage: self._timed_first(stage, fn) for stage, fn in calls.items()})

    def _timed_first(self, stage: str, fn):
        seen = self.info["compile_s"].setdefault(stage, {})

        def call(x):
            batch = str(_batch_of(x))
            if batch in seen:
                return fn(x)
            t = time.perf_counter()
            out = fn(x)
            seen[batch] = time.perf_counter() - t
            return out
        return call


def _batch_of(x: dict) -> int:
    value = next(iter(x.values()))
    return len(value)


def compiled_calls(data: BundleData, threads: int = 1) -> CompiledCalls:
    """The `pytorch-compile` backend of one bundle (see the module docstring)."""
    from bench.eager import torch_calls  # lazy: torch loads only when this backend opens
    return CompiledCalls(torch_calls(data, threads, wrap=_compiler()))
