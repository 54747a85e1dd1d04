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

import copy
import dataclasses
import datetime as _dt
import json
import math
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from . import ops

# ------------------------------------------------------------------------------------- layer sets


def _weight_shapes(model_fn) -> list[tuple[int, ...]]:
    from .pruning._model import prunable_parameters
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
    if name.startswith(("resnet50/", "vgg19/")):  # a scaled-down copy for quick runs: every layer / factor
        base, f = name.split("/")
        return [(max(1, s[0] // int(f)),) + s[1:] for s in layer_set(base)]
    raise ValueError(f"unknown layer set {name!r}")


# ------------------------------------------------------------------------------------- the cases

@dataclasses.dataclass
class Case:
    """One benchmark: ``make(impl, device)`` returns a zero-argument callable to time."""
    name: str
    layers: str
    dtype: torch.dtype
    params: int
    floor_bytes: float  # bytes that must cross memory at least once
    impls: list[str]
    make: Callable[[str, torch.device], Callable[[], object]]
    kind: str = "kernel"


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


def masked_sgd_case(layers: str, backends=()) -> Case:
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
        bufs = [torch.zeros_like(x) for x in p]
        return lambda: ops.masked_sgd_(p, g, bufs, masks, backend=impl, **hp)

    # read p, g, buf, mask; write p, buf
    return Case(f"masked-sgd {layers}", layers, torch.float32, n, n * 21, ["baseline", *backends], make)


def _force_official(model, batch, sparsity, iterations):
    """The official FORCE loop's structure: a fresh deep copy of the model at every step,
    masks applied to the copy's weights, ``.backward()``, then cat/topk/``>=``."""
    from .pruning._model import prunable_parameters
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


def _model_and_batch(model_name: str, batch: int, device):
    """The model at seed 0 and one synthetic batch: the same for every implementation timed."""
    from .models import INPUT_SHAPES, get_model
    torch.manual_seed(0)
    model = get_model(model_name).to(device)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn((batch, *INPUT_SHAPES[model_name]), generator=gen, device=device)
    y = torch.randint(0, 10, (batch,), generator=gen, device=device)
    return model, x, y


def force_run_case(model_name: str, batch: int, iterations: int, backends=()) -> Case:
    from .models import get_model

    def make(impl, device):
        model, x, y = _model_and_batch(model_name, batch, device)
        if impl == "baseline":
            return lambda: _force_official(model, (x, y), 0.995, iterations)
        from .pruning import force
        return lambda: force(model, [(x, y)], sparsity=0.995, iterations=iterations, backend=impl)

    from .models import count_prunable
    with torch.device("meta"):
        n = count_prunable(get_model(model_name))
    return Case(f"force-run {model_name} b={batch} T={iterations}", model_name, torch.float32, n,
                float("nan"), ["baseline", *backends], make, kind="end-to-end")


def force_breakdown(device: torch.device, model_name: str = "resnet50", batch: int = 128, iterations: int = 60,
                    backends=("auto", "reference"), echo=print) -> list[dict]:
    """End-to-end FORCE on synthetic data, one batch per step, timed per phase.

    For each backend, and for the fastest one also with the model and inputs in channels_last:
    total wall time, and the share of it spent in the gradients (θ0 ⊙ m, forward, backward), in
    the selection, and elsewhere (batch hand-out, Python); plus whether the masks are
    bit-identical to the plain run's (channels_last picks other convolution kernels, so it may
    change the gradients' last bits and with them the masks).
    """
    from .pruning import force
    from .pruning.progressive import profile

    def one(backend, channels_last):
        model, x, y = _model_and_batch(model_name, batch, device)
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
    backends = list(dict.fromkeys(backends))
    variants = [(b, False) for b in backends] + [(backends[0], True)]
    for backend, channels_last in variants:
        label = f"{backend}{' + channels_last' if channels_last else ''}"
        echo(f"  running force-breakdown {model_name} b={batch} T={iterations} [{label}]")
        masks, total, ph = one(backend, channels_last)
        plain = masks if plain is None else plain
        other = max(total - ph["gradients"] - ph["selection"], 0.0)
        rows.append({"case": f"force-breakdown {model_name} b={batch} T={iterations}", "variant": label,
                     "total_s": total, "step_s": total / iterations,
                     "gradients_share": ph["gradients"] / total, "selection_share": ph["selection"] / total,
                     "other_share": other / total, "selection_s_per_step": ph["selection"] / iterations,
                     "same_masks_as_plain": masks == plain})
    return rows


def format_breakdown(rows: list[dict]) -> str:
    header = ["end-to-end FORCE", "variant", "total", "per step", "fwd+bwd", "selection", "other", "same masks"]
    lines = [[r["case"], r["variant"], _fmt_time(r["total_s"]), _fmt_time(r["step_s"]),
              f"{r['gradients_share']:.1%}", f"{r['selection_share']:.1%}", f"{r['other_share']:.1%}",
              "yes" if r["same_masks_as_plain"] else "NO"] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    out = [" | ".join(h.ljust(w) for h, w in zip(header, widths)), "-|-".join("-" * w for w in widths)]
    out += [" | ".join(str(x).ljust(w) for x, w in zip(line, widths)) for line in lines]
    return "\n".join(out)


def train_step_case(model_name: str, batch: int, density: float = 0.05, backends=()) -> Case:
    """One masked training step (zero_grad, forward, backward, optimizer step) on a pruned model:
    ``MaskedSGD`` on ``backend`` against today's practice, ``torch.optim.SGD(foreach=True)``
    followed by re-multiplying the weights with their masks."""
    from .models import count_prunable
    from .optim import MaskedSGD
    from .pruning import random as random_masks

    def make(impl, device):
        model, x, y = _model_and_batch(model_name, batch, device)
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

    with torch.device("meta"):
        from .models import get_model
        n = count_prunable(get_model(model_name))
    return Case(f"train-step {model_name} b={batch} density={density:.0%}", model_name, torch.float32, n,
                float("nan"), ["baseline", *backends], make, kind="end-to-end")


def default_cases(device: torch.device, full: bool = False, scale: int = 1) -> list[Case]:
    """The standard set. ``scale`` > 1 divides every ResNet50 layer's output channels (quick runs)."""
    def usable(op):
        # The Triton interpreter on CPU is a test harness, not a speed to report.
        return [b for b in ops.available_backends(device, op) if not (b == "triton" and device.type == "cpu")]

    backends = usable("saliency_topk_masks")
    fast = [b for b in backends if b != "reference"]
    cuda = device.type == "cuda"
    resnet = "resnet50" if scale == 1 else f"resnet50/{scale}"
    vgg = "vgg19" if scale == 1 else f"vgg19/{scale}"
    cases = [select_case(resnet, density, backends=backends) for density in (0.005, 0.05)]
    cases.append(select_case(vgg, 0.005, backends=backends))
    cases.append(select_case(resnet, 0.005, resurrect=False, backends=backends))
    cases.append(topk_case(resnet, 0.005, backends=usable("topk_masks")))
    cases.append(masked_sgd_case(resnet, backends=usable("masked_sgd_")))
    if cuda or full:
        cases.append(select_case("transformer-1B", 0.005, backends=fast))
    if cuda:
        cases.append(select_case("transformer-4B", 0.005, dtype=torch.bfloat16, backends=fast))
    batch = 128 if cuda else 8
    first = fast[:1] or ["reference"]
    cases.append(force_run_case("resnet50", batch, 1, backends=first))  # one full FORCE iteration
    cases.append(force_run_case("resnet50", batch, 60 if cuda else (10 if full else 3), backends=first))
    fast_sgd = [b for b in usable("masked_sgd_") if b != "reference"][:1] or ["reference"]
    cases.append(train_step_case("resnet50", batch, backends=fast_sgd))
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


class _PeakMemory:
    """Extra memory the timed call needs at its peak: CUDA allocator stats on GPU; on CPU the
    process's peak RSS (VmHWM, reset through /proc/self/clear_refs) above the RSS before."""

    def __init__(self, device):
        self.device = device

    @staticmethod
    def _status(field):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise OSError(field)

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
                self.base = self._status("VmRSS")
            except OSError:
                self.base = None
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.extra = torch.cuda.max_memory_allocated(self.device) - self.base
        elif self.base is None:
            self.extra = None
        else:
            self.extra = max(0, self._status("VmHWM") - self.base)
        return False


def measure(fn, device, min_time: float = 1.0, max_reps: int = 50, min_reps: int = 3,
            deadline: float | None = None) -> dict:
    """Times ``fn`` after one warm-up call: at least ``min_reps`` runs and ``min_time`` seconds, at
    most ``max_reps`` runs; past ``deadline`` (a ``time.perf_counter()`` value) it stops after the
    first timed run, and ``time_capped`` says so."""
    with _PeakMemory(device) as mem:
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
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return {"median_s": statistics.median(times), "q1_s": q[0], "q3_s": q[2], "min_s": min(times),
            "reps": len(times), "time_capped": capped, "peak_extra_bytes": mem.extra}


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


def _fmt_time(s):
    if s is None:
        return "-"
    return f"{s * 1e3:,.2f} ms" if s < 10 else f"{s:,.1f} s"


def format_table(rows: list[dict]) -> str:
    header = ["case", "impl", "median", "IQR", "vs baseline", "x floor", "peak extra"]
    lines = []
    for r in rows:
        if "error" in r:
            lines.append([r["case"], r["impl"], "failed", r["error"][:60], "", "", ""])
            continue
        mem = r.get("peak_extra_bytes")
        lines.append([
            r["case"], r["impl"], _fmt_time(r["median_s"]),
            f"{_fmt_time(r['q1_s'])}-{_fmt_time(r['q3_s'])}",
            f"{r['speedup_vs_baseline']:.2f}x" if r.get("speedup_vs_baseline") else "-",
            f"{r['times_floor']:.2f}" if r.get("times_floor") else "-",
            "-" if mem is None else f"{mem / 2**20:,.0f} MiB",
        ])
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    out = [" | ".join(h.ljust(w) for h, w in zip(header, widths)),
           "-|-".join("-" * w for w in widths)]
    out += [" | ".join(str(x).ljust(w) for x, w in zip(line, widths)) for line in lines]
    return "\n".join(out)


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    shown = [r for r in rows if r.get("speedup_vs_baseline") and r["impl"] != "baseline"]
    if not shown:
        return
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(shown) + 1.5))
    labels = [f"{r['case']} [{r['impl']}]" for r in shown]
    ax.barh(range(len(shown)), [r["speedup_vs_baseline"] for r in shown], color="tab:blue")
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_yticks(range(len(shown)), labels, fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("speed-up over today's practice (baseline = 1)")
    ax.set_title(title, fontsize=9)
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(device: str | None = None, full: bool = False, out_dir: str = "benchmarks/results",
        min_time: float = 1.0, only: str | None = None, echo=print, cases: list[Case] | None = None,
        scale: int = 1, max_case_s: float | None = None) -> dict:
    """Runs the cases and writes ``<device>-<date>.json`` (rewritten after every case, so a run
    cut short keeps what it measured) and a PNG plot to ``out_dir``."""
    if max_case_s is not None and not max_case_s > 0:
        raise ValueError(f"max_case_s must be a positive number of seconds or None, got {max_case_s!r}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    env = environment(dev)
    bandwidth = copy_bandwidth(dev)
    echo(f"{env['device']} | torch {env['torch']} | triton {env['triton']} | "
         f"copy bandwidth {bandwidth / 1e9:,.1f} GB/s")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    slug = "".join(c if c.isalnum() else "-" for c in (env["device"] if dev.type == "cuda" else "cpu")).strip("-")
    stem = out / f"{slug.lower()}-{env['date'][:10]}"
    header = {**env, "copy_bandwidth_Bps": bandwidth, "full": full, "max_case_s": max_case_s}
    rows = []
    for case in cases if cases is not None else default_cases(dev, full=full, scale=scale):
        if only and only not in case.name:
            continue
        echo(f"  running {case.name}")
        rows += run_case(case, dev, bandwidth, min_time, max_case_s=max_case_s)
        stem.with_suffix(".json").write_text(json.dumps({**header, "rows": rows, "complete": False}, indent=1,
                                                        default=str))
    table = format_table(rows)
    breakdown = []
    if cases is None and (not only or "breakdown" in only):
        cuda = dev.type == "cuda"
        fast = [b for b in ops.available_backends(dev, "saliency_topk_masks") if b not in ("reference", "triton")
                or (b == "triton" and cuda)]
        breakdown = force_breakdown(dev, batch=128 if cuda else 8, iterations=60 if cuda else (10 if full else 3),
                                    backends=(fast[0] if fast else "reference", "reference"), echo=echo)
        table += "\n\n" + format_breakdown(breakdown)
    echo(table)
    result = {**header, "rows": rows, "breakdown": breakdown, "table": table, "complete": True}
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))
    plot(rows, stem.with_suffix(".png"), f"{env['device']} — {env['date'][:10]}")
    echo(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.png')}")
    return result
