"""The pruning options of ``prune``, ``train`` and ``ddp``, read from the method table
(:data:`sparseforce.pruning.METHODS`): an option a method does not take is refused, one left out
takes the method's default."""
from __future__ import annotations

import math

from .options import show_progress

# Each flag and the keyword of the method that takes it.
_KEYWORDS = {"--iterations": "iterations", "--schedule": "schedule",
             "--batches-per-iteration": "batches_per_iteration", "--distribution": "distribution",
             "--scope": "scope", "--nm": "nm", "--ablation invert": "invert", "--eval-mode-scores": "train_mode"}


def method(name: str):
    from ..pruning import METHODS

    return METHODS[name]


def _steps(entry) -> bool:
    # A schedule shapes the kept fraction over several steps, so only a method that takes
    # iterations takes --schedule (snip has the keyword, but one step).
    return "iterations" in entry.options


def _takes(entry, flag: str) -> bool:
    return _KEYWORDS[flag] in entry.options and (flag != "--schedule" or _steps(entry))


def refuse_unless_taken(flag: str, name: str) -> None:
    """``flag`` given with ``--method name``: an error unless the method takes it."""
    from ..pruning import METHODS

    if not _takes(METHODS[name], flag):
        takers = [m for m, entry in METHODS.items() if _takes(entry, flag)]
        raise ValueError(f"{flag} does not apply to --method {name}; only {', '.join(takers)} take it")


def nm_pair(text: str) -> tuple[int, int]:
    """``--nm``'s "N:M" as the methods' ``nm=(n, m)``."""
    n, _, m = text.partition(":")
    return int(n), int(m)


def fill_sparsity(args, default: float | None = None) -> None:
    """--sparsity left out: 1 - N/M with --nm, else ``default`` (None: left for later)."""
    if args.sparsity is None and args.nm is not None:
        n, m = nm_pair(args.nm)
        args.sparsity = 1 - n / m
    elif args.sparsity is None:
        args.sparsity = default


def needed_ops(args) -> tuple[str, ...]:
    """The ops the chosen method ranks with, given --scope and --nm."""
    return method(args.method).ops_for(args.scope, args.nm)


def _check_scope(args) -> None:
    """--scope, --distribution, --nm and --sparsity together, for a method that ranks scores."""
    if args.nm is not None:
        if args.scope == "layer" or args.distribution is not None:
            raise ValueError(f"--nm {args.nm} already fixes every layer's share (N of every M weights); leave "
                             "--scope and --distribution out")
        n, m = nm_pair(args.nm)
        if args.sparsity is not None and not math.isclose(1 - args.sparsity, n / m, rel_tol=1e-9, abs_tol=1e-12):
            raise ValueError(f"--sparsity {args.sparsity} disagrees with --nm {args.nm}, which removes "
                             f"{1 - n / m:g} of the weights; leave --sparsity out")
    elif args.distribution is not None and args.scope != "layer":
        raise ValueError(f"--distribution shares the kept weights out among the layers, which --method {args.method} "
                         "does with --scope layer only; add --scope layer")
    elif args.distribution == "global":
        raise ValueError("--distribution global is --scope global; with --scope layer choose uniform or erk")


def pruning_kwargs(args) -> dict:
    """The chosen method's options; one it does not take is an error rather than ignored."""
    entry = method(args.method)
    invert = getattr(args, "ablation", None) == "invert"
    given = {"--iterations": args.iterations, "--schedule": args.schedule,
             "--batches-per-iteration": args.batches_per_iteration, "--distribution": args.distribution,
             "--scope": args.scope, "--nm": args.nm, "--ablation invert": invert or None}
    for flag, value in given.items():
        if value is not None:
            refuse_unless_taken(flag, args.method)
    kw = {_KEYWORDS[flag]: value if value is not None else entry.options[_KEYWORDS[flag]]
          for flag, value in given.items() if _takes(entry, flag) and flag != "--ablation invert"}
    if "scope" in kw:
        _check_scope(args)
        kw["nm"] = nm_pair(args.nm) if args.nm else None
        if kw["scope"] == "layer" and kw["distribution"] is None:
            kw["distribution"] = "uniform"  # the methods' own default for a layer scope, stored resolved
    if _steps(entry):
        kw["progress"] = show_progress(args)
    if entry.options.get("seed") is not None:
        # A method whose seed has a default draws its masks from it (random); the others' seed
        # (None) forks the global random state, which --seed has set.
        kw["seed"] = args.seed
    if "backend" in entry.options:
        kw["backend"] = args.backend
    if invert:
        kw["invert"] = True
    return kw


def ablation_seed(seed: int) -> int:
    """The seed an ablation (shuffle, reinit) draws from: (--seed + 0x9E3779B9) mod 2**32.

    Seeds are 32-bit everywhere (torch's CPU generator keeps only the low 32 bits, so the old
    --seed + 2**32 drew exactly what --seed draws). The run itself seeds with --seed (model,
    split, data order) and --seed + 1 (augmentation); an offset of neither 0 nor 1 never lands on
    them, and distinct --seed values give distinct ablation seeds. (2**32 / golden ratio: the
    usual constant for spreading consecutive seeds apart; any other than 0 and 1 would do.)"""
    return (seed + 0x9E3779B9) % 2**32


def shuffle_if_asked(args, masks):
    """The masks with each layer's shuffled within the layer, for ``--ablation shuffle``."""
    if args.ablation != "shuffle":
        return masks
    from ..ablations import shuffle

    print(f"ablation: shuffled each layer's mask within the layer (seed {ablation_seed(args.seed)})")
    return shuffle(masks, seed=ablation_seed(args.seed))


def convention_kwargs(args) -> dict:
    """``prune``'s --k-rounding and --eval-mode-scores, refused for a method they do not apply to."""
    kw = {"k_rounding": args.k_rounding}
    if args.eval_mode_scores:
        refuse_unless_taken("--eval-mode-scores", args.method)
        kw["train_mode"] = False
    return kw


def compute_masks(args, model, loader, **extra):
    from ..pruning import prune

    # prune() passes the data only to a method that takes it.
    return prune(model, loader, method=args.method, sparsity=args.sparsity, **pruning_kwargs(args), **extra)


def announce(args, model_name: str, device) -> None:
    """The line that opens a pruning run."""
    print(f"{args.method} on {model_name} / {args.dataset}, sparsity {args.sparsity}"
          + (f" ({args.nm})" if args.nm else "") + (" per layer" if args.scope == "layer" else "")
          + f", device {device}"
          + (f", ablation {args.ablation}" if args.ablation else ""), flush=True)
