"""SET (Mocanu et al., 2018): RigL's drop, with the grown weights drawn at random."""
from __future__ import annotations

import numpy as np
import torch

from .. import _checks
from .gradients import local
from .rigl import RigL


class SET(RigL):
    """Sparse Evolutionary Training: :class:`RigL`'s schedule and drop, but the grow scores are
    uniform random numbers, not gradients (no gradient is captured).

    At update step t the scores are drawn on the CPU from a ``torch.Generator`` seeded by
    ``(seed, t)`` (through ``numpy.random.SeedSequence``), one ``torch.rand`` per masked tensor in
    the masks' order, at the tensor's full shape: identical on every rank and backend, and the
    caller's global RNG is never touched. ``seed``: an integer in [0, 2**32) (default 0); the other
    arguments are :class:`RigL`'s.
    """

    def __init__(self, model, masks, optimizer, *, total_steps, update_every=100, end=0.75, drop_fraction=0.3,
                 scope="layer", backend="auto", process_group=None, seed=0):
        options = self._check_options(total_steps, update_every, end, drop_fraction, scope, backend)
        options["seed"] = _checks.seed(seed)
        super(RigL, self).__init__(model, masks, optimizer, backend=backend, process_group=process_group,
                                   options=options)
        self._start()

    def _wants_gradients(self) -> bool:
        return False

    def _grow_scores(self, t: int) -> list:
        seed = int(np.random.SeedSequence([self._options["seed"], t]).generate_state(1)[0])
        generator = torch.Generator().manual_seed(seed)
        scores = []
        for p in self._binding.params:
            full = torch.rand(p.shape, generator=generator).to(local(p).device)
            if self._binding.sharded:  # this rank's shard of the full draw, cut locally (no collective)
                from torch.distributed.tensor import distribute_tensor
                full = distribute_tensor(full, p.device_mesh, p.placements, src_data_rank=None)
            scores.append(local(full))
        return scores
