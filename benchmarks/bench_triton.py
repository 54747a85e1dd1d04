"""Triton backend on CUDA, side by side with today's practice, the reference and the CUDA backend.

    python -m pytest benchmarks/bench_triton.py --benchmark-only --benchmark-group-by=group \
        [--benchmark-json triton.json]
    python benchmarks/bench_triton.py [--min-time 1.0] [--out benchmarks/results]  # table + JSON + PNG

Cases (the issue's targets): on the CIFAR ResNet50 prunable weights (23,467,712 fp32 w and g),
FORCE ``saliency_topk_masks`` at 0.5 % and 5 % density and Iter SNIP at 0.5 %, ``topk_masks`` on
precomputed scores, ``masked_sgd_`` (momentum 0.9, nesterov, weight decay); and FORCE at 0.5 %
on a 1 B-parameter transformer layer set (no reference row: it sorts 1 B values).
"today's practice" = per-layer |w*g|, ``torch.cat``, ``torch.topk``, ``>=`` per layer (selection)
and ``torch.optim.SGD(foreach=True)`` + a mask multiply (SGD), from ``sparseforce.bench``.
Skipped without a GPU; not collected by the test suite (testpaths = tests/).
"""
from __future__ import annotations

import math

import pytest
import torch

import sparseforce.ops as ops
from sparseforce import bench

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda")


def _impls(op: str, with_reference: bool = True) -> list[str]:
    """The implementations to time next to the baseline: reference, triton, and cuda if built."""
    available = ops.available_backends(DEVICE, op) if CUDA else []
    return [b for b in ("reference", "cuda", "triton") if b in available and (with_reference or b != "reference")]


def triton_cases() -> list[bench.Case]:
    if not CUDA:
        return []
    sel = _impls("saliency_topk_masks")
    return [
        bench.select_case("resnet50", 0.005, backends=sel),
        bench.select_case("resnet50", 0.05, backends=sel),
        bench.select_case("resnet50", 0.005, resurrect=False, backends=sel),
        bench.topk_case("resnet50", 0.005, backends=_impls("topk_masks")),
        bench.masked_sgd_case("resnet50", backends=_impls("masked_sgd_")),
        bench.select_case("transformer-1B", 0.005, backends=_impls("saliency_topk_masks", with_reference=False)),
    ]


CASES = triton_cases()
PARAMS = [pytest.param(c, impl, id=f"{c.name} [{impl}]") for c in CASES for impl in c.impls]


@pytest.mark.skipif(not CUDA, reason="the Triton benchmarks need a CUDA GPU")
@pytest.mark.parametrize("case,impl", PARAMS)
def test_triton_case(benchmark, case, impl):
    fn = case.make(impl, DEVICE)
    benchmark.group = case.name
    benchmark.extra_info.update(params=case.params, floor_bytes=case.floor_bytes, impl=impl)

    def timed():
        fn()
        torch.cuda.synchronize()

    benchmark.pedantic(timed, rounds=10, warmup_rounds=2)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds per implementation and case")
    parser.add_argument("--out", default="benchmarks/results", help="folder for the JSON and PNG")
    args = parser.parse_args()
    if not CUDA:
        raise SystemExit("the Triton benchmarks need a CUDA GPU")
    bench.run(device="cuda", cases=CASES, out_dir=args.out, min_time=args.min_time)
