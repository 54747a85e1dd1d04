"""Training checkpoints: what ``fit`` writes after every epoch, reading it back with every field
checked, and the global random states saved in it.

A checkpoint is written to a temporary file, fsynced and renamed over the previous one, so a
crash at any moment leaves either the previous checkpoint or the new one, never a truncated
file. Reading it back checks the zip checksum of every stored tensor and every field, and raises
:class:`CheckpointError` naming the file (and the field) for anything a run cannot continue from.
"""
from __future__ import annotations

import os
import random as _random

import numpy as np
import torch

from .._files import atomic_torch_save, load_verified
from ..masks import Masks
from .dynamic import DST_METHODS

CHECKPOINT_FORMAT = "sparseforce.checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, truncated, foreign, or does not fit this run."""


def rng_state() -> dict:
    """The global random states (torch CPU and CUDA, numpy, Python's ``random``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        # As tensors and plain numbers so the checkpoint loads with torch.load(weights_only=True).
        "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": _random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
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
    """Read and validate a checkpoint written by :func:`sparseforce.train.fit`.

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
    obj = load_verified(path, map_location, CheckpointError, "sparseforce training checkpoint")
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


def _refuse(path: str):
    def refuse(name, value, expected):
        raise CheckpointError(f"{path!r} is not a valid checkpoint: {name} is {_describe(value)}, expected "
                              f"{expected}")
    return refuse


def _need(path: str):
    def need(d, name, keys):
        if not isinstance(d, dict):
            _refuse(path)(name, d, f"a dict with keys {list(keys)}")
        lacking = [k for k in keys if k not in d]
        if lacking:
            raise CheckpointError(f"{path!r} is not a valid checkpoint: "
                                  + ", ".join(f"{name}.{k}" for k in lacking) + " missing")
    return need


def _check_fields(ckpt: dict, path: str) -> None:
    """Refuse a well-formed file whose fields a run cannot continue from (tampered, or written by
    something else), naming the field, before anything is restored from it."""
    refuse, need = _refuse(path), _need(path)
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
    if ckpt.get("masks") is not None:
        _check_masks(ckpt["masks"], "masks", path)
    if not isinstance(ckpt.get("meta", {}), dict):
        refuse("meta", ckpt["meta"], "a dict")
    _check_dst(ckpt, path)
    _check_random_states(ckpt, path)


def _check_dst(ckpt: dict, path: str) -> None:
    """Dynamic sparse training: its resolved settings in the config, its state and starting masks."""
    refuse, need = _refuse(path), _need(path)
    config = ckpt["config"].get("dst")
    if config is None:
        return
    need(config, "config.dst", ("method", "total_steps"))
    if config["method"] not in DST_METHODS:
        refuse("config.dst.method", config["method"], " or ".join(map(repr, DST_METHODS)))
    if not (_is_int(config["total_steps"]) and config["total_steps"] >= 1):
        refuse("config.dst.total_steps", config["total_steps"], "an integer >= 1")
    need(ckpt.get("dst"), "dst", ("state", "initial_masks"))
    if not isinstance(ckpt["dst"]["state"], dict):
        refuse("dst.state", ckpt["dst"]["state"], "the dst object's state_dict")
    _check_masks(ckpt["dst"]["initial_masks"], "dst.initial_masks", path)


def _check_masks(payload, name: str, path: str) -> None:
    """A ``Masks.state_dict()``."""
    _need(path)(payload, name, ("masks",))
    try:
        Masks(payload["masks"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path!r} is not a valid checkpoint: {name}: {exc}") from None


def _check_random_states(ckpt: dict, path: str) -> None:
    """The data loader's generators and the global random states, each restorable."""
    refuse, need = _refuse(path), _need(path)
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


def write_checkpoint(path: str, *, epoch: int, config: dict, model, optimizer, scheduler, masks: Masks,
                     generators, history: list[dict], meta: dict | None, dst: dict | None = None) -> None:
    """Write the state after ``epoch`` atomically over ``path``, with the global random states and
    those of the data loader's ``generators``; ``dst``: ``{"state": the dst object's state_dict(),
    "initial_masks": the Masks.state_dict() it started from}`` under dynamic sparse training."""
    atomic_torch_save({
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "epoch": epoch,
        "config": config, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "masks": masks.state_dict() if len(masks) else None,
        "rng": rng_state(), "loader": {"generators": [g.get_state() for g in generators]},
        "history": history, "meta": meta or {}, **({"dst": dst} if dst is not None else {}),
    }, path)


def checkpoint_epoch(path: str):
    """The epoch of the checkpoint at ``path``: None if there is none, -1 if it cannot be read."""
    if not os.path.exists(path):
        return None
    try:
        # mmap: the tensors are not read, only the small pickled dict.
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"])
    except Exception:
        return -1
