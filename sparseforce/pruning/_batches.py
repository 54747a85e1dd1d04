"""The batches a pruning method reads: checked, moved to the model's device and handed out in order."""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

import torch


def model_device(params: Mapping[str, torch.Tensor]) -> torch.device:
    return next(iter(params.values())).device


def to_device(x, device):
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, Mapping):
        return {k: to_device(v, device) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(v, device) for v in x)
    return x


_BATCHES = "an iterable of (inputs, targets) batches or of dict batches (keyword arguments of the model)"


def check_data(data) -> None:
    if data is None:
        raise ValueError(f"this method needs data: {_BATCHES}")
    if isinstance(data, (torch.Tensor, str, bytes)) or not isinstance(data, Iterable):
        raise TypeError(f"data must be {_BATCHES}, got {type(data).__name__}")


class BatchStream:
    """Hands out batches in order, starting the iterable again when it runs out.

    A batch is an ``(inputs, targets)`` pair, or a dict (what a Hugging Face ``DataCollator``
    yields, ``labels`` included), which is handed out as ``(batch, batch)``: the model is called
    with it as keyword arguments and the loss function gets it whole as its target.

    A one-shot iterator (a generator) cannot be started again; rather than keep every batch it
    gave in memory to cycle them, running out of it is an error that says so.
    """

    def __init__(self, data, device):
        check_data(data)
        self.data, self.device, self._it = data, device, iter(data)
        self._pass = 0  # batches the current pass over data has given

    def next(self):
        try:
            batch = next(self._it)
        except StopIteration:
            if self._pass and isinstance(self.data, Iterator):
                raise ValueError(f"data is an iterator that ran out after {self._pass} batches and cannot be "
                                 "restarted; pass a list or a DataLoader") from None
            self._it = iter(self.data)
            try:
                batch = next(self._it)
            except StopIteration:
                if self._pass:
                    raise ValueError(f"data yielded {self._pass} batches, then none when iterated again; pass a "
                                     "list or a DataLoader") from None
                raise ValueError("data yielded no batches") from None
            self._pass = 0
        self._pass += 1
        if isinstance(batch, Mapping):
            keys = [k for k in batch if not isinstance(k, str)]
            if keys:
                raise ValueError(f"a dict batch is passed to the model as keyword arguments, so its keys must be "
                                 f"str; got {keys[:3]!r}")
            batch = to_device(batch, self.device)
            return batch, batch
        if not isinstance(batch, Sequence) or isinstance(batch, (str, bytes)) or len(batch) != 2:
            raise ValueError(f"each batch must be a pair (inputs, targets) or a dict, got {type(batch).__name__}"
                             + (f" of length {len(batch)}" if isinstance(batch, Sequence) else ""))
        return to_device(batch[0], self.device), to_device(batch[1], self.device)

    def take(self, n: int) -> list:
        return [self.next() for _ in range(n)]
