"""Options of the pytest-benchmark suite (`python -m pytest bench --benchmark-only`); not used by tests/."""


def pytest_addoption(parser):
    """--bench-bundle / --bench-task / --bench-threads for bench/test_bench.py."""
    group = parser.getgroup("bench", "net2net bundle benchmarks")
    group.addoption("--bench-bundle", action="append", default=None,
                    help="bundle folder to benchmark (repeatable; default: every bundle under engines/)")
    group.addoption("--bench-task", default=None, help="only bundles of this task")
    group.addoption("--bench-threads", type=int, default=1, help="onnxruntime / torch intra-op threads")
