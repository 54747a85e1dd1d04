"""pytest-benchmark suite over the same cases as ``sparseforce bench``.

    python -m pytest benchmarks/bench_cases.py --benchmark-only [--benchmark-json out.json]

Each case is parametrised over the baseline (today's practice) and every backend available on
the device; compare rows of one case within one run (``--benchmark-group-by=param:case``).
"""
import pytest
import torch

from sparseforce import bench
from sparseforce.bench_case import Unavailable

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CASES = bench.default_cases(DEVICE, full=False)
PARAMS = [pytest.param(c, impl, id=f"{c.name} [{impl}]") for c in CASES for impl in c.impls]


@pytest.mark.parametrize("case,impl", PARAMS)
def test_case(benchmark, case, impl):
    try:
        fn = case.make(impl, DEVICE)
    except Unavailable as e:  # e.g. sparsimony not installed: the bench's row says why, here a skip
        pytest.skip(str(e))
    benchmark.group = case.name
    benchmark.extra_info.update(params=case.params, floor_bytes=case.floor_bytes, impl=impl)
    sync = torch.cuda.synchronize if DEVICE.type == "cuda" else (lambda: None)

    def timed():
        fn()
        sync()

    rounds = 2 if case.kind == "end-to-end" else 5
    benchmark.pedantic(timed, rounds=rounds, warmup_rounds=1)
