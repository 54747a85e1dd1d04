"""``sparseforce ddp``: FORCE and masked training on N processes, launched by torchrun.

    torchrun --standalone --nproc_per_node=2 -m sparseforce ddp --device cpu     # gloo
    torchrun --standalone --nproc_per_node=8 -m sparseforce ddp --device cuda    # NCCL, a GPU per rank

Every rank reads its own share of the embedded 8x8 digits (``DistributedSampler``), prunes with
data-parallel FORCE (the model wrapped in DDP, gradients averaged each step) or, with
``--sharded``, with the model sharded by FSDP2 (exact global top-k over the shards), checks that
every rank holds the same masks, then trains the masked model under DDP with ``MaskedSGD``.
Rank 0 prints, and writes the masks and a JSON summary to ``--out``. The options are parsed
and checked in ``sparseforce.cli.ddp``, whose parser is built without importing torch; each
epoch is :func:`sparseforce.train.epoch.train_epoch`, the step ``fit`` trains with.
"""
from __future__ import annotations

import datetime
import gc
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from . import distributed
from .optim import MaskedSGD
from .pruning import METHODS
from .train.epoch import train_epoch


def _setup(device_arg: str | None, timeout_s: float):
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise ValueError("sparseforce ddp runs under torchrun, e.g. "
                         "`torchrun --standalone --nproc_per_node=2 -m sparseforce ddp --device cpu`")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    want_cuda = device_arg == "cuda" or (device_arg is None and torch.cuda.is_available())
    if want_cuda:
        if not torch.cuda.is_available():
            raise ValueError("--device cuda but this machine has no usable GPU")
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs are visible; "
                             "use --nproc_per_node <= the number of GPUs")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device_arg in (None, "cpu"):
        device, backend = torch.device("cpu"), "gloo"
    else:
        raise ValueError(f"--device must be cpu or cuda (each rank takes cuda:LOCAL_RANK), got {device_arg!r}")
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s),
                            device_id=device if backend == "nccl" else None)
    return device, backend


def _model(name: str, seed: int, device) -> nn.Module:
    from .models import get_model
    torch.manual_seed(seed)  # the same init on every rank (DDP would broadcast rank 0's anyway)
    return get_model(name, num_classes=10).to(device)


def _loader(dataset, batch_size, seed, rank, world, shuffle=True):
    from torch.utils.data import DataLoader, DistributedSampler
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed,
                                 drop_last=shuffle)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler), sampler


def _shard(model: nn.Module, prunable_types=(nn.Conv2d, nn.Linear)):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    mesh = init_device_mesh(next(model.parameters()).device.type, (dist.get_world_size(),))
    for m in model.modules():
        if isinstance(m, prunable_types):
            fully_shard(m, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def traffic_summary(sent: dict, steps: int) -> str:
    """What sparseforce.distributed.traffic() counted over a pruning run of ``steps`` steps. The
    calls are a total: the steps need not all make as many (the checks before the first one add
    some), so a per-step average of them would read as a fraction of a call."""
    def plural(n: int, word: str) -> str:
        return f"{n:,} {word}{'s' if n != 1 else ''}"

    total = (f"all-reduced {sent['bytes'] / 2**10:,.1f} KiB in {plural(sent['calls'], 'call')} "
             f"over {plural(steps, 'step')}")
    return total + (f" ({sent['bytes'] / steps / 2**10:,.1f} KiB per step)" if steps > 1 else "")


def run(args) -> int:
    device, backend = _setup(args.device, args.timeout)
    try:
        code = _prune_and_train(args, device, backend)
        # Every DDP wrapper (and its gradient reducer) of that call is gone by here, and so is any
        # collective in flight. Released after destroy_process_group instead, a reducer holding
        # the last reference to the gloo group ran its destructor with the GIL held, which joins
        # gloo's worker threads, while a worker releasing a finished work's tensors waited for the
        # GIL: a deadlock at exit in about 1 run in 15 on a busy 2-core machine (the stacks as in
        # pytorch/pytorch#190489).
        gc.collect()
        dist.barrier()
        return code
    finally:
        dist.destroy_process_group()


def _prune_and_train(args, device, backend) -> int:
    rank, world = dist.get_rank(), dist.get_world_size()
    say = print if rank == 0 else (lambda *a, **k: None)
    from .data import Digits
    train, test = Digits(train=True), Digits(train=False)
    loader, sampler = _loader(train, args.batch_size, args.seed, rank, world)
    say(f"sparseforce ddp: {world} ranks ({backend}, {device.type}), {args.model} on 8x8 digits, "
        f"{args.method} to sparsity {args.sparsity} in {args.iterations} steps"
        f"{' (FSDP2-sharded pruning)' if args.sharded else ''}")

    # 1. Prune. Each rank's FORCE step sees its own batch; the masks come out the same everywhere.
    distributed.traffic(reset=True)
    start = time.perf_counter()
    if args.sharded:
        sharded = _shard(_model(args.model, args.seed, device))
        masks = METHODS[args.method].function(sharded, loader, args.sparsity, iterations=args.iterations,
                                     backend=args.backend)
        masks = masks.full()  # gathered on every rank, for the DDP training below
    else:
        ddp = nn.parallel.DistributedDataParallel(_model(args.model, args.seed, device))
        masks = METHODS[args.method].function(ddp, loader, args.sparsity, iterations=args.iterations,
                                     backend=args.backend)
    prune_s = time.perf_counter() - start
    sent = distributed.traffic()
    distributed.check_same_on_all_ranks(list(masks.values()), "the masks")
    say(f"pruned in {prune_s:.1f} s: {masks.num_kept():,} of {masks.numel():,} weights kept; "
        f"masks identical on all {world} ranks; sparseforce {traffic_summary(sent, args.iterations)}")

    # 2. Train the masked model under DDP.
    model = _model(args.model, args.seed, device)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in masks:
                p.mul_(masks[n].to(device))
    ddp = nn.parallel.DistributedDataParallel(model)
    opt = MaskedSGD(model.named_parameters(), masks.to(device), lr=args.lr, momentum=0.9,
                    weight_decay=5e-4, backend=args.backend)
    history = []
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        totals = train_epoch(ddp, opt, loader, nn.functional.cross_entropy, device)
        acc = _accuracy(ddp, test, args.batch_size, device, rank, world)
        # drop_last: every batch has --batch-size samples, so the mean over samples is that over batches.
        history.append({"epoch": epoch + 1, "loss": totals.mean_loss if totals.samples else 0.0,
                        "test_acc": acc})
        say(f"epoch {epoch + 1}: train loss {history[-1]['loss']:.4f}, test accuracy {acc:.2%}")
    distributed.check_same_on_all_ranks([p.detach() for p in model.parameters()], "the trained weights")
    pruned_zero = all(bool((p[~masks[n].to(device)] == 0).all())
                      for n, p in model.named_parameters() if n in masks)
    say(f"weights identical on all ranks after training; pruned weights all exactly 0: {pruned_zero}")
    if rank == 0 and args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        masks.save(out / "masks.pt")
        (out / "result.json").write_text(json.dumps({
            "world_size": world, "backend": backend, "device": device.type, "model": args.model,
            "method": args.method, "sparsity": args.sparsity, "iterations": args.iterations,
            "sharded": args.sharded, "kept": masks.num_kept(), "numel": masks.numel(),
            "prune_seconds": prune_s, "allreduce_bytes_per_step": sent["bytes"] / args.iterations,
            "pruned_weights_zero": pruned_zero, "history": history}, indent=2) + "\n")
        say(f"wrote {out / 'masks.pt'} and {out / 'result.json'}")
    return 0 if pruned_zero else 1


@torch.no_grad()
def _accuracy(model, dataset, batch_size, device, rank, world) -> float:
    """Test accuracy over the whole test set, each rank scoring a slice; summed with all_reduce."""
    model.eval()
    idx = list(range(rank, len(dataset), world))
    correct = torch.zeros(2, dtype=torch.float64, device=device)
    for i in range(0, len(idx), batch_size):
        xs, ys = zip(*(dataset[j] for j in idx[i: i + batch_size]))
        pred = model(torch.stack(xs).to(device)).argmax(1)
        correct[0] += (pred.cpu() == torch.tensor(ys)).sum().item()
        correct[1] += len(ys)
    dist.all_reduce(correct)
    return float(correct[0] / correct[1])
