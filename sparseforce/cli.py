"""The ``sparseforce`` command."""
from __future__ import annotations

import argparse
import math
import os
import sys
import time


def _default_model(dataset: str) -> str:
    return {"digits": "digits_cnn", "imagenet": "resnet50_imagenet"}.get(dataset, "resnet50")


# The paper says "VGG19" for its VGG19 with batch norm.
_MODEL_ALIASES = {"vgg19": "vgg19_bn"}


def _add_prune(sub):
    from .pruning import METHODS
    p = sub.add_parser(
        "prune", help="compute pruning masks for a model and data set, print a per-layer table, save them",
        description="Compute pruning masks at initialization and save them (sparseforce.Masks file). "
                    "Example: sparseforce prune --dataset digits --method force --sparsity 0.99 --out masks.pt",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default="digits",
                   help="digits (scikit-learn's 8x8 digits, no download, no --data-dir), cifar10, cifar100, "
                        "tinyimagenet or imagenet")
    p.add_argument("--data-dir", default=None,
                   help="folder holding the extracted data set (CIFAR python batches, tiny-imagenet-200, "
                        "ImageNet train/ val/ class folders)")
    p.add_argument("--model", default=None,
                   help="resnet50, vgg19_bn (CIFAR variants), resnet50_imagenet, vgg19_bn_imagenet, mlp, lenet5, "
                        "digits_cnn; default: digits_cnn for digits, resnet50_imagenet for imagenet, else resnet50")
    p.add_argument("--method", default="force", choices=sorted(METHODS))
    p.add_argument("--sparsity", type=float, default=0.99, help="fraction of prunable weights to remove")
    p.add_argument("--iterations", type=int, default=None,
                   help="steps of the progressive methods (default 60; SynFlow 100)")
    p.add_argument("--schedule", default="exp", choices=["exp", "linear"])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--batches-per-iteration", type=int, default=1)
    p.add_argument("--seed", type=int, default=0, help="seeds the model's initialisation, the split and the data order")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--backend", default="auto", choices=["auto", "reference", "cpp", "cuda", "triton"])
    p.add_argument("--out", default="masks.pt", help="where to save the masks")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=sys.stderr.isatty(),
                   help="show a progress bar")
    p.set_defaults(func=_prune)


def _prune(args) -> int:
    import torch

    from . import data as sfdata
    from .masks import format_percent

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model_name = _MODEL_ALIASES.get(args.model, args.model) or _default_model(args.dataset)
    dataset = sfdata.get_dataset(args.dataset, args.data_dir, split="train", seed=args.seed)
    num_classes = sfdata.NUM_CLASSES[args.dataset.lower().replace("-", "").replace("_", "")]
    torch.manual_seed(args.seed)
    model = _build_model(model_name, args.dataset, num_classes).to(device)
    loader = sfdata.make_loader(dataset, batch_size=args.batch_size, shuffle=True, seed=args.seed)
    print(f"{args.method} on {model_name} / {args.dataset}, sparsity {args.sparsity}, device {device}", flush=True)
    start = time.perf_counter()
    masks = _compute_masks(args, model, loader)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
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


def _compute_masks(args, model, loader):
    from .pruning import DATA_FREE, prune

    kw = {}
    if args.method in ("force", "iter_snip", "synflow"):
        kw.update(iterations=args.iterations or (100 if args.method == "synflow" else 60), schedule=args.schedule,
                  progress=args.progress)
    if args.method in ("force", "iter_snip", "snip", "grasp"):
        kw["batches_per_iteration"] = args.batches_per_iteration
    if args.method == "random":
        kw["seed"] = args.seed
    else:
        kw["backend"] = args.backend
    data = loader if args.method not in DATA_FREE or args.method == "synflow" else None
    return prune(model, data, method=args.method, sparsity=args.sparsity, **kw)


class _NoneDefaultFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Leaves out "(default: None)": such options state their default in their help, being None only
    so that --resume can tell them given from left out."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def _add_train(sub):
    from .pruning import METHODS
    p = sub.add_parser(
        "train", help="prune at initialization (or load masks), then train with the paper's recipe; resumable",
        description="Prune a freshly initialized model (unless --masks is given), then train it with pruned weights "
                    "held at exactly 0, evaluating, logging and checkpointing every epoch. Example: sparseforce "
                    "train --model vgg19_bn --dataset cifar10 --data-dir data --method force --sparsity 0.995 "
                    "--out runs/vgg_force; after a crash: sparseforce train --out runs/vgg_force --resume.",
        formatter_class=_NoneDefaultFormatter)
    p.add_argument("--dataset", default=None,
                   help="cifar10, cifar100, tinyimagenet, imagenet or digits (default: cifar10)")
    p.add_argument("--data-dir", default=None, help="folder holding the extracted data set (not needed for digits)")
    p.add_argument("--model", default=None,
                   help="resnet50, vgg19_bn, resnet50_imagenet, vgg19_bn_imagenet, mlp, lenet5, digits_cnn; "
                        "default: digits_cnn for digits, resnet50_imagenet for imagenet, else resnet50")
    p.add_argument("--out", required=True, help="run folder: masks.pt, checkpoint.pt, log.jsonl, log.csv, result.json")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint, with the settings stored in it: no other "
                        "option is needed; one given with another value than the checkpoint's is refused "
                        "(--data-dir, --device, --backend, --num-workers, --progress and --stop-after-epoch "
                        "may change)")
    p.add_argument("--overwrite", action="store_true", help="start again even if --out holds a checkpoint")
    g = p.add_argument_group("pruning (skipped with --masks or --resume)")
    g.add_argument("--method", default=None, choices=sorted(METHODS), help="(default: force)")
    g.add_argument("--sparsity", type=float, default=None, help="fraction of prunable weights to remove "
                                                                "(default: 0.995)")
    g.add_argument("--masks", default=None, help="train with these masks (a file from `sparseforce prune`) instead")
    g.add_argument("--iterations", type=int, default=None,
                   help="steps of the progressive methods (default 60; SynFlow 100)")
    g.add_argument("--schedule", default=None, choices=["exp", "linear"], help="(default: exp)")
    g.add_argument("--batches-per-iteration", type=int, default=None, help="(default: 1)")
    g = p.add_argument_group("training (defaults: the recipe's)")
    g.add_argument("--recipe", default=None, choices=["cifar", "tinyimagenet"],  # train.RECIPES, not imported here
                   help="cifar: 350 epochs, lr 0.1 /10 at 150 and 250; tinyimagenet: 300 epochs, /10 at 150 and 225 "
                        "(default: tinyimagenet for tinyimagenet, else cifar)")
    g.add_argument("--epochs", type=int, default=None, help="a different count rescales the milestones")
    g.add_argument("--lr", type=float, default=None)
    g.add_argument("--momentum", type=float, default=None)
    g.add_argument("--weight-decay", type=float, default=None)
    g.add_argument("--milestones", type=int, nargs="+", default=None, help="epochs after which lr is divided by 10")
    g.add_argument("--batch-size", type=int, default=None, help="training (and pruning) batch size; recipe: 128")
    g.add_argument("--optimizer", default=None, choices=["sgd", "adamw"])
    g.add_argument("--stop-after-epoch", type=int, default=None,
                   help="stop after this epoch (checkpoint written); continue later with --resume")
    p.add_argument("--seed", type=int, default=None,
                   help="seeds initialization, split, data order and augmentation (default: 0)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--backend", default=None, choices=["auto", "reference", "cpp", "cuda", "triton"],
                   help="(default: auto)")
    p.add_argument("--num-workers", type=int, default=None, help="data loader worker processes (default: 0)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=sys.stderr.isatty(),
                   help="show progress bars")
    p.set_defaults(func=_train)


# The defaults of the `train` options that --resume takes from the checkpoint; applied after it,
# so that an option given on the command line can be told from one left out.
_TRAIN_DEFAULTS = {"dataset": "cifar10", "method": "force", "sparsity": 0.995, "schedule": "exp",
                   "batches_per_iteration": 1, "seed": 0, "backend": "auto", "num_workers": 0}
_PRUNING_OPTIONS = ("method", "sparsity", "iterations", "schedule", "batches_per_iteration")
# What defines a run: taken from the checkpoint on --resume, and refused there with another value.
# The recipe's numbers come from the checkpoint's config, the rest from the settings stored with it.
_RUN_OPTIONS = ("dataset", "model", "recipe", "seed") + _PRUNING_OPTIONS
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


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def _show(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _train(args) -> int:
    import torch

    from . import data as sfdata
    from .masks import Masks, _remove_stale_temporaries, format_percent
    from .train import CHECKPOINT_NAME, RECIPES, fit, get_splits, load_checkpoint

    ckpt_path = os.path.join(args.out, CHECKPOINT_NAME)
    if args.resume:
        if args.overwrite:
            raise ValueError("--resume and --overwrite contradict each other: --resume continues the run in --out, "
                             "--overwrite starts it again")
        if not os.path.exists(ckpt_path):
            raise FileNotFoundError(f"--resume: no checkpoint to continue: {ckpt_path!r} does not exist (start the "
                                    "run without --resume)")
        _take_run_settings(args, load_checkpoint(ckpt_path), ckpt_path)
        # The only file of the run folder that a resumed run does not write again.
        _remove_stale_temporaries(os.path.abspath(args.out), "masks.pt")
    elif not args.overwrite and os.path.exists(ckpt_path):
        raise ValueError(f"{args.out!r} already holds a checkpoint: add --resume to continue it, --overwrite to "
                         "start again, or choose another --out")
    for k, v in _TRAIN_DEFAULTS.items():
        if getattr(args, k) is None:
            setattr(args, k, v)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    key = sfdata._canonical_name(args.dataset)
    if key not in sfdata.NUM_CLASSES:
        raise ValueError(f"unknown data set {args.dataset!r}; valid names: {', '.join(sfdata.NUM_CLASSES)}")
    model_name = _MODEL_ALIASES.get(args.model, args.model) or _default_model(key)
    recipe_name = args.recipe or ("tinyimagenet" if key == "tinyimagenet" else "cifar")
    recipe = RECIPES[recipe_name]
    if args.iterations is None:
        args.iterations = 100 if args.method == "synflow" else 60
    train, val, test = get_splits(key, args.data_dir, seed=args.seed, val_fraction=recipe.val_fraction,
                                  augment=recipe.augment)
    torch.manual_seed(args.seed)
    model = _build_model(model_name, key, sfdata.NUM_CLASSES[key]).to(device)
    batch_size = args.batch_size or recipe.batch_size

    masks = None  # on resume the checkpoint's
    if not args.resume:
        os.makedirs(args.out, exist_ok=True)
        if args.masks:
            masks = Masks.load(args.masks, model=model)
            print(f"loaded masks from {args.masks}")
        else:
            loader = sfdata.make_loader(train, batch_size=batch_size, shuffle=True, seed=args.seed)
            print(f"{args.method} on {model_name} / {args.dataset}, sparsity {args.sparsity}, device {device}",
                  flush=True)
            start = time.perf_counter()
            masks = _compute_masks(args, model, loader)
            print(masks.per_layer())
            print(f"pruned in {time.perf_counter() - start:.2f} s")
        print(f"kept {masks.num_kept():,} of {masks.numel():,} prunable weights "
              f"(density {format_percent(masks.num_kept(), masks.numel())})")
        masks.save(os.path.join(args.out, "masks.pt"))

    # What --resume reads back (the recipe's numbers are in the checkpoint's config).
    meta = {k: getattr(args, k) for k in _RUN_OPTIONS + _PLACE_OPTIONS + ("masks",)}
    meta.update(dataset=key, model=model_name, recipe=recipe_name,
                data_dir=os.path.abspath(args.data_dir) if args.data_dir else None)
    if args.masks:
        meta.update(dict.fromkeys(_PRUNING_OPTIONS))  # nothing was pruned
    result = fit(model, masks, train, val, test, recipe=recipe, epochs=args.epochs, lr=args.lr,
                 momentum=args.momentum, weight_decay=args.weight_decay, milestones=args.milestones,
                 batch_size=batch_size, optimizer=args.optimizer, device=device, out_dir=args.out,
                 resume=args.resume, overwrite=args.overwrite, seed=args.seed, num_workers=args.num_workers,
                 progress=args.progress, verbose=True, backend=args.backend,
                 stop_after_epoch=args.stop_after_epoch, meta=meta)
    final, best = result.final, result.best
    if final is not None:
        done = final["epoch"] >= result.recipe.epochs
        print(("finished" if done else f"stopped after epoch {final['epoch']} of {result.recipe.epochs} "
               f"(continue with `sparseforce train --out {args.out} --resume`);")
              + (f" test accuracy {final['test_acc']:.2%}" if "test_acc" in final else "")
              + (f"; best validation {best['val_acc']:.2%} at epoch {best['epoch']}" if "val_acc" in best else ""))
    print(f"run folder: {args.out}")
    return 0


def _add_demo(sub):
    p = sub.add_parser(
        "demo", help="the paper's claim in a few CPU minutes: FORCE / Iter SNIP vs SNIP / random at extreme sparsity",
        description="Prune a small CNN on scikit-learn's 8x8 digits (offline) with random, SNIP, Iter SNIP and FORCE "
                    "at extreme sparsities, train each briefly, and print a table of test accuracy; writes the table, "
                    "the raw results and two plots to --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="sparseforce-demo", help="output folder")
    p.add_argument("--sparsities", type=float, nargs="+", default=None,
                   help="default: 0.9 0.99 0.995 0.998 (--quick: 0.99 0.998)")
    p.add_argument("--seeds", type=int, default=None, help="seeds averaged per cell (default 2; --quick 1)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs per run (default 10; --quick 2)")
    p.add_argument("--iterations", type=int, default=None, help="FORCE / Iter SNIP steps (default 30; --quick 5)")
    p.add_argument("--jobs", type=int, default=None, help="parallel worker processes (default: one per CPU core)")
    p.add_argument("--quick", action="store_true", help="a reduced run (seconds) that exercises everything")
    p.set_defaults(func=_demo)


def _demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out, sparsities=args.sparsities, seeds=args.seeds, epochs=args.epochs,
             iterations=args.iterations, jobs=args.jobs, quick=args.quick)
    return 0


def _add_bench(sub):
    p = sub.add_parser(
        "bench", help="time selection, masked SGD and a FORCE run: baseline vs every available backend",
        description="Benchmark today's practice (per-layer |w*g|, torch.cat, torch.topk, >=) against the reference "
                    "and every available backend, side by side in one run, next to the memory-bandwidth floor "
                    "measured in the same run. Prints a table; writes JSON and a PNG plot to --out. Sizes scale "
                    "down on a CPU; --full adds the big cases. The default run takes about 4 minutes on a 2-core CPU, "
                    "--quick about 2 minutes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--quick", action="store_true",
                   help="a short run: every case at 1/8 of its size (--scale 8) and no minimum time (--min-time 0), "
                        "so 3 timed runs per implementation, 2 for the end-to-end cases")
    p.add_argument("--full", action="store_true", help="add the 1 B-parameter case on CPU (needs ~16 GB)")
    p.add_argument("--out", default="sparseforce-bench",
                   help="folder for the JSON and PNG results, relative to the current directory "
                        "(the committed runs are in the repository's benchmarks/results)")
    p.add_argument("--min-time", type=float, default=None, metavar="SECONDS",
                   help="seconds of repeats per measurement, at least 3 runs (2 end to end); 1 unless --quick")
    p.add_argument("--only", default=None, help="run only cases whose name contains this text")
    p.add_argument("--scale", type=int, default=None, metavar="N",
                   help="divide every layer's output channels by N: the layer sets of the kernel cases "
                        "(parameters / N) and the ResNet50 of the end-to-end cases (parameters about / N^2); "
                        "a quick look, not the reported sizes; 1 unless --quick (8)")
    p.add_argument("--max-case-time", type=float, default=None, metavar="SECONDS",
                   help="cap each case's repetitions at about this many seconds, shared by its impls "
                        "(each still runs once after its warm-up)")
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
    bench.run(device=args.device, full=args.full, out_dir=args.out, min_time=args.min_time, only=args.only,
              scale=args.scale, max_case_s=args.max_case_time, quick=args.quick)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparseforce",
        description="Pruning at initialization: FORCE, Iter SNIP, SNIP, GraSP, SynFlow, magnitude, random. "
                    "Start with `sparseforce demo`.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_prune(sub)
    _add_train(sub)
    _add_demo(sub)
    _add_bench(sub)
    from .ddp import add_parser as _add_ddp  # after bench: the help lists the one-process commands first
    _add_ddp(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, TypeError) as e:
        print(f"sparseforce {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
