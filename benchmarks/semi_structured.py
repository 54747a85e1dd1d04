"""A 2:4 sparse nn.Linear against the dense one on a GPU, through ``sf.to_semi_structured``.

    python -m benchmarks.semi_structured [--out PATH.json] [--features 4096] [--tokens 4096] [--min-time 0.3]

Cases: a features x features Linear (with bias; 4096 x 4096 by default) in fp16 and in bf16, on a
batch of ``tokens`` rows (4096), its weight masked 2:4 by magnitude (the 2 largest |w| of every 4),
once with each of torch's semi-structured backends (cuSPARSELt, torch's default, and CUTLASS). Each
case converts a copy of the masked dense layer, checks that its output equals the dense layer's
within fp16/bf16 rounding, and times both (the median of timed runs of 20 calls each, per call).

Writes PATH.json (default ./semi_structured.json: the device named, then per case the dense and 2:4
median times, the speed-up and the largest difference between the outputs) and prints a table. A
device or build that refuses the layout is a result, not a failure: the case records the reason
(``refused``), which is printed, and the exit status stays 0; a 2:4 layer whose output differs
from the dense one's exits 1.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys

import torch
import torch.nn as nn

import sparseforce as sf
from sparseforce import bench, export

CALLS = 20  # layer calls per timed run: one call of a 4096^3 product is a fraction of a millisecond
BACKENDS = ("cusparselt", "cutlass")
DTYPES = (torch.float16, torch.bfloat16)


def two_four(weight: torch.Tensor) -> torch.Tensor:
    """The 2:4 mask keeping the 2 largest |w| of every 4 consecutive weights of each row."""
    groups = weight.detach().abs().float().reshape(-1, 4)
    return torch.zeros_like(groups, dtype=torch.bool).scatter_(1, groups.topk(2, dim=1).indices, True) \
        .reshape(weight.shape)


def run_case(device: torch.device, dtype: torch.dtype, backend: str, features: int, tokens: int,
             min_time: float) -> dict:
    row = {"dtype": str(dtype).removeprefix("torch."), "backend": backend, "features": features, "tokens": tokens}
    layout = torch.sparse.SparseSemiStructuredTensor
    forced = layout._FORCE_CUTLASS
    layout._FORCE_CUTLASS = backend == "cutlass"
    try:
        why = export.why_unsupported(device)
        if why is not None:
            return {**row, "refused": why}
        torch.manual_seed(0)
        dense = nn.Linear(features, features).to(device, dtype)
        mask = two_four(dense.weight)
        with torch.no_grad():
            dense.weight.mul_(mask)
        sparse = copy.deepcopy(dense)
        try:
            sf.to_semi_structured(sparse, {"weight": mask})
        except (RuntimeError, ValueError) as exc:
            return {**row, "refused": str(exc)}
        x = torch.randn(tokens, features, device=device, dtype=dtype)
        with torch.no_grad():
            expected, out = dense(x).float(), sparse(x).float()
            times = {name: bench.measure(lambda layer=layer: [layer(x) for _ in range(CALLS)], device,
                                         min_time=min_time)
                     for name, layer in (("dense", dense), ("2:4", sparse))}
    finally:
        layout._FORCE_CUTLASS = forced
    dense_s, sparse_s = (times[name]["median_s"] / CALLS for name in ("dense", "2:4"))
    flops = 2 * tokens * features * features
    return {**row, "dense_s": dense_s, "sparse_s": sparse_s, "speedup": dense_s / sparse_s,
            "dense_tflops": flops / dense_s / 1e12, "sparse_tflops": flops / sparse_s / 1e12, "reps": times["2:4"]["reps"],
            "max_abs_diff": float((out - expected).abs().max()), "max_abs_output": float(expected.abs().max()),
            "matches": bool(torch.allclose(out, expected, rtol=1e-2, atol=1e-2))}


def format_rows(rows: list) -> str:
    lines = [f"{'dtype':9}  {'backend':10}  {'features x tokens':>17}  {'dense':>9}  {'2:4':>9}  speed-up  max |diff|"]
    for r in rows:
        size = f"{r['features']} x {r['tokens']}"
        head = f"{r['dtype']:9}  {r['backend']:10}  {size:>17}"
        if "refused" in r:
            lines.append(f"{head}  refused: {r['refused']}")
        else:
            lines.append(f"{head}  {r['dense_s'] * 1e3:7.3f}ms  {r['sparse_s'] * 1e3:7.3f}ms  {r['speedup']:7.2f}x  "
                         f"{r['max_abs_diff']:.2g}{'' if r['matches'] else '  WRONG OUTPUT'}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="semi_structured.json", help="the JSON file to write")
    parser.add_argument("--features", type=int, default=4096, help="the Linear's input and output features")
    parser.add_argument("--tokens", type=int, default=4096, help="rows of the input batch")
    parser.add_argument("--min-time", type=float, default=0.3, help="seconds each timing runs at least")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    rows = [run_case(device, dtype, backend, args.features, args.tokens, args.min_time)
            for dtype in DTYPES for backend in BACKENDS]
    env = bench.environment(device) if device.type != "cuda" or torch.cuda.is_available() else \
        {"device": "none (no CUDA device)", "torch": torch.__version__}
    if device.type == "cuda" and torch.cuda.is_available():
        env["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
        env["cusparselt"] = torch.backends.cusparselt.version()
    with open(args.out, "w") as f:
        json.dump({"environment": env, "cases": rows}, f, indent=2)
    print(f"2:4 sparse Linear against the dense one on {env['device']} (torch {env['torch']}):")
    print(format_rows(rows))
    print(f"written to {args.out}")
    return 0 if all(r.get("matches", True) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
