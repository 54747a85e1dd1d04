"""``train``'s dynamic sparse training options (``--dst`` and ``--dst-*``): the parser block, the
checks that refuse a combination that makes no sense, and the options as ``fit`` takes them.

Every ``--dst-X`` is the option ``X`` of the dst object (:mod:`sparseforce.dst`); one the chosen
method does not take is refused, one left out is stored with the method's default, so that
``--resume`` compares what ran. Gradual magnitude pruning (gmp) prunes to ``--sparsity``; it starts
from every prunable weight kept, or from ``--masks``, or from ``--method`` pruned to
``--dst-initial-sparsity``.
"""
from __future__ import annotations

from .options import SCOPE_NAMES, end_fraction, fraction, positive_int, sparsity_value

DST_NAMES = ("rigl", "set", "gmp")  # sparseforce.train.dynamic.DST_METHODS, spelled out (no torch import here)
# Each flag's dest and the dst option it sets (the rest of the flag's name).
DST_FLAGS = ("dst_update_every", "dst_end", "dst_drop_fraction", "dst_scope", "dst_start", "dst_regrow_fraction",
             "dst_distribution")
# What --resume reads back and refuses with another value (sparseforce.train.resume.RUN_OPTIONS).
DST_OPTIONS = ("dst",) + DST_FLAGS + ("dst_initial_sparsity",)


def add_dst(g) -> None:
    g.add_argument("--dst", default=None, choices=DST_NAMES,
                   help="dynamic sparse training: the masks change during training. rigl (Evci et al. 2020: drop "
                        "the smallest weights, grow those of largest gradient), set (Mocanu et al. 2018: grow at "
                        "random, seeded by --seed) or gmp (Zhu & Gupta 2017: prune gradually, on a cubic "
                        "schedule, to --sparsity) (default: none, the masks stay as pruned)")
    g.add_argument("--dst-update-every", type=positive_int, default=None, metavar="STEPS",
                   help="optimizer steps between two mask updates (default: 100)")
    g.add_argument("--dst-end", type=end_fraction, default=None, metavar="FRACTION",
                   help="the fraction of the training steps after which the masks stay fixed, in (0, 1] "
                        "(default: 0.75)")
    g.add_argument("--dst-drop-fraction", type=fraction, default=None, metavar="FRACTION",
                   help="rigl and set: the fraction of each layer's kept weights dropped and regrown at the first "
                        "update, decaying to 0 at --dst-end on a cosine, in [0, 1] (default: 0.3)")
    g.add_argument("--dst-scope", default=None, choices=SCOPE_NAMES,
                   help="where weights compete: layer (each layer keeps its count) or global (all layers "
                        "together) (default: layer for rigl and set, global for gmp)")
    g.add_argument("--dst-start", type=fraction, default=None, metavar="FRACTION",
                   help="gmp: the fraction of the training steps before which the masks stay as they start "
                        "(default: 0)")
    g.add_argument("--dst-regrow-fraction", type=fraction, default=None, metavar="FRACTION",
                   help="gmp: the fraction of each update's pruned weights regrown by gradient, as GraNet does "
                        "(default: 0)")
    g.add_argument("--dst-distribution", default=None, choices=("uniform", "erk"),
                   help="gmp with --dst-scope layer: how the target sparsity is shared out among the layers "
                        "(default: uniform)")
    g.add_argument("--dst-initial-sparsity", type=sparsity_value, default=None, metavar="FRACTION",
                   help="gmp with --method: the sparsity the method prunes to at initialization, below --sparsity "
                        "(default: none; without --method and --masks gmp starts dense)")


def option_of(dest: str) -> str:
    return dest[len("dst_"):]


def flag_of(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def starts_dense(args) -> bool:
    """gmp given neither masks nor a method: it starts from every prunable weight kept."""
    return args.dst == "gmp" and args.masks is None and args.method is None


def check_dst(args) -> None:
    """The --dst options of a fresh run, together and with the pruning options (one line each)."""
    given = [d for d in DST_OPTIONS[1:] if getattr(args, d) is not None]
    if args.dst is None:
        if given:
            raise ValueError(f"{flag_of(given[0])} applies to dynamic sparse training only; add --dst "
                             f"{'gmp' if given[0] == 'dst_initial_sparsity' else 'rigl, set or gmp'}")
        return
    from ..train.dynamic import option_defaults

    takes = option_defaults(args.dst)
    for d in given:
        if d in DST_FLAGS and option_of(d) not in takes:
            takers = [m for m in DST_NAMES if option_of(d) in option_defaults(m)]
            raise ValueError(f"{flag_of(d)} does not apply to --dst {args.dst}; only {', '.join(takers)} "
                             f"take{'s' if len(takers) == 1 else ''} it")
    if args.nm is not None:
        raise ValueError(f"--nm {args.nm} fixes N of every M weights, a pattern that --dst {args.dst} does not keep "
                         "when it moves weights; leave --nm out")
    if args.dst != "gmp":
        if args.dst_initial_sparsity is not None:
            raise ValueError(f"--dst-initial-sparsity applies to --dst gmp only; --dst {args.dst} keeps the "
                             "sparsity the masks start with")
        return
    if args.dst_distribution is not None and (args.dst_scope or takes["scope"]) != "layer":
        raise ValueError("--dst-distribution shares the target sparsity out among the layers, which gmp does with "
                         "--dst-scope layer only; add --dst-scope layer")
    if args.method is not None and args.dst_initial_sparsity is None:
        raise ValueError(f"--dst gmp --method {args.method}: the method prunes at initialization and gmp then prunes "
                         "on to --sparsity, so give the starting sparsity with --dst-initial-sparsity (or leave "
                         "--method out to start dense)")
    if args.dst_initial_sparsity is not None:
        if args.method is None:
            raise ValueError("--dst-initial-sparsity is the sparsity --method prunes to at initialization; add "
                             "--method (without it gmp starts dense)")
        if args.sparsity is not None and args.dst_initial_sparsity >= args.sparsity:
            raise ValueError(f"--dst-initial-sparsity {args.dst_initial_sparsity} must be below --sparsity "
                             f"{args.sparsity}, the sparsity gmp prunes to")


def resolve_dst(args) -> None:
    """Every --dst-* option the method takes set to its value (given or the default); the others None."""
    if args.dst is None:
        return
    from ..train.dynamic import option_defaults

    takes = option_defaults(args.dst)
    for d in DST_FLAGS:
        setattr(args, d, getattr(args, d) if getattr(args, d) is not None else takes.get(option_of(d)))


def dst_options(args) -> dict | None:
    """``fit``'s ``dst_options``: the --dst-* options the method takes, gmp's target --sparsity."""
    if args.dst is None:
        return None
    options = {option_of(d): getattr(args, d) for d in DST_FLAGS if getattr(args, d) is not None}
    if args.dst == "gmp":
        options["sparsity"] = args.sparsity
    return options


def check_dst_on(args, model, total_steps: int) -> None:
    """What ``fit`` would refuse of the dst options (gmp's start after its end, no update step in
    the run, an unavailable backend...), on the fresh model before any pruning."""
    if args.dst is None:
        return
    from ..train import dynamic

    config = dynamic.resolve(args.dst, dst_options(args), total_steps=total_steps, seed=args.seed)
    try:
        dynamic.check(config, model, dynamic.dense_masks(model), args.backend)
    except ValueError as exc:  # it names the options as the library spells them
        raise ValueError(f"--dst {args.dst}: {exc}") from None
