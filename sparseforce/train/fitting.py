"""``fit``: restore (when resuming), then an epoch step and a save step per epoch."""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import _checks
from .. import ablations as _ablations
from ..masks import Masks
from ..optim import MaskedAdamW, MaskedSGD
from . import dynamic
from . import resume as _resume
from .checkpoint import write_checkpoint
from .epoch import evaluate, model_device, train_epoch
from .loaders import as_loader, loader_generators
from .logs import write_logs, write_result
from .recipes import Recipe, resolve_recipe, run_config


@dataclass
class FitResult:
    """What :func:`fit` returns: the per-epoch rows and where they were written."""

    history: list[dict] = field(default_factory=list)
    out_dir: str | None = None
    recipe: Recipe | None = None
    masks: Masks | None = None  # as training left them (dynamic sparse training changes them)

    @property
    def final(self) -> dict | None:
        return self.history[-1] if self.history else None

    @property
    def best(self) -> dict | None:
        """The row with the highest validation accuracy (earliest on ties); the last row if
        there was no validation data."""
        rows = [r for r in self.history if r.get("val_acc") is not None]
        if not rows:
            return self.final
        return max(rows, key=lambda r: (r["val_acc"], -r["epoch"]))


@dataclass
class _Run:
    """What every epoch of one ``fit`` call works with."""

    model: nn.Module
    masks: Masks
    recipe: Recipe
    config: dict
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_loader: Any
    eval_loaders: dict
    loss_fn: Callable
    device: torch.device
    progress: bool
    verbose: bool
    dst: Any = None  # the sparseforce.dst object updating the masks, if any
    initial_masks: dict | None = None  # with dst: the masks it started from, as Masks.state_dict()


def fit(model: nn.Module, masks, train_data, val_data=None, test_data=None, *, epochs: int | None = None,
        recipe: str | Recipe = "cifar", lr: float | None = None, momentum: float | None = None,
        weight_decay: float | None = None, nesterov: bool | None = None, milestones=None,
        gamma: float | None = None, batch_size: int | None = None, optimizer: str | None = None,
        loss_fn: Callable | None = None, device=None, out_dir=None, resume=False, overwrite: bool = False,
        seed: int = 0, num_workers: int = 0, progress: bool | None = None, verbose: bool = False,
        backend: str = "auto", callback: Callable[[dict], Any] | None = None,
        stop_after_epoch: int | None = None, meta: dict | None = None, reinit: int | None = None,
        dst: str | None = None, dst_options: dict | None = None) -> FitResult:
    """Train ``model`` with pruned weights held at exactly 0; evaluate, log and checkpoint every epoch.

    Args:
        model: the network (its current weights are the initialization).
        masks: :class:`sparseforce.Masks` (or mapping name -> bool tensor) checked against the
            model (a misnamed or misshapen mask is a ``ValueError`` naming it); ``None`` trains
            densely, or on resume takes the checkpoint's masks.
        train_data: a ``Dataset`` (batched and shuffled here, seeded by ``seed``, an integer in
            [0, 2**32)), a ``DataLoader``, or any iterable of (inputs, targets) batches. Resuming
            reproduces the batch order only for the first two (their generators are checkpointed).
        val_data, test_data: optional; evaluated after every epoch.
        epochs, lr, momentum, weight_decay, nesterov, milestones, gamma, batch_size, optimizer
            ("sgd" | "adamw"): override the ``recipe`` ("cifar", "tinyimagenet" or a
            :class:`Recipe`). The recipes are SGD's; switching to "adamw" without ``lr`` /
            ``weight_decay`` uses torch's AdamW defaults (1e-3, 1e-2) instead of SGD's 0.1 / 5e-4.
        out_dir: where checkpoints and logs go; ``None`` writes nothing (no resume possible).
        resume: ``True`` continues from ``out_dir/checkpoint.pt`` (which must exist), ``"auto"``
            does so if it exists and starts afresh otherwise, a path continues from that file.
            The settings must match the checkpoint's, except that ``epochs`` may change.
        overwrite: start afresh even if ``out_dir`` already holds a checkpoint (refused otherwise,
            so a forgotten ``resume`` cannot destroy a run).
        progress: a tqdm bar per epoch (default: when stderr is a terminal). ``verbose``: one
            summary line per epoch.
        callback: called with each epoch's row after its checkpoint is safely on disk.
        stop_after_epoch: return after this epoch (checkpoint written), to continue later with
            ``resume`` — for time-sliced jobs.
        meta: extra JSON-able information stored in the checkpoint (e.g. the command line).
        reinit: ``None`` trains the model's current weights; a seed (an integer in [0, 2**32))
            first re-initializes the model in place with :func:`sparseforce.ablations.reinit`
            (every module's ``reset_parameters()``, children first, seeded, the caller's random
            state untouched), then applies the masks and trains: the reinit ablation of Frankle
            et al. (2021), the same masks from a fresh initialization. Not applied when resuming
            (the checkpoint's weights are restored).
        dst: dynamic sparse training, the masks updated during training: ``"rigl"``
            (:class:`sparseforce.dst.RigL`), ``"set"`` (``SET``) or ``"gmp"`` (``GradualMagnitude``,
            which starts from every prunable weight kept when ``masks`` is None). Its ``step()`` runs
            after every optimizer step; ``total_steps`` is ``epochs`` x the batches per epoch, so
            ``train_data`` must have a length and a resumed run cannot change ``epochs``. The caller's
            ``masks`` are copied, not changed; the checkpoint holds the current masks, the dst state
            and the masks it started from (what ``masks`` given on resume must equal). With
            ``optimizer="adamw"`` the masked AdamW keeps a step count per weight
            (``per_element_step=True``), so that a grown weight takes the steps of a fresh Adam.
        dst_options: the dst object's options (``update_every``, ``end``, ``drop_fraction``,
            ``scope``, ``seed`` (default: ``seed``), ``sparsity`` (gmp's target), ...); those left out
            take the method's defaults, and all are stored resolved in the checkpoint.

    Returns a :class:`FitResult` (``history``, ``final``, ``best``, ``masks``); with ``dst`` every
    row also has the masks' ``density`` after that epoch.
    """
    rec = resolve_recipe(recipe, epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay,
                         nesterov=nesterov, milestones=milestones, gamma=gamma, batch_size=batch_size,
                         optimizer=optimizer)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    seed = _checks.seed(seed)
    dynamic.check_method(dst)
    reinit = None if reinit is None else _checks.seed(reinit, "reinit")
    device = torch.device(device) if device is not None else model_device(model)
    model.to(device)
    out_dir = os.fspath(out_dir) if out_dir is not None else None
    ckpt_path, ckpt, where = _resume.find_checkpoint(out_dir, resume, overwrite)
    run = _prepare(model, masks, ckpt, where, rec, train_data, val_data, test_data, seed=seed,
                   num_workers=num_workers, backend=backend, loss_fn=loss_fn or F.cross_entropy, device=device,
                   progress=sys.stderr.isatty() if progress is None else bool(progress), verbose=verbose,
                   reinit=reinit, dst=dst, dst_options=dst_options)
    history, start = [], 0
    if ckpt is not None:
        history, start = _resume.restore(ckpt, where, model, run.optimizer, run.scheduler, run.train_loader,
                                         run.dst)
        if verbose:
            print(f"resumed from {where} after epoch {start}", flush=True)
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        if ckpt is not None:
            write_logs(out_dir, history)  # whatever a crash left behind, match the checkpoint

    for epoch in range(start + 1, rec.epochs + 1):
        history.append(_epoch(run, epoch))
        if out_dir is not None:
            _save(run, epoch, history, ckpt_path, meta)
        if callback is not None:
            callback(history[-1])
        if stop_after_epoch is not None and epoch >= stop_after_epoch and epoch < rec.epochs:
            return FitResult(history, out_dir, rec, run.masks)
    result = FitResult(history, out_dir, rec, run.masks)
    if out_dir is not None and history:
        write_result(out_dir, {"final": result.final, "best": result.best, "epochs": rec.epochs,
                               "recipe": dataclasses.asdict(rec), "density": run.masks.density()})
    return result


def _prepare(model, masks, ckpt, where, rec: Recipe, train_data, val_data, test_data, *, seed, num_workers,
             backend, loss_fn, device, progress, verbose, reinit, dst, dst_options) -> _Run:
    """The masks (the checkpoint's when resuming), the loaders, the optimizer and the dst object of
    a run; the model re-initialized first if asked (not when resuming: the checkpoint's weights
    come back)."""
    if masks is not None and not isinstance(masks, Masks):
        masks = Masks(masks)
    if ckpt is not None:
        masks = _resume.resumed_masks(masks, ckpt, where)
    elif dst == "gmp" and masks is None:
        masks = dynamic.dense_masks(model)
    elif dst is not None and not masks:
        raise ValueError(f"dst={dst!r} needs the sparse masks it starts from, e.g. sf.random(model, sparsity, "
                         "distribution='erk') or FORCE's")
    masks = masks.check(model).to(device) if masks is not None else Masks()
    if dst is not None:  # it changes them in place: the caller's stay as they were
        masks = Masks({n: m.clone() for n, m in masks.items()})

    train_loader = as_loader(train_data, rec.batch_size, True, seed, num_workers)
    if train_loader is None:
        raise ValueError("train_data is required")
    eval_bs = max(rec.batch_size, 256)
    eval_loaders = {split: as_loader(data, eval_bs, False, seed, num_workers)
                    for split, data in (("val", val_data), ("test", test_data))}
    config = run_config(rec, getattr(train_loader, "batch_size", None) or rec.batch_size)
    if dst is not None and not hasattr(train_loader, "__len__"):
        raise ValueError(f"dst={dst!r} needs train_data with a length (a Dataset or DataLoader): its schedule "
                         "spans epochs x batches per epoch")
    config["dst"] = dynamic.resolve(dst, dst_options, total_steps=rec.epochs * len(train_loader) if dst else 0,
                                    seed=seed)
    if ckpt is not None:  # before anything is built on settings that may not be the checkpoint's
        _resume.check_settings(ckpt, where, config)
    starting = _resume.starting_masks(ckpt).to(device) if ckpt is not None and dst is not None else masks
    if dst is not None:  # before the model is changed (reinit, the optimizer zeroing the pruned weights)
        dynamic.check(config["dst"], model, starting, backend)
    if reinit is not None and ckpt is None:
        _ablations.reinit(model, reinit)  # once every argument is checked; the optimizer zeroes the pruned

    named = list(model.named_parameters())
    if rec.optimizer == "sgd":
        opt = MaskedSGD(named, masks, lr=rec.lr, momentum=rec.momentum, weight_decay=rec.weight_decay,
                        nesterov=rec.nesterov, backend=backend)
    else:
        # With dst, each weight's own step count: a grown weight then takes a fresh Adam's steps.
        opt = MaskedAdamW(named, masks, lr=rec.lr, weight_decay=rec.weight_decay, per_element_step=dst is not None)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(rec.milestones), gamma=rec.gamma)
    run = _Run(model, masks, rec, config, opt, sched, train_loader, eval_loaders, loss_fn, device, progress, verbose)
    if dst is not None:
        run.dst = dynamic.build(config["dst"], model, masks, opt, backend, starting=starting)
        run.initial_masks = (ckpt["dst"]["initial_masks"] if ckpt is not None
                             else Masks({n: m.clone() for n, m in masks.items()}).state_dict())
    return run


def _epoch(run: _Run, epoch: int) -> dict:
    """Train one epoch, step the schedule, evaluate: the epoch's row of the history."""
    t0 = time.perf_counter()
    cur_lr = run.optimizer.param_groups[0]["lr"]
    loader = run.train_loader
    n_batches = len(loader) if hasattr(loader, "__len__") else None
    run.model.train()
    bar = None
    batches = iter(loader)
    if run.progress:
        from tqdm.auto import tqdm
        # Given the iterator, not the loader: tqdm.auto's asyncio class calls iter() on an
        # iterable in its constructor, which would start a second pass over the loader and
        # advance its shuffling generator, so progress on/off would change the data order.
        batches = bar = tqdm(batches, total=n_batches, desc=f"epoch {epoch}/{run.recipe.epochs}",
                             unit="batch", leave=True, dynamic_ncols=True)
    totals = train_epoch(run.model, run.optimizer, batches, run.loss_fn, run.device,
                         None if bar is None else _bar_postfix(bar, n_batches, cur_lr),
                         after_step=None if run.dst is None else run.dst.step)
    if totals.samples == 0:
        raise ValueError("train_data yielded no batches")
    run.scheduler.step()
    row: dict[str, Any] = {"epoch": epoch, "lr": cur_lr, "train_loss": totals.mean_loss,
                           "train_acc": totals.accuracy}
    for split, data in run.eval_loaders.items():
        if data is not None:
            m = evaluate(run.model, data, run.loss_fn, run.device)
            row[f"{split}_loss"], row[f"{split}_acc"] = m["loss"], m["acc"]
    if run.dst is not None:
        row["density"] = run.masks.density()
    row["time_s"] = round(time.perf_counter() - t0, 3)
    if bar is not None:
        extra = {k: f"{row[k]:.2%}" for k in ("val_acc", "test_acc") if k in row}
        bar.set_postfix(loss=f"{row['train_loss']:.4f}", acc=f"{row['train_acc']:.2%}", lr=f"{cur_lr:.4g}",
                        **extra)
        bar.close()
    if run.verbose:
        msg = (f"epoch {epoch}/{run.recipe.epochs}  lr {cur_lr:.4g}  train loss {row['train_loss']:.4f} "
               f"acc {row['train_acc']:.2%}"
               + "".join(f"  {s} loss {row[f'{s}_loss']:.4f} acc {row[f'{s}_acc']:.2%}"
                         for s in ("val", "test") if f"{s}_acc" in row)
               + f"  ({row['time_s']:.1f} s)")
        (tqdm.write if run.progress else print)(msg)
    return row


def _bar_postfix(bar, n_batches, lr: float):
    def on_batch(i, totals):
        if i % 10 == 0 or i + 1 == n_batches:
            # Reading the sums syncs a GPU, so only every few batches.
            bar.set_postfix(loss=f"{totals.mean_loss:.4f}", acc=f"{totals.accuracy:.2%}", lr=f"{lr:.4g}",
                            refresh=False)
    return on_batch


def _save(run: _Run, epoch: int, history: list[dict], ckpt_path: str, meta: dict | None) -> None:
    """The checkpoint after ``epoch``, then the logs rewritten from its history."""
    write_checkpoint(ckpt_path, epoch=epoch, config=run.config, model=run.model, optimizer=run.optimizer,
                     scheduler=run.scheduler, masks=run.masks, generators=loader_generators(run.train_loader),
                     history=history, meta=meta,
                     dst=None if run.dst is None else {"state": run.dst.state_dict(),
                                                       "initial_masks": run.initial_masks})
    write_logs(os.path.dirname(ckpt_path), history)
