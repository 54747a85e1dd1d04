"""Fake (meta) kernels of ``torch.ops.sparseforce.*``: output shapes and dtypes without data, so
the ops trace under ``torch.compile`` and run on meta tensors. Device-independent: the CUDA
kernels share them. Imported by the loader once the library is registered (and named by the
C++ schema via ``set_python_module``).
"""
from __future__ import annotations

import torch


def _masks_like(tensors):
    return [t.new_empty(t.shape, dtype=torch.bool) for t in tensors]


@torch.library.register_fake("sparseforce::topk_masks")
def _topk_masks(scores, k):
    return _masks_like(scores)


@torch.library.register_fake("sparseforce::topk_masks_out")
def _topk_masks_out(scores, k, out):
    return None


@torch.library.register_fake("sparseforce::kth_largest")
def _kth_largest(scores, k):
    dtype = scores[0].dtype
    for s in scores[1:]:
        dtype = torch.promote_types(dtype, s.dtype)
    return scores[0].new_empty((), dtype=dtype)


@torch.library.register_fake("sparseforce::saliency_topk_masks")
def _saliency_topk_masks(weights, grads, k, prev_masks, resurrect):
    return _masks_like(weights)


@torch.library.register_fake("sparseforce::saliency_topk_masks_out")
def _saliency_topk_masks_out(weights, grads, k, prev_masks, resurrect, out):
    return None


@torch.library.register_fake("sparseforce::masked_sgd_")
def _masked_sgd_(params, grads, momentum_buffers, masks, lr, momentum, dampening, weight_decay, nesterov,
                 fresh_buffers):
    return None


@torch.library.register_fake("sparseforce::radix_histogram")
def _radix_histogram(a, grads, prev_masks, rank_dtype, shift, prefix):
    return a[0].new_empty(((1 << 16) + 1,), dtype=torch.int64)
