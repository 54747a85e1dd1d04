"""Train a pruned network with the paper's recipe, with resumable, crash-safe checkpoints.

    from sparseforce.train import fit, get_splits
    train, val, test = get_splits("cifar10", "data/")
    result = fit(model, masks, train, val, test, recipe="cifar", out_dir="runs/vgg_force")
    # after a crash or preemption, the same call with resume=True continues where it stopped

Recipes (de Jorge et al., ICLR 2021, appendix; the FORCE authors' code):

* ``"cifar"``: SGD momentum 0.9, weight decay 5e-4, batch 128, lr 0.1 divided by 10 at epochs
  150 and 250, 350 epochs; 10 % of the training set held out for validation; random crop
  (4 px padding) and horizontal flip.
* ``"tinyimagenet"``: the same with 300 epochs and milestones 150 and 225.

Asking for a different number of epochs scales the milestones with it (350 -> 35 epochs puts
them at 15 and 25) unless ``milestones=`` is given.

What ``fit`` writes to ``out_dir``:

* ``checkpoint.pt`` after every epoch: model, optimizer, scheduler, masks, completed epochs,
  the training history, the RNG states (torch CPU and CUDA, numpy, Python ``random``) and the
  states of the data loader's generators (shuffling and augmentation). It is written to a
  temporary file, fsynced and renamed over the previous one, so a crash at any moment leaves
  either the previous checkpoint or the new one, never a truncated file (a temporary file that a
  killed process left is removed by the next write). Reading it back checks the zip checksum of
  every stored tensor and every field, and raises :class:`CheckpointError` naming the file (and
  the field) for anything a run cannot continue from.
* ``log.jsonl`` and ``log.csv``: one row per epoch (lr, train/val/test loss and accuracy, time),
  rewritten from the checkpoint's history so they never disagree with it.
* ``result.json`` when training ends: the last epoch's row and the best-validation row.

``resume=True`` restores all of that; on CPU (``num_workers=0``, same thread count) the weights
after the remaining epochs are bit-identical to those of an uninterrupted run.
"""
from __future__ import annotations

import collections.abc
import csv
import dataclasses
import io
import json
import os
import random as _random
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import _checks
from . import ablations as _ablations
from . import data as _data
from .masks import Masks, _atomic_torch_save, _atomic_write, _first_line, _load_verified
from .optim import MaskedAdamW, MaskedSGD

__all__ = ["Recipe", "RECIPES", "FitResult", "CheckpointError", "fit", "evaluate", "get_splits",
           "load_checkpoint", "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "CHECKPOINT_NAME"]

CHECKPOINT_FORMAT = "sparseforce.checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"


@dataclass(frozen=True)
class Recipe:
    """Training hyper-parameters. ``milestones`` are epochs after which lr is multiplied by gamma."""

    name: str = "cifar"
    epochs: int = 350
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    milestones: tuple[int, ...] = (150, 250)
    gamma: float = 0.1
    batch_size: int = 128
    val_fraction: float = 0.1
    augment: bool = True
    optimizer: str = "sgd"

    def replace(self, **changes) -> "Recipe":
        """A copy with ``changes`` (``None`` values ignored); a new ``epochs`` without new
        ``milestones`` scales the milestones proportionally."""
        changes = {k: v for k, v in changes.items() if v is not None}
        if "epochs" in changes and "milestones" not in changes and changes["epochs"] != self.epochs:
            e = int(changes["epochs"])
            changes["milestones"] = tuple(sorted({max(1, round(m * e / self.epochs)) for m in self.milestones}))
        if "milestones" in changes:
            changes["milestones"] = tuple(int(m) for m in changes["milestones"])
        return dataclasses.replace(self, **changes)


RECIPES: dict[str, Recipe] = {
    "cifar": Recipe(),
    "tinyimagenet": Recipe(name="tinyimagenet", epochs=300, milestones=(150, 225)),
}


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, truncated, foreign, or does not fit this run."""


@dataclass
class FitResult:
    """What :func:`fit` returns: the per-epoch rows and where they were written."""

    history: list[dict] = field(default_factory=list)
    out_dir: str | None = None
    recipe: Recipe | None = None

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


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------

def get_splits(dataset: str, data_dir=None, *, seed: int = 0, val_fraction: float = 0.1, augment: bool = True):
    """(train, val, test) data sets as in the paper: ``val_fraction`` of the official training set
    held out (seeded), standard augmentation on train only. The augmentation draws from its own
    generator seeded by ``seed`` + 1 (mod 2**32), which :func:`fit` checkpoints with everything
    else. ``seed``: an integer in [0, 2**32)."""
    seed = _checks.seed(seed)
    gen = torch.Generator().manual_seed((seed + 1) % 2**32)
    train = _data.get_dataset(dataset, data_dir, split="train", augment=augment, val_fraction=val_fraction,
                              seed=seed, generator=gen)
    val = (_data.get_dataset(dataset, data_dir, split="val", val_fraction=val_fraction, seed=seed)
           if val_fraction > 0 else None)
    test = _data.get_dataset(dataset, data_dir, split="test", seed=seed)
    return train, val, test


def _is_dataset(obj) -> bool:
    return hasattr(obj, "__getitem__") and hasattr(obj, "__len__") and not isinstance(obj, (list, tuple))


def _as_loader(data, batch_size: int, shuffle: bool, seed: int, num_workers: int):
    if data is None or isinstance(data, torch.utils.data.DataLoader) or not _is_dataset(data):
        return data
    return _data.make_loader(data, batch_size=batch_size, shuffle=shuffle, seed=seed, num_workers=num_workers)


def _loader_generators(loader) -> list[torch.Generator]:
    """Every generator that decides the order or augmentation of ``loader``'s batches."""
    found: list[torch.Generator] = []
    seen: set[int] = set()

    def add(g):
        if isinstance(g, torch.Generator) and id(g) not in seen:
            seen.add(id(g))
            found.append(g)

    add(getattr(loader, "generator", None))
    sampler = getattr(loader, "sampler", None)
    add(getattr(sampler, "generator", None))
    batch_sampler = getattr(loader, "batch_sampler", None)
    add(getattr(getattr(batch_sampler, "sampler", None), "generator", None))
    for g in _data._iter_generators(getattr(loader, "dataset", None), set()):
        add(g)
    return found


def _to(x, device):
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, (list, tuple)):
        return type(x)(_to(v, device) for v in x)
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    return x


def _pair(batch, what: str):
    # A dict batch (a Hugging Face DataCollator's) would unpack into its first two keys.
    if isinstance(batch, collections.abc.Mapping):
        raise TypeError(f"{what} yielded a dict batch; fit and evaluate train classifiers on (inputs, targets) "
                        "pairs. Train a Hugging Face model with transformers.Trainer after sf.apply_masks(model, "
                        "masks), which keeps the pruned weights at 0")
    return batch


def _forward(model, inputs):
    return model(**inputs) if isinstance(inputs, dict) else model(inputs)


@torch.no_grad()
def evaluate(model: nn.Module, data, loss_fn: Callable | None = None, device=None) -> dict[str, float]:
    """Mean loss and top-1 accuracy of ``model`` (in eval mode) over ``data`` (a loader or any
    iterable of (inputs, targets) batches). The model's train/eval flag is restored."""
    loss_fn = loss_fn or F.cross_entropy
    device = torch.device(device) if device is not None else _model_device(model)
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    n = 0
    try:
        for batch in data:
            inputs, targets = _pair(batch, "evaluation data")
            inputs, targets = _to(inputs, device), _to(targets, device)
            out = _forward(model, inputs)
            b = targets.shape[0]
            loss_sum += loss_fn(out, targets).double() * b
            correct += (out.argmax(1) == targets).sum()
            n += b
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("evaluation data yielded no samples")
    return {"loss": float(loss_sum) / n, "acc": int(correct) / n}


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


# --------------------------------------------------------------------------------------------
# RNG and checkpoints
# --------------------------------------------------------------------------------------------

def _rng_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        # As tensors and plain numbers so the checkpoint loads with torch.load(weights_only=True).
        "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": _random.getstate(),
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        cuda = state["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda)
    npst = state["numpy"]
    np.random.set_state((npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                         npst["cached_gaussian"]))
    py = state["python"]
    _random.setstate((py[0], tuple(py[1]), py[2]))


def load_checkpoint(path, map_location="cpu") -> dict:
    """Read and validate a checkpoint written by :func:`fit`.

    Raises ``FileNotFoundError`` for a missing file and :class:`CheckpointError` (a
    ``ValueError``) naming the file for anything else: corrupt bytes (the zip checksums of every
    stored tensor are verified), a truncated file, a masks file, a plain ``state_dict``, another
    program's checkpoint, a newer format version, or a field with an impossible value (naming
    the field, e.g. ``epoch`` or ``rng.numpy``).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path!r} is a directory")
    obj = _load_verified(path, map_location, CheckpointError, "sparseforce training checkpoint")
    where = f"{path!r} is not a sparseforce training checkpoint"
    if not isinstance(obj, dict):
        raise CheckpointError(f"{where}: expected a dict, found {type(obj).__name__}")
    tag = obj.get("format")
    if tag != CHECKPOINT_FORMAT:
        hint = ""
        if tag == "sparseforce.masks":
            hint = " (it is a masks file: pass it as masks, not as a checkpoint)"
        elif tag is None and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            hint = " (it looks like a bare model state_dict)"
        raise CheckpointError(f"{where}: format tag is {tag!r}, expected {CHECKPOINT_FORMAT!r}{hint}")
    version = obj.get("version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{where}: invalid version {version!r}")
    if version > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path!r} uses checkpoint version {version}, newer than this sparseforce "
                              f"understands ({CHECKPOINT_VERSION}); upgrade sparseforce")
    missing = [k for k in ("epoch", "model", "optimizer", "scheduler", "rng", "loader", "history", "config")
               if k not in obj]
    if missing:
        raise CheckpointError(f"{path!r} is an incomplete checkpoint: missing {missing}")
    _check_fields(obj, path)
    return obj


def _describe(v) -> str:
    if isinstance(v, torch.Tensor):
        return f"a {v.dtype} tensor of shape {tuple(v.shape)}"
    if isinstance(v, dict):
        return f"a dict with keys {sorted(map(str, v))}"
    if isinstance(v, (list, tuple)) and (len(v) > 3 or not all(isinstance(x, (int, float, str)) for x in v)):
        return f"a {type(v).__name__} of {len(v)} items"
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0  # NaN fails v >= 0


def _is_generator_state(v) -> bool:
    if not (isinstance(v, torch.Tensor) and v.dtype == torch.uint8):
        return False
    try:
        torch.Generator().set_state(v)
    except RuntimeError:
        return False
    return True


# What each config field must be, in words and as a test.
_CONFIG_FIELDS = {
    "epochs": ("an integer >= 1", lambda v: _is_int(v) and v >= 1),
    "lr": ("a number >= 0", _is_number),
    "momentum": ("a number >= 0", _is_number),
    "weight_decay": ("a number >= 0", _is_number),
    "nesterov": ("True or False", lambda v: isinstance(v, bool)),
    "milestones": ("a list of integers", lambda v: isinstance(v, list) and all(map(_is_int, v))),
    "gamma": ("a number >= 0", _is_number),
    "batch_size": ("an integer >= 1", lambda v: _is_int(v) and v >= 1),
    "optimizer": ("'sgd' or 'adamw'", lambda v: v in ("sgd", "adamw")),
}


def _check_fields(ckpt: dict, path: str) -> None:
    """Refuse a well-formed file whose fields a run cannot continue from (tampered, or written by
    something else), naming the field, before anything is restored from it."""
    def refuse(name, value, expected):
        raise CheckpointError(f"{path!r} is not a valid checkpoint: {name} is {_describe(value)}, expected "
                              f"{expected}")

    def need(d, name, keys):
        if not isinstance(d, dict):
            refuse(name, d, f"a dict with keys {list(keys)}")
        lacking = [k for k in keys if k not in d]
        if lacking:
            raise CheckpointError(f"{path!r} is not a valid checkpoint: "
                                  + ", ".join(f"{name}.{k}" for k in lacking) + " missing")

    config = ckpt["config"]
    need(config, "config", _CONFIG_FIELDS)
    for k, (expected, ok) in _CONFIG_FIELDS.items():
        if not ok(config[k]):
            refuse(f"config.{k}", config[k], expected)
    epoch = ckpt["epoch"]
    if not _is_int(epoch) or not 1 <= epoch <= config["epochs"]:
        refuse("epoch", epoch, f"an integer from 1 to config.epochs ({config['epochs']})")
    history = ckpt["history"]
    if not (isinstance(history, list) and len(history) == epoch
            and all(isinstance(r, dict) and r.get("epoch") == i + 1 for i, r in enumerate(history))):
        refuse("history", history, f"a list of one row per epoch 1 to {epoch}")

    model = ckpt["model"]
    if not (isinstance(model, dict) and all(isinstance(k, str) for k in model)):
        refuse("model", model, "a state_dict (parameter name -> tensor)")
    for k, v in model.items():
        if not isinstance(v, torch.Tensor):
            refuse(f"model[{k!r}]", v, "a tensor")
    need(ckpt["optimizer"], "optimizer", ("state", "param_groups"))
    groups = ckpt["optimizer"]["param_groups"]
    if not (isinstance(groups, list) and groups and all(isinstance(g, dict) for g in groups)):
        refuse("optimizer.param_groups", groups, "a list of dicts")
    if not isinstance(ckpt["scheduler"], dict):
        refuse("scheduler", ckpt["scheduler"], "a state_dict")
    masks = ckpt.get("masks")
    if masks is not None:
        need(masks, "masks", ("masks",))
        try:
            Masks(masks["masks"])
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{path!r} is not a valid checkpoint: masks: {exc}") from None
    if not isinstance(ckpt.get("meta", {}), dict):
        refuse("meta", ckpt["meta"], "a dict")

    need(ckpt["loader"], "loader", ("generators",))
    gens = ckpt["loader"]["generators"]
    if not isinstance(gens, list):
        refuse("loader.generators", gens, "a list of torch.Generator states")
    for i, g in enumerate(gens):
        if not _is_generator_state(g):
            refuse(f"loader.generators[{i}]", g, "a torch.Generator state")
    rng = ckpt["rng"]
    need(rng, "rng", ("torch", "cuda", "numpy", "python"))
    if not _is_generator_state(rng["torch"]):
        refuse("rng.torch", rng["torch"], "a torch.Generator state")
    if not isinstance(rng["cuda"], list):
        refuse("rng.cuda", rng["cuda"], "a list of CUDA generator states")
    for i, t in enumerate(rng["cuda"]):
        if not (isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.dim() == 1):
            refuse(f"rng.cuda[{i}]", t, "a CUDA generator state (a uint8 tensor)")
    npst = rng["numpy"]
    need(npst, "rng.numpy", ("name", "keys", "pos", "has_gauss", "cached_gaussian"))
    for k, expected, ok in (
            ("name", "'MT19937'", lambda v: v == "MT19937"),
            ("keys", "624 integers (an int64 tensor)",
             lambda v: isinstance(v, torch.Tensor) and v.dtype == torch.int64 and tuple(v.shape) == (624,)),
            ("pos", "an integer from 0 to 624", lambda v: _is_int(v) and 0 <= v <= 624),
            ("has_gauss", "0 or 1", lambda v: _is_int(v) and v in (0, 1)),
            ("cached_gaussian", "a float", lambda v: isinstance(v, float))):
        if not ok(npst[k]):
            refuse(f"rng.numpy.{k}", npst[k], expected)
    # Restored into a throwaway generator, so that a bad state fails here, not half-way through
    # restoring the global ones.
    py = rng["python"]
    try:
        _random.Random().setstate((py[0], tuple(py[1]), py[2]))
    except Exception:  # whatever random.setstate raises for a malformed state
        refuse("rng.python", py, "Python's random state (version, 625 integers, gauss)")


def _write_text_atomic(path: str, text: str) -> None:
    _atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _write_logs(out_dir: str, history: list[dict]) -> None:
    _write_text_atomic(os.path.join(out_dir, "log.jsonl"), "".join(json.dumps(r) + "\n" for r in history))
    columns: list[str] = []
    for r in history:
        columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    w.writerows(history)
    _write_text_atomic(os.path.join(out_dir, "log.csv"), buf.getvalue())


# --------------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------------

def _resolve_recipe(recipe, **overrides) -> Recipe:
    if isinstance(recipe, str):
        if recipe not in RECIPES:
            raise ValueError(f"unknown recipe {recipe!r}; choose one of {sorted(RECIPES)} or pass a Recipe")
        recipe = RECIPES[recipe]
    elif not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a name or a Recipe, got {type(recipe).__name__}")
    if overrides.get("optimizer") == "adamw" and recipe.optimizer != "adamw":
        # The paper's recipes are for SGD; lr 0.1 would make Adam diverge. torch's AdamW defaults.
        overrides = {"lr": 1e-3, **{k: v for k, v in overrides.items() if v is not None}}
        overrides.setdefault("weight_decay", 1e-2)
    rec = recipe.replace(**overrides)
    if isinstance(rec.epochs, bool) or not isinstance(rec.epochs, int) or rec.epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {rec.epochs!r}")
    if rec.optimizer not in ("sgd", "adamw"):
        raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {rec.optimizer!r}")
    return rec


def _config(rec: Recipe, batch_size) -> dict:
    cfg = dataclasses.asdict(rec)
    cfg["milestones"] = list(rec.milestones)
    cfg["batch_size"] = batch_size
    for k in ("name", "val_fraction", "augment"):  # data-side or cosmetic: no effect on the update
        cfg.pop(k)
    return cfg


def fit(model: nn.Module, masks, train_data, val_data=None, test_data=None, *, epochs: int | None = None,
        recipe: str | Recipe = "cifar", lr: float | None = None, momentum: float | None = None,
        weight_decay: float | None = None, nesterov: bool | None = None, milestones=None,
        gamma: float | None = None, batch_size: int | None = None, optimizer: str | None = None,
        loss_fn: Callable | None = None, device=None, out_dir=None, resume=False, overwrite: bool = False,
        seed: int = 0, num_workers: int = 0, progress: bool | None = None, verbose: bool = False,
        backend: str = "auto", callback: Callable[[dict], Any] | None = None,
        stop_after_epoch: int | None = None, meta: dict | None = None, reinit: int | None = None) -> FitResult:
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

    Returns a :class:`FitResult` (``history``, ``final``, ``best``).
    """
    rec = _resolve_recipe(recipe, epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay,
                          nesterov=nesterov, milestones=milestones, gamma=gamma, batch_size=batch_size,
                          optimizer=optimizer)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    seed = _checks.seed(seed)
    reinit = None if reinit is None else _checks.seed(reinit, "reinit")
    device = torch.device(device) if device is not None else _model_device(model)
    model.to(device)
    loss_fn = loss_fn or F.cross_entropy
    progress = sys.stderr.isatty() if progress is None else bool(progress)
    out_dir = os.fspath(out_dir) if out_dir is not None else None

    # -- find the checkpoint to resume from before touching anything on disk
    ckpt_path = os.path.join(out_dir, CHECKPOINT_NAME) if out_dir is not None else None
    ckpt = where = None
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
    if where is not None:
        ckpt = load_checkpoint(where, map_location="cpu")

    # -- masks
    if masks is not None and not isinstance(masks, Masks):
        masks = Masks(masks)
    if ckpt is not None:
        saved = Masks(ckpt["masks"]["masks"]) if ckpt.get("masks") is not None else Masks()
        if masks is None:
            masks = saved
        elif masks != saved:
            raise CheckpointError(f"the masks given differ from those in {where!r}; pass masks=None to use "
                                  "the checkpoint's")
    if masks is not None:
        masks = (masks if isinstance(masks, Masks) else Masks(masks)).check(model).to(device)
    else:
        masks = Masks()

    # -- data
    train_loader = _as_loader(train_data, rec.batch_size, True, seed, num_workers)
    if train_loader is None:
        raise ValueError("train_data is required")
    eval_bs = max(rec.batch_size, 256)
    val_loader = _as_loader(val_data, eval_bs, False, seed, num_workers)
    test_loader = _as_loader(test_data, eval_bs, False, seed, num_workers)
    used_bs = getattr(train_loader, "batch_size", None) or rec.batch_size
    config = _config(rec, used_bs)

    if reinit is not None and ckpt is None:
        _ablations.reinit(model, reinit)  # once every argument is checked; the optimizer zeroes the pruned

    # -- optimizer and schedule
    named = list(model.named_parameters())
    if rec.optimizer == "sgd":
        opt = MaskedSGD(named, masks, lr=rec.lr, momentum=rec.momentum, weight_decay=rec.weight_decay,
                        nesterov=rec.nesterov, backend=backend)
    else:
        opt = MaskedAdamW(named, masks, lr=rec.lr, weight_decay=rec.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(rec.milestones), gamma=rec.gamma)

    history: list[dict] = []
    start = 0
    if ckpt is not None:
        old = dict(ckpt["config"])
        diff = {k: (old.get(k), v) for k, v in config.items() if k != "epochs" and old.get(k) != v}
        if diff:
            raise CheckpointError(
                f"{where!r} was written with other settings: "
                + ", ".join(f"{k}={a!r} there, {b!r} now" for k, (a, b) in diff.items())
                + " (resume with the same settings; a changed epochs count rescales the milestones "
                  "unless they are given explicitly)")
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            raise CheckpointError(f"{where!r} holds weights of another model: {exc}") from None
        for name, obj in (("optimizer", opt), ("scheduler", sched)):
            try:
                obj.load_state_dict(ckpt[name])
            except (ValueError, KeyError, TypeError, RuntimeError) as exc:
                raise CheckpointError(f"{where!r}: the {name} state does not fit this run: "
                                      f"{type(exc).__name__}: {_first_line(exc)}") from None
        gens = _loader_generators(train_loader)
        saved_gens = ckpt["loader"]["generators"]
        if len(gens) != len(saved_gens):
            raise CheckpointError(f"{where!r}: the training data has {len(gens)} random generators but the "
                                  f"checkpoint saved {len(saved_gens)}; is it the same data pipeline?")
        for g, s in zip(gens, saved_gens):
            g.set_state(s)
        _set_rng_state(ckpt["rng"])
        history = list(ckpt["history"])
        start = int(ckpt["epoch"])
        if verbose:
            print(f"resumed from {where} after epoch {start}", flush=True)

    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        if ckpt is not None:
            _write_logs(out_dir, history)  # whatever a crash left behind, match the checkpoint

    n_batches = len(train_loader) if hasattr(train_loader, "__len__") else None
    for epoch in range(start + 1, rec.epochs + 1):
        t0 = time.perf_counter()
        cur_lr = opt.param_groups[0]["lr"]
        model.train()
        bar = None
        batches = iter(train_loader)
        if progress:
            from tqdm.auto import tqdm
            # Given the iterator, not the loader: tqdm.auto's asyncio class calls iter() on an
            # iterable in its constructor, which would start a second pass over the loader and
            # advance its shuffling generator, so progress on/off would change the data order.
            batches = bar = tqdm(batches, total=n_batches, desc=f"epoch {epoch}/{rec.epochs}",
                                 unit="batch", leave=True, dynamic_ncols=True)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen = 0
        for i, batch in enumerate(batches):
            inputs, targets = _pair(batch, "train_data")
            inputs, targets = _to(inputs, device), _to(targets, device)
            out = _forward(model, inputs)
            loss = loss_fn(out, targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            b = targets.shape[0]
            loss_sum += loss.detach().double() * b
            correct += (out.detach().argmax(1) == targets).sum()
            seen += b
            if bar is not None and (i % 10 == 0 or i + 1 == n_batches):
                # Reading the sums syncs a GPU, so only every few batches.
                bar.set_postfix(loss=f"{float(loss_sum) / seen:.4f}", acc=f"{int(correct) / seen:.2%}",
                                lr=f"{cur_lr:.4g}", refresh=False)
        if seen == 0:
            raise ValueError("train_data yielded no batches")
        sched.step()
        row: dict[str, Any] = {"epoch": epoch, "lr": cur_lr, "train_loss": float(loss_sum) / seen,
                               "train_acc": int(correct) / seen}
        for split, loader in (("val", val_loader), ("test", test_loader)):
            if loader is not None:
                m = evaluate(model, loader, loss_fn, device)
                row[f"{split}_loss"], row[f"{split}_acc"] = m["loss"], m["acc"]
        row["time_s"] = round(time.perf_counter() - t0, 3)
        history.append(row)
        if bar is not None:
            extra = {k: f"{row[k]:.2%}" for k in ("val_acc", "test_acc") if k in row}
            bar.set_postfix(loss=f"{row['train_loss']:.4f}", acc=f"{row['train_acc']:.2%}", lr=f"{cur_lr:.4g}",
                            **extra)
            bar.close()
        if verbose:
            msg = (f"epoch {epoch}/{rec.epochs}  lr {cur_lr:.4g}  train loss {row['train_loss']:.4f} "
                   f"acc {row['train_acc']:.2%}"
                   + "".join(f"  {s} loss {row[f'{s}_loss']:.4f} acc {row[f'{s}_acc']:.2%}"
                             for s in ("val", "test") if f"{s}_acc" in row)
                   + f"  ({row['time_s']:.1f} s)")
            (tqdm.write if progress else print)(msg)
        if out_dir is not None:
            _atomic_torch_save({
                "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "epoch": epoch,
                "config": config, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "masks": masks.state_dict() if len(masks) else None,
                "rng": _rng_state(),
                "loader": {"generators": [g.get_state() for g in _loader_generators(train_loader)]},
                "history": history, "meta": meta or {},
            }, ckpt_path)
            _write_logs(out_dir, history)
        if callback is not None:
            callback(row)
        if stop_after_epoch is not None and epoch >= stop_after_epoch and epoch < rec.epochs:
            return FitResult(history, out_dir, rec)

    result = FitResult(history, out_dir, rec)
    if out_dir is not None and history:
        _write_text_atomic(os.path.join(out_dir, "result.json"),
                           json.dumps({"final": result.final, "best": result.best, "epochs": rec.epochs,
                                       "recipe": dataclasses.asdict(rec),
                                       "density": masks.density()}, indent=2) + "\n")
    return result

