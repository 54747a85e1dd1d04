"""sf.to_semi_structured: 2:4-masked nn.Linear weights to torch's semi-structured sparse layout.

On CPU: the checks (the 2:4 pattern, dtypes and shapes, the device), each leaving the model as it was,
and the conversion's plan with torch's conversion stood in for (it needs CUDA). On a CUDA device:
the conversion itself, whose layers compute what the masked dense layers compute, or the refusal
the device gives.
"""
import json

import pytest
import torch
import torch.nn as nn

import sparseforce as sf
from sparseforce import export
from sparseforce.masks import Masks

CUDA = torch.cuda.is_available()


def two_four(weight):
    """The 2:4 mask keeping the 2 largest |w| of every 4 consecutive weights of each row."""
    groups = weight.detach().abs().float().reshape(-1, 4)
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, groups.topk(2, dim=1).indices, True)
    return mask.reshape(weight.shape)


class Net(nn.Module):
    def __init__(self, dtype=torch.float16):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 32, bias=False)
        self.to(dtype)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def net_and_masks(dtype=torch.float16):
    torch.manual_seed(0)
    net = Net(dtype)
    masks = Masks({"conv.weight": torch.rand(net.conv.weight.shape) < 0.5,
                   "fc1.weight": two_four(net.fc1.weight), "fc2.weight": two_four(net.fc2.weight)})
    return net, masks


def snapshot(model):
    return {name: (p, p.detach().clone()) for name, p in model.named_parameters()}


def assert_unchanged(model, before):
    now = dict(model.named_parameters())
    assert now.keys() == before.keys()
    for name, (param, values) in before.items():
        assert now[name] is param and torch.equal(param, values), name


@pytest.fixture
def no_device_check(monkeypatch):
    """Tensors on the CPU pass as a capable device, and torch's conversion is stood in for by the
    masked dense weight, so the plan runs without CUDA."""
    monkeypatch.setattr(export, "why_unsupported", lambda device: None)
    monkeypatch.setattr(torch.sparse, "to_sparse_semi_structured", lambda dense: dense.clone())
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "a stand-in")


def test_on_cpu_it_refuses_naming_the_requirement_and_leaves_the_model():
    net, masks = net_and_masks()
    before = snapshot(net)
    with pytest.raises(RuntimeError) as info:
        sf.to_semi_structured(net, masks)
    assert str(info.value) == ("to_semi_structured needs a CUDA device of compute capability >= 8.0 "
                               "(NVIDIA Ampere or newer); the model is on cpu")
    assert_unchanged(net, before)
    assert export.why_unsupported("cpu") == str(info.value)


def test_a_device_below_ampere_or_without_cusparselt_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert export.why_unsupported("cuda") == ("to_semi_structured needs a CUDA device of compute capability >= 8.0 "
                                              "(NVIDIA Ampere or newer); this machine has none")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert export.why_unsupported("cuda:0") == (
        "to_semi_structured needs a CUDA device of compute capability >= 8.0 (NVIDIA Ampere or newer); "
        "cuda:0 (Tesla T4) has compute capability 7.5")
    monkeypatch.setattr(torch.backends.cusparselt, "is_available", lambda: True)
    for capability in ((8, 0), (9, 0), (12, 1)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        assert export.why_unsupported(torch.device("cuda", 1)) is None
    monkeypatch.setattr(torch.backends.cusparselt, "is_available", lambda: False)
    assert "this torch build has no cuSPARSELt" in export.why_unsupported("cuda")
    monkeypatch.setattr(torch.sparse.SparseSemiStructuredTensor, "_FORCE_CUTLASS", True)
    assert export.why_unsupported("cuda") is None


def test_masks_that_are_not_2_4_are_refused_naming_the_layer_and_a_broken_group():
    net, masks = net_and_masks()
    fc2 = masks["fc2.weight"].clone()
    fc2[7, 4:8] = True
    broken = Masks({**masks, "fc2.weight": fc2})
    before = snapshot(net)
    with pytest.raises(ValueError, match=r"to_semi_structured needs 2:4 masks .*prune with nm=\(2, 4\)\): mask "
                                         r"'fc2.weight': 1 of 256 groups of 4 do not keep 2; the first: row 7, "
                                         r"entries 4..7 keep 4$"):
        sf.to_semi_structured(net, broken)
    dense = Masks({**masks, "fc1.weight": torch.ones(32, 64, dtype=torch.bool), "fc2.weight": fc2})
    with pytest.raises(ValueError, match=r"mask 'fc1.weight': 512 of 512 groups .* \(2 layers are not 2:4\)$"):
        sf.to_semi_structured(net, dense)
    assert_unchanged(net, before)
    narrow = nn.Linear(6, 16).half()
    with pytest.raises(ValueError, match=r"mask 'weight': its row length 6 \(shape \(16, 6\)\) is not a multiple of 4$"):
        sf.to_semi_structured(narrow, {"weight": torch.ones(16, 6, dtype=torch.bool)})


def test_dtypes_and_shapes_the_layout_does_not_take_are_refused_naming_the_layer(monkeypatch):
    net, masks = net_and_masks(torch.float32)
    with pytest.raises(ValueError, match=r"^to_semi_structured: 'fc1.weight' is torch.float32; torch's semi-structured "
                                         r"layout \(cusparselt\) takes .*torch.float16.*: convert the model first"):
        sf.to_semi_structured(net, masks)
    odd = nn.Sequential(nn.Linear(48, 32), nn.Linear(32, 8)).half()
    odd_masks = Masks({"0.weight": two_four(odd[0].weight), "1.weight": two_four(odd[1].weight)})
    with pytest.raises(ValueError, match=r"^to_semi_structured: '1.weight' has shape \(8, 32\); torch's semi-structured "
                                         r"layout \(cusparselt, torch.float16\) needs rows a positive multiple of 16 "
                                         r"and columns of 16$"):
        sf.to_semi_structured(odd, odd_masks)
    # CUTLASS takes float32, and asks more of the shapes.
    monkeypatch.setattr(torch.sparse.SparseSemiStructuredTensor, "_FORCE_CUTLASS", True)
    with pytest.raises(RuntimeError, match="the model is on cpu"):
        sf.to_semi_structured(net, masks)
    with pytest.raises(ValueError, match=r"'0.weight' has shape \(32, 48\); .*\(cutlass, torch.float16\) needs rows "
                                         r"a positive multiple of 32 and columns of 64$"):
        sf.to_semi_structured(odd, odd_masks)


def test_arguments_that_do_not_fit_are_refused():
    net, masks = net_and_masks()
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        sf.to_semi_structured(masks, masks)
    with pytest.raises(TypeError, match="masks must be a sparseforce.Masks or a mapping"):
        sf.to_semi_structured(net, [masks["fc1.weight"]])
    with pytest.raises(ValueError, match="masks do not fit Net"):
        sf.to_semi_structured(net, {"fc3.weight": masks["fc1.weight"]})
    with pytest.raises(ValueError, match=r"no mask is of an nn.Linear weight, nothing to convert \(the masks are of "
                                         r"'conv.weight', 'fc1.bias'\)"):
        sf.to_semi_structured(net, {"conv.weight": masks["conv.weight"], "fc1.bias": torch.ones(32, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"no mask .* \(the masks are of nothing\)"):
        sf.to_semi_structured(net, {})


def test_the_conversion_plan_masks_linear_weights_and_leaves_the_rest_dense(no_device_check):
    net, masks = net_and_masks()
    conv, fc1_bias = net.conv.weight.detach().clone(), net.fc1.bias
    expected = {name: net.get_parameter(name).detach().masked_fill(~masks[name], 0)
                for name in ("fc1.weight", "fc2.weight")}
    done = sf.to_semi_structured(net, masks)
    assert done == export.Conversion(("fc1.weight", "fc2.weight"), ("conv.weight",))
    for name, values in expected.items():
        weight = net.get_parameter(name)
        assert isinstance(weight, nn.Parameter) and not weight.requires_grad and torch.equal(weight, values)
    assert torch.equal(net.conv.weight, conv) and net.fc1.bias is fc1_bias  # left dense, unmasked


def test_a_failing_layer_leaves_every_layer_as_it_was(no_device_check, monkeypatch):
    net, masks = net_and_masks()
    before = snapshot(net)
    calls = []

    def refuse_the_second(dense):
        calls.append(dense)
        if len(calls) == 2:
            raise RuntimeError("CUDA error: operation not supported")
        return dense.clone()

    monkeypatch.setattr(torch.sparse, "to_sparse_semi_structured", refuse_the_second)
    with pytest.raises(RuntimeError, match=r"^to_semi_structured: converting 'fc2.weight' failed \(a stand-in\): "
                                           "CUDA error: operation not supported$"):
        sf.to_semi_structured(net, masks)
    assert_unchanged(net, before)


def test_a_shared_linear_is_converted_once_and_needs_one_mask(no_device_check):
    shared = nn.Linear(32, 16).half()
    net = nn.Sequential(shared, nn.ReLU(), shared)
    mask = two_four(shared.weight)
    assert sf.to_semi_structured(net, {"0.weight": mask, "2.weight": mask}) == export.Conversion(("0.weight",), ())
    assert net[2].weight is net[0].weight and not net[0].weight.requires_grad
    other = nn.Sequential(shared, shared)
    with pytest.raises(ValueError, match="'0.weight' and '1.weight' are the same nn.Linear"):
        sf.to_semi_structured(other, {"0.weight": mask, "1.weight": ~mask})


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_on_a_gpu_the_converted_layers_compute_the_masked_dense_ones(dtype):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 32, bias=False)).to("cuda", dtype)
    masks = Masks({"0.weight": two_four(net[0].weight), "2.weight": two_four(net[2].weight)})
    why = export.why_unsupported("cuda")
    if why is not None:  # a device below Ampere, or a build without the kernels: the refusal is the result
        with pytest.raises(RuntimeError, match="to_semi_structured"):
            sf.to_semi_structured(net, masks)
        return
    x = torch.randn(3, 40, 128, device="cuda", dtype=dtype)
    with torch.no_grad():
        for name, mask in masks.items():
            net.get_parameter(name).mul_(mask)
        expected = net(x)
        done = sf.to_semi_structured(net, masks)
        assert done.converted == ("0.weight", "2.weight") and done.dense == ()
        assert isinstance(net[0].weight, torch.sparse.SparseSemiStructuredTensor)
        out = net(x)
    tol = 1e-2 if dtype == torch.float16 else 5e-2
    torch.testing.assert_close(out, expected, rtol=tol, atol=tol)


# ---------------------------------------------------------------------------------------------
# benchmarks/semi_structured.py, the GPU check's 2:4 timing: its plumbing, with the stand-ins
# ---------------------------------------------------------------------------------------------


def test_the_benchmark_records_a_refusal_and_exits_0(tmp_path, capsys):
    from benchmarks import semi_structured
    out = tmp_path / "semi_structured.json"
    assert semi_structured.main(["--device", "cpu", "--features", "64", "--tokens", "8", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [(r["dtype"], r["backend"]) for r in result["cases"]] == [
        ("float16", "cusparselt"), ("float16", "cutlass"), ("bfloat16", "cusparselt"), ("bfloat16", "cutlass")]
    assert all(r["refused"] == export.why_unsupported("cpu") for r in result["cases"])
    assert result["environment"]["device"] and "refused: to_semi_structured needs a CUDA device" in capsys.readouterr().out
    assert torch.sparse.SparseSemiStructuredTensor._FORCE_CUTLASS is False  # put back


@pytest.mark.parametrize("wrong", [False, True])
def test_the_benchmark_times_both_layers_and_fails_on_a_wrong_output(tmp_path, capsys, no_device_check, monkeypatch,
                                                                    wrong):
    from benchmarks import semi_structured
    if wrong:
        monkeypatch.setattr(torch.sparse, "to_sparse_semi_structured", lambda dense: dense * 2)
    out = tmp_path / "semi_structured.json"
    rc = semi_structured.main(["--device", "cpu", "--features", "64", "--tokens", "8", "--min-time", "0",
                               "--out", str(out)])
    cases = json.loads(out.read_text())["cases"]
    assert rc == int(wrong) and len(cases) == 4
    for r in cases:
        assert r["matches"] is not wrong and r["dense_s"] > 0 and r["sparse_s"] > 0 and r["reps"] >= 3
        assert r["speedup"] == pytest.approx(r["dense_s"] / r["sparse_s"])
    assert ("WRONG OUTPUT" in capsys.readouterr().out) is wrong
