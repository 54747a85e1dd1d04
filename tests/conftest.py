import numpy as np
import pytest
import torch

import sparseforce.ops as ops

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def backends_for(device):
    return ops.available_backends(device)


# Every available backend on every available device; the shared kernel tests run once per pair.
BACKEND_DEVICE = [pytest.param(b, d, id=f"{b}-{d}") for d in DEVICES for b in backends_for(d)]


def oracle_keep(values, k, candidates=None):
    """Independent of the package: rank by (value descending, position ascending) with numpy.

    float64 holds every fp16/bf16/fp32 value exactly, and numpy compares -0.0 equal to +0.0.
    """
    v = np.asarray(values, dtype=np.float64)
    pos = np.arange(v.size)
    idx = pos if candidates is None else pos[np.asarray(candidates, dtype=bool)]
    order = np.lexsort((idx, -v[idx]))
    keep = np.zeros(v.size, dtype=bool)
    keep[idx[order[:k]]] = True
    return keep


def flat64(tensors):
    if not tensors:
        return np.zeros(0)
    return np.concatenate([t.detach().to("cpu", torch.float64).reshape(-1).numpy() for t in tensors])


def flat_bool(tensors):
    if not tensors:
        return np.zeros(0, dtype=bool)
    return np.concatenate([t.detach().cpu().reshape(-1).numpy() for t in tensors])


@pytest.fixture
def rng():
    # Fresh inputs every run; the seed is printed on failure by pytest's -ra summary via the id.
    seed = int(np.random.SeedSequence().entropy % (2**31))
    print(f"random seed {seed}")
    return torch.Generator().manual_seed(seed)
