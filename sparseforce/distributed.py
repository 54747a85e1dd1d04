"""Exact global top-k across the ranks of a ``torch.distributed`` process group.

Each rank passes only its own tensors; ``k`` is global. The ranks never exchange scores: they
sum radix histograms of order-preserving integer keys (``all_reduce``), which are small and add
exactly, and walk the key 16 bits at a time to the k-th largest value:

    meta       one all_reduce of a few counts per rank: sizes, dtypes, argument errors, k
    pass j     each rank histograms digit j of the keys that match the digits chosen so far;
               all_reduce; every rank picks the same digit from the same global histogram
               (the first pass also carries a NaN flag per rank)
    ties       one all_reduce of each rank's count of keys equal to the threshold, so that
               the lowest (rank, tensor, element) positions win, as in one process
    masks      each rank keeps its own share, ``k_r = above_r + tie quota_r``, with the
               single-process op (the fast backend) on its own tensors

So the result is bit-identical to the single-process op on the ranks' tensors laid end to end
in rank order. fp32 scores take 2 histogram passes (fp16/bf16: 1, fp64: 4); each moves
65,536 int64 counts (512 KiB) per rank, whatever the number of scores.

Every rank makes the same collectives in the same order, also on the way to an error: a bad
argument, a NaN or an inconsistent ``k`` on one rank makes every rank raise (the rank at
fault with the precise error), instead of leaving the others waiting in a collective.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from . import ops
from .ops import _schema
from .ops._schema import NaNScoreError

__all__ = ["topk_masks", "saliency_topk_masks", "kth_largest", "DistributedError",
           "all_reduce_mean_", "all_reduce", "comm_device", "any_rank", "traffic", "check_same_on_all_ranks",
           "HISTOGRAM_BITS"]

HISTOGRAM_BITS = _schema.HISTOGRAM_BITS
_BINS = 1 << HISTOGRAM_BITS
_WIDTH = _schema.KEY_BITS
_INT_VIEW = {16: torch.int16, 32: torch.int32, 64: torch.int64}
_DTYPE_SLOTS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class DistributedError(RuntimeError):
    """A collective failed (a rank died or timed out), or another rank rejected the call."""


# -- process group plumbing ------------------------------------------------------------------

def _group_info(group):
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("sparseforce.distributed needs an initialized process group: call "
                           "torch.distributed.init_process_group() first (torchrun sets up the "
                           "environment it reads)")
    try:
        rank, world = dist.get_rank(group), dist.get_world_size(group)
    except Exception as e:  # a group object from another world, or a destroyed one
        raise ValueError(f"group is not a usable process group: {e}") from e
    if rank < 0:
        raise ValueError("this process is not a member of the given group")
    return rank, world


def comm_device(group, local_device: torch.device | None) -> torch.device:
    """Where collective buffers must live: NCCL takes CUDA tensors only, gloo takes CPU ones."""
    if "nccl" in str(dist.get_backend(group)).lower():
        if local_device is not None and local_device.type == "cuda":
            return local_device
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


_TRAFFIC = {"calls": 0, "bytes": 0}


def traffic(reset: bool = False) -> dict:
    """What this process's sparseforce collectives sent so far: ``{"calls", "bytes"}`` (bytes
    of the tensors all-reduced; the wire volume of a ring all_reduce is about twice that)."""
    out = dict(_TRAFFIC)
    if reset:
        _TRAFFIC.update(calls=0, bytes=0)
    return out


def all_reduce(t: torch.Tensor, group, what: str) -> torch.Tensor:
    """``all_reduce`` that turns a dead or stuck peer into one clear error on every survivor."""
    _TRAFFIC["calls"] += 1
    _TRAFFIC["bytes"] += t.numel() * t.element_size()
    try:
        dist.all_reduce(t, group=group)
    except Exception as e:
        rank = dist.get_rank(group)
        raise DistributedError(
            f"sparseforce.distributed: the all_reduce of {what} failed on rank {rank} of "
            f"{dist.get_world_size(group)}; another rank has probably exited, crashed or not "
            f"reached the same call (the process group's timeout bounds the wait): "
            f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}") from e
    return t


def all_reduce_mean_(tensors, group=None) -> list[torch.Tensor]:
    """Average ``tensors`` across the ranks in place, in one flat all_reduce per dtype/device.

    Every rank ends with the same bits (the reduction's summation order is the backend's, so it
    may differ from a single process summing the same values in rank order by float rounding).
    """
    _, world = _group_info(group)
    tensors = list(tensors)
    buckets: dict = {}
    for t in tensors:
        buckets.setdefault((t.dtype, t.device), []).append(t)
    for (dtype, device), ts in buckets.items():
        flat = torch.cat([t.reshape(-1) for t in ts]).to(comm_device(group, device))
        all_reduce(flat, group, "the gradients")
        flat = flat.div_(world).to(device)
        offset = 0
        for t in ts:
            t.copy_(flat[offset: offset + t.numel()].view_as(t))
            offset += t.numel()
    return tensors


def _checksum(tensors) -> int:
    """An order- and bit-sensitive fingerprint of tensors, computed on their own device."""
    total = 0
    for i, t in enumerate(tensors):
        t = t.detach().reshape(-1)
        if t.dtype == torch.bool:
            bits = t.to(torch.int64)
        else:
            bits = t.contiguous().view(_INT_VIEW[t.element_size() * 8]).to(torch.int64)
        weight = torch.arange(t.numel(), device=t.device, dtype=torch.int64) % 1_000_003 + 1
        total = (total * 1_000_033 + i + int((bits * weight).sum()) + 7 * t.numel()) % (1 << 61)
    return total


def any_rank(flag: bool, what: str, group=None) -> bool:
    """True on every rank if ``flag`` is true on any rank (one tiny all_reduce)."""
    _group_info(group)
    t = torch.tensor([int(bool(flag))], dtype=torch.int64)
    return bool(all_reduce(t.to(comm_device(group, None)), group, what).item())


def check_same_on_all_ranks(tensors, what: str, group=None, hint: str = "") -> None:
    """Raise ``DistributedError`` on every rank unless all ranks hold the same bits."""
    rank, world = _group_info(group)
    tensors = list(tensors)
    device = tensors[0].device if tensors else None
    # A sum of one-hot slots: every rank learns every rank's checksum.
    sums = torch.zeros(world, dtype=torch.int64)
    sums[rank] = _checksum(tensors)
    values = all_reduce(sums.to(comm_device(group, device)), group, f"a checksum of {what}").tolist()
    if len(set(values)) != 1:
        differing = [r for r, v in enumerate(values) if v != values[0]]
        raise DistributedError(f"{what} differ across ranks (ranks {differing} differ from rank 0); "
                               f"they must be identical on every rank{hint}")


# -- keys back to values --------------------------------------------------------------------

def _key_to_value(key: int, dtype: torch.dtype, device) -> torch.Tensor:
    w = _WIDTH[dtype]
    s = key - (1 << (w - 1))
    mag = (1 << (w - 1)) - 1
    b = s if s >= 0 else s ^ mag
    bits = torch.tensor([b], dtype=torch.int64).to(_INT_VIEW[w])
    return bits.view(dtype)[0].to(device)


# -- the selection --------------------------------------------------------------------------

class _Local:
    """One rank's share: how to histogram its keys, its sizes, and which elements compete."""

    def __init__(self, histogram, numels, dtypes, candidates, device):
        self.histogram, self.numels, self.dtypes = histogram, numels, dtypes
        self.candidates, self.device = candidates, device

    def num_competing(self) -> int:
        return sum(self.numels) if self.candidates is None else sum(int(m.sum()) for m in self.candidates)


def _meta(local: _Local | None, k, error: BaseException | None, group, rank: int, world: int):
    """One all_reduce of per-rank slots; every rank learns every rank's counts and troubles.
    Reads no scores: NaN is found in the first histogram pass."""
    n_dtype = len(_DTYPE_SLOTS)
    # Layout: [numel | competing | dtype flags (4) | per-rank: error flag, k + 1]
    meta = torch.zeros(2 + n_dtype + 2 * world, dtype=torch.int64)
    base = 2 + n_dtype
    if error is None:
        meta[0] = sum(local.numels)
        meta[1] = local.num_competing()
        for d in local.dtypes:
            meta[2 + _DTYPE_SLOTS.index(d)] = 1
        meta[base + world + rank] = k + 1
    else:
        meta[base + rank] = 1
    meta = all_reduce(meta.to(comm_device(group, local.device if local else None)), group,
                       "the selection's sizes and checks").cpu().tolist()
    return dict(numel=meta[0], candidates=meta[1], has=meta[2:base], errors=meta[base: base + world],
                ks=meta[base + world: base + 2 * world])


def _raise_if_nan(nan_slots: list[int], rank: int, world: int) -> None:
    """``nan_slots[r]`` = 1 + the index of rank r's first tensor with a NaN score, or 0."""
    nan_ranks = [(r, i - 1) for r, i in enumerate(nan_slots) if i]
    if nan_ranks:
        r, i = nan_ranks[0]
        if r == rank:
            raise NaNScoreError(i, f"scores[{i}] of rank {r} (this rank) contains NaN; NaN scores cannot be ranked")
        raise NaNScoreError(None, f"scores[{i}] of rank {r} contains NaN; NaN scores cannot be ranked "
                                  "(every rank stops)")


def _promoted(has) -> torch.dtype:
    # Same promotion as the single-process op: fp16 with bf16 ranks as fp32.
    f16, bf16, f32, f64 = has
    if f64:
        return torch.float64
    if f32 or (f16 and bf16):
        return torch.float32
    if f16:
        return torch.float16
    if bf16:
        return torch.bfloat16
    return torch.float32


def _local_k(k, parse, group, what: str) -> tuple[int, torch.dtype, int | None]:
    """The collective part: this rank's share of the k kept, the ranking dtype and the
    threshold's key (None when k = 0).

    ``parse`` validates the local arguments (raising on bad ones) and returns a ``_Local``.
    """
    rank, world = _group_info(group)
    error, local = None, None
    try:
        local = parse()
        k = _check_global_k_type(k)
    except Exception as e:  # reported to the other ranks first, then raised here
        error = e
    meta = _meta(local, k if error is None else 0, error, group, rank, world)
    if error is not None:
        raise error
    bad = [r for r, e in enumerate(meta["errors"]) if e]
    if bad:
        raise DistributedError(f"rank(s) {bad} rejected the arguments of {what} (see the error raised "
                               "there); every rank stops")
    if len(set(meta["ks"])) != 1:
        raise ValueError(f"k differs across ranks ({[x - 1 for x in meta['ks']]} by rank); k is global and "
                         "must be the same on every rank")
    n, candidates = meta["numel"], meta["candidates"]
    if k > candidates:
        if candidates == n:
            raise ValueError(f"k={k} is outside [0, {n}]: the {world} ranks hold {n} elements in all")
        raise ValueError(f"k={k} but prev_masks keep only {candidates} weights over the {world} ranks; "
                         "with resurrect=False only weights kept in prev_masks compete")
    dtype = _promoted(meta["has"])
    device = comm_device(group, local.device)
    w = _WIDTH[dtype]

    # Radix walk over the key, most significant digit first. `above` counts keys known to be
    # larger than the threshold; `prefix` holds the threshold's digits chosen so far. The first
    # pass also finds NaN (its all_reduce carries a slot per rank), so even k = 0 takes it.
    prefix, above_global, above_local, hist_local = 0, 0, 0, None
    for shift in range(w - HISTOGRAM_BITS, -1, -HISTOGRAM_BITS):
        hist_local, nan_index = local.histogram(dtype, shift, prefix)
        hist_local = hist_local.to(device)
        if shift == w - HISTOGRAM_BITS:
            slots = torch.zeros(world, dtype=torch.int64, device=device)
            slots[rank] = 0 if nan_index is None else nan_index + 1
            sent = all_reduce(torch.cat([hist_local, slots]), group, "the key histogram (top digit) and NaN flags")
            _raise_if_nan(sent[-world:].cpu().tolist(), rank, world)
            if k == 0:
                return 0, dtype, None
            hist = sent[:_BINS]
        else:
            hist = all_reduce(hist_local.clone(), group, f"the key histogram (bits {shift}+)")
        need = k - above_global
        # counts of keys in digits above d, from the top: pick d with above(d) < need <= above(d) + hist[d]
        from_top = torch.flip(hist, [0]).cumsum(0)
        d = _BINS - 1 - int(torch.searchsorted(from_top, torch.tensor([need], device=device)).item())
        above_global += int(hist[d + 1:].sum())
        above_local += int(hist_local[d + 1:].sum())
        prefix = (prefix << HISTOGRAM_BITS) | d

    # Keys equal to the threshold: the lowest ranks' come first.
    ties = torch.zeros(world, dtype=torch.int64)
    ties[rank] = int(hist_local[prefix & (_BINS - 1)])
    ties = all_reduce(ties.to(device), group, "the tie counts").cpu().tolist()
    need = k - above_global
    quota = min(max(need - sum(ties[:rank]), 0), ties[rank])
    return above_local + quota, dtype, prefix


def _histogram_backend(backend: str, device: torch.device) -> str:
    # A backend that cannot run the histogram pass here (one not built for this device, say)
    # falls back to the best that can, as auto orders them.
    return backend if backend in ops.available_backends(device, "radix_histogram") else "auto"


def _score_histogram(scores, backend, device):
    def histogram(rank_dtype, shift, prefix):
        return ops.key_histogram(scores, rank_dtype=rank_dtype, shift=shift, prefix=prefix,
                                 backend=_histogram_backend(backend, device))
    return histogram


def _check_global_k_type(k) -> int:
    # The range is checked against the global count, after the meta all_reduce.
    return _schema.check_k(k, 1 << 62)


def topk_masks(local_scores, k, *, group=None, out=None, backend="auto") -> list[torch.Tensor]:
    """Bool masks for this rank's ``local_scores``, keeping the k largest over all ranks.

    Bit-identical to ``sparseforce.ops.topk_masks`` on every rank's tensors concatenated in rank
    order (ties: lowest rank, then tensor, then element). Must be called by every rank of
    ``group`` (a rank may pass an empty list). Only histograms and counts cross the network.
    """
    holder = {}

    def parse():
        scores, _, o, device = _schema.topk_masks_args(local_scores, 0, out)
        holder.update(scores=scores, out=o)
        return _Local(_score_histogram(scores, backend, device), [s.numel() for s in scores],
                      [s.dtype for s in scores], None, device)

    k_local, _, _ = _local_k(k, parse, group, "sparseforce.distributed.topk_masks")
    return ops.topk_masks(holder["scores"], k_local, out=holder["out"], backend=backend)


def kth_largest(local_scores, k, *, group=None) -> torch.Tensor:
    """The k-th largest value over every rank's ``local_scores`` (1 <= k <= N), on every rank:
    a 0-dim tensor in the promoted dtype, +0.0 for a zero threshold (as ``ops.kth_largest``)."""
    holder = {}

    def parse():
        scores, _, _, device = _schema.topk_masks_args(local_scores, 0, None)
        holder["device"] = device
        return _Local(_score_histogram(scores, "auto", device), [s.numel() for s in scores],
                      [s.dtype for s in scores], None, device)

    _, dtype, key = _local_k(k, parse, group, "sparseforce.distributed.kth_largest")
    if key is None:
        raise ValueError("k=0 has no k-th largest value; k must be in [1, N]")
    return _key_to_value(key, dtype, holder["device"])


def saliency_topk_masks(local_weights, local_grads, k, *, prev_masks=None, resurrect=True, group=None,
                        out=None, backend="auto") -> list[torch.Tensor]:
    """One FORCE / Iter SNIP selection over every rank's weights: keep the k largest |w·g|.

    The distributed form of ``sparseforce.ops.saliency_topk_masks`` (same arguments, ``k`` and
    the Iter SNIP survivor count global). The histogram passes form |w·g| on the fly (fused in
    the ``cpp`` kernel, one tensor at a time otherwise), so no rank stores all its scores.
    """
    holder = {}

    def parse():
        w, g, _, prev, res, o, device = _schema.saliency_args(local_weights, local_grads, 0, prev_masks,
                                                               resurrect, out)
        holder.update(w=w, g=g, prev=prev, resurrect=res, out=o)
        dtypes = [_schema.saliency_dtype(wi, gi) for wi, gi in zip(w, g)]
        competing = _schema.competing(prev, res) or None

        def histogram(rank_dtype, shift, prefix):
            return ops.saliency_key_histogram(w, g, prev_masks=competing, rank_dtype=rank_dtype, shift=shift,
                                              prefix=prefix, backend=_histogram_backend(backend, device))
        return _Local(histogram, [t.numel() for t in w], dtypes, competing, device)

    k_local, _, _ = _local_k(k, parse, group, "sparseforce.distributed.saliency_topk_masks")
    return ops.saliency_topk_masks(holder["w"], holder["g"], k_local, prev_masks=holder["prev"],
                                   resurrect=holder["resurrect"], out=holder["out"], backend=backend)
