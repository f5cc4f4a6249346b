"""The suite through pytest-benchmark: one benchmark per bundle x stage x backend x batch.

    .venv/bin/python -m pytest bench -q --benchmark-only [--bench-bundle DIR] [--bench-task NAME]

Bundles are discovered like `python -m bench` (manifest.json under engines/, or --bench-bundle). Backends
that cannot run skip with the reason. Each benchmark's extra_info carries the stage's floor (ms, bytes,
matmul flops) from machine floors measured once per session, so `--benchmark-json` output has both.
`pytest` on its own never collects this file (testpaths = ["tests"]).
"""
from __future__ import annotations

from functools import lru_cache

import pytest

from bench import machine
from bench.cases import BACKENDS, BundleData, Skip, discover, open_backend
from bench.suite import BATCHES, stage_floor


@lru_cache(maxsize=None)
def _data(bundle: str) -> BundleData:
    return BundleData(bundle)


@lru_cache(maxsize=None)
def _calls(bundle: str, backend: str, threads: int) -> dict | str:
    try:
        return open_backend(_data(bundle), backend, threads)
    except Skip as e:
        return str(e)


def pytest_generate_tests(metafunc):
    """One `case` per bundle x stage x backend x batch; a single skipped case when there are no bundles."""
    if "case" not in metafunc.fixturenames:
        return
    opt = metafunc.config.getoption
    bundles = discover(opt("--bench-bundle"), opt("--bench-task"))
    params = [pytest.param((str(b), stage, backend, batch), id=f"{_data(str(b)).name}-{stage}-{backend}-b{batch}")
              for b in bundles for stage in _data(str(b)).stages for backend in BACKENDS for batch in BATCHES]
    if not params:
        params = [pytest.param(None, marks=pytest.mark.skip(reason="no bundles: no manifest.json under engines/; "
                                                                   "pass --bench-bundle DIR"))]
    metafunc.parametrize("case", params)


@pytest.fixture(scope="session")
def floors():
    """The machine floors, measured once per session."""
    return machine.floors()


def test_stage(benchmark, case, floors, request):
    """Benchmark one stage call; the floor goes to extra_info."""
    bundle, stage, backend, batch = case
    threads = request.config.getoption("--bench-threads")
    calls = _calls(bundle, backend, threads)
    if isinstance(calls, str):
        pytest.skip(calls)
    if stage not in calls:
        pytest.skip(f"{backend} runs the same graph as ort-fp32 for {stage}")
    floor = stage_floor(_data(bundle), stage, batch, backend, floors, threads)
    if floor:
        benchmark.extra_info.update(floor_ms=floor["ms"], bytes=floor["bytes"], matmul_flops=floor["matmul_flops"])
    benchmark.extra_info.update(batch=batch, threads=threads)
    benchmark(calls[stage], _data(bundle).inputs(stage, batch))
