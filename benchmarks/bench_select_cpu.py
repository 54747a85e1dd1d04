"""CPU benchmark of the ``cpp`` backend against today's practice and the reference backend.

Cases (fp32 w and g, the CIFAR ResNet50 prunable weights: 23,467,712 in 54 tensors):
  * FORCE selection ``saliency_topk_masks`` at k = 0.5 % and 5 %, and Iter SNIP at 0.5 %;
  * ``masked_sgd_`` (momentum 0.9, nesterov, weight decay) on the same tensors.
Baselines: selection as the official FORCE code does it (per-layer |w*g|, ``torch.cat``,
``torch.topk``, ``>=`` per layer); SGD as ``torch.optim.SGD(foreach=True)`` followed by a mask
multiply.

    python -m pytest benchmarks/bench_select_cpu.py --benchmark-only --benchmark-group-by=group
    python benchmarks/bench_select_cpu.py [--reps 7] [--params 1e9]   # side-by-side table

The script interleaves the implementations round by round, so a machine shared with other work
slows all of them alike and the ratios stay meaningful. ``--params N`` adds a run on N
parameters (GPT-like 2048-wide layers) with each implementation's peak extra memory (RSS).
Not collected by the test suite (testpaths = tests/).
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import pytest
import torch
from torch import nn

import sparseforce.ops as ops
from sparseforce.models import resnet50

PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def resnet50_shapes() -> list[tuple[int, ...]]:
    with torch.device("meta"):  # shapes only
        model = resnet50()
    return [tuple(m.weight.shape) for m in model.modules() if isinstance(m, PRUNABLE)]


def wide_shapes(n_params: float, d: int = 2048) -> list[tuple[int, ...]]:
    blocks = max(1, round(n_params / (12 * d * d)))
    return [(3 * d, d), (d, d), (4 * d, d), (d, 4 * d)] * blocks


def tensors(shapes, seed, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen) * scale for s in shapes]


# ------------------------------------------------------------------------------- implementations

def baseline_select(weights, grads, k, prev_masks=None):
    """The official FORCE/Iter SNIP ``get_mask``: scores per layer, cat, topk, ``>=`` per layer."""
    if prev_masks is None:
        scores = [(w * g).abs() for w, g in zip(weights, grads)]
    else:
        scores = [(w * m * g).abs() for w, g, m in zip(weights, grads, prev_masks)]
    flat = torch.cat([s.flatten() for s in scores])
    threshold = torch.topk(flat, k, sorted=True).values[-1]
    return [s >= threshold for s in scores]


def select_impls(shapes, density, resurrect=True, impls=("baseline", "reference", "cpp")):
    w, g = tensors(shapes, 0), tensors(shapes, 1, 1e-3)
    n = sum(t.numel() for t in w)
    k = round(n * density)
    prev = None
    if not resurrect:
        gen = torch.Generator().manual_seed(2)
        prev = [torch.rand(s, generator=gen) < 0.5 for s in shapes]
        k = round(sum(int(m.sum()) for m in prev) * density)
    fns = {}
    for impl in impls:
        if impl == "baseline":
            fns[impl] = lambda: baseline_select(w, g, k, prev)
        elif impl == "cpp-op":  # the kernel alone, without sparseforce.ops' argument checks
            fns[impl] = lambda: torch.ops.sparseforce.saliency_topk_masks(w, g, k, [] if resurrect else prev,
                                                                          resurrect)
        else:
            fns[impl] = (lambda b: lambda: ops.saliency_topk_masks(w, g, k, prev_masks=prev, resurrect=resurrect,
                                                                   backend=b))(impl)
    return fns


def sgd_impls(shapes, impls=("baseline", "cpp")):
    hp = dict(lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    gen = torch.Generator().manual_seed(2)
    masks = [torch.rand(s, generator=gen) < 0.05 for s in shapes]
    fns = {}
    for impl in impls:
        p, g = tensors(shapes, 0), tensors(shapes, 1)
        if impl == "baseline":
            params = [nn.Parameter(x) for x in p]
            for q, gg in zip(params, g):
                q.grad = gg
            opt = torch.optim.SGD(params, foreach=True, **hp)
            opt.step()  # momentum buffers exist, as after a first real step

            def step(opt=opt, params=params):
                with torch.no_grad():
                    opt.step()
                    torch._foreach_mul_(params, masks)
            fns[impl] = step
        else:
            bufs = [torch.zeros_like(x) for x in p]
            fns[impl] = (lambda b, p=p, g=g, bufs=bufs:
                         lambda: ops.masked_sgd_(p, g, bufs, masks, backend=b, **hp))(impl)
    return fns


# ------------------------------------------------------------------------------- pytest-benchmark

SHAPES = None


def _shapes():
    global SHAPES
    if SHAPES is None:
        SHAPES = resnet50_shapes()
    return SHAPES


SELECT = [("force k=0.5%", 0.005, True), ("force k=5%", 0.05, True), ("itersnip k=0.5%", 0.005, False)]


@pytest.mark.parametrize("impl", ["baseline", "reference", "cpp"])
@pytest.mark.parametrize("name,density,resurrect", SELECT, ids=[c[0] for c in SELECT])
def test_select(benchmark, name, density, resurrect, impl):
    if impl != "baseline" and impl not in ops.available_backends("cpu"):
        pytest.skip(f"backend {impl} unavailable")
    fn = select_impls(_shapes(), density, resurrect, impls=(impl,))[impl]
    benchmark.group = f"resnet50 {name}"
    benchmark.pedantic(fn, rounds=5, warmup_rounds=1)


@pytest.mark.parametrize("impl", ["baseline", "cpp"])
def test_masked_sgd(benchmark, impl):
    if impl != "baseline" and impl not in ops.available_backends("cpu"):
        pytest.skip(f"backend {impl} unavailable")
    fn = sgd_impls(_shapes(), impls=(impl,))[impl]
    benchmark.group = "resnet50 masked_sgd_"
    benchmark.pedantic(fn, rounds=5, warmup_rounds=1)


# ------------------------------------------------------------------------------- side-by-side script

class PeakRSS:
    """Extra resident memory at the peak of a call (VmHWM, reset through /proc/self/clear_refs)."""

    @staticmethod
    def _kb(field):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        return 0

    def __enter__(self):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        self.base = self._kb("VmRSS")
        return self

    def __exit__(self, *exc):
        self.extra = max(0, self._kb("VmHWM") - self.base)


def side_by_side(fns: dict, reps: int) -> dict:
    for fn in fns.values():
        fn()  # warm-up
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def report(title, medians, base="baseline"):
    print(f"\n{title}")
    for name, t in medians.items():
        print(f"  {name:10s} {t * 1e3:10.1f} ms   {medians[base] / t:6.1f}x vs {base}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--params", type=float, default=0, help="also run FORCE selection at this many parameters")
    ap.add_argument("--no-reference", action="store_true", help="skip the (slow) reference backend")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with open("/proc/loadavg") as f:
        print(f"load average before: {f.read().split()[0]}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, backends {ops.available_backends('cpu')}")
    shapes = resnet50_shapes()
    print(f"ResNet50-CIFAR prunable weights: {sum(math.prod(s) for s in shapes):,} in {len(shapes)} tensors, fp32")
    impls = ("baseline", "cpp") if args.no_reference else ("baseline", "reference", "cpp")
    if "cpp" in ops.available_backends("cpu"):
        impls += ("cpp-op",)
    for name, density, resurrect in SELECT:
        report(f"saliency_topk_masks {name}", side_by_side(select_impls(shapes, density, resurrect, impls), args.reps))
    report("masked_sgd_ (momentum 0.9, nesterov, wd 5e-4)", side_by_side(sgd_impls(shapes), args.reps))
    if args.params:
        big = wide_shapes(args.params)
        n = sum(math.prod(s) for s in big)
        print(f"\nFORCE selection at {n:,} parameters (fp32 w, g: {8 * n / 2**30:.1f} GiB), k=0.5%")
        for impl in ("cpp", "baseline"):
            fn = select_impls(big, 0.005, True, impls=(impl,))[impl]
            try:
                with PeakRSS() as mem:
                    t = time.perf_counter()
                    fn()
                    t = time.perf_counter() - t
                print(f"  {impl:10s} {t:8.2f} s   peak extra memory {mem.extra / 2**30:6.2f} GiB")
            except (RuntimeError, MemoryError) as exc:
                print(f"  {impl:10s} failed: {str(exc).splitlines()[0]}")
            del fn


if __name__ == "__main__":
    sys.exit(main())
