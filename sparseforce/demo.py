"""``sparseforce demo``: the paper's main claim, reproduced offline in a few CPU minutes.

The paper (de Jorge et al., ICLR 2021, Fig. 3) shows that at extreme sparsity (99 %+) networks
pruned at initialization by SNIP or at random become untrainable, while FORCE and Iter SNIP still
train to good accuracy. What breaks is visible in the masks (``layer_density.png``): *layer
collapse*. One-shot SNIP scores every weight by |θ ⊙ g| on the dense network at initialization,
where a weight of a big layer typically scores lower (Kaiming init scales weights by
1/sqrt(fan_in)); at extreme sparsity it spends the budget on the small first and last layers and
leaves the big middle layers with no weights at all, so no signal reaches the output, whatever
the training. Random pruning keeps every layer at the same density, which empties the *small*
layers instead. Pruning progressively re-scores the weights as the network thins out, so the
surviving ones are those that matter for the pruned network, and every layer keeps a path.

Here: ``digits_cnn`` (three 3x3 conv layers of 32, 64 and 128 channels + a linear classifier;
93,728 prunable weights, 288 in the first layer and 73,728 in the third: the same small-big-small
imbalance as VGG/ResNet) on scikit-learn's 8x8 digits, the paper's CIFAR recipe shortened to a
few epochs, with each (method, sparsity) trained from the same initialization per seed.
Outputs in the output folder: ``results.json`` (every run, with per-layer kept counts),
``table.md`` (the table printed), ``accuracy_vs_sparsity.png`` and ``layer_density.png``.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass

import torch

__all__ = ["run_demo", "DemoResult", "METHODS", "LABELS"]

METHODS = ("random", "snip", "iter_snip", "force")
LABELS = {"dense": "dense", "random": "Random", "snip": "SNIP", "iter_snip": "Iter SNIP", "force": "FORCE"}
DEFAULTS = dict(sparsities=(0.9, 0.99, 0.995, 0.998), seeds=2, epochs=10, iterations=30)
QUICK = dict(sparsities=(0.99, 0.998), seeds=1, epochs=2, iterations=5)
MODEL = "digits_cnn"
BATCH_SIZE = 64
PRUNE_BATCH_SIZE = 128


@dataclass
class DemoResult:
    runs: list[dict]
    table: str
    files: list[str]
    seconds: float

    def accuracy(self, method: str, sparsity: float) -> float:
        """Mean test accuracy (0..1) over seeds of one cell."""
        return statistics.mean(r["test_acc"] for r in self.runs
                               if r["method"] == method and r["sparsity"] == sparsity)


def masks_fingerprint(masks) -> str:
    """A short hash of every layer's name and mask bits: equal fingerprints, equal masks."""
    h = hashlib.sha256()
    for name, m in masks.items():
        h.update(name.encode())
        h.update(m.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _environment(jobs: int) -> dict:
    """What a run's numbers depend on: the convolutions' gradients change in their last bits with
    the CPU, the thread count and the torch version, and FORCE's masks with them."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__)), timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "cpu": cpu,
            "usable_cpus": _usable_cpus(), "threads_per_run": 1, "jobs": jobs, "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(), "git_commit": commit}


def _run_one(task: dict) -> dict:
    """Prune and train one (method, sparsity, seed); module level so worker processes can run it."""
    from . import data as sfdata
    from .models import get_model
    from .pruning import prune
    from .train import evaluate, fit, get_splits

    threads = task.get("threads")
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        seed, method, sparsity = task["seed"], task["method"], task["sparsity"]
        train, val, test = get_splits("digits", seed=0)  # one fixed split; seeds vary init and order
        torch.manual_seed(seed)
        model = get_model(MODEL)  # the same θ0 for every method at a given seed
        t0 = time.perf_counter()
        if method == "dense":
            masks = None
        elif method == "random":
            masks = prune(model, None, method="random", sparsity=sparsity, seed=seed)
        else:
            loader = sfdata.make_loader(train, batch_size=PRUNE_BATCH_SIZE, shuffle=True, seed=seed)
            kw = {"iterations": task["iterations"]} if method in ("force", "iter_snip") else {}
            masks = prune(model, loader, method=method, sparsity=sparsity, **kw)
        t1 = time.perf_counter()
        # Only the final accuracies are reported: no per-epoch evaluation (about 10 % of the time).
        res = fit(model, masks, train, None, None, recipe="cifar", epochs=task["epochs"], batch_size=BATCH_SIZE,
                  seed=seed, progress=False)
        t2 = time.perf_counter()
        final = dict(res.final)
        for split, ds in (("val", val), ("test", test)):
            m = evaluate(model, sfdata.make_loader(ds, batch_size=512, shuffle=False))
            final[f"{split}_acc"] = m["acc"]
        layers = [(r.name, r.numel, r.kept) for r in masks.per_layer()] if masks is not None else []
        return {**{k: task[k] for k in ("method", "sparsity", "seed", "epochs")},
                "iterations": task["iterations"] if method in ("force", "iter_snip") else None,
                "test_acc": final["test_acc"], "val_acc": final["val_acc"],
                "train_acc": final["train_acc"], "train_loss": final["train_loss"],
                "layers": layers, "empty_layers": [n for n, _, k in layers if k == 0],
                "masks_sha256": masks_fingerprint(masks) if masks is not None else None,
                "prune_s": round(t1 - t0, 2), "train_s": round(t2 - t1, 2)}
    finally:
        torch.set_num_threads(old_threads)


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _fmt_sparsity(s: float) -> str:
    return f"{s * 100:.10g}%"


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _table(runs: list[dict], sparsities, methods, n_seeds: int, markdown: bool) -> str:
    numel = next((sum(n for _, n, _ in r["layers"]) for r in runs if r["layers"]), None)

    def cell(method, sparsity):
        rs = [r for r in runs if r["method"] == method and r["sparsity"] == sparsity]
        if not rs:
            return "-"
        m, s = _mean_std([100 * r["test_acc"] for r in rs])
        text = f"{m:.1f} ± {s:.1f}" if n_seeds > 1 else f"{m:.1f}"
        collapsed = sum(bool(r["empty_layers"]) for r in rs)
        return text + (" †" if collapsed else "")

    header = ["method"] + [_fmt_sparsity(s) for s in sparsities]
    body = [[LABELS[m]] + [cell(m, s) for s in sparsities] for m in methods]
    foot = ["weights left"] + [f"{round(numel * (1 - s)):,}" for s in sparsities] if numel else None
    dense = [r for r in runs if r["method"] == "dense"]
    if markdown:
        lines = ["| " + " | ".join(r) + " |" for r in [header] + body + ([foot] if foot else [])]
        lines.insert(1, "|" + "---|" * len(header))
    else:
        every = [header] + body + ([foot] if foot else [])
        widths = [max(len(r[i]) for r in every) for i in range(len(header))]

        def fmt(r):
            return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

        rule = "-" * len(fmt(header))
        lines = [fmt(header), rule] + [fmt(r) for r in body] + ([rule, fmt(foot)] if foot else [])
    notes = []
    if dense:
        m, s = _mean_std([100 * r["test_acc"] for r in dense])
        notes.append(f"dense (unpruned) network: {m:.1f}" + (f" ± {s:.1f}" if len(dense) > 1 else ""))
    notes.append("† a layer was left with no weights at all (layer collapse)"
                 + (" in at least one seed" if n_seeds > 1 else ""))
    notes.append("chance level: 10.0")
    return "\n".join(lines) + "\n\n" + "\n".join(notes)


COLORS = {"random": "tab:gray", "snip": "tab:orange", "iter_snip": "tab:green", "force": "tab:blue"}


def _pyplot():
    import matplotlib
    matplotlib.use("Agg", force=True)  # headless: no display needed, works under pytest and ssh
    import matplotlib.pyplot as plt
    return plt


def _plots(runs, sparsities, methods, out_dir) -> list[str]:
    plt = _pyplot()
    files = []
    for name, fig in (("accuracy_vs_sparsity.png", _accuracy_figure(runs, sparsities, methods)),
                      ("layer_density.png", _density_figure(runs, sparsities, methods))):
        path = os.path.join(out_dir, name)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        files.append(path)
    return files


def _accuracy_figure(runs, sparsities, methods):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.6, 4.2))
    xs = list(range(len(sparsities)))
    for m in methods:
        means, stds = [], []
        for s in sparsities:
            accs = [100 * r["test_acc"] for r in runs if r["method"] == m and r["sparsity"] == s]
            mu, sd = _mean_std(accs) if accs else (float("nan"), 0.0)
            means.append(mu)
            stds.append(sd)
        ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=LABELS[m], color=COLORS.get(m))
    dense = [100 * r["test_acc"] for r in runs if r["method"] == "dense"]
    if dense:
        ax.axhline(statistics.mean(dense), color="black", linestyle="--", linewidth=1, label="dense")
    ax.axhline(10, color="red", linestyle=":", linewidth=1, label="chance")
    ax.set_xticks(xs, [_fmt_sparsity(s) for s in sparsities])
    ax.set_xlabel("sparsity (fraction of weights removed at initialization)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 103)  # room above for the dense line
    ax.set_title(f"{MODEL} on 8x8 digits: accuracy after pruning at init")
    ax.grid(alpha=0.3)
    # Beside the axes: inside them, any corner can hold some method's points.
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0, fontsize=8)
    fig.tight_layout()
    return fig


def _density_figure(runs, sparsities, methods):
    """Per-layer density of one seed's masks: where each method spends its weights."""
    plt = _pyplot()
    shown = [m for m in ("snip", "iter_snip", "force") if m in methods] or list(methods)
    seed0 = min(r["seed"] for r in runs)
    fig, axes = plt.subplots(1, len(sparsities), figsize=(3.2 * len(sparsities) + 0.8, 4.2), sharey=True,
                             squeeze=False)
    floor = 1e-5
    for ax, s in zip(axes[0], sparsities):
        names = None
        width = 0.8 / max(len(shown), 1)
        for j, m in enumerate(shown):
            r = next((r for r in runs if r["method"] == m and r["sparsity"] == s and r["seed"] == seed0), None)
            if r is None:
                continue
            names = [f"{n.replace('.weight', '')}\n{k:,}" for n, k, _ in r["layers"]]
            dens = [k / n for _, n, k in r["layers"]]
            pos = [i + (j - (len(shown) - 1) / 2) * width for i in range(len(dens))]
            ax.bar(pos, [max(d, floor) for d in dens], width=width, color=COLORS[m], label=LABELS[m])
            for x, d in zip(pos, dens):
                if d == 0:
                    ax.text(x, floor * 1.3, "0", ha="center", va="bottom", color="red", fontsize=9, fontweight="bold")
        ax.axhline(1 - s, color="black", linestyle="--", linewidth=1)
        ax.set_yscale("log")
        ax.set_ylim(floor, 1.5)
        ax.set_title(f"sparsity {_fmt_sparsity(s)}", fontsize=10)
        if names:
            ax.set_xticks(range(len(names)), names, fontsize=7)
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel("fraction of the layer's weights kept")
    handles, labels = axes[0][0].get_legend_handles_labels()
    # Below the plots: the title line above is as wide as the figure.
    fig.legend(handles, labels, loc="lower center", ncol=len(shown), fontsize=8, frameon=False)
    fig.suptitle(f"Per-layer density of {MODEL} (under each layer: its size; dashed: overall density; "
                 "red 0: layer emptied)", fontsize=9, x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0.06, 1, 0.94))
    return fig


def run_demo(out_dir: str = "sparseforce-demo", *, sparsities=None, methods=METHODS, seeds=None, epochs=None,
             iterations=None, jobs=None, quick: bool = False, dense: bool = True, log=print) -> DemoResult:
    """Run the demo grid and write its table, raw results and plots to ``out_dir``.

    ``quick`` uses a reduced grid (2 sparsities, 1 seed, 2 epochs, 5 pruning steps) that runs in
    seconds. ``jobs`` worker processes (default: one per usable CPU core) each run one
    single-threaded training at a time, which on small CPUs is much faster than one multi-threaded
    training after another; ``jobs=1`` runs everything in this process.
    """
    cfg = dict(QUICK if quick else DEFAULTS)
    for k, v in (("sparsities", sparsities), ("seeds", seeds), ("epochs", epochs), ("iterations", iterations)):
        if v is not None:
            cfg[k] = v
    sparsities = tuple(sorted(float(s) for s in cfg["sparsities"]))
    for s in sparsities:
        if not 0 < s < 1:
            raise ValueError(f"sparsities must lie strictly between 0 and 1, got {s}")
    unknown = [m for m in methods if m not in LABELS or m == "dense"]
    if unknown:
        raise ValueError(f"unknown demo methods {unknown}; choose from {list(METHODS)}")
    if cfg["seeds"] < 1 or cfg["epochs"] < 1 or cfg["iterations"] < 1:
        raise ValueError("seeds, epochs and iterations must be >= 1")
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise ValueError(f"jobs must be an integer >= 1 (or None: one per CPU core), got {jobs!r}")
    os.makedirs(out_dir, exist_ok=True)

    tasks = [{"method": m, "sparsity": s, "seed": seed, "epochs": cfg["epochs"], "iterations": cfg["iterations"]}
             for seed in range(cfg["seeds"]) for s in sparsities for m in methods]
    if dense:
        tasks += [{"method": "dense", "sparsity": 0.0, "seed": seed, "epochs": cfg["epochs"],
                   "iterations": cfg["iterations"]} for seed in range(cfg["seeds"])]
    # The progressive methods take longest; starting them first keeps the workers evenly busy.
    tasks.sort(key=lambda t: t["method"] not in ("force", "iter_snip"))
    jobs = max(1, min(_usable_cpus() if jobs is None else jobs, len(tasks)))
    for t in tasks:
        t["threads"] = 1  # same arithmetic in every mode, so results do not depend on --jobs

    n = len(tasks)
    log(f"sparseforce demo: {MODEL} on 8x8 digits, methods {', '.join(LABELS[m] for m in methods)}, "
        f"sparsities {', '.join(_fmt_sparsity(s) for s in sparsities)}, {cfg['seeds']} seed(s), "
        f"{cfg['epochs']} epochs each; {n} runs on {jobs} process(es)")
    start = time.perf_counter()
    runs: list[dict] = []

    def report(r):
        runs.append(r)
        where = f" {'' if r['method'] == 'dense' else _fmt_sparsity(r['sparsity']):>6}"
        empty = f"  empty layers: {', '.join(r['empty_layers'])}" if r["empty_layers"] else ""
        log(f"[{len(runs):>{len(str(n))}}/{n}] {LABELS[r['method']]:<9}{where} seed {r['seed']}: "
            f"test {100 * r['test_acc']:5.1f}%  (prune {r['prune_s']:.1f} s, train {r['train_s']:.1f} s){empty}")

    if jobs == 1:
        for t in tasks:
            report(_run_one(t))
    else:
        import multiprocessing
        # spawn, not fork: forking a process whose OpenMP pool is already running can hang.
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as ex:
            futures = [ex.submit(_run_one, t) for t in tasks]
            for f in as_completed(futures):
                report(f.result())
    elapsed = time.perf_counter() - start

    order = {m: i for i, m in enumerate(("dense",) + tuple(methods))}
    runs.sort(key=lambda r: (order[r["method"]], r["sparsity"], r["seed"]))
    title = (f"Test accuracy (%) of {MODEL} on 8x8 digits after pruning at initialization and "
             f"{cfg['epochs']} epochs of training"
             + (f", mean ± std over {cfg['seeds']} seeds" if cfg["seeds"] > 1 else ""))
    text = _table(runs, sparsities, methods, cfg["seeds"], markdown=False)
    md = _table(runs, sparsities, methods, cfg["seeds"], markdown=True)

    files = []
    path = os.path.join(out_dir, "results.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"model": MODEL, "config": {**cfg, "sparsities": list(sparsities), "methods": list(methods),
                                              "batch_size": BATCH_SIZE, "prune_batch_size": PRUNE_BATCH_SIZE},
                   "environment": _environment(jobs), "seconds": round(elapsed, 1), "runs": runs}, f, indent=1)
    files.append(path)
    path = os.path.join(out_dir, "table.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write(title + "\n\n" + md + "\n")
    files.append(path)
    files += _plots(runs, sparsities, methods, out_dir)

    log("")
    log(title + ":")
    log("")
    log(text)
    log("")
    log(f"{n} runs in {elapsed:.0f} s. Files:")
    for p in files:
        log(f"  {p}")
    sys.stdout.flush()
    return DemoResult(runs, text, files, elapsed)
