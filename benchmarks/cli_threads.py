"""How the command's CPU runs fare under OpenMP settings, on a quiet machine and with one core busy.

    python benchmarks/cli_threads.py --reps 3 --out benchmarks/results/cli-threads-DATE.json

Each setting runs the real command in a fresh process (the OpenMP runtime reads its settings when
torch loads), interleaved with the others so that a change of load hits them alike. "busy" runs
`yes > /dev/null` beside it: one core taken by another process, as on a shared machine. The README's
"Threads" section and the default of `sparseforce` (passive waits on a busy machine only) come from
this file's output.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

SETTINGS = {
    "OpenMP default (spin), all cores": {"OMP_WAIT_POLICY": "active-default"},
    "passive waits, all cores (the command's default when busy)": {"OMP_WAIT_POLICY": "passive"},
    "one thread": {"OMP_NUM_THREADS": "1"},
}


def workloads(tmp: str) -> dict[str, list[str]]:
    cli = [sys.executable, "-m", "sparseforce"]
    return {
        "prune --dataset digits --iterations 30": cli + ["prune", "--dataset", "digits", "--iterations", "30",
                                                          "--out", f"{tmp}/m.pt"],
        "train --dataset digits --epochs 1": cli + ["train", "--dataset", "digits", "--epochs", "1", "--iterations",
                                                     "10", "--sparsity", "0.99", "--out", f"{tmp}/run", "--overwrite"],
        # A heavier step, where spinning pays on a quiet machine: its "masks alone" column is the
        # masked ResNet50 training step's median as bench measures it.
        "bench --only train-step": cli + ["bench", "--only", "train-step", "--out", f"{tmp}/bench"],
    }


def env_for(setting: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_"))}
    for k, v in setting.items():
        if v == "active-default":
            # libgomp's own default (spin 300,000 times, then sleep), which the command replaces.
            env["GOMP_SPINCOUNT"] = "300000"
        else:
            env[k] = v
    return env


def table(rows: list[dict]) -> str:
    """The README's table (a test renders it from the committed JSON and compares)."""
    out = ["| machine | command | setting | whole command | masks alone (bench: one step) |", "|---|---|---|---|---|"]
    for r in rows:
        masks = f"{r['masks_median_s']:.2f} s" if r["masks_median_s"] is not None else "-"
        out.append(f"| {r['load']} | `{r['workload']}` | {r['setting']} | {r['wall_median_s']:.1f} s | {masks} |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = workloads(tmp)
        for load in ("quiet", "busy"):
            burner = subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) if load == "busy" else None
            try:
                times: dict[tuple[str, str], list[tuple[float, float | None]]] = {}
                for _ in range(args.reps):
                    for wname, cmd in work.items():
                        for sname, setting in SETTINGS.items():
                            t = time.perf_counter()
                            proc = subprocess.run(cmd, env=env_for(setting), capture_output=True, text=True)
                            wall = time.perf_counter() - t
                            if proc.returncode != 0:
                                raise SystemExit(f"{wname} failed: {proc.stderr[-500:]}")
                            m = (re.search(r"weights \(density [^)]*\) in ([0-9.]+) s", proc.stdout)
                                 or re.search(r"^train-step .*?\| cpp +\| ([0-9.,]+) ms", proc.stdout, re.M))
                            part = None if m is None else float(m.group(1).replace(",", "")) / (
                                1000 if wname.startswith("bench") else 1)
                            times.setdefault((wname, sname), []).append((wall, part))
            finally:
                if burner is not None:
                    burner.kill()
            for (wname, sname), xs in times.items():
                masks = [x[1] for x in xs if x[1] is not None]
                rows.append({"load": load, "workload": wname, "setting": sname,
                             "wall_median_s": statistics.median(x[0] for x in xs),
                             "masks_median_s": statistics.median(masks) if masks else None, "reps": len(xs)})
    print(table(rows))
    if args.out:
        meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "host": f"{platform.machine()}, {os.cpu_count()} cores", "python": platform.python_version(),
                "rows": rows}
        with open(args.out, "w") as f:
            json.dump(meta, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
