"""Benchmark cases and the runner behind ``sparseforce bench``.

Every case is timed for the baseline (how pruning code does it today), for our ``reference``
backend, and for every faster backend available on the device, side by side in one run, next to
the memory-bandwidth floor measured in the same run. The pytest-benchmark suites in
``benchmarks/`` time the same cases.

Baseline ("today's practice", the official FORCE code's ``get_mask``): per-layer |w·g|,
``torch.cat``, ``torch.topk``, then a ``>=`` compare per layer. It keeps every tie, so it is not
even exact; it is the speed to beat.
"""
from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import json
import math
import platform
import statistics
import subprocess
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from . import bench_compat, ops
from .bench_case import Case, Unavailable, text_table
from .bench_dst import dst_cases, format_update_cost
from .bench_memory import PeakMemory, available_bytes, fmt_time, skip_row
from .bench_models import WIDE_DEPTH, WIDE_WIDTH, wide_mlp, wide_mlp_params
from .bench_segmented import segmented_cases

# ------------------------------------------------------------------------------------- layer sets


def _weight_shapes(model_fn) -> list[tuple[int, ...]]:
    from ._prunable import prunable_parameters
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = model_fn()
    return [tuple(p.shape) for p in prunable_parameters(model, check_nan=False).values()]


def transformer_shapes(n_params: float, d_model: int) -> list[tuple[int, ...]]:
    """A GPT-style stack (qkv, out-proj, two MLP matrices per block), 12·d² weights per block."""
    blocks = max(1, round(n_params / (12 * d_model * d_model)))
    block = [(3 * d_model, d_model), (d_model, d_model), (4 * d_model, d_model), (d_model, 4 * d_model)]
    return block * blocks


def layer_set(name: str) -> list[tuple[int, ...]]:
    from .models import resnet50, vgg19_bn
    if name == "resnet50":
        return _weight_shapes(resnet50)
    if name == "vgg19":
        return _weight_shapes(vgg19_bn)
    if name == "transformer-1B":
        return transformer_shapes(1e9, 2048)
    if name == "transformer-4B":
        return transformer_shapes(4e9, 4096)
    if name == "linear-4096":  # one square Linear weight, for the per-row and N:M cases
        return [(4096, 4096)]
    if "/" in name:  # a scaled-down copy for quick runs: every layer's output channels / factor
        base, f = name.rsplit("/", 1)
        return [(max(1, s[0] // int(f)),) + s[1:] for s in layer_set(base)]
    raise ValueError(f"unknown layer set {name!r}")


# ------------------------------------------------------------------------------------- the cases

def _randn(shapes, dtype, device, seed):
    gen = torch.Generator(device=device).manual_seed(seed)
    return [torch.randn(s, generator=gen, device=device, dtype=torch.float32).to(dtype) for s in shapes]


def baseline_select(weights, grads, k, prev_masks=None):
    """The official FORCE ``get_mask``: scores per layer, cat, topk, ``>=`` per layer."""
    if prev_masks is None:
        scores = [(w * g).abs() for w, g in zip(weights, grads)]
    else:
        scores = [(w * m * g).abs() for w, g, m in zip(weights, grads, prev_masks)]
    flat = torch.cat([s.flatten() for s in scores])
    threshold = torch.topk(flat, k, sorted=True).values[-1]
    return [s >= threshold for s in scores]


def baseline_topk(scores, k):
    flat = torch.cat([s.flatten() for s in scores])
    threshold = torch.topk(flat, k, sorted=True).values[-1]
    return [s >= threshold for s in scores]


def select_case(layers: str, density: float, dtype=torch.float32, resurrect=True, backends=()) -> Case:
    shapes = layer_set(layers)
    n = sum(math.prod(s) for s in shapes)
    k = max(1, round(n * density))
    elt = torch.empty(0, dtype=dtype).element_size()
    method = "force" if resurrect else "itersnip"

    def make(impl, device):
        w, g = _randn(shapes, dtype, device, 0), _randn(shapes, dtype, device, 1)
        prev = None
        if not resurrect:
            gen = torch.Generator(device=device).manual_seed(2)
            prev = [torch.rand(s, generator=gen, device=device) < 0.5 for s in shapes]
        if impl == "baseline":
            return lambda: baseline_select(w, g, k, prev)
        out = [torch.empty(s, dtype=torch.bool, device=device) for s in shapes]
        return lambda: ops.saliency_topk_masks(w, g, k, prev_masks=prev, resurrect=resurrect, out=out,
                                               backend=impl)

    # two passes over w and g at least (histogram, then mask), one bool write
    return Case(f"{method}-select {layers} {str(dtype)[6:]} k={density:.1%}", layers, dtype, n,
                n * (4 * elt + 1), ["baseline", *backends], make)


def topk_case(layers: str, density: float, backends=()) -> Case:
    shapes = layer_set(layers)
    n = sum(math.prod(s) for s in shapes)
    k = max(1, round(n * density))

    def make(impl, device):
        scores = [t.abs() for t in _randn(shapes, torch.float32, device, 0)]
        if impl == "baseline":
            return lambda: baseline_topk(scores, k)
        out = [torch.empty(s, dtype=torch.bool, device=device) for s in shapes]
        return lambda: ops.topk_masks(scores, k, out=out, backend=impl)

    # one pass over the scores to find the threshold, one to write the masks
    return Case(f"topk {layers} float32 k={density:.1%}", layers, torch.float32, n, n * (2 * 4 + 1),
                ["baseline", *backends], make)


MASKED_SGD = "MaskedSGD"  # the optimizer class (backend "auto") beside its kernel's backends


def masked_sgd_case(layers: str, backends=()) -> Case:
    """One step of SGD (momentum 0.9, Nesterov, weight decay 5e-4) on the layers' weights under 5 %
    random masks: ``torch.optim.SGD(foreach=True)`` then a mask multiply (the baseline), our kernel
    on every backend, and the ``MaskedSGD`` optimizer as a training loop calls it (target: within
    1.5x the baseline)."""
    shapes = layer_set(layers)
    n = sum(math.prod(s) for s in shapes)
    hp = dict(lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)

    def make(impl, device):
        p, g = _randn(shapes, torch.float32, device, 0), _randn(shapes, torch.float32, device, 1)
        gen = torch.Generator(device=device).manual_seed(2)
        masks = [torch.rand(s, generator=gen, device=device) < 0.05 for s in shapes]
        if impl == "baseline":
            params = [torch.nn.Parameter(x) for x in p]
            for q, gg in zip(params, g):
                q.grad = gg
            opt = torch.optim.SGD(params, foreach=True, **hp)
            opt.step()  # creates the momentum buffers, as after the first real step

            @torch.no_grad()
            def step():
                opt.step()
                torch._foreach_mul_(params, masks)
            return step
        if impl == MASKED_SGD:
            from .optim import MaskedSGD
            named = [(f"w{i}", torch.nn.Parameter(x)) for i, x in enumerate(p)]
            for (_, q), gg in zip(named, g):
                q.grad = gg
            opt = MaskedSGD(named, {name: m for (name, _), m in zip(named, masks)}, **hp)
            opt.step()  # creates the momentum buffers, as for the baseline
            return opt.step
        bufs = [torch.zeros_like(x) for x in p]
        return lambda: ops.masked_sgd_(p, g, bufs, masks, backend=impl, **hp)

    # read p, g, buf, mask; write p, buf
    return Case(f"masked-sgd {layers}", layers, torch.float32, n, n * 21, ["baseline", *backends, MASKED_SGD], make)


def _force_official(model, batch, sparsity, iterations):
    """The official FORCE loop's structure: a fresh deep copy of the model at every step,
    masks applied to the copy's weights, ``.backward()``, then cat/topk/``>=``."""
    from ._prunable import prunable_parameters
    from .pruning.schedules import keep_counts
    names = list(prunable_parameters(model))
    theta0 = [p.detach().clone() for p in prunable_parameters(model).values()]
    n = sum(w.numel() for w in theta0)
    masks = [torch.ones_like(w, dtype=torch.bool) for w in theta0]
    x, y = batch
    for k in keep_counts(n, sparsity, iterations):
        net = copy.deepcopy(model).train()
        params = prunable_parameters(net)
        with torch.no_grad():
            for name, w0, m in zip(names, theta0, masks):
                params[name].mul_(m)
        net.zero_grad()
        F.cross_entropy(net(x), y).backward()
        grads = [params[name].grad for name in names]
        masks = baseline_select(theta0, grads, k)
    return masks


def _model_name(model_name: str, scale: int) -> str:
    return model_name if scale == 1 else f"{model_name}/{scale}"


def _build_model(model_name: str, scale: int = 1):
    """``model_name`` with every layer's output channels divided by ``scale`` (ResNets only)."""
    from .models import get_model
    if scale == 1:
        return get_model(model_name)
    from .models.resnet import ResNet
    if model_name not in ("resnet50", "resnet50_imagenet"):
        raise ValueError(f"scale={scale}: only the ResNet50s scale down, not {model_name!r}")
    return ResNet((3, 4, 6, 3), imagenet=model_name == "resnet50_imagenet",
                  num_classes=1000 if model_name == "resnet50_imagenet" else 10, width=max(1, 64 // scale))


def _count_prunable(model_name: str, scale: int) -> int:
    from .models import count_prunable
    with torch.device("meta"):
        return count_prunable(_build_model(model_name, scale))


def _model_and_batch(model_name: str, batch: int, device, scale: int = 1):
    """The model at seed 0 and one synthetic batch: the same for every implementation timed."""
    from .models import INPUT_SHAPES
    torch.manual_seed(0)
    model = _build_model(model_name, scale).to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn((batch, *INPUT_SHAPES[model_name]), generator=gen, device=device)
    y = torch.randint(0, 10, (batch,), generator=gen, device=device)
    return model, x, y


def force_run_case(model_name: str, batch: int, iterations: int, backends=(), scale: int = 1) -> Case:
    def make(impl, device):
        model, x, y = _model_and_batch(model_name, batch, device, scale)
        if impl == "baseline":
            return lambda: _force_official(model, (x, y), 0.995, iterations)
        from .pruning import force
        return lambda: force(model, [(x, y)], sparsity=0.995, iterations=iterations, backend=impl)

    name = _model_name(model_name, scale)
    return Case(f"force-run {name} b={batch} T={iterations}", name, torch.float32,
                _count_prunable(model_name, scale), float("nan"), ["baseline", *backends], make, kind="end-to-end")


def breakdown_name(model_name: str, batch: int, iterations: int, scale: int = 1) -> str:
    return f"force-breakdown {_model_name(model_name, scale)} b={batch} T={iterations}"


def force_breakdown(device: torch.device, model_name: str = "resnet50", batch: int = 128, iterations: int = 60,
                    backends=("auto", "reference"), echo=print, scale: int = 1) -> list[dict]:
    """End-to-end FORCE on synthetic data, one batch per step, timed per phase.

    For each backend, and for the fastest one also with the model and inputs in channels_last:
    total wall time, and the share of it spent in the gradients (θ0 ⊙ m, forward, backward), in
    the selection, and elsewhere (batch hand-out, Python); plus whether the masks are
    bit-identical to the plain run's (channels_last picks other convolution kernels, so it may
    change the gradients' last bits and with them the masks). Layer collapse at 99.5 % on the
    random batch is expected and not warned about.
    """
    with _collapse_expected():
        return _force_breakdown(device, model_name, batch, iterations, backends, echo, scale)


def _force_breakdown(device, model_name, batch, iterations, backends, echo, scale) -> list[dict]:
    from .pruning import force
    from .pruning.progressive import profile

    def one(backend, channels_last):
        model, x, y = _model_and_batch(model_name, batch, device, scale)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        force(model, [(x, y)], sparsity=0.995, iterations=1, backend=backend)  # warm-up: kernels, allocator
        _sync(device)
        with profile() as phases:
            start = time.perf_counter()
            masks = force(model, [(x, y)], sparsity=0.995, iterations=iterations, backend=backend)
            _sync(device)
            total = time.perf_counter() - start
        return masks, total, phases

    rows, plain = [], None
    name = breakdown_name(model_name, batch, iterations, scale)
    backends = list(dict.fromkeys(backends))
    variants = [(b, False) for b in backends] + [(backends[0], True)]
    for backend, channels_last in variants:
        label = f"{backend}{' + channels_last' if channels_last else ''}"
        echo(f"  running {name} [{label}]")
        masks, total, ph = one(backend, channels_last)
        plain = masks if plain is None else plain
        other = max(total - ph["gradients"] - ph["selection"], 0.0)
        rows.append({"case": name, "variant": label,
                     "total_s": total, "step_s": total / iterations,
                     "gradients_share": ph["gradients"] / total, "selection_share": ph["selection"] / total,
                     "other_share": other / total, "selection_s_per_step": ph["selection"] / iterations,
                     "same_masks_as_plain": masks == plain})
    return rows


def format_breakdown(rows: list[dict]) -> str:
    header = ["end-to-end FORCE", "variant", "total", "per step", "fwd+bwd", "selection", "other", "same masks"]
    lines = [[r["case"], r["variant"], fmt_time(r["total_s"]), fmt_time(r["step_s"]),
              f"{r['gradients_share']:.1%}", f"{r['selection_share']:.1%}", f"{r['other_share']:.1%}",
              "yes" if r["same_masks_as_plain"] else "NO"] for r in rows]
    return text_table(header, lines)


# --------------------------------------------------------------- FORCE past 2^31 prunable weights

def beyond_int32_name(width: int = WIDE_WIDTH, depth: int = WIDE_DEPTH, iterations: int = 3) -> str:
    return f"force-run wide-mlp {wide_mlp_params(width, depth):,} bf16 T={iterations}"


def force_beyond_int32(device: torch.device, width: int = WIDE_WIDTH, depth: int = WIDE_DEPTH, batch: int = 8,
                       iterations: int = 3, sparsity: float = 0.995, backend: str = "auto", echo=print,
                       available=available_bytes) -> list[dict]:
    """FORCE end to end on :func:`wide_mlp` in bf16, then the selection of its first step alone,
    sparseforce's against today's practice (per-layer |w·g|, ``torch.cat``, ``torch.topk``, ``>=``).

    One run each (a step of the 2 B-weight model takes seconds; repeats would say little more).
    Rows: wall time per step and the share of it spent selecting, the peak memory above the
    model's own (``peak_extra_bytes``), and for the selections the number of weights kept
    against k (the baseline keeps every tie at the threshold). A run that would not fit in the
    memory left (``available(device)``, bytes) is not started; its row says what it needed.
    """
    from .pruning import force
    from .pruning.progressive import profile
    from .pruning.schedules import keep_counts

    case = beyond_int32_name(width, depth, iterations)
    n = wide_mlp_params(width, depth)
    rows = []
    # Resident during a step: the model (2N bytes), θ0 ⊙ m (2N; one layer's bool mask widened
    # to bf16 on the way, 2 bytes a weight of the largest layer), the gradients (2N), the previous
    # masks (N); then the new masks (N) while the gradients are live.
    need = 7 * n + 2 * width * width
    have = available(device)
    if need * 1.05 > have:
        echo(f"  {case}: skipped, needs about {need / 2**30:.1f} GiB, {have / 2**30:.1f} GiB available")
        return [skip_row(case, f"sparseforce FORCE [{backend}]", need, have)]
    resolved = ops.resolve_name(backend, "saliency_topk_masks", device)  # unavailable: an error before any work
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(0)
        model = wide_mlp(width, depth, device=device)
        gen = torch.Generator(device=device).manual_seed(0)
        x = torch.randn((batch, width), generator=gen, device=device).to(torch.bfloat16)
        y = torch.randint(0, 10, (batch,), generator=gen, device=device)
    echo(f"  running {case} [{resolved}]")
    _sync(device)
    with PeakMemory(device) as mem, profile() as phases:
        start = time.perf_counter()
        masks = force(model, [(x, y)], sparsity=sparsity, iterations=iterations, backend=backend)
        _sync(device)
        total = time.perf_counter() - start
    kept = sum(int(m.count_nonzero()) for m in masks.values())
    k_final = keep_counts(n, sparsity, iterations)[-1]
    rows.append({"case": case, "variant": f"sparseforce FORCE [{resolved}]", "params": n, "total_s": total,
                 "step_s": total / iterations, "selection_share": phases["selection"] / total,
                 "selection_s_per_step": phases["selection"] / iterations, "peak_extra_bytes": mem.extra,
                 "kept": kept, "k": k_final})
    del masks

    # The first step's selection alone, on its gradients (all weights live), both ways.
    k = round(n * (1.0 - sparsity))
    weights = [p for p in model.parameters() if p.dim() == 2]
    loss = F.cross_entropy(model(x).float(), y)
    grads = torch.autograd.grad(loss, weights)
    del loss
    for variant in ("sparseforce", "baseline"):
        label = (f"first-step selection, sparseforce [{resolved}]" if variant == "sparseforce"
                 else "first-step selection, today's practice (cat + topk)")
        # Extra memory: ours writes the masks (N bytes). The baseline's is measured on a slice
        # (scores, their cat, the masks, and whatever torch.topk allocates: on the CPU a
        # (value, int64 index) buffer of the whole input) and scaled to N.
        need = n if variant == "sparseforce" else _baseline_bytes_per_weight(weights, grads, device) * n
        have = available(device)
        if need * 1.05 > have:
            echo(f"  {case} [{label}]: skipped, needs about {need / 2**30:.1f} GiB")
            rows.append({**skip_row(case, label, need, have), "params": n, "k": k})
            continue
        echo(f"  running {case} [{label}]")
        row = {"case": case, "variant": label, "params": n, "k": k}
        try:
            _sync(device)
            with PeakMemory(device) as mem:
                start = time.perf_counter()
                if variant == "sparseforce":
                    out = ops.saliency_topk_masks(weights, grads, k, backend=backend)
                else:
                    out = baseline_select(weights, grads, k)
                _sync(device)
                row["total_s"] = time.perf_counter() - start
            row["peak_extra_bytes"] = mem.extra
            row["kept"] = sum(int(m.count_nonzero()) for m in out)
            del out
        except (RuntimeError, MemoryError) as e:  # e.g. a torch op limited to 2^31 elements
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
        rows.append(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _baseline_bytes_per_weight(weights, grads, device, probe: int = 1 << 24) -> float:
    """Peak extra memory per weight of :func:`baseline_select`, measured on the first ``probe``
    weights (at least 1 byte a weight: its masks)."""
    w = weights[0].flatten()[:probe]
    g = grads[0].flatten()[:probe]
    _sync(device)
    with PeakMemory(device) as mem:
        baseline_select([w], [g], max(1, round(w.numel() * 0.005)))
        _sync(device)
    return max(1.0, (mem.extra or 0) / max(1, w.numel()))


def format_beyond_int32(rows: list[dict]) -> str:
    header = ["past 2^31 weights", "variant", "time", "per step", "selection", "peak extra memory", "kept / k"]
    lines = []
    for r in rows:
        if "skipped" in r or "error" in r:
            lines.append([r["case"], r["variant"], "not run" if "skipped" in r else "failed",
                          "", "", r.get("skipped") or r["error"][:70], ""])
            continue
        mem = "-" if r.get("peak_extra_bytes") is None else f"{r['peak_extra_bytes'] / 2**20:,.0f} MiB"
        lines.append([r["case"], r["variant"], fmt_time(r["total_s"]),
                      fmt_time(r["step_s"]) if "step_s" in r else "",
                      f"{r['selection_share']:.1%} of a step" if "selection_share" in r else "", mem,
                      f"{r['kept']:,} / {r['k']:,}"])
    return text_table(header, lines)


def train_step_case(model_name: str, batch: int, density: float = 0.05, backends=(), scale: int = 1) -> Case:
    """One masked training step (zero_grad, forward, backward, optimizer step) on a pruned model:
    ``MaskedSGD`` on ``backend`` against today's practice, ``torch.optim.SGD(foreach=True)``
    followed by re-multiplying the weights with their masks."""
    from .optim import MaskedSGD
    from .pruning import random as random_masks

    def make(impl, device):
        model, x, y = _model_and_batch(model_name, batch, device, scale)
        masks = random_masks(model, sparsity=1 - density, seed=0).to(device)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in masks:
                    p.mul_(masks[n])
        hp = dict(lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
        if impl == "baseline":
            opt = torch.optim.SGD(model.parameters(), foreach=True, **hp)
            named = dict(model.named_parameters())
            params, mask_list = [named[n] for n in masks], list(masks.values())

            def after():
                with torch.no_grad():
                    torch._foreach_mul_(params, mask_list)
        else:
            opt = MaskedSGD(model.named_parameters(), masks, backend=impl, **hp)
            after = None

        def step():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
            if after is not None:
                after()
        step.model = model  # for the tests: the baseline and the impls must train alike
        return step

    name = _model_name(model_name, scale)
    return Case(f"train-step {name} b={batch} density={density:.0%}", name, torch.float32,
                _count_prunable(model_name, scale), float("nan"), ["baseline", *backends], make, kind="end-to-end")


def end_to_end_size(device: torch.device, full: bool = False) -> tuple[int, int]:
    """(batch, FORCE iterations) of the end-to-end cases: the paper's on a GPU, less on a CPU."""
    return (128, 60) if device.type == "cuda" else (8, 10 if full else 3)


def dst_batch(device: torch.device) -> int:
    """The batch of the RigL cost case's training step: CIFAR's 128 on a GPU; 32 on a CPU, where a
    ResNet50 step at 128 takes about 13 s on one thread (a smaller batch only raises the share the
    update costs, so the ratio stays conservative)."""
    return 128 if device.type == "cuda" else 32


def default_cases(device: torch.device, full: bool = False, scale: int = 1) -> list[Case]:
    """The standard set. ``scale`` > 1 divides every layer's output channels, in the layer sets and
    in the end-to-end ResNet50 (quick runs)."""
    def usable(op):
        # The Triton interpreter on CPU is a test harness, not a speed to report.
        return [b for b in ops.available_backends(device, op) if not (b == "triton" and device.type == "cpu")]

    def scaled(layers):
        return _model_name(layers, scale)

    backends = usable("saliency_topk_masks")
    fast = [b for b in backends if b != "reference"]
    cuda = device.type == "cuda"
    resnet, vgg = scaled("resnet50"), scaled("vgg19")
    cases = [select_case(resnet, density, backends=backends) for density in (0.005, 0.05)]
    cases.append(select_case(vgg, 0.005, backends=backends))
    cases.append(select_case(resnet, 0.005, resurrect=False, backends=backends))
    cases.append(topk_case(resnet, 0.005, backends=usable("topk_masks")))
    cases.append(masked_sgd_case(resnet, backends=usable("masked_sgd_")))
    linear = scaled("linear-4096")
    cases += segmented_cases(resnet, layer_set(resnet), linear, layer_set(linear)[0],
                             backends=usable("segmented_topk_masks"))
    if cuda or full:
        cases.append(select_case(scaled("transformer-1B"), 0.005, backends=fast))
    if cuda:
        cases.append(select_case(scaled("transformer-4B"), 0.005, dtype=torch.bfloat16, backends=fast))
    batch, iterations = end_to_end_size(device, full)
    cases += dst_cases(resnet, lambda: _build_model("resnet50", scale),
                       lambda b, dev: _model_and_batch("resnet50", b, dev, scale), dst_batch(device),
                       backends=usable("drop_grow_masks"))
    first = fast[:1] or ["reference"]
    cases.append(force_run_case("resnet50", batch, 1, backends=first, scale=scale))  # one full FORCE iteration
    cases.append(force_run_case("resnet50", batch, iterations, backends=first, scale=scale))
    fast_sgd = [b for b in usable("masked_sgd_") if b != "reference"][:1] or ["reference"]
    cases.append(train_step_case("resnet50", batch, backends=fast_sgd, scale=scale))
    return cases


# ------------------------------------------------------------------------------------- measuring

def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(device: torch.device, nbytes: int | None = None, reps: int = 10) -> float:
    """Bytes per second of a large device-to-device copy (read + write counted)."""
    nbytes = nbytes or (1 << 30 if device.type == "cuda" else 1 << 28)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    dst.copy_(src)
    _sync(device)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        times.append(time.perf_counter() - t)
    return 2 * nbytes / min(times)


def measure(fn, device, min_time: float = 1.0, max_reps: int = 50, min_reps: int = 3,
            deadline: float | None = None) -> dict:
    """Times ``fn`` after one warm-up call: at least ``min_reps`` runs and ``min_time`` seconds, at
    most ``max_reps`` runs; past ``deadline`` (a ``time.perf_counter()`` value) it stops after the
    first timed run, and ``time_capped`` says so. The quartiles need 3 runs (from 2, the
    interpolation reaches past the samples): with fewer, ``q1_s`` and ``q3_s`` are None and
    ``min_s``-``max_s`` is the spread to show."""
    with PeakMemory(device) as mem:
        fn()  # warm-up: JIT builds, allocator, caches
        _sync(device)
    times = []
    start = time.perf_counter()
    capped = False
    while len(times) < min_reps or (time.perf_counter() - start < min_time and len(times) < max_reps):
        if times and deadline is not None and time.perf_counter() >= deadline:
            capped = True
            break
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    q = statistics.quantiles(times, n=4) if len(times) >= 3 else [None] * 3
    return {"median_s": statistics.median(times), "q1_s": q[0], "q3_s": q[2], "min_s": min(times),
            "max_s": max(times), "reps": len(times), "time_capped": capped, "peak_extra_bytes": mem.extra}


def run_case(case: Case, device: torch.device, bandwidth: float, min_time: float,
             max_case_s: float | None = None) -> list[dict]:
    """Every impl of ``case``. ``max_case_s`` caps the case's time: each impl gets an equal share
    for its repetitions (its set-up, warm-up and first timed run always happen)."""
    rows = []
    for impl in case.impls:
        row = {"case": case.name, "kind": case.kind, "layers": case.layers, "dtype": str(case.dtype),
               "params": case.params, "impl": impl}
        deadline = None if max_case_s is None else time.perf_counter() + max_case_s / len(case.impls)
        try:
            fn = case.make(impl, device)
            reps = 2 if case.kind == "end-to-end" else 3
            row.update(measure(fn, device, min_time=min_time, min_reps=reps, deadline=deadline))
            del fn
        except Unavailable as e:  # e.g. an optional package not installed: said, not a failure
            row["unavailable"] = str(e)
        except (RuntimeError, MemoryError, ValueError) as e:  # e.g. the baseline out of memory at 4 B
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
        if device.type == "cuda":
            torch.cuda.empty_cache()
        floor_s = case.floor_bytes / bandwidth if bandwidth and case.floor_bytes == case.floor_bytes else None
        row["floor_s"] = floor_s
        rows.append(row)
    base = next((r for r in rows if r["impl"] == "baseline" and "median_s" in r), None)
    for r in rows:
        if "median_s" in r:
            r["speedup_vs_baseline"] = base["median_s"] / r["median_s"] if base else None
            r["times_floor"] = r["median_s"] / r["floor_s"] if r.get("floor_s") else None
    return rows


# ------------------------------------------------------------------------------------- reporting

def environment(device: torch.device) -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except Exception:  # noqa: BLE001 - any import failure means "not there"
        triton_version = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)")
    return {"device": name, "device_type": device.type, "torch": torch.__version__, "triton": triton_version,
            "cuda": torch.version.cuda, "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "git_commit": commit, "host": platform.node()}


def _fmt_short(s):
    """Three significant digits, for the plot's labels."""
    return f"{s:.3g} s" if s >= 1 else f"{s * 1e3:.3g} ms"


def _fmt_spread(r) -> str:
    """The IQR; the range (min-max) of fewer than 3 runs, which have no quartiles."""
    if r.get("q1_s") is not None and r["reps"] >= 3:
        return f"{fmt_time(r['q1_s'])}-{fmt_time(r['q3_s'])}"
    if r["reps"] == 1:
        return "(1 run)"
    return f"{fmt_time(r['min_s'])}-{fmt_time(r.get('max_s'))} (range of {r['reps']})"


def format_table(rows: list[dict]) -> str:
    header = ["case", "impl", "median", "IQR (or range)", "vs baseline", "x floor", "peak extra"]
    lines = []
    for r in rows:
        if "error" in r or "unavailable" in r:
            lines.append([r["case"], r["impl"], "failed" if "error" in r else "unavailable",
                          (r.get("error") or r["unavailable"])[:60], "", "", ""])
            continue
        mem = r.get("peak_extra_bytes")
        lines.append([
            r["case"], r["impl"], fmt_time(r["median_s"]),
            _fmt_spread(r),
            f"{r['speedup_vs_baseline']:.2f}x" if r.get("speedup_vs_baseline") else "-",
            f"{r['times_floor']:.2f}" if r.get("times_floor") else "-",
            "-" if mem is None else f"{mem / 2**20:,.0f} MiB",
        ])
    return text_table(header, lines)


# One colour per implementation, the same in every run's plot.
IMPL_COLORS = {"reference": "tab:gray", "cpp": "tab:blue", "cuda": "tab:green", "triton": "tab:purple",
               "auto": "tab:cyan"}
PHASE_COLORS = {"gradients_share": ("forward + backward", "tab:orange"),
                "selection_share": ("selection", "tab:red"), "other_share": ("other", "tab:olive")}


def figure(rows: list[dict], title: str, breakdown: list[dict] | None = None):
    """Speed-up bars of every implementation over the baseline, and below them the end-to-end
    breakdown (time per phase): a matplotlib figure, or None when there is nothing to plot."""
    import matplotlib
    matplotlib.use("Agg", force=True)  # headless: no display needed
    import matplotlib.pyplot as plt
    shown = [r for r in rows if r.get("speedup_vs_baseline") and r["impl"] != "baseline"]
    breakdown = breakdown or []
    if not shown and not breakdown:
        return None
    panels = [n for n in (len(shown), len(breakdown)) if n]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 0.32 * sum(panels) + 1.4 * len(panels) + 0.6),
                             gridspec_kw={"height_ratios": [n + 2 for n in panels]}, squeeze=False)
    axes = list(axes[:, 0])
    fig.suptitle(f"sparseforce bench: {title}", fontsize=10)
    extra = iter(["tab:brown", "tab:pink", "black"])  # for backends added later, until they get their own
    colors = dict(IMPL_COLORS)

    if shown:
        ax = axes.pop(0)
        for r in shown:
            colors.setdefault(r["impl"], next(extra, "black"))
        speedups = [r["speedup_vs_baseline"] for r in shown]
        ax.barh(range(len(shown)), speedups, color=[colors[r["impl"]] for r in shown])
        for i, (r, x) in enumerate(zip(shown, speedups)):
            ax.text(x * 1.04, i, f"{x:.2f}x  ({_fmt_short(r['median_s'])})", va="center", fontsize=7)
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_yticks(range(len(shown)), [f"{r['case']} [{r['impl']}]" for r in shown], fontsize=7)
        ax.set_xscale("log")
        ax.set_xlim(min(min(speedups), 1.0) / 1.5, max(max(speedups), 1.0) * 4)  # room for the labels
        ax.set_xlabel("speed-up = baseline's median time / this implementation's (log scale; 1 = baseline, "
                      "right of it = faster); in brackets: median time", fontsize=8)
        ax.set_title("Speed-up over today's practice (per-layer |w*g|, torch.cat, torch.topk, >=; "
                     "model copy per FORCE step)", fontsize=9)
        handles = [plt.Rectangle((0, 0), 1, 1, color=colors[i]) for i in dict.fromkeys(r["impl"] for r in shown)]
        ax.legend(handles, list(dict.fromkeys(r["impl"] for r in shown)), fontsize=7, loc="lower right")
        ax.invert_yaxis()
        ax.grid(alpha=0.3, axis="x")

    if breakdown:
        ax = axes.pop(0)
        totals = [r["total_s"] for r in breakdown]
        left = [0.0] * len(breakdown)
        for key, (label, color) in PHASE_COLORS.items():
            widths = [r[key] * t for r, t in zip(breakdown, totals)]
            ax.barh(range(len(breakdown)), widths, left=left, color=color, label=label)
            for i, (w, l, r) in enumerate(zip(widths, left, breakdown)):
                if w >= 0.06 * max(totals):  # the share inside its segment, where it fits
                    ax.text(l + w / 2, i, f"{r[key]:.0%}", ha="center", va="center", fontsize=7, color="white")
            left = [a + b for a, b in zip(left, widths)]
        for i, (r, t) in enumerate(zip(breakdown, totals)):
            same = "" if r["same_masks_as_plain"] else ", other masks"
            ax.text(t * 1.01, i, f"{_fmt_short(t)} ({_fmt_short(r['step_s'])} per step{same})", va="center",
                    fontsize=7)
        ax.set_yticks(range(len(breakdown)), [r["variant"] for r in breakdown], fontsize=7)
        ax.set_xlim(0, max(totals) * 1.45)
        ax.set_xlabel("wall time of the whole FORCE run (s), split by phase", fontsize=8)
        ax.set_title(f"End to end: {breakdown[0]['case']} (T = FORCE iterations, b = batch), one run per "
                     "backend", fontsize=9)
        ax.legend(fontsize=7, loc="lower right", ncol=3)
        ax.invert_yaxis()
        ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig


def plot(rows: list[dict], path: Path, title: str, breakdown: list[dict] | None = None) -> bool:
    """Writes :func:`figure` to ``path``; False, writing nothing, when there is nothing to plot."""
    fig = figure(rows, title, breakdown)
    if fig is None:
        return False
    import matplotlib.pyplot as plt
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


QUICK = {"scale": 8, "min_time": 0.0}
DEFAULTS = {"scale": 1, "min_time": 1.0}
DEFAULT_OUT = "sparseforce-bench"


def run(device: str | None = None, full: bool = False, out_dir: str = DEFAULT_OUT,
        min_time: float | None = None, only: str | None = None, echo=print, cases: list[Case] | None = None,
        scale: int | None = None, max_case_s: float | None = None, quick: bool = False) -> dict:
    """Runs the cases and writes ``<device>-<date>.json`` (rewritten after every case, so a run
    cut short keeps what it measured) and a PNG plot to ``out_dir``. ``quick`` makes the defaults
    of ``scale`` and ``min_time`` those of ``QUICK`` (every size / 8, no minimum time).

    :class:`sparseforce.LayerCollapseWarning` is silenced for the run: the end-to-end cases prune
    a (narrowed) ResNet50 to 99.5 % on one random batch, where emptied layers are expected and
    change nothing about what is timed."""
    with _collapse_expected():
        return _run(device, full, out_dir, min_time, only, echo, cases, scale, max_case_s, quick)


@contextlib.contextmanager
def _collapse_expected():
    from .masks import LayerCollapseWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LayerCollapseWarning)
        yield


def _run(device, full, out_dir, min_time, only, echo, cases, scale, max_case_s, quick) -> dict:
    if max_case_s is not None and not max_case_s > 0:
        raise ValueError(f"max_case_s must be a positive number of seconds or None, got {max_case_s!r}")
    cfg = QUICK if quick else DEFAULTS
    scale = cfg["scale"] if scale is None else scale
    min_time = cfg["min_time"] if min_time is None else min_time
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a whole number >= 1, got {scale!r}")
    if not (isinstance(min_time, (int, float)) and 0 <= min_time < math.inf):
        raise ValueError(f"min_time must be a number of seconds >= 0, got {min_time!r}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    chosen = cases if cases is not None else default_cases(dev, full=full, scale=scale)
    batch, iterations = end_to_end_size(dev, full)
    breakdown_case = breakdown_name("resnet50", batch, iterations, scale) if cases is None else None
    # FORCE past 2^31 weights: at its real size only (it exists to cross 2^31), with --full.
    beyond_case = beyond_int32_name() if cases is None and full else None
    # torch.nn.utils.prune against the drop-in: on the CPU (the machine the past-2^31 claim is about).
    # global_unstructured against torch's: with --full or --only (torch takes 14 s a repeat of the stack).
    compat = bench_compat.cases(full or bool(only), scale) if cases is None and dev.type == "cpu" and (full or only) else {}
    if only:
        names = [c.name for c in chosen] + [x for x in (breakdown_case, beyond_case) if x] + list(compat)
        chosen = [c for c in chosen if only in c.name]
        breakdown_case = breakdown_case if breakdown_case and only in breakdown_case else None
        beyond_case = beyond_case if beyond_case and only in beyond_case else None
        compat = {name: spec for name, spec in compat.items() if only in name}
        if not chosen and not breakdown_case and not beyond_case and not compat:
            raise ValueError(f"--only {only!r} matches no case; the cases: {'; '.join(names)}")

    started = time.perf_counter()
    env = environment(dev)
    bandwidth = copy_bandwidth(dev)
    echo(f"{env['device']} | torch {env['torch']} | triton {env['triton']} | "
         f"copy bandwidth {bandwidth / 1e9:,.1f} GB/s")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    slug = "".join(c if c.isalnum() else "-" for c in (env["device"] if dev.type == "cuda" else "cpu")).strip("-")
    stem = out / f"{slug.lower()}-{env['date'][:10]}"
    header = {**env, "copy_bandwidth_Bps": bandwidth, "full": full, "quick": quick, "scale": scale,
              "min_time": min_time, "only": only, "max_case_s": max_case_s}
    rows = []
    for case in chosen:
        echo(f"  running {case.name}")
        rows += run_case(case, dev, bandwidth, min_time, max_case_s=max_case_s)
        stem.with_suffix(".json").write_text(json.dumps({**header, "rows": rows, "complete": False}, indent=1,
                                                        default=str))
    table = format_table(rows) if rows else ""
    cost = format_update_cost(rows)
    table += ("\n\n" if table and cost else "") + cost
    beyond = []
    if beyond_case:
        beyond = force_beyond_int32(dev, echo=echo)
        table += ("\n\n" if table else "") + format_beyond_int32(beyond)
        stem.with_suffix(".json").write_text(json.dumps({**header, "rows": rows, "beyond_int32": beyond,
                                                        "complete": False}, indent=1, default=str))
    compat_rows = []
    for name, spec in compat.items():
        compat_rows += bench_compat.compat_prune(name, spec, echo=echo)
        stem.with_suffix(".json").write_text(json.dumps({**header, "rows": rows, "beyond_int32": beyond,
                                                        "compat_prune": compat_rows, "complete": False},
                                                       indent=1, default=str))
    if compat_rows:
        table += ("\n\n" if table else "") + bench_compat.format_compat(compat_rows)
    breakdown = []
    if breakdown_case:
        cuda = dev.type == "cuda"
        fast = [b for b in ops.available_backends(dev, "saliency_topk_masks") if b not in ("reference", "triton")
                or (b == "triton" and cuda)]
        breakdown = force_breakdown(dev, batch=batch, iterations=iterations, scale=scale,
                                    backends=(fast[0] if fast else "reference", "reference"), echo=echo)
        table += ("\n\n" if table else "") + format_breakdown(breakdown)
    echo(table)
    seconds = round(time.perf_counter() - started, 1)
    result = {**header, "seconds": seconds, "rows": rows, "breakdown": breakdown, "beyond_int32": beyond,
              "compat_prune": compat_rows, "table": table, "complete": True}
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))
    what = f"{env['device']}, torch {env['torch']}, {env['date'][:10]}" + (f", sizes / {scale}" if scale > 1 else "")
    written = [stem.with_suffix(".json")]
    if plot(rows, stem.with_suffix(".png"), what, breakdown):
        written.append(stem.with_suffix(".png"))
    echo(f"finished in {seconds:.0f} s; wrote {' and '.join(map(str, written))}")
    return result
