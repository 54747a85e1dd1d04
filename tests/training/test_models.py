"""Tests for sparseforce.models: exact prunable counts (the paper's numbers),
shapes, init statistics and the registry."""
import math

import pytest
import torch
import torch.nn as nn

from sparseforce.models import (
    INPUT_SHAPES,
    MODELS,
    count_prunable,
    get_model,
    resnet50,
    resnet50_imagenet,
    vgg19_bn,
    vgg19_bn_imagenet,
)

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


# --- analytic counts, derived independently of the model code ---------------

def _resnet50_backbone(stem_kernel: int) -> int:
    """Conv weights of a ResNet50 (bottleneck [3,4,6,3], expansion 4) excluding fc."""
    total = 3 * 64 * stem_kernel ** 2
    in_planes = 64
    for planes, blocks in zip((64, 128, 256, 512), (3, 4, 6, 3)):
        for b in range(blocks):
            out = 4 * planes
            total += in_planes * planes + planes * planes * 9 + planes * out
            if b == 0:  # first block of every stage changes channels -> projection
                total += in_planes * out
            in_planes = out
    return total


def _vgg19_cifar_convs() -> int:
    cfg = [64, 64, 128, 128, 256, 256, 256, 256] + [512] * 8
    total, c = 0, 3
    for v in cfg:
        total += c * v * 9
        c = v
    return total


def test_analytic_formulas_match_paper_numbers():
    # Guards the helpers themselves: they must reproduce the published counts.
    assert _resnet50_backbone(3) + 2048 * 10 == 23_467_712
    assert _vgg19_cifar_convs() + 512 * 10 == 20_024_000
    assert _resnet50_backbone(7) + 2048 * 1000 == 25_502_912


def test_resnet50_cifar_count():
    assert count_prunable(resnet50(10)) == 23_467_712
    assert count_prunable(resnet50(100)) == _resnet50_backbone(3) + 2048 * 100


def test_vgg19_bn_cifar_count():
    assert count_prunable(vgg19_bn(10)) == 20_024_000
    assert count_prunable(vgg19_bn(100)) == _vgg19_cifar_convs() + 512 * 100


def test_resnet50_imagenet_count_matches_torchvision():
    m = resnet50_imagenet(1000)
    assert count_prunable(m) == 25_502_912
    # torchvision's resnet50 has 25,557,032 parameters in total.
    assert sum(p.numel() for p in m.parameters()) == 25_557_032


def test_vgg19_bn_imagenet_count_matches_torchvision():
    m = vgg19_bn_imagenet(1000)
    convs = _vgg19_cifar_convs()
    fcs = 25088 * 4096 + 4096 * 4096 + 4096 * 1000
    assert count_prunable(m) == convs + fcs
    # torchvision's vgg19_bn has 143,678,248 parameters in total.
    assert sum(p.numel() for p in m.parameters()) == 143_678_248


def test_count_prunable_ignores_bias_and_norm():
    m = nn.Sequential(nn.Conv1d(2, 3, 4), nn.BatchNorm1d(3), nn.Conv3d(3, 5, 1),
                      nn.Flatten(), nn.Linear(7, 2), nn.LayerNorm(2))
    assert count_prunable(m) == 2 * 3 * 4 + 3 * 5 + 7 * 2


# --- forward shapes ----------------------------------------------------------

@pytest.mark.parametrize("ctor", [resnet50, vgg19_bn])
@pytest.mark.parametrize("num_classes", [10, 100])
def test_cifar_forward_shape(ctor, num_classes):
    m = ctor(num_classes).eval()
    with torch.no_grad():
        y = m(torch.randn(2, 3, 32, 32))
    assert y.shape == (2, num_classes)
    assert torch.isfinite(y).all()


def test_resnet50_imagenet_forward():
    m = resnet50_imagenet(1000).eval()
    with torch.no_grad():
        # Adaptive pooling makes the net resolution-agnostic; 64x64 keeps it fast.
        assert m(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
        assert m(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_vgg19_bn_imagenet_forward():
    m = vgg19_bn_imagenet(7).eval()
    with torch.no_grad():
        assert m(torch.randn(1, 3, 224, 224)).shape == (1, 7)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_registry_forward_on_input_shape(name):
    assert name in INPUT_SHAPES
    m = get_model(name, num_classes=5).eval()
    with torch.no_grad():
        y = m(torch.randn(2, *INPUT_SHAPES[name]))
    assert y.shape == (2, 5)


def test_train_mode_backward_small():
    m = get_model("digits_cnn").train()
    x = torch.randn(4, *INPUT_SHAPES["digits_cnn"])
    m(x).logsumexp(1).sum().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_mnist_vgg_layers():
    # Small first and last layers, a big one between: the imbalance behind layer collapse.
    m = get_model("mnist_vgg")
    sizes = [(n, p.numel()) for n, p in m.named_parameters() if p.dim() > 1]
    assert sizes == [("features.0.weight", 144), ("features.4.weight", 4_608), ("features.8.weight", 18_432),
                     ("features.12.weight", 73_728), ("fc.weight", 1_280)]
    assert count_prunable(m) == 98_192
    assert all(m.features[i].bias is None for i in (0, 4, 8, 12))  # BatchNorm's shift makes it redundant
    feats = m.features(torch.randn(3, 1, 28, 28))
    assert feats.shape == (3, 128, 1, 1)
    m.train()(torch.randn(4, 1, 28, 28)).logsumexp(1).sum().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_small_model_sizes_and_options():
    assert 50_000 <= count_prunable(get_model("digits_cnn")) <= 200_000
    m = get_model("mlp", hidden=(32, 16), in_features=20, num_classes=3)
    assert count_prunable(m) == 20 * 32 + 32 * 16 + 16 * 3
    # mlp flattens image-shaped input
    assert m(torch.randn(2, 4, 5)).shape == (2, 3)
    assert get_model("lenet5", in_channels=3)(torch.randn(1, 3, 32, 32)).shape == (1, 10)


# --- registry ------------------------------------------------------------------

def test_registry_names():
    assert set(MODELS) == {"resnet50", "vgg19_bn", "resnet50_imagenet", "vgg19_bn_imagenet",
                           "mlp", "lenet5", "digits_cnn", "mnist_vgg"}
    assert set(INPUT_SHAPES) == set(MODELS)
    assert count_prunable(get_model("resnet50")) == 23_467_712
    assert count_prunable(get_model("vgg19_bn", num_classes=10)) == 20_024_000


def test_get_model_unknown_name():
    with pytest.raises(ValueError) as ei:
        get_model("resnet51")
    msg = str(ei.value)
    assert "resnet51" in msg
    for name in MODELS:
        assert name in msg


# --- init ----------------------------------------------------------------------

def _assert_kaiming(w: torch.Tensor, rel: float = 0.1):
    fan_in = w[0].numel()
    expected = math.sqrt(2.0 / fan_in)
    assert abs(w.std().item() - expected) / expected < rel
    assert abs(w.mean().item()) < 0.05 * expected


def test_resnet50_init_statistics():
    torch.manual_seed(0)
    m = resnet50(10)
    _assert_kaiming(m.layer4[1].conv2.weight)   # 512x512x3x3
    _assert_kaiming(m.layer3[0].shortcut[0].weight)
    _assert_kaiming(m.fc.weight)                 # 10x2048: official code uses Kaiming on fc too
    assert torch.all(m.fc.bias == 0)
    bn = m.layer2[0].bn1
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    assert all(c.bias is None for c in m.modules() if isinstance(c, nn.Conv2d))


def test_vgg19_bn_init_statistics():
    torch.manual_seed(0)
    m = vgg19_bn(10)
    convs = [c for c in m.modules() if isinstance(c, nn.Conv2d)]
    assert len(convs) == 16
    _assert_kaiming(convs[-1].weight)
    assert all(c.bias is not None and torch.all(c.bias == 0) for c in convs)
    bns = [b for b in m.modules() if isinstance(b, nn.BatchNorm2d)]
    assert len(bns) == 16 and all(torch.all(b.weight == 1) for b in bns)


def test_digits_cnn_init_statistics():
    torch.manual_seed(0)
    m = get_model("digits_cnn")
    _assert_kaiming(m.features[7].weight)  # 128x64x3x3
