"""The ``torch.nn.utils.prune`` cases of ``sparseforce bench``: ``global_unstructured`` from
:mod:`sparseforce.compat.prune` against torch's own, on the CPU, side by side.

* past 2^31 weights: :func:`~sparseforce.bench_models.wide_mlp` in bf16 (2,147,811,328 weights),
  one run each (only with ``--full`` or ``--only``);
* under 2^31, where both work: a BERT-base-size stack of fp32 Linear weights (85 M), a few runs
  each, the median.

``amount`` is 0.995, the FORCE case's sparsity. It is also torch's hardest amount: its
``L1Unstructured`` finds the weights to prune with ``topk(k = amount · N, largest=False)``, whose
int64 indices alone take 8 bytes for each of the 99.5 % pruned.

Each variant runs in a subprocess of its own on a fresh model from a fixed seed, so an error or an
out-of-memory cannot take the benchmark with it, and its peak memory is its own. The subprocess
caps its address space (``RLIMIT_AS``) at what it had when it started plus the memory available
minus a margin, so an attempt that needs more fails with torch's own allocation error instead of
pushing the machine into swap or the OOM killer. Rows: the time, the peak memory above the model's
own (``peak_extra_bytes``), the number pruned against the number asked, whether the masks are an
exact top-k (no kept |w| below a pruned one) and a digest of them; the torch row of a case says
whether its masks are ours. A run that fails says how (the exception's first line, or the signal
that killed it) and the peak it reached.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from .bench_case import text_table
from .bench_memory import PeakMemory, available_bytes, fmt_time, proc_status, skip_row
from .bench_models import WIDE_DEPTH, WIDE_WIDTH, wide_mlp, wide_mlp_params

AMOUNT = 0.995
BERT = {"width": 768, "ff": 3072, "layers": 12}  # BERT-base's Linear weights: 12 · 7,077,888 = 84,934,656
VARIANTS = {"sparseforce.compat.prune": "sparseforce.compat.prune", "torch.nn.utils.prune": "torch.nn.utils.prune"}
MARGIN = 3 << 29  # 1.5 GiB left to the rest of the machine
TIMEOUT_S = 1800


def linear_stack(width: int = BERT["width"], ff: int = BERT["ff"], layers: int = BERT["layers"]) -> torch.nn.Sequential:
    """The Linear weights of a ``layers``-block transformer (per block q, k, v, o: width x width;
    the feed-forward pair width x ff and back), N(0, 0.02) as BERT initialises them: normal values
    rarely tie at the threshold, so torch's masks are exact and comparable with ours."""
    shapes = ([(width, width)] * 4 + [(width, ff), (ff, width)]) * layers
    return torch.nn.Sequential(*[torch.nn.Linear(i, o, bias=False) for i, o in shapes])


def stack_params(width: int = BERT["width"], ff: int = BERT["ff"], layers: int = BERT["layers"]) -> int:
    return layers * (4 * width * width + 2 * width * ff)


def beyond_name(width: int = WIDE_WIDTH, depth: int = WIDE_DEPTH) -> str:
    return f"global_unstructured wide-mlp {wide_mlp_params(width, depth):,} bf16 amount={AMOUNT}"


def stack_name(width: int = BERT["width"], ff: int = BERT["ff"], layers: int = BERT["layers"]) -> str:
    return f"global_unstructured linear-stack {stack_params(width, ff, layers):,} fp32 amount={AMOUNT}"


def cases(full: bool = False, scale: int = 1) -> dict[str, dict]:
    """name -> spec of the cases a run with ``--full`` or ``--only`` has: the stack (its widths /
    ``scale``), and the model past 2^31 (at its real size: it exists to cross 2^31) with ``full``."""
    # Seed 2: no two weights tie at the stack's threshold (seed 0's has two), so torch's masks are
    # exact and comparable with ours; each row's tie_at_threshold says so.
    stack = {"model": "linear-stack", "width": max(1, BERT["width"] // scale), "ff": max(1, BERT["ff"] // scale),
             "layers": BERT["layers"], "repeats": 3, "seed": 2}
    chosen = {stack_name(stack["width"], stack["ff"], stack["layers"]): stack}
    if full:
        chosen[beyond_name()] = {"model": "wide-mlp", "width": WIDE_WIDTH, "depth": WIDE_DEPTH, "repeats": 1,
                                 "seed": 0}
    return chosen


def _build(spec: dict) -> torch.nn.Sequential:
    torch.manual_seed(spec["seed"])
    if spec["model"] == "wide-mlp":
        return wide_mlp(spec["width"], spec["depth"])
    model = linear_stack(spec["width"], spec["ff"], spec["layers"])
    with torch.no_grad():
        for layer in model:
            layer.weight.normal_(0, 0.02)
    return model


def _params(spec: dict) -> int:
    if spec["model"] == "wide-mlp":
        return wide_mlp_params(spec["width"], spec["depth"])
    return stack_params(spec["width"], spec["ff"], spec["layers"])


def _model_bytes(spec: dict) -> int:
    return _params(spec) * (2 if spec["model"] == "wide-mlp" else 4)


# ------------------------------------------------------------------------------- the subprocess

def _cap_address_space(budget: int) -> None:
    """Everything the process maps from now on counts against ``budget`` bytes (mapped >= resident)."""
    limit = proc_status("VmSize") + budget
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _mask_facts(pairs: list) -> dict:
    """The pruned count, whether the masks are an exact top-k by |w| (the smallest kept >= the
    largest pruned; equal: a tie at the threshold) and a digest of them, one row block at a time."""
    digest = hashlib.sha256()
    pruned, kept_min, pruned_max = 0, float("inf"), float("-inf")
    for module, name in pairs:
        mask, orig = getattr(module, f"{name}_mask"), getattr(module, f"{name}_orig").detach()
        for rows in range(0, mask.shape[0], 1024):
            keep = mask[rows:rows + 1024] != 0
            w = orig[rows:rows + 1024].abs().float()
            digest.update(keep.contiguous().numpy())
            pruned += keep.numel() - int(keep.count_nonzero())
            if keep.any():
                kept_min = min(kept_min, float(w[keep].min()))
            if not keep.all():
                pruned_max = max(pruned_max, float(w[~keep].max()))
    return {"pruned": pruned, "exact": kept_min >= pruned_max, "tie_at_threshold": kept_min == pruned_max,
            "masks_sha256": digest.hexdigest()}


def run_variant(spec: dict) -> dict:
    """One variant of one case, in this process: ``spec["repeats"]`` runs of
    ``global_unstructured(prunable weights, L1Unstructured, amount=AMOUNT)`` from
    ``spec["module"]``, each on a fresh model."""
    _cap_address_space(spec["budget"])
    prune = importlib.import_module(spec["module"])
    times, peaks = [], []
    for _ in range(spec["repeats"]):
        model = pairs = None  # the last run's model goes before the next is built
        model = _build(spec)
        pairs = [(m, "weight") for m in model if isinstance(m, torch.nn.Linear)]
        try:
            with PeakMemory(torch.device("cpu")) as mem:
                start = time.perf_counter()
                prune.global_unstructured(pairs, pruning_method=prune.L1Unstructured, amount=AMOUNT)
                times.append(time.perf_counter() - start)
        except (RuntimeError, MemoryError) as e:
            return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}", "peak_extra_bytes": mem.extra}
        peaks.append(mem.extra)
    return {"times_s": times, "median_s": statistics.median(times), "peak_extra_bytes": max(peaks),
            **_mask_facts(pairs)}


def _spawn(spec: dict, timeout: float) -> dict:
    """``run_variant(spec)`` in a fresh interpreter; its failure, however it fails, as a row."""
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    try:
        done = subprocess.run([sys.executable, "-m", __name__, json.dumps(spec)], capture_output=True, text=True,
                              env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "peak_extra_bytes": None}
    if done.returncode < 0:
        return {"error": f"killed by {signal.Signals(-done.returncode).name}", "peak_extra_bytes": None}
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exited with status {done.returncode}: {last[:200]}", "peak_extra_bytes": None}
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------------- the parent

def compat_prune(name: str, spec: dict, variants: dict[str, str] = VARIANTS, echo=print,
                 available=available_bytes, timeout: float = TIMEOUT_S) -> list[dict]:
    """The rows of case ``name`` (a spec from :func:`cases`), one per variant (label -> the module
    that provides ``global_unstructured`` and ``L1Unstructured``), each run in its own subprocess.
    A variant whose model alone would not fit in the memory left (``available(cpu)`` less a
    margin) is not started; its row says what it needed."""
    n = _params(spec)
    asked = round(AMOUNT * n)
    rows = []
    for label, module in variants.items():
        row = {"case": name, "variant": label, "params": n, "amount": AMOUNT, "asked": asked,
               "repeats": spec["repeats"]}
        have = available(torch.device("cpu"))
        need = _model_bytes(spec)
        if need > have - MARGIN:
            echo(f"  {name} [{label}]: skipped, needs about {need / 2**30:.1f} GiB for the model alone")
            rows.append({**row, **skip_row(name, label, need, have - MARGIN)})
            continue
        echo(f"  running {name} [{label}]")
        rows.append({**row, **_spawn({**spec, "module": module, "budget": have - MARGIN}, timeout)})
    ours, theirs = rows[0], rows[-1]
    if "masks_sha256" in ours and "masks_sha256" in theirs and ours is not theirs:
        theirs["same_masks_as_ours"] = theirs["masks_sha256"] == ours["masks_sha256"]
        theirs["time_vs_ours"] = theirs["median_s"] / ours["median_s"]
    return rows


def format_compat(rows: list[dict]) -> str:
    header = ["global_unstructured", "variant", "time", "peak extra memory", "pruned / asked", "exact top-k",
              "same masks", "time vs ours"]
    lines = []
    for r in rows:
        if "skipped" in r:
            lines.append([r["case"], r["variant"], "not run", r["skipped"], "", "", "", ""])
            continue
        peak = "-" if r.get("peak_extra_bytes") is None else f"{r['peak_extra_bytes'] / 2**20:,.0f} MiB"
        if "error" in r:
            lines.append([r["case"], r["variant"], "failed", f"{peak} reached: {r['error'][:200]}", "", "", "", ""])
            continue
        runs = f" (median of {len(r['times_s'])})" if len(r["times_s"]) > 1 else ""
        lines.append([r["case"], r["variant"], fmt_time(r["median_s"]) + runs, peak,
                      f"{r['pruned']:,} / {r['asked']:,}",
                      ("yes, a tie at the threshold" if r["tie_at_threshold"] else "yes") if r["exact"] else "NO",
                      {True: "yes", False: "NO"}.get(r.get("same_masks_as_ours"), ""),
                      f"{r['time_vs_ours']:.1f}x" if "time_vs_ours" in r else ""])
    return text_table(header, lines)


if __name__ == "__main__":
    print(json.dumps(run_variant(json.loads(sys.argv[1]))))
