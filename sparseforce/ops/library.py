"""The op library: every op's schema and fake (meta) implementation, written once.

Each op has one signature for every backend. The compiled kernels (``csrc/``) register under
``torch.ops.sparseforce.<op>`` for the CPU and CUDA dispatch keys; the Triton kernels register
under ``torch.ops.sparseforce_triton.<op>``, defined from the same schema text, because torch's
dispatcher holds one kernel per op and device and a GPU has two (cuda and triton): which one
runs is the registry's choice (``_registry``), not the dispatcher's. The reference backend and
out-of-tree backends (the test suite's CUDA emulator) are plain Python functions with the same
signature.

Conventions of the schemas, the same on every backend:

* The caller allocates every output (``out``); kernels only write.
* NaN is reported, never raised, as a 0-dim int64 tensor: the index of the first tensor holding
  a competing NaN, or -1. Returning it keeps the kernels free of host synchronisation; the op
  front (``sparseforce.ops``) turns it into :class:`~sparseforce.ops.NaNScoreError`.
* ``competing``: an empty list means every element competes; otherwise one bool tensor per
  input, only True entries compete (Iter SNIP's survivors). ``out[i]`` may be exactly
  ``competing[i]`` (read before written). The front derives it from ``prev_masks`` and
  ``resurrect``; kernels never see those.
* ``segmented_*``: each segment keeps its own k (``_segments``). ``m == 0``: input i is cut
  into ``ks[i].numel()`` consecutive equal segments (row-major), segment r keeping ``ks[i][r]``
  (int64, on the inputs' device); ``m > 0``: ``ks`` is empty and every m consecutive elements keep
  n. Unlike the global ops, ``out`` never shares memory with an input (the front hands these
  kernels masks it owns) and its contents are unspecified when a NaN is reported, so a one-pass
  kernel needs no NaN pre-pass.
* ``drop_grow_masks``: one dynamic-sparse-training update (``_drop_grow``). ``keeps`` and
  ``grows`` are int64 tensors of S entries on the inputs' device: S == len(weights) is one segment
  per tensor, S == 1 one segment over all of them (global positions). Per segment: K = the
  ``keeps[s]`` largest |w| among ``masks``' True elements, then G = the ``grows[s]`` largest |score|
  among the elements not in K; ``out`` = K | G. The NaN index is a code: 2i for ``weights[i]``,
  2i+1 for ``scores[i]``, the lowest one holding a NaN anywhere. ``out`` never shares memory with
  an input and is unspecified on NaN, as for the segmented ops.
* ``radix_histogram``'s counts are the 2**16 counts of one radix digit; its NaN index is
  meaningful on the top pass (shift = key width - 16) only.
* ``masked_sgd_``: ``momentum_buffers`` is empty when momentum == 0; ``fresh[i]``: the buffer
  holds no state yet and becomes d_p (torch.optim.SGD's first step).

Importing this module defines the ops (cheap; loads no kernels).
"""
from __future__ import annotations

import torch

from ._schema import promoted_dtype

HISTOGRAM_BINS = 1 << 16

# op name -> schema (arguments and returns). The single source of every backend's signature.
SCHEMAS = {
    "topk_masks": "(Tensor[] scores, int k, Tensor(a!)[] out) -> Tensor",
    "kth_largest": "(Tensor[] scores, int k) -> (Tensor, Tensor)",
    "saliency_topk_masks":
        "(Tensor[] weights, Tensor[] grads, int k, Tensor[] competing, Tensor(a!)[] out) -> Tensor",
    "segmented_topk_masks": "(Tensor[] scores, Tensor[] ks, int n, int m, Tensor(a!)[] out) -> Tensor",
    "segmented_saliency_topk_masks":
        "(Tensor[] weights, Tensor[] grads, Tensor[] ks, int n, int m, Tensor[] competing, Tensor(a!)[] out)"
        " -> Tensor",
    "drop_grow_masks":
        "(Tensor[] weights, Tensor[] scores, Tensor[] masks, Tensor keeps, Tensor grows, Tensor(a!)[] out) -> Tensor",
    "radix_histogram":
        "(Tensor[] a, Tensor[] grads, Tensor[] competing, ScalarType rank_dtype, int shift, int prefix)"
        " -> (Tensor, Tensor)",
    "masked_sgd_":
        "(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, Tensor?[] masks, float lr, "
        "float momentum, float dampening, float weight_decay, bool nesterov, bool[] fresh) -> ()",
}

# The compiled extension's kernels and the Triton kernels (see the module docstring).
NAMESPACES = ("sparseforce", "sparseforce_triton")


def _nan_index(like: torch.Tensor) -> torch.Tensor:
    return like.new_empty((), dtype=torch.int64)


def _fake_topk_masks(scores, k, out):
    return _nan_index(scores[0])


def _fake_kth_largest(scores, k):
    return scores[0].new_empty((), dtype=promoted_dtype(scores)), _nan_index(scores[0])


def _fake_saliency_topk_masks(weights, grads, k, competing, out):
    return _nan_index(weights[0])


def _fake_segmented_topk_masks(scores, ks, n, m, out):
    return _nan_index(scores[0])


def _fake_segmented_saliency_topk_masks(weights, grads, ks, n, m, competing, out):
    return _nan_index(weights[0])


def _fake_drop_grow_masks(weights, scores, masks, keeps, grows, out):
    return _nan_index(weights[0])


def _fake_radix_histogram(a, grads, competing, rank_dtype, shift, prefix):
    return a[0].new_empty((HISTOGRAM_BINS,), dtype=torch.int64), _nan_index(a[0])


def _fake_masked_sgd_(params, grads, momentum_buffers, masks, lr, momentum, dampening, weight_decay,
                      nesterov, fresh):
    return None


FAKES = {
    "topk_masks": _fake_topk_masks,
    "kth_largest": _fake_kth_largest,
    "saliency_topk_masks": _fake_saliency_topk_masks,
    "segmented_topk_masks": _fake_segmented_topk_masks,
    "segmented_saliency_topk_masks": _fake_segmented_saliency_topk_masks,
    "drop_grow_masks": _fake_drop_grow_masks,
    "radix_histogram": _fake_radix_histogram,
    "masked_sgd_": _fake_masked_sgd_,
}

_libraries = []  # torch.library.Library objects must stay alive for their definitions to


def _define(namespace: str) -> None:
    lib = torch.library.Library(namespace, "DEF")
    for name, schema in SCHEMAS.items():
        lib.define(name + schema)
        torch.library.register_fake(f"{namespace}::{name}", FAKES[name], lib=lib)
    _libraries.append(lib)


for _namespace in NAMESPACES:
    _define(_namespace)
del _namespace
