"""Checks every subcommand runs on its arguments before any work; a ``ValueError`` here is the
one-line usage error of :func:`sparseforce.cli.main`."""
from __future__ import annotations

import math
import os
import tempfile

from .methods import nm_pair
from .options import MODEL_NAMES, default_model


def checked_device(arg):
    """The torch.device ``--device`` names (default: cuda if available), refused if absent."""
    import torch

    if arg is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(arg)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"--device {arg!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {arg}: torch finds no usable CUDA GPU on this machine; use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device {arg}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    elif device.type != "cpu":
        raise ValueError(f"--device {arg}: sparseforce runs on cpu or cuda devices")
    return device


def check_backend(backend: str, device, ops) -> None:
    """``--backend`` must have a kernel for each of ``ops`` on ``device``."""
    if backend == "auto":
        return
    from ..ops import available_backends, unavailable_reason

    for op in ops:
        reason = unavailable_reason(backend, op, device)
        if reason is not None:
            have = ", ".join(["auto"] + available_backends(device, op))
            raise ValueError(f"--backend {backend} is not available on {device.type}: {reason}; "
                             f"available for {device.type} on this machine: {have}")


def _shape(shape) -> str:
    return "x".join(map(str, shape))


def _runs_on(model_name: str, dataset: str) -> bool:
    """Whether the model takes the data set's images: a forward pass on the meta device (no
    memory, no arithmetic), so a mismatch is found before any data is read."""
    import torch

    from ..data import INPUT_SHAPE, NUM_CLASSES

    with torch.device("meta"):
        model = build_model(model_name, dataset, NUM_CLASSES[dataset])
    model.eval()
    try:
        with torch.no_grad():
            model(torch.empty(2, *INPUT_SHAPE[dataset], device="meta"))
    except (RuntimeError, ValueError):
        return False
    return True


def check_model_fits(model_name: str, dataset: str, data: str | None = None) -> None:
    """The model must run on the data set's images (``data``: how the message names them)."""
    if _runs_on(model_name, dataset):
        return
    from ..data import INPUT_SHAPE
    from ..models import INPUT_SHAPES

    fits = [m for m in MODEL_NAMES if m != model_name and _runs_on(m, dataset)]
    raise ValueError(f"--model {model_name} is built for {_shape(INPUT_SHAPES[model_name])} inputs and does not "
                     f"run on {data or f'--dataset {dataset}'}, whose images are {_shape(INPUT_SHAPE[dataset])}; "
                     f"models that do: {', '.join(fits)}")


def check_data_dir(args) -> None:
    """``--data-dir``: given where the data set needs one, and a folder."""
    if args.data_dir is None and args.dataset not in ("digits", "mnist"):
        # Here rather than from sparseforce.data, whose message names its Python argument data_dir.
        raise ValueError(f"--dataset {args.dataset} needs --data-dir pointing at the extracted files (nothing is "
                         "downloaded; layouts: see the README); only digits and mnist work without one")
    if args.data_dir is not None and not os.path.isdir(args.data_dir):
        what = "is not a folder" if os.path.exists(args.data_dir) else "does not exist"
        raise ValueError(f"--data-dir {args.data_dir} {what}")


def check_nm_fits(model_name: str, dataset: str, nm: str) -> None:
    """``--nm N:M``: every prunable layer's rows (the weight viewed as (dim 0, rest)) a multiple of
    M, read from the model built on the meta device, so a misfit is found before any data is read."""
    import torch

    from .._prunable import prunable_parameters
    from ..data import NUM_CLASSES

    m = nm_pair(nm)[1]
    with torch.device("meta"):
        model = build_model(model_name, dataset, NUM_CLASSES[dataset])
    for name, p in prunable_parameters(model, check_nan=False).items():
        row = math.prod(p.shape[1:])
        if row % m:
            raise ValueError(f"--nm {nm}: the prunable layer {name!r} of --model {model_name} has rows of {row} "
                             f"weights (its shape {tuple(p.shape)} viewed as (dim 0, rest)), not a multiple of {m}")


def checked_model_and_data(args) -> str:
    """The model's name (``--model`` or the data set's default), which must run on ``--dataset``
    (and take ``--nm``'s pattern), whose files ``--data-dir`` must hold."""
    model_name = args.model if args.model is not None else default_model(args.dataset)
    check_model_fits(model_name, args.dataset)
    if getattr(args, "nm", None) is not None:
        check_nm_fits(model_name, args.dataset, args.nm)
    check_data_dir(args)
    return model_name


def _check_writable(folder: str, option: str, path) -> None:
    # Trying is the only test that also holds for root, read-only mounts and ACLs.
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".sparseforce-write-test-")
    except OSError as exc:
        raise ValueError(f"{option} {path}: cannot write in {folder} ({exc.strerror or exc})") from None
    os.close(fd)
    os.remove(probe)


def check_out_file(path, option: str = "--out") -> None:
    """A file that can be written, in a folder that exists."""
    if os.path.isdir(path):
        raise ValueError(f"{option} {path} is a directory; give a file name such as "
                         f"{os.path.join(path, 'masks.pt')}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"{option} {path}: the folder {folder} does not exist")
    _check_writable(folder, option, path)


def check_out_folder(path, option: str = "--out") -> None:
    """A folder that is created, with its parents, if missing."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{option} {path} exists and is not a folder")
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"{option} {path}: {existing} is a file, not a folder")
    _check_writable(existing, option, path)


def build_model(model_name: str, dataset: str, num_classes: int):
    """The model ``--model`` names, sized for the data set's images and classes."""
    from .. import data as sfdata
    from ..models import get_model

    # The small generic nets take their input size as an argument; read it from the data set so
    # e.g. lenet5 works on 3-channel CIFAR images.
    shape = sfdata.INPUT_SHAPE.get(sfdata.canonical_name(dataset))
    kw = {}
    if shape is not None and model_name == "lenet5":
        kw["in_channels"] = shape[0]
    elif shape is not None and model_name == "mlp":
        kw["in_features"] = math.prod(shape)
    return get_model(model_name, num_classes=num_classes, **kw)

