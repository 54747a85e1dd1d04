"""Masks <-> torch.ao.pruning's format (sparseforce.masks.torch_ao through Masks.from_torch_ao /
to_torch_ao), against the real ao sparsifiers."""
import pytest
import torch
from torch import nn
from torch.ao.pruning import WeightNormSparsifier
from torch.ao.pruning.sparsifier.utils import FakeSparsity
from torch.nn.utils import parametrize

import sparseforce as sf
from sparseforce.compat.ao import Sparsifier


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Sequential(nn.Linear(8, 12), nn.ReLU()), nn.Linear(12, 4))


def _weight_norm(model, level=0.5):
    sparsifier = WeightNormSparsifier(sparsity_level=level, sparse_block_shape=(1, 1), zeros_per_block=1)
    sparsifier.prepare(model, None)
    sparsifier.step()
    return sparsifier


def _random_masks(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    return sf.Masks({n: torch.rand(p.shape, generator=g) < 0.4 for n, p in model.named_parameters()
                     if n.endswith("weight")})


def _fake(model, name):
    module_name, _, tensor = name.rpartition(".")
    return model.get_submodule(module_name).parametrizations[tensor][0]


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()} | \
        {f"{n}#mask": b.clone() for n, b in model.named_buffers()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_read_weight_norm_sparsifier_names_by_tensor_and_only_reads():
    model = _model()
    _weight_norm(model)
    before = _snapshot(model)
    masks = sf.Masks.from_torch_ao(model)
    assert list(masks) == ["0.0.weight", "1.weight"]
    for name, mask in masks.items():
        fake = _fake(model, name)
        assert mask.dtype == torch.bool and torch.equal(mask, fake.mask != 0)
        assert 0 < mask.sum() < mask.numel()
    assert _same(before, _snapshot(model))


def test_read_of_an_unprepared_model_is_empty():
    assert len(sf.Masks.from_torch_ao(_model())) == 0


@pytest.mark.parametrize("prepare", ["weight_norm", "sparseforce"])
def test_write_then_read_round_trips_in_place(prepare):
    model = _model()
    if prepare == "weight_norm":
        _weight_norm(model)
    else:
        Sparsifier("magnitude").prepare(model, None)
    fakes = {n: _fake(model, n).mask for n in ("0.0.weight", "1.weight")}
    ptrs = {n: (id(m), m.data_ptr(), m.dtype) for n, m in fakes.items()}
    masks = _random_masks(_model())  # the names of the model before prepare
    assert masks.to_torch_ao(model) is model
    assert sf.Masks.from_torch_ao(model) == masks
    for n, m in fakes.items():
        assert (id(_fake(model, n).mask), _fake(model, n).mask.data_ptr(), _fake(model, n).mask.dtype) == ptrs[n]
        assert torch.equal(m, masks[n].to(m.dtype))
    # the forward applies them
    x = torch.randn(3, 8)
    w0 = model[0][0].parametrizations.weight.original * masks["0.0.weight"]
    w1 = model[1].parametrizations.weight.original * masks["1.weight"]
    expected = nn.functional.linear(torch.relu(nn.functional.linear(x, w0, model[0][0].bias)), w1, model[1].bias)
    torch.testing.assert_close(model(x), expected)


def test_write_leaves_unnamed_tensors_alone():
    model = _model()
    _weight_norm(model)
    before = _fake(model, "1.weight").mask.clone()
    sf.Masks({"0.0.weight": torch.ones(12, 8, dtype=torch.bool)}).to_torch_ao(model)
    assert torch.equal(_fake(model, "1.weight").mask, before)
    assert bool(_fake(model, "0.0.weight").mask.all())


@pytest.mark.parametrize("bad, error, words", [
    ({"1.weight": torch.ones(4, 13, dtype=torch.bool)}, ValueError, "'1.weight' has shape (4, 13)"),
    ({"1.bias": torch.ones(4, dtype=torch.bool)}, ValueError, "'1.bias' names no tensor"),
    ({"0.0.parametrizations.weight.original": torch.ones(12, 8, dtype=torch.bool)}, ValueError, "names no tensor"),
    ({"1.weight": torch.ones(4, 12)}, TypeError, "'1.weight' must be a bool tensor"),
])
def test_write_checks_every_name_before_writing_any(bad, error, words):
    model = _model()
    _weight_norm(model)
    before = _snapshot(model)
    masks = {"0.0.weight": torch.zeros(12, 8, dtype=torch.bool), **bad}
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        sf.masks.torch_ao.write(masks, model)
    assert _same(before, _snapshot(model))


def test_read_refuses_a_mask_that_is_no_mask():
    model = _model()
    _weight_norm(model)
    _fake(model, "1.weight").mask[0, 0] = 0.5
    with pytest.raises(ValueError, match="'1.weight' holds values other than 0 and 1"):
        sf.Masks.from_torch_ao(model)


def test_root_tensor_and_stacked_fake_sparsities():
    model = nn.Linear(6, 4)
    first, second = torch.ones(4, 6), torch.ones(4, 6)
    first[0] = 0
    second[:, 0] = 0
    parametrize.register_parametrization(model, "weight", FakeSparsity(first))
    parametrize.register_parametrization(model, "weight", FakeSparsity(second))
    masks = sf.Masks.from_torch_ao(model)
    assert list(masks) == ["weight"]
    assert torch.equal(masks["weight"], (first * second).bool())  # what the forward applies
    new = torch.rand(4, 6) < 0.5
    sf.Masks({"weight": new}).to_torch_ao(model)
    assert torch.equal(sf.Masks.from_torch_ao(model)["weight"], new)
    torch.testing.assert_close(model.weight, model.parametrizations.weight.original * new)


def test_squash_after_write_leaves_the_written_masks():
    model = _model()
    sparsifier = _weight_norm(model)
    masks = _random_masks(_model(), seed=3)
    masks.to_torch_ao(model)
    originals = {"0.0.weight": model[0][0].parametrizations.weight.original.detach().clone(),
                 "1.weight": model[1].parametrizations.weight.original.detach().clone()}
    sparsifier.squash_mask()
    params = dict(model.named_parameters())
    for n, mask in masks.items():
        assert torch.equal(params[n], originals[n] * mask)
