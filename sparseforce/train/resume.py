"""Continuing a run: which checkpoint ``fit`` resumes from and what it restores, and the settings
of a ``sparseforce train`` run that ``--resume`` reads back from its checkpoint."""
from __future__ import annotations

import os
import shlex

from .. import data as _data
from .._files import first_line, remove_stale_temporaries
from ..masks import Masks
from .checkpoint import CHECKPOINT_NAME, CheckpointError, checkpoint_epoch, load_checkpoint, set_rng_state
from .loaders import loader_generators

# The defaults of the `train` options that --resume takes from the checkpoint; applied after it,
# so that an option given on the command line can be told from one left out.
# (--schedule, --batches-per-iteration, --iterations, --scope, --distribution and --nm stay None: the
# method table resolves them per method, and the CLI refuses them for a method that does not take
# them; --sparsity is filled in from --nm first when that is given.)
TRAIN_DEFAULTS = {"dataset": "digits", "method": "force", "sparsity": 0.995, "seed": 0, "backend": "auto",
                  "num_workers": 0}
PRUNING_OPTIONS = ("method", "sparsity", "iterations", "schedule", "batches_per_iteration", "distribution", "scope",
                   "nm")
# Dynamic sparse training (sparseforce.cli.dynamic.DST_OPTIONS, spelled out: no cli import here).
DST_OPTIONS = ("dst", "dst_update_every", "dst_end", "dst_drop_fraction", "dst_scope", "dst_start",
               "dst_regrow_fraction", "dst_distribution", "dst_initial_sparsity")
# What defines a run: taken from the checkpoint on --resume, and refused there with another value.
# The recipe's numbers come from the checkpoint's config, the rest from the settings stored with it.
RUN_OPTIONS = ("dataset", "model", "recipe", "seed", "ablation") + PRUNING_OPTIONS + DST_OPTIONS
RECIPE_OPTIONS = ("epochs", "lr", "momentum", "weight_decay", "milestones", "batch_size", "optimizer")
# Where and how the run is computed: taken from the checkpoint unless given again.
PLACE_OPTIONS = ("data_dir", "device", "backend", "num_workers")


# --------------------------------------------------------------------------------------------
# fit's own
# --------------------------------------------------------------------------------------------

def find_checkpoint(out_dir: str | None, resume, overwrite: bool):
    """``(path fit writes, checkpoint to resume or None, where it was read)``, decided before
    anything on disk is touched."""
    ckpt_path = os.path.join(out_dir, CHECKPOINT_NAME) if out_dir is not None else None
    where = None
    if resume is True or (isinstance(resume, str) and resume == "auto"):
        if ckpt_path is None:
            raise ValueError("resume needs out_dir (the folder holding checkpoint.pt) or a checkpoint path")
        if os.path.exists(ckpt_path) or resume is True:
            where = ckpt_path
    elif resume is not False and resume is not None:
        where = os.fspath(resume)
    elif ckpt_path is not None and os.path.exists(ckpt_path) and not overwrite:
        raise FileExistsError(f"{ckpt_path!r} already exists: pass resume=True to continue that run, "
                              "overwrite=True to start again, or another out_dir")
    ckpt = load_checkpoint(where, map_location="cpu") if where is not None else None
    return ckpt_path, ckpt, where


def saved_masks(ckpt: dict) -> Masks:
    """The masks a checkpoint trained with when it was written (empty for a dense run)."""
    return Masks(ckpt["masks"]["masks"]) if ckpt.get("masks") is not None else Masks()


def starting_masks(ckpt: dict) -> Masks:
    """The masks the run in a checkpoint started from: with dynamic sparse training the ones its
    dst object began with, else the (unchanging) masks it trained with."""
    if ckpt["config"].get("dst") is not None:
        return Masks(ckpt["dst"]["initial_masks"]["masks"])
    return saved_masks(ckpt)


def resumed_masks(masks, ckpt: dict, where: str) -> Masks:
    """The checkpoint's masks; ``masks`` given as well must be those the run started from."""
    saved = saved_masks(ckpt)
    if masks is not None and masks != starting_masks(ckpt):
        raise CheckpointError(f"the masks given differ from those the run in {where!r} started from; pass "
                              "masks=None to use the checkpoint's")
    dynamic = ckpt["config"].get("dst") is not None
    return saved if masks is None or dynamic else masks


def check_settings(ckpt: dict, where: str, config: dict) -> None:
    """A resumed run's settings are the checkpoint's, but for ``epochs`` (unless the masks follow a
    schedule over all the steps)."""
    old = dict(ckpt["config"])
    diff = {k: (old.get(k), v) for k, v in config.items() if k != "epochs" and old.get(k) != v}
    dst = config.get("dst")
    if dst is not None and old.get("dst") is not None and old["epochs"] != config["epochs"]:
        raise CheckpointError(f"{where!r} was written for {old['epochs']} epochs, and dynamic sparse training "
                              f"(dst={dst['method']!r}) schedules its updates over all of them: resume with epochs="
                              f"{old['epochs']}")
    if diff:
        raise CheckpointError(
            f"{where!r} was written with other settings: "
            + ", ".join(f"{k}={a!r} there, {b!r} now" for k, (a, b) in diff.items())
            + " (resume with the same settings; a changed epochs count rescales the milestones "
              "unless they are given explicitly)")


def restore(ckpt: dict, where: str, model, optimizer, scheduler, train_loader, dst=None):
    """Put the run back as the checkpoint left it (its settings checked by :func:`check_settings`):
    weights, optimizer, schedule, the dst object's state, the loader's generators and the global
    random states. Returns ``(history, completed epochs)``."""
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{where!r} holds weights of another model: {exc}") from None
    parts = [("optimizer", optimizer, ckpt["optimizer"]), ("scheduler", scheduler, ckpt["scheduler"])]
    if dst is not None:
        parts.append(("dst", dst, ckpt["dst"]["state"]))
    for name, obj, state in parts:
        try:
            obj.load_state_dict(state)
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise CheckpointError(f"{where!r}: the {name} state does not fit this run: "
                                  f"{type(exc).__name__}: {first_line(exc)}") from None
    gens = loader_generators(train_loader)
    saved_gens = ckpt["loader"]["generators"]
    if len(gens) != len(saved_gens):
        raise CheckpointError(f"{where!r}: the training data has {len(gens)} random generators but the "
                              f"checkpoint saved {len(saved_gens)}; is it the same data pipeline?")
    for g, s in zip(gens, saved_gens):
        g.set_state(s)
    set_rng_state(ckpt["rng"])
    return list(ckpt["history"]), int(ckpt["epoch"])


# --------------------------------------------------------------------------------------------
# the settings of a `sparseforce train` run (args: its parsed options)
# --------------------------------------------------------------------------------------------

def option_flag(option: str) -> str:
    """The command-line spelling of an option's name: ``batch_size`` -> ``--batch-size``."""
    return "--" + option.replace("_", "-")


def show_value(value) -> str:
    """An option's value as it is typed on the command line."""
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def take_run_settings(args, ckpt: dict, path: str, model_aliases) -> None:
    """--resume: set the options left out to the checkpoint's values; refuse any given with another."""
    meta = ckpt.get("meta") or {}  # empty for a checkpoint of sparseforce.train.fit itself
    stored = {k: meta[k] for k in RUN_OPTIONS + PLACE_OPTIONS if k in meta}
    stored.update({k: ckpt["config"][k] for k in RECIPE_OPTIONS})
    normal = {"dataset": _data.canonical_name, "model": lambda m: model_aliases.get(m, m),
              "milestones": lambda ms: [int(m) for m in ms]}
    conflicts = []
    if args.masks is not None and Masks.load(args.masks) != starting_masks(ckpt):
        conflicts.append(f"--masks: {args.masks} holds other masks than the checkpoint's")
    args.masks = meta.get("masks")
    for k, was in stored.items():
        given = getattr(args, k)
        if given is None:
            setattr(args, k, was)
        elif k in PLACE_OPTIONS:
            continue
        elif was is None:
            why = (f"the run in the checkpoint did not prune (it trained with --masks {args.masks})"
                   if args.masks and k in PRUNING_OPTIONS else "not set in the checkpoint")
            conflicts.append(f"{option_flag(k)}: {why}, {show_value(given)} given")
        elif normal.get(k, lambda v: v)(was) != normal.get(k, lambda v: v)(given):
            conflicts.append(f"{option_flag(k)}: {show_value(was)} in the checkpoint, {show_value(given)} given")
    if conflicts:
        raise ValueError(f"--resume: {path!r} holds a run with other settings: " + "; ".join(conflicts)
                         + " (leave these options out to continue the run as it was, or start a new run in "
                           "another --out)")


def resume_settings(args, model_aliases) -> None:
    """--resume: the checkpoint's settings for what was left out (a given one must agree); a fresh
    run must not overwrite a checkpoint unasked. Then the defaults of what is still unset."""
    ckpt_path = os.path.join(args.out, CHECKPOINT_NAME)
    if args.resume:
        if args.overwrite:
            raise ValueError("--resume and --overwrite contradict each other: --resume continues the run in --out, "
                             "--overwrite starts it again")
        if not os.path.exists(ckpt_path):
            raise FileNotFoundError(f"--resume: no checkpoint to continue: {ckpt_path!r} does not exist (start the "
                                    "run without --resume)")
        take_run_settings(args, load_checkpoint(ckpt_path), ckpt_path, model_aliases)
        # The only file of the run folder that a resumed run does not write again.
        remove_stale_temporaries(os.path.abspath(args.out), "masks.pt")
    elif not args.overwrite and os.path.exists(ckpt_path):
        raise ValueError(f"{args.out!r} already holds a checkpoint: add --resume to continue it, --overwrite to "
                         "start again, or choose another --out")
    for k, v in TRAIN_DEFAULTS.items():
        # gmp without --method starts dense rather than pruned by the default method.
        if getattr(args, k) is None and not (k == "method" and args.dst == "gmp"):
            setattr(args, k, v)


def interrupted_message(out_dir: str, training: bool, resume: bool) -> str:
    """What a Ctrl-C of `sparseforce train` left, and how to go on."""
    # Only a checkpoint of this run counts: before training, that is the one being resumed.
    epoch = checkpoint_epoch(os.path.join(out_dir, CHECKPOINT_NAME)) if training or resume else None
    again = f"continue with `sparseforce train --out {shlex.quote(os.fspath(out_dir))} --resume`"
    if epoch is None:
        if not training:
            return "interrupted before training began, so there is nothing to continue; run the command again"
        return "interrupted during epoch 1, before its checkpoint was written; run the command again"
    if epoch < 0:
        return f"interrupted; the last checkpoint is kept; {again}"
    return f"interrupted during epoch {epoch + 1}; the checkpoint of epoch {epoch} is kept; {again}"
