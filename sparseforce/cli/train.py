"""``sparseforce train``: prune (or load masks), then train with the paper's recipe, resumable."""
from __future__ import annotations

import argparse
import math
import os
import time

from . import checks
from .dynamic import add_dst, check_dst, check_dst_on, dst_options, resolve_dst, starts_dense
from .methods import ablation_seed, announce, compute_masks, fill_sparsity, needed_ops, pruning_kwargs, shuffle_if_asked
from .options import (ABLATION_NAMES, MODEL_ALIASES, add_ablation, add_common, add_data_and_model,
                      add_pruning, momentum, non_negative_float, non_negative_int, positive_float, positive_int,
                      show_progress)


class Interrupted(Exception):
    """Ctrl-C, with what survived it and how to go on."""


HELP = "prune at initialization (or load masks), then train with the paper's recipe; resumable"
DESCRIPTION = ("Prune a freshly initialized model (unless --masks is given), then train it with pruned weights "
               "held at exactly 0, evaluating, logging and checkpointing every epoch. Example: sparseforce "
               "train --model vgg19_bn --dataset cifar10 --data-dir data --method force --sparsity 0.995 "
               "--out runs/vgg_force; after a crash add --resume.")


def add_arguments(p) -> None:
    add_data_and_model(p, resumable=True)
    p.add_argument("--out", required=True, metavar="DIR",
                   help="run folder, created if missing: masks.pt, checkpoint.pt, log.jsonl, log.csv, result.json")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint, with the settings stored in it: no other "
                        "option is needed; one given with another value than the checkpoint's is refused "
                        "(--data-dir, --device, --backend, --num-workers, --progress and --stop-after-epoch "
                        "may change)")
    p.add_argument("--overwrite", action="store_true", help="start again even if --out holds a checkpoint")
    g = p.add_argument_group("pruning (skipped with --masks or --resume)")
    add_pruning(g, sparsity=0.995, resumable=True)
    g.add_argument("--masks", default=None, metavar="FILE",
                   help="train with these masks (a file from `sparseforce prune`) instead of pruning "
                        "(default: prune with --method)")
    add_ablation(g, ABLATION_NAMES)
    add_dst(p.add_argument_group("dynamic sparse training (the masks change during training)"))
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
    add_common(p, progress="progress bars", backend="the mask computation and the masked update", resumable=True)


def _recipe_name(args) -> str:
    return args.recipe if args.recipe is not None else ("tinyimagenet" if args.dataset == "tinyimagenet" else "cifar")


def _check(args):
    """Every argument of ``train``, before any work; returns the device and the model's name."""
    from ..train.resume import show_value

    if args.milestones is not None and any(b <= a for a, b in zip(args.milestones, args.milestones[1:])):
        raise ValueError(f"--milestones must be increasing, got {' '.join(map(str, args.milestones))}")
    # (On --resume the recipe's momentum comes back from the checkpoint's config, unused by adamw.)
    if args.optimizer == "adamw" and args.momentum is not None and not args.resume:
        raise ValueError("--momentum does not apply to --optimizer adamw")
    if args.milestones is not None and not args.resume:
        # --resume cannot change --epochs, so a milestone at or past the last epoch stays dead.
        from ..train import RECIPES
        epochs = args.epochs if args.epochs is not None else RECIPES[_recipe_name(args)].epochs
        late = [m for m in args.milestones if m >= epochs]
        if late:
            whose = "" if args.epochs is not None else ", the recipe's"
            raise ValueError(f"--milestones {show_value(late)}: lr is divided after a milestone epoch, so one at or "
                             f"after the last epoch (--epochs {epochs}{whose}) never takes effect; "
                             + (f"give milestones below {epochs}" if epochs > 1 else "leave --milestones out"))
    device = checks.checked_device(args.device)
    prunes = not args.resume and args.masks is None and args.method is not None
    checks.check_backend(args.backend, device, (needed_ops(args) if prunes else ()) + ("masked_sgd_",)
                         + (("drop_grow_masks",) if args.dst is not None else ()))
    if prunes:
        pruning_kwargs(args)
    if args.ablation == "invert" and args.masks is not None and not args.resume:
        raise ValueError("--ablation invert changes how masks are computed, and --masks computes none; "
                         "use it without --masks")
    if args.masks is not None and not args.resume and not os.path.isfile(args.masks):
        raise ValueError(f"--masks {args.masks} {'is not a file' if os.path.exists(args.masks) else 'does not exist'}")
    model_name = checks.checked_model_and_data(args)
    checks.check_out_folder(args.out)
    return device, model_name


def _check_nothing_to_prune(args) -> None:
    """A fresh run on --masks, or gmp starting dense, prunes nothing at initialization: a pruning
    option given would be ignored (gmp's --sparsity is its target)."""
    from ..train.resume import PRUNING_OPTIONS, option_flag, show_value

    given = [f"{option_flag(k)} {show_value(getattr(args, k))}" for k in PRUNING_OPTIONS
             if getattr(args, k) is not None and not (k == "sparsity" and args.dst == "gmp")]
    if args.masks is None and args.ablation is not None:
        given.append(f"--ablation {args.ablation}")
    if given:
        one = len(given) == 1
        why, instead = (("--masks trains the masks it loads and prunes nothing", "prune instead of --masks")
                        if args.masks is not None else
                        ("--dst gmp without --method starts from every weight kept and prunes nothing at "
                         "initialization", "add --method and --dst-initial-sparsity"))
        raise ValueError(f"{why}, so {', '.join(given)} {'does' if one else 'do'} not apply; leave "
                         f"{'it' if one else 'them'} out, or {instead}")


def run(args) -> int:
    from ..train import resume

    if not args.resume:
        if args.masks is not None or starts_dense(args):
            _check_nothing_to_prune(args)
        check_dst(args)
        fill_sparsity(args)  # --nm's sparsity, before the defaults fill in what is left out
        resolve_dst(args)  # stored resolved, so that --resume compares what runs
    resume.resume_settings(args, MODEL_ALIASES)
    device, model_name = _check(args)
    stage = {"training": False}
    try:
        return _run(args, device, model_name, stage)
    except KeyboardInterrupt:
        raise Interrupted(resume.interrupted_message(args.out, stage["training"], args.resume)) from None


def _masks(args, model, train, batch_size: int, model_name: str, device):
    """A fresh run's masks (pruned, or loaded from --masks), reported and saved in the run folder."""
    from .. import data as sfdata
    from ..masks import Masks, format_percent

    if args.masks:
        masks = Masks.load(args.masks, model=model)
        print(f"loaded masks from {args.masks}")
    elif args.method is None:
        from ..train.dynamic import dense_masks

        masks = dense_masks(model)
        print(f"gmp starts from every prunable weight kept and prunes to sparsity {args.sparsity}")
    else:
        loader = sfdata.make_loader(train, batch_size=batch_size, shuffle=True, seed=args.seed)
        if args.dst_initial_sparsity is not None:  # gmp's start; --sparsity is its target
            args = argparse.Namespace(**{**vars(args), "sparsity": args.dst_initial_sparsity})
        announce(args, model_name, device)
        start = time.perf_counter()
        masks = compute_masks(args, model, loader)
        print(masks.per_layer())
        print(f"pruned in {time.perf_counter() - start:.2f} s")
    masks = shuffle_if_asked(args, masks)
    print(f"kept {masks.num_kept():,} of {masks.numel():,} prunable weights "
          f"(density {format_percent(masks.num_kept(), masks.numel())})")
    # Only now: a run that fails on its inputs (a corrupt --masks, masks that do not fit)
    # leaves no empty run folder behind.
    os.makedirs(args.out, exist_ok=True)
    masks.save(os.path.join(args.out, "masks.pt"))
    if args.ablation == "reinit":
        print(f"ablation: training these masks from a fresh initialization (seed {ablation_seed(args.seed)})")
    return masks


def _run(args, device, model_name: str, stage: dict) -> int:
    import torch

    from .. import data as sfdata
    from ..train import RECIPES, fit, get_splits
    from ..train.resume import PLACE_OPTIONS, PRUNING_OPTIONS, RUN_OPTIONS

    key = args.dataset
    recipe_name = _recipe_name(args)
    recipe = RECIPES[recipe_name]
    if not args.resume and args.masks is None and args.method is not None:
        # Stored resolved, so that --resume compares what ran.
        kw = pruning_kwargs(args)
        for k in ("iterations", "schedule", "batches_per_iteration", "distribution", "scope"):
            setattr(args, k, kw.get(k))
    train, val, test = get_splits(key, args.data_dir, seed=args.seed, val_fraction=recipe.val_fraction,
                                  augment=recipe.augment)
    torch.manual_seed(args.seed)
    model = checks.build_model(model_name, key, sfdata.NUM_CLASSES[key]).to(device)
    batch_size = args.batch_size if args.batch_size is not None else recipe.batch_size
    if not args.resume:
        epochs = args.epochs if args.epochs is not None else recipe.epochs
        check_dst_on(args, model, epochs * math.ceil(len(train) / batch_size))
    # On resume the checkpoint's.
    masks = None if args.resume else _masks(args, model, train, batch_size, model_name, device)

    # What --resume reads back (the recipe's numbers are in the checkpoint's config).
    meta = {k: getattr(args, k) for k in RUN_OPTIONS + PLACE_OPTIONS + ("masks",)}
    meta.update(dataset=key, model=model_name, recipe=recipe_name,
                data_dir=os.path.abspath(args.data_dir) if args.data_dir else None)
    if args.masks or args.method is None:
        # Nothing was pruned (gmp's --sparsity is its target).
        meta.update(dict.fromkeys(k for k in PRUNING_OPTIONS if not (k == "sparsity" and args.dst == "gmp")))
    stage["training"] = True
    result = fit(model, masks, train, val, test, recipe=recipe, epochs=args.epochs, lr=args.lr,
                 momentum=args.momentum, weight_decay=args.weight_decay, milestones=args.milestones,
                 batch_size=batch_size, optimizer=args.optimizer, device=device, out_dir=args.out,
                 resume=args.resume, overwrite=args.overwrite, seed=args.seed, num_workers=args.num_workers,
                 progress=show_progress(args), verbose=True, backend=args.backend,
                 stop_after_epoch=args.stop_after_epoch, meta=meta,
                 reinit=ablation_seed(args.seed) if args.ablation == "reinit" else None,
                 dst=args.dst, dst_options=dst_options(args))
    if args.dst is not None:
        result.masks.save(os.path.join(args.out, "final_masks.pt"))
        print(f"the masks after training (--dst {args.dst}), density {result.masks.density():.4%}: "
              f"{os.path.join(args.out, 'final_masks.pt')}")
    final, best = result.final, result.best
    if final is not None:
        done = final["epoch"] >= result.recipe.epochs
        print(("finished" if done else f"stopped after epoch {final['epoch']} of {result.recipe.epochs} "
               f"(continue with `sparseforce train --out {args.out} --resume`);")
              + (f" test accuracy {final['test_acc']:.2%}" if "test_acc" in final else "")
              + (f"; best validation {best['val_acc']:.2%} at epoch {best['epoch']}" if "val_acc" in best else ""))
    print(f"run folder: {args.out}")
    return 0
