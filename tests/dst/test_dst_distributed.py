"""sparseforce.dst on 2 local gloo ranks: DDP (every rank the same masks, also when the ranks'
gradients differ), and FSDP2-sharded models with scope="global"."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
from torch import nn

import sparseforce as sf
from dst_oracle import batches, random_masks, rigl_masks, small_cnn
from ranks import run_ranks, values

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch built without torch.distributed")


def _same_on_every_rank(tensors) -> bool:
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, [t.clone() for t in tensors])
    return all(all(torch.equal(a, b) for a, b in zip(g, gathered[0])) for g in gathered)


def _ddp_worker(rank, world, method):
    model = small_cnn(0)
    masks = sf.Masks(random_masks(model, 0.4, 1))
    ddp = nn.parallel.DistributedDataParallel(model)
    sf.apply_masks(model, masks)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    kw = dict(total_steps=40, update_every=4, backend="reference")
    dst = sf.dst.RigL(ddp, masks, opt, **kw) if method == "rigl" else sf.dst.SET(ddp, masks, opt, seed=5, **kw)
    same, updates = True, 0
    for x, y in batches(10 + rank, 40):  # each rank its own data
        opt.zero_grad()
        nn.functional.cross_entropy(ddp(x), y).backward()
        opt.step()
        updates += dst.step()
        same &= _same_on_every_rank(list(masks.values()))
    return same, updates


@pytest.mark.parametrize("method", ["rigl", "set"])
def test_ddp_ranks_hold_the_same_masks_after_every_step(method):
    for same, updates in values(run_ranks(_ddp_worker, 2, method)):
        assert same and updates == 7


def _differing_gradients_worker(rank, world):
    # No DDP: the same weights (lr 0 keeps them), different data per rank, so the ranks' own
    # gradients differ; RigL averages the captured gradients over the default group.
    model = small_cnn(0)
    masks = sf.Masks(random_masks(model, 0.4, 1))
    sf.apply_masks(model, masks)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    rigl = sf.dst.RigL(model, masks, opt, total_steps=10, update_every=1, drop_fraction=0.5, backend="reference")
    x, y = batches(20 + rank, 1)[0]
    names = list(masks)
    before = [masks[n].clone() for n in names]
    params = dict(model.named_parameters())
    nn.functional.cross_entropy(model(x), y).backward()
    plain = small_cnn(0)  # the same masked network without hooks, for this rank's dense gradient
    with torch.no_grad():
        for n, p in plain.named_parameters():
            if n in masks:
                p.masked_fill_(~masks[n], 0)
    local = torch.autograd.grad(nn.functional.cross_entropy(plain(x), y), [dict(plain.named_parameters())[n]
                                                                           for n in names])
    every = [None] * world
    dist.all_gather_object(every, [g.clone() for g in local])
    mean = [sum(e[i] for e in every) / world for i in range(len(names))]  # 2 ranks: the all-reduce's bits
    opt.step()
    rigl.step()
    want = rigl_masks([params[n] for n in names], mean, before, 1, 10, 0.75, 0.5)
    return (_same_on_every_rank([masks[n] for n in names]), all(torch.equal(masks[n], w) for n, w in zip(names, want)),
            not torch.equal(every[0][0], every[1][0]))


def test_ranks_whose_gradients_differ_get_the_masks_of_the_mean_gradient():
    for same, oracle, differ in values(run_ranks(_differing_gradients_worker, 2)):
        assert same and oracle and differ


def _method(name, model, masks, opt, **kw):
    kw.update(total_steps=40, update_every=4, backend="reference")
    if name == "rigl":
        return sf.dst.RigL(model, masks, opt, **kw)
    if name == "set":
        return sf.dst.SET(model, masks, opt, seed=3, **kw)
    return sf.dst.GradualMagnitude(model, masks, opt, sparsity=0.9, regrow_fraction=0.3, **kw)


def _fsdp_worker(rank, world, seed, method):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import distribute_tensor
    mesh = init_device_mesh("cpu", (world,))
    model = small_cnn(seed)
    reference = copy.deepcopy(model)
    full = random_masks(model, 0.4, seed + 1)
    for layer in model:
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    params = dict(model.named_parameters())
    masks = sf.Masks({n: distribute_tensor(m, mesh, params[n].placements, src_data_rank=None) for n, m in full.items()})
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    out = {}
    try:
        sf.dst.RigL(model, masks, opt, total_steps=40, scope="layer")
    except NotImplementedError as e:
        out["layer_refused"] = "FSDP2" in str(e) and "scope='global'" in str(e)
    rigl = _method(method, model, masks, opt, scope="global")
    # One process, the same data (every rank trains on the same batches, so FSDP's mean is that gradient).
    ref_masks = sf.Masks({n: m.clone() for n, m in full.items()})
    sf.apply_masks(reference, ref_masks)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9)
    ref_rigl = _method(method, reference, ref_masks, ref_opt, scope="global")
    out["equal_steps"], out["zeros"] = 0, True
    for x, y in batches(seed + 2, 40):
        for m_, o_, r_ in ((model, opt, rigl), (reference, ref_opt, ref_rigl)):
            o_.zero_grad()
            nn.functional.cross_entropy(m_(x), y).backward()
            o_.step()
            r_.step()
        gathered = sf.Masks({n: m.full_tensor() for n, m in masks.items()})
        out["equal_steps"] += gathered == ref_masks
        for n, m in masks.items():
            p = params[n].to_local()
            out["zeros"] &= not p[~m.to_local()].any()
            out["zeros"] &= not opt.state[params[n]]["momentum_buffer"].to_local()[~m.to_local()].any()
    out["kept"] = [int(m.full_tensor().sum()) for m in masks.values()]
    out["want_kept"] = sum(int(m.sum()) for m in ref_masks.values())
    return out


@pytest.mark.parametrize("method", ["rigl", "set", "gmp"])
def test_fsdp2_sharded_global_update_matches_one_process(method):
    for res in values(run_ranks(_fsdp_worker, 2, 0, method)):
        assert res["layer_refused"]
        assert res["zeros"]
        assert sum(res["kept"]) == res["want_kept"]
        assert res["equal_steps"] == 40, res
