"""``sparseforce prune``: masks for a freshly initialized model, printed per layer and saved."""
from __future__ import annotations

import time

from . import checks
from .methods import (announce, compute_masks, convention_kwargs, fill_sparsity, method, needed_ops, pruning_kwargs,
                      shuffle_if_asked)
from .options import add_ablation, add_common, add_data_and_model, add_pruning, positive_int


HELP = "compute pruning masks for a model and data set, print a per-layer table, save them"
DESCRIPTION = ("Compute pruning masks at initialization and save them (sparseforce.Masks file). "
               "Example: sparseforce prune --dataset digits --method force --sparsity 0.99 --out masks.pt")
SPARSITY = 0.99  # --sparsity left out (and no --nm)


def add_arguments(p) -> None:
    add_data_and_model(p)
    add_pruning(p, sparsity=SPARSITY)
    add_ablation(p, ("shuffle", "invert"))
    p.add_argument("--k-rounding", default="round", choices=["round", "floor", "ceil", "synflow"],
                   help="how each step's density d becomes the kept count out of N: round(N*d), floor (the official "
                        "FORCE code), ceil, or synflow (N - floor((1-d)*N), Synaptic-Flow's)")
    p.add_argument("--eval-mode-scores", action="store_true",
                   help="take the gradients of force, iter_snip, snip and grasp with the model in eval mode "
                        "(BatchNorm uses its running statistics; Synaptic-Flow's default) instead of train mode")
    p.add_argument("--batch-size", type=positive_int, default=128, metavar="N", help="batch size of the pruning data")
    p.add_argument("--out", default="masks.pt", metavar="FILE", help="where to save the masks")
    add_common(p, progress="a progress bar", backend="the mask computation")


def _check(args):
    """Every argument of ``prune``, before any work; returns the device and the model's name."""
    device = checks.checked_device(args.device)
    entry = method(args.method)
    if "backend" not in entry.options and args.backend != "auto":
        raise ValueError(f"--backend does not apply to --method {args.method}, which computes no scores")
    pruning_kwargs(args)  # before filling in --sparsity, which a given --nm may not contradict
    fill_sparsity(args, SPARSITY)
    checks.check_backend(args.backend, device, needed_ops(args))
    convention_kwargs(args)
    model_name = checks.checked_model_and_data(args)
    checks.check_out_file(args.out)
    return device, model_name


def run(args) -> int:
    device, model_name = _check(args)
    import torch

    from .. import data as sfdata
    from ..masks import format_percent

    dataset = sfdata.get_dataset(args.dataset, args.data_dir, split="train", seed=args.seed)
    torch.manual_seed(args.seed)
    model = checks.build_model(model_name, args.dataset, sfdata.NUM_CLASSES[args.dataset]).to(device)
    loader = sfdata.make_loader(dataset, batch_size=args.batch_size, shuffle=True, seed=args.seed)
    announce(args, model_name, device)
    start = time.perf_counter()
    masks = compute_masks(args, model, loader, **convention_kwargs(args))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    masks = shuffle_if_asked(args, masks)
    print(masks.per_layer())
    print(f"kept {masks.num_kept():,} of {masks.numel():,} prunable weights "
          f"(density {format_percent(masks.num_kept(), masks.numel())}) in {elapsed:.2f} s")
    masks.save(args.out)
    print(f"saved masks to {args.out}")
    return 0
