"""``sparseforce ddp``: FORCE and masked training on N processes under torchrun (sparseforce.ddp)."""
from __future__ import annotations

from . import checks
from .methods import method
from .options import BACKEND_NAMES, model_name, positive_float, positive_int, seed, sparsity_value


HELP = "FORCE + masked training on N processes (run under torchrun)"
DESCRIPTION = ("Data-parallel (or FSDP2-sharded) FORCE on the embedded 8x8 digits, then masked "
               "DDP training with MaskedSGD. Launch with torchrun: "
               "`torchrun --standalone --nproc_per_node=2 -m sparseforce ddp --device cpu` (gloo) or "
               "`torchrun --standalone --nproc_per_node=8 -m sparseforce ddp --device cuda` (NCCL).")


def add_arguments(p) -> None:
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


def run(args) -> int:
    # Each rank takes cuda:LOCAL_RANK (ddp._setup); checked here: that there is a GPU at all.
    device = checks.checked_device(args.device)
    checks.check_backend(args.backend, device, method(args.method).ops + ("masked_sgd_",))
    checks.check_model_fits(args.model, "digits", data="the 8x8 digits ddp trains on")
    if args.out is not None:
        checks.check_out_folder(args.out)
    from .. import ddp

    return ddp.run(args)
