"""Masks <-> torch.nn.utils.prune's format (``weight_orig``, ``weight_mask``, the forward pre-hook)."""
import copy

import pytest
import torch
import torch.nn as nn
from torch.nn.utils import prune as tp

import sparseforce as sf
from sparseforce.masks import Masks


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.ReLU())
        self.fc = nn.Linear(96, 5)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


def net(seed=0):
    torch.manual_seed(seed)
    return Net()


def state(model):
    """Everything ``read`` / a failed ``write`` must leave alone: the state_dict, the parameters'
    and buffers' identities and the hooks."""
    return ([(k, v.clone()) for k, v in model.state_dict().items()],
            [(n, dict(m._parameters), dict(m._buffers), list(m._forward_pre_hooks.values()))
             for n, m in model.named_modules()])


def assert_state(model, before):
    after = state(model)
    assert [k for k, _ in after[0]] == [k for k, _ in before[0]]
    assert all(torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())
               for (_, a), (_, b) in zip(after[0], before[0]))
    for (n, pa, ba, ha), (_, pb, bb, hb) in zip(after[1], before[1]):
        assert {k: id(v) for k, v in pa.items()} == {k: id(v) for k, v in pb.items()}, n
        assert {k: id(v) for k, v in ba.items()} == {k: id(v) for k, v in bb.items()}, n
        assert [id(h) for h in ha] == [id(h) for h in hb], n


def test_nothing_pruned_gives_empty_masks():
    model = net()
    before = state(model)
    masks = Masks.from_torch_prune(model)
    assert isinstance(masks, Masks) and len(masks) == 0
    assert_state(model, before)


def test_read_torchs_pruning_names_and_order_and_leaves_the_model_alone():
    model = net()
    tp.l1_unstructured(model.fc, "weight", amount=0.5)
    tp.global_unstructured([(model.features[0], "weight"), (model.features[2], "weight"), (model.fc, "bias")],
                           pruning_method=tp.L1Unstructured, amount=0.4)
    tp.random_unstructured(model.fc, "weight", amount=0.3)  # a PruningContainer now
    before = state(model)
    masks = Masks.from_torch_prune(model)
    assert list(masks) == ["features.0.weight", "features.2.weight", "fc.weight", "fc.bias"]
    for name, mask in masks.items():
        module, attr = model.get_submodule(name.rpartition(".")[0]), name.rpartition(".")[2]
        assert mask.dtype == torch.bool and torch.equal(mask, getattr(module, f"{attr}_mask") == 1)
    assert_state(model, before)
    masks["fc.weight"].fill_(False)  # new tensors: the model's buffers are not shared
    assert_state(model, before)


@pytest.mark.parametrize("value", [0.5, 2.0, -1.0, float("nan")])
def test_read_rejects_a_mask_that_is_not_0_1(value):
    model = net()
    tp.l1_unstructured(model.fc, "weight", amount=0.5)
    with torch.no_grad():
        model.fc.weight_mask[0, 0] = value
    before = state(model)
    with pytest.raises(ValueError, match=r"^the pruning mask fc\.weight_mask holds values other than 0 and 1$"):
        Masks.from_torch_prune(model)
    assert_state(model, before)


def round_trip(masks, model):
    assert masks.to_torch_prune(model) is model
    assert tp.is_pruned(model)
    back = Masks.from_torch_prune(model)
    assert list(back) == list(masks)
    for name in masks:
        assert torch.equal(back[name], masks[name]), name
    return back


@pytest.mark.parametrize("method", ["magnitude", "force"])
def test_round_trip_with_sparseforce_masks(method):
    model = net()
    data = [(torch.randn(4, 3, 8, 8), torch.randint(0, 5, (4,))) for _ in range(2)]
    masks = sf.magnitude(model, sparsity=0.8) if method == "magnitude" else \
        sf.force(model, data, sparsity=0.8, iterations=3)
    reference = copy.deepcopy(model)
    sf.apply_masks(reference, masks)
    round_trip(masks, model)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(model(x), reference(x))
    assert set(model.state_dict()) >= {"fc.weight_orig", "fc.weight_mask", "features.0.weight_mask"}


def test_round_trip_through_torchs_pruning():
    model, other = net(1), net(1)
    tp.global_unstructured([(model.features[0], "weight"), (model.fc, "weight"), (model.fc, "bias")],
                           pruning_method=tp.L1Unstructured, amount=0.6)
    masks = Masks.from_torch_prune(model)
    round_trip(masks, other)
    a, b = model.state_dict(), other.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_write_on_a_pruned_parameter_keeps_the_product():
    model, twin = net(2), net(2)
    for m in (model, twin):
        tp.l1_unstructured(m.fc, "weight", amount=0.5)
    new = torch.rand(model.fc.weight.shape) < 0.5
    Masks({"fc.weight": new}).to_torch_prune(model)
    tp.custom_from_mask(twin.fc, "weight", new)
    assert torch.equal(model.fc.weight_mask, twin.fc.weight_mask)
    assert torch.equal(Masks.from_torch_prune(model)["fc.weight"], (twin.fc.weight_mask == 1))
    assert not (Masks.from_torch_prune(model)["fc.weight"] & ~new).any()


@pytest.mark.parametrize("bad, pattern", [
    ({"fc.weight": torch.ones(5, 96, dtype=torch.bool), "nope.weight": torch.ones(2, dtype=torch.bool)},
     r"^mask 'nope.weight': the model has no module 'nope'$"),
    ({"fc.weight": torch.ones(5, 96, dtype=torch.bool), "fc.scale": torch.ones(5, dtype=torch.bool)},
     r"^mask 'fc.scale': Linear 'fc' has no parameter 'scale' \(nor 'scale_orig'\)$"),
    ({"fc.weight": torch.ones(5, 96, dtype=torch.bool), "features.0.weight": torch.ones(4, 3, dtype=torch.bool)},
     r"^mask 'features.0.weight' has shape \(4, 3\), the parameter \(4, 3, 3, 3\)$"),
    ({"features.2.weight": torch.ones(6, 4, 3, 3, dtype=torch.bool), "fc.weight": torch.ones(96, 5, dtype=torch.bool)},
     r"^mask 'fc.weight' has shape \(96, 5\), the parameter \(5, 96\)$"),
])
@pytest.mark.parametrize("pruned_before", [False, True])
def test_write_errors_leave_the_model_unchanged(bad, pattern, pruned_before):
    model = net()
    if pruned_before:
        tp.l1_unstructured(model.fc, "weight", amount=0.5)
        tp.l1_unstructured(model.features[2], "weight", amount=0.5)
    before = state(model)
    with pytest.raises(ValueError, match=pattern):
        Masks(bad).to_torch_prune(model)
    assert_state(model, before)
