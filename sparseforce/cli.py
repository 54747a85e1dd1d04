"""The ``sparseforce`` command."""
from __future__ import annotations

import argparse
import sys
import time


def _default_model(dataset: str) -> str:
    return {"digits": "digits_cnn", "imagenet": "resnet50_imagenet"}.get(dataset, "resnet50")


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
    from .models import get_model
    from .pruning import DATA_FREE, prune

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model_name = args.model or _default_model(args.dataset)
    dataset = sfdata.get_dataset(args.dataset, args.data_dir, split="train", seed=args.seed)
    num_classes = sfdata.NUM_CLASSES[args.dataset.lower().replace("-", "").replace("_", "")]
    torch.manual_seed(args.seed)
    model = get_model(model_name, num_classes=num_classes).to(device)
    loader = sfdata.make_loader(dataset, batch_size=args.batch_size, shuffle=True, seed=args.seed)

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

    print(f"{args.method} on {model_name} / {args.dataset}, sparsity {args.sparsity}, device {device}", flush=True)
    start = time.perf_counter()
    masks = prune(model, data, method=args.method, sparsity=args.sparsity, **kw)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    print(masks.per_layer())
    print(f"kept {masks.num_kept():,} of {masks.numel():,} prunable weights "
          f"(density {masks.density():.4%}) in {elapsed:.2f} s")
    masks.save(args.out)
    print(f"saved masks to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparseforce",
        description="Pruning at initialization: FORCE, Iter SNIP, SNIP, GraSP, SynFlow, magnitude, random.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_prune(sub)
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
