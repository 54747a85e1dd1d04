import gc
import math
import os
import pickle
import signal
import struct
import subprocess
import sys
import weakref
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from sparseforce import masks as masks_mod
from sparseforce.masks import enforce
from sparseforce.masks import LayerDensity, LayerTable, MaskHandle, Masks, MasksFileError, RowStats, RowTable, apply_masks


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def random_masks(model, density=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Masks({
        name: torch.rand(p.shape, generator=g) < density
        for name, p in model.named_parameters() if name.endswith("weight")
    })


def hand_masks():
    a = torch.tensor([[True, False, True], [False, False, True]])  # 3/6 kept
    b = torch.tensor([True, True, True, False])  # 3/4 kept
    return Masks({"a": a, "b": b})


# ---------------------------------------------------------------------------------------------
# Mapping behaviour and validation
# ---------------------------------------------------------------------------------------------


def test_mapping_behaviour_and_no_copy():
    a = torch.ones(2, 3, dtype=torch.bool)
    b = torch.zeros(4, dtype=torch.bool)
    src = {"z": a, "a": b}
    m = Masks(src)
    assert list(m) == ["z", "a"]  # insertion order, not sorted
    assert len(m) == 2 and "z" in m and "nope" not in m
    assert m["z"] is a and m["a"] is b  # no needless copies
    items = list(m.items())
    assert [k for k, _ in items] == ["z", "a"] and items[0][1] is a and items[1][1] is b
    assert m.get("missing") is None
    with pytest.raises(KeyError):
        m["missing"]
    src["extra"] = a  # later changes to the source dict don't leak in
    assert "extra" not in m
    with pytest.raises(TypeError):
        m["new"] = a  # read-only mapping
    assert Masks(m) == m
    assert Masks(list(m.items())) == m


def test_equality():
    m = hand_masks()
    assert m == hand_masks()
    assert m == {"b": m["b"], "a": m["a"]}  # order-insensitive, like dict
    other = dict(m)
    other["b"] = ~m["b"]
    assert m != Masks(other)
    assert m != Masks({"a": m["a"]})
    assert m != {"a": m["a"], "b": m["b"].reshape(2, 2)}


def test_validation_errors():
    with pytest.raises(TypeError, match=r"'w'.*torch\.float32"):
        Masks({"w": torch.ones(3)})
    with pytest.raises(TypeError, match=r"'w'.*torch\.int64"):
        Masks({"w": torch.ones(3, dtype=torch.long)})
    with pytest.raises(TypeError, match=r"'w'.*list"):
        Masks({"w": [True, False]})
    with pytest.raises(TypeError, match="str"):
        Masks({1: torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="duplicate"):
        Masks([("w", torch.ones(1, dtype=torch.bool)), ("w", torch.ones(1, dtype=torch.bool))])


@pytest.mark.parametrize("value", [None, 3, torch.ones(3, dtype=torch.bool), "w", [("w",)], [1, 2]])
def test_masks_of_something_not_a_mapping_is_one_clear_type_error(value):
    # was: "'NoneType' object is not iterable", "cannot unpack non-iterable int object", ...
    with pytest.raises(TypeError, match=r"^Masks\(\) takes a mapping name -> bool tensor or an iterable of "
                                        r"\(name, tensor\) pairs, got "):
        Masks(value)


def test_save_into_a_missing_folder_names_the_path_given(tmp_path):
    # was: FileNotFoundError naming the temporary file, '.../.m.pt.PID.HEX.tmp'
    target = tmp_path / "missing" / "m.pt"
    with pytest.raises(FileNotFoundError) as ei:
        random_masks(SmallNet()).save(target)
    assert str(target) in str(ei.value) and ".tmp" not in str(ei.value)
    assert str(tmp_path / "missing") in str(ei.value) and not (tmp_path / "missing").exists()


def test_check_puts_a_separator_between_problems_and_names_a_non_prunable_weight():
    class WithNorm(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)

    model = WithNorm()
    m = {"conv.wieght": torch.ones(4, 3, 3, 3, dtype=torch.bool), "bn.weight": torch.ones(3, dtype=torch.bool),
         "conv.weight": torch.ones(4, 3, 1, 1, dtype=torch.bool)}
    with pytest.raises(ValueError) as ei:
        Masks(m).check(model)
    msg = str(ei.value)
    one_line = " ".join(msg.split())  # as the command line prints it
    # was: "... similar names: 'conv.weight' 1 mask has another shape ..." and bn.weight as a shape mismatch
    assert "similar names: 'conv.weight'; 1 mask has another shape" in one_line, one_line
    assert "'bn.weight' is not a prunable weight (the weight of a BatchNorm2d" in one_line, one_line
    assert "(4, 3, 1, 1) for (4, 3, 3, 3)" in one_line and "'bn.weight' (3)" not in one_line
    assert "3 problems" in one_line


# ---------------------------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------------------------


def test_density_numbers():
    m = hand_masks()
    assert m.numel() == 10
    assert m.num_kept() == 6
    assert m.density() == pytest.approx(0.6)
    assert m.sparsity() == pytest.approx(0.4)
    assert isinstance(m.density(), float) and isinstance(m.num_kept(), int)


def test_empty_masks_density_is_one():
    assert Masks({}).density() == 1.0
    assert Masks({}).sparsity() == 0.0
    assert Masks({}).numel() == 0 and Masks({}).num_kept() == 0
    z = Masks({"z": torch.ones(0, 3, dtype=torch.bool)})
    assert z.density() == 1.0
    assert z.per_layer()[0].density == 1.0


def test_per_layer_table():
    m = hand_masks()
    table = m.per_layer()
    assert isinstance(table, LayerTable) and isinstance(table, list)
    assert table == [
        LayerDensity("a", (2, 3), 6, 3, 0.5),
        LayerDensity("b", (4,), 4, 3, 0.75),
    ]
    assert table[1].sparsity == pytest.approx(0.25)
    assert table.total == LayerDensity("total", (), 10, 6, pytest.approx(0.6))

    text = str(table)
    lines = text.splitlines()
    assert "name" in lines[0] and "density" in lines[0]
    assert any(line.startswith("a ") for line in lines)
    assert any(line.startswith("b ") for line in lines)
    assert "(2, 3)" in text and "(4,)" not in text and "(4)" in text
    assert lines[-1].startswith("total") and "60.0%" in lines[-1] and "10" in lines[-1]
    # aligned: the density column ends at the same offset on every data row
    data = [l for l in lines if not set(l) <= {"-"}]
    ends = {len(l) for l in data}
    assert len(ends) == 1, text


def test_repr_is_short():
    r = repr(hand_masks())
    assert r.startswith("Masks(") and "2 tensors" in r and "6/10" in r and "60.0%" in r
    assert "\n" not in r


# ---------------------------------------------------------------------------------------------
# persistence
# ---------------------------------------------------------------------------------------------


def odd_masks():
    g = torch.Generator().manual_seed(1)
    big = torch.rand(7, 9, generator=g) > 0.3
    return Masks({
        "z.weight": torch.rand(5, 1, 3, 2, generator=g) > 0.5,
        "empty": torch.zeros(0, 4, dtype=torch.bool),
        "scalar": torch.tensor(True),
        "a.weight": torch.rand(13, generator=g) > 0.5,
        "view": big[2:5, ::2],  # non-contiguous view into a bigger tensor
        "ones": torch.ones(3, 3, dtype=torch.bool),
    })


def test_save_load_round_trip_exact(tmp_path):
    m = odd_masks()
    path = tmp_path / "m.pt"
    m.save(path)
    back = Masks.load(path)
    assert list(back) == list(m)  # same names, same order
    for name in m:
        assert back[name].dtype == torch.bool
        assert back[name].shape == m[name].shape
        assert torch.equal(back[name], m[name])
    assert back == m
    # str paths work too, and the view did not drag its whole storage into the file
    back2 = Masks.load(str(path))
    assert back2["view"].untyped_storage().nbytes() == back2["view"].numel()


def test_saved_file_is_plain_weights_only_payload(tmp_path):
    path = tmp_path / "m.pt"
    hand_masks().save(path)
    obj = torch.load(path, weights_only=True)
    assert obj["format"] == "sparseforce.masks"
    assert obj["version"] == 1
    assert list(obj["masks"]) == ["a", "b"]
    assert all(t.dtype == torch.bool and t.device.type == "cpu" for t in obj["masks"].values())


def test_load_with_model_checks_names_and_shapes(tmp_path):
    model = SmallNet()
    good = random_masks(model)
    good.save(tmp_path / "good.pt")
    assert Masks.load(tmp_path / "good.pt", model=model) == good

    bad_shape = dict(good)
    bad_shape["fc.weight"] = torch.ones(5, 3, dtype=torch.bool)
    Masks(bad_shape).save(tmp_path / "shape.pt")
    with pytest.raises(ValueError, match=r"(?s)shape\.pt.*'fc\.weight'.*\(5, 3\).*\(5, 144\)"):
        Masks.load(tmp_path / "shape.pt", model=model)

    bad_name = dict(good)
    bad_name["fc.wieght"] = bad_name.pop("fc.weight")
    Masks(bad_name).save(tmp_path / "name.pt")
    with pytest.raises(ValueError, match=r"(?s)name\.pt.*names no parameter.*'fc\.wieght'") as ei:
        Masks.load(tmp_path / "name.pt", model=model)
    assert "'fc.weight'" in str(ei.value)  # suggests a valid name


def test_load_missing_file(tmp_path):
    path = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        Masks.load(path)


def test_load_garbage_bytes(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(os.urandom(257))
    with pytest.raises(MasksFileError, match="garbage.pt.*not a sparseforce masks file"):
        Masks.load(path)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(MasksFileError, match="empty.pt.*empty"):
        Masks.load(empty)


def test_load_state_dict_is_rejected(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save(SmallNet().state_dict(), path)
    with pytest.raises(MasksFileError, match=r"sd\.pt.*not a sparseforce masks file.*state_dict"):
        Masks.load(path)


@pytest.mark.parametrize("payload, pattern", [
    ({"format": "something.else", "version": 1, "masks": {}}, "format tag"),
    ({"format": "sparseforce.masks", "version": 99, "masks": {}}, "version 99"),
    ({"format": "sparseforce.masks", "masks": {}}, "version"),
    ({"format": "sparseforce.masks", "version": 1, "masks": [1, 2]}, "'masks' should be a dict"),
    ({"format": "sparseforce.masks", "version": 1, "masks": {"w": torch.ones(3)}},
     r"invalid masks.*'w'.*torch\.float32"),
    ([1, 2, 3], "expected a dict"),
])
def test_load_bad_payloads(tmp_path, payload, pattern):
    path = tmp_path / "bad.pt"
    torch.save(payload, path)
    with pytest.raises(ValueError, match=pattern) as ei:
        Masks.load(path)
    assert "bad.pt" in str(ei.value)


def test_load_refuses_pickled_code(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "sparseforce.masks", "version": 1, "masks": {}, "x": SmallNet}, path)
    with pytest.raises(MasksFileError, match=r"evil\.pt.*is not a sparseforce masks file.*SmallNet") as ei:
        Masks.load(path)
    assert "weights_only" not in str(ei.value)  # torch's advice to load it unsafely is not ours to give


def flip_bit_in_tensor(path, offset=3):
    """Flip one bit in the stored bytes of the first tensor of a torch.save zip; the zip's structure
    (headers, directory) stays intact, so only the member's CRC can tell."""
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if "/data/" in i.filename and i.file_size > offset)
    assert info.compress_type == zipfile.ZIP_STORED
    data = bytearray(Path(path).read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26: info.header_offset + 30])
    data[info.header_offset + 30 + name_len + extra_len + offset] ^= 0x01
    Path(path).write_bytes(bytes(data))


def test_load_detects_a_flipped_bit_in_a_stored_tensor(tmp_path):
    path = tmp_path / "m.pt"
    Masks({"w": torch.ones(64, dtype=torch.bool)}).save(path)
    flip_bit_in_tensor(path)
    assert not torch.load(path, weights_only=True)["masks"]["w"].all()  # torch alone loads the damage
    with pytest.raises(MasksFileError, match=r"m\.pt.*corrupt.*checksum"):
        Masks.load(path)


@pytest.mark.parametrize("bit", [0x01, 0x10])
def test_any_flipped_bit_is_refused_or_harmless(tmp_path, bit):
    # Every byte of a small file: headers, padding, pickle, tensor data, zip directory.
    good = Masks({"w": torch.rand(40, generator=torch.Generator().manual_seed(0)) > 0.5,
                  "v": torch.ones(3, 5, dtype=torch.bool)})
    path = tmp_path / "m.pt"
    good.save(path)
    data = path.read_bytes()
    for i in range(len(data)):
        path.write_bytes(data[:i] + bytes([data[i] ^ bit]) + data[i + 1:])
        try:
            back = Masks.load(path)
        except MasksFileError as exc:
            assert "m.pt" in str(exc)
        else:
            assert back == good, f"a flip at byte {i} of {len(data)} changed the masks unnoticed"


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, -1])
def test_load_truncated_file(tmp_path, keep):
    path = tmp_path / "cut.pt"
    odd_masks().save(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)] if keep > 0 else data[:keep])
    with pytest.raises(MasksFileError, match=r"cut\.pt.*truncated or corrupt"):
        Masks.load(path)


@pytest.mark.parametrize("write, pattern", [
    (lambda p: p.write_text("name,kept\nfc.weight,3\n"), "not a zip archive"),
    (lambda p: p.write_bytes(pickle.dumps({"format": "sparseforce.masks", "version": 1, "masks": {}})),
     "not a zip archive"),
    (lambda p: torch.save({"weights": [1, 2, 3], "epoch": 4}, p), "missing the 'format' tag"),
    (lambda p: torch.save(torch.ones(3), p), "expected a dict, found Tensor"),
    (lambda p: zipfile.ZipFile(p, "w").writestr("readme.txt", "hello"), "torch.load failed"),
])
def test_a_file_that_is_not_a_masks_file_says_so(tmp_path, write, pattern):
    path = tmp_path / "other.pt"
    write(path)
    with pytest.raises(MasksFileError, match=r"other\.pt'? is not a sparseforce masks file: .*" + pattern) as ei:
        Masks.load(path)
    assert isinstance(ei.value, ValueError) and "weights_only" not in str(ei.value)


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    good = hand_masks()
    good.save(path)
    before = path.read_bytes()

    real_save = torch.save

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial garbage that must never reach the destination")
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(RuntimeError, match="simulated"):
        odd_masks().save(path)
    monkeypatch.setattr(torch, "save", real_save)

    assert path.read_bytes() == before
    assert Masks.load(path) == good
    assert os.listdir(tmp_path) == ["m.pt"]  # no temp file left behind


KILLED_SAVE = """
import os, signal, sys, torch
import sparseforce as sf
def save(obj, f, *a, **kw):
    f.write(b"PK\\x03\\x04 the first bytes of a masks file")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = save
sf.Masks({"w": torch.ones(3, dtype=torch.bool)}).save(sys.argv[1])
"""


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_a_temporary_file_left_by_a_killed_save_is_removed_by_the_next(tmp_path):
    path = tmp_path / "m.pt"
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(path)], cwd=root, capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    left = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert len(left) == 1 and not path.exists()
    # a write in progress in a live process (this one) and other files are not touched
    live = tmp_path / f".m.pt.{os.getpid()}.0123456789ab.tmp"
    live.write_bytes(b"in progress")
    (tmp_path / "notes.tmp").write_text("mine")
    hand_masks().save(path)
    assert sorted(os.listdir(tmp_path)) == sorted(["m.pt", live.name, "notes.tmp"])
    assert Masks.load(path) == hand_masks()


def test_save_overwrites_and_uses_umask_permissions(tmp_path):
    path = tmp_path / "m.pt"
    hand_masks().save(path)
    odd_masks().save(path)
    assert Masks.load(path) == odd_masks()
    if os.name == "posix":
        umask = os.umask(0)
        os.umask(umask)
        assert (path.stat().st_mode & 0o777) == (0o666 & ~umask)


def test_to_returns_new_masks():
    m = hand_masks()
    moved = m.to("cpu")
    assert isinstance(moved, Masks) and moved is not m and moved == m
    meta = m.to("meta")
    assert all(t.device.type == "meta" for t in meta.values())
    assert all(t.device.type == "cpu" for t in m.values())  # original untouched
    assert list(meta) == list(m)


# ---------------------------------------------------------------------------------------------
# check against a model
# ---------------------------------------------------------------------------------------------


def test_check_reports_all_problems():
    model = SmallNet()
    m = dict(random_masks(model))
    m["conv.weight"] = torch.ones(4, 3, 5, 5, dtype=torch.bool)
    m["nonexistent"] = torch.ones(1, dtype=torch.bool)
    with pytest.raises(ValueError) as ei:
        Masks(m).check(model)
    msg = str(ei.value)
    assert "'conv.weight'" in msg and "(4, 3, 5, 5)" in msg and "(4, 3, 3, 3)" in msg
    assert "'nonexistent'" in msg and "the prunable weights are 'conv.weight', 'fc.weight'" in msg
    assert "2 problems" in msg
    good = random_masks(model)
    assert good.check(model) is good
    assert good.validate_for(model) is good


# ---------------------------------------------------------------------------------------------
# apply_masks
# ---------------------------------------------------------------------------------------------


def _train(model, opt, steps=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 3, 6, 6, generator=g)
    y = torch.randint(0, 5, (16,), generator=g)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


OPTIMIZERS = {
    "sgd_nesterov": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True,
                                               weight_decay=5e-4),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=1e-2),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2),
    "adam_wd_foreach": lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=1e-2, foreach=True),
    "rmsprop": lambda ps: torch.optim.RMSprop(ps, lr=1e-3, momentum=0.9, weight_decay=1e-3),
}


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_apply_masks_keeps_pruned_weights_zero(opt_name):
    torch.manual_seed(0)
    model = SmallNet()
    masks = random_masks(model, density=0.3)
    handle = apply_masks(model, masks)
    try:
        assert isinstance(handle, MaskHandle)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        for name, mask in masks.items():
            p = dict(model.named_parameters())[name]
            assert torch.all(p[~mask] == 0)
            assert not torch.signbit(p[~mask]).any(), f"{name}: pruned entries should be +0.0"

        opt = OPTIMIZERS[opt_name](model.parameters())
        _train(model, opt)

        params = dict(model.named_parameters())
        for name, mask in masks.items():
            p = params[name].detach()
            pruned = p[~mask]
            assert torch.equal(pruned, torch.zeros_like(pruned)), name
            assert not torch.signbit(pruned).any(), f"{name}: pruned entries should be +0.0"
            kept_now, kept_before = p[mask], before[name][mask]
            assert (kept_now != kept_before).float().mean() > 0.9, f"{name} did not train"
            # optimizer state for pruned weights never picked anything up
            for key, buf in opt.state[params[name]].items():
                if isinstance(buf, torch.Tensor) and buf.shape == p.shape:
                    assert torch.equal(buf[~mask], torch.zeros_like(buf[~mask])), (name, key)
        # unmasked parameters (biases) train normally
        assert not torch.equal(params["fc.bias"], before["fc.bias"])
    finally:
        handle.remove()


def test_sgd_momentum_buffers_exist_and_are_zero_where_pruned():
    model = SmallNet()
    masks = random_masks(model, density=0.5)
    with apply_masks(model, masks):
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True,
                              weight_decay=5e-4)
        _train(model, opt, steps=200)
        for name, mask in masks.items():
            p = dict(model.named_parameters())[name]
            buf = opt.state[p]["momentum_buffer"]
            assert torch.count_nonzero(buf[~mask]) == 0
            assert torch.count_nonzero(buf[mask]) > 0
            assert torch.count_nonzero(p[~mask]) == 0


def test_step_hook_covers_state_created_before_masking():
    # Optimizer with live momentum before pruning: the grad hook can't scrub that state, the
    # step hook must still keep the weights at zero.
    model = SmallNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    _train(model, opt, steps=5)
    masks = random_masks(model, density=0.3)
    handle = apply_masks(model, masks)
    try:
        _train(model, opt, steps=20)
        params = dict(model.named_parameters())
        for name, mask in masks.items():
            assert torch.count_nonzero(params[name][~mask]) == 0
    finally:
        handle.remove()


def test_apply_masks_accepts_plain_dict_and_zeroes_existing_grad():
    model = SmallNet()
    masks = random_masks(model)
    model(torch.randn(2, 3, 6, 6)).sum().backward()
    handle = apply_masks(model, dict(masks))
    try:
        w = model.fc.weight
        assert torch.count_nonzero(w[~masks["fc.weight"]]) == 0
        assert torch.count_nonzero(w.grad[~masks["fc.weight"]]) == 0
    finally:
        handle.remove()


def test_apply_masks_wrong_shape_raises_and_leaves_model_unchanged():
    model = SmallNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad = dict(random_masks(model))
    bad["fc.weight"] = torch.zeros(5, 143, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"'fc\.weight'.*\(5, 143\).*\(5, 144\)"):
        apply_masks(model, bad)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # and nothing is being enforced
    assert len(enforce._REGISTRY) == 0
    with pytest.raises(TypeError):
        apply_masks(model, {"fc.weight": torch.zeros(5, 144)})
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_handle_remove_stops_enforcement():
    model = SmallNet()
    masks = random_masks(model, density=0.3)
    handle = apply_masks(model, masks)
    assert handle.active
    assert model.fc.weight._backward_hooks
    handle.remove()
    assert not model.fc.weight._backward_hooks
    assert not handle.active
    handle.remove()  # idempotent
    assert enforce._STEP_HOOK is None  # global hook dropped once nothing is registered

    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    _train(model, opt, steps=10)
    w = model.fc.weight
    assert torch.count_nonzero(w[~masks["fc.weight"]]) > 0
    assert torch.count_nonzero(opt.state[w]["momentum_buffer"][~masks["fc.weight"]]) > 0


def test_remove_only_affects_its_own_model():
    m1, m2 = SmallNet(), SmallNet()
    k1, k2 = random_masks(m1, seed=1), random_masks(m2, seed=2)
    h1 = apply_masks(m1, k1)
    h2 = apply_masks(m2, k2)
    try:
        h1.remove()
        opt = torch.optim.SGD(list(m1.parameters()) + list(m2.parameters()), lr=0.05,
                              momentum=0.9)
        x = torch.randn(4, 3, 6, 6)
        for _ in range(10):
            opt.zero_grad()
            (m1(x).square().mean() + m2(x).square().mean()).backward()
            opt.step()
        assert torch.count_nonzero(m2.fc.weight[~k2["fc.weight"]]) == 0
        assert torch.count_nonzero(m1.fc.weight[~k1["fc.weight"]]) > 0
    finally:
        h2.remove()


def test_reapplying_replaces_previous_mask():
    model = SmallNet()
    first = Masks({"fc.weight": torch.zeros(5, 144, dtype=torch.bool)})  # prune all
    h1 = apply_masks(model, first)
    with torch.no_grad():
        model.fc.weight.normal_()  # simulate re-initialisation before a new pruning round
    second = Masks({"fc.weight": torch.arange(5 * 144).reshape(5, 144) % 2 == 0})
    h2 = apply_masks(model, second)
    try:
        reinit = model.fc.weight.detach().clone()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        _train(model, opt, steps=5)
        w = model.fc.weight
        keep = second["fc.weight"]
        assert torch.count_nonzero(w[~keep]) == 0
        # the old prune-everything mask no longer blocks gradients of kept weights
        assert (w[keep] != reinit[keep]).float().mean() > 0.9
        h1.remove()  # removing the superseded handle must not drop the new mask
        _train(model, opt, steps=5)
        assert torch.count_nonzero(w[~second["fc.weight"]]) == 0
    finally:
        h1.remove()
        h2.remove()


def test_tied_weights_conflicting_masks_rejected():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4, bias=False)
            self.b = nn.Linear(4, 4, bias=False)
            self.b.weight = self.a.weight

    model = Tied()
    before = model.a.weight.detach().clone()
    ones = torch.ones(4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="tied"):
        apply_masks(model, {"a.weight": ones, "b.weight": ~ones})
    assert torch.equal(model.a.weight, before)
    h = apply_masks(model, {"a.weight": torch.eye(4, dtype=torch.bool),
                            "b.weight": torch.eye(4, dtype=torch.bool)})
    h.remove()


def test_registry_does_not_keep_models_alive():
    model = SmallNet()
    handle = apply_masks(model, random_masks(model))
    ref = weakref.ref(model)
    n_before = len(enforce._REGISTRY)
    assert n_before >= 2
    del model
    gc.collect()
    assert ref() is None
    assert len(enforce._REGISTRY) == n_before - 2
    handle.remove()  # safe after the model is gone
    assert enforce._STEP_HOOK is None


def test_frozen_parameter_is_masked_without_grad_hook():
    model = SmallNet()
    model.conv.weight.requires_grad_(False)
    masks = random_masks(model)
    with apply_masks(model, masks):
        assert torch.count_nonzero(model.conv.weight[~masks["conv.weight"]]) == 0
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        _train(model, opt, steps=5)
        assert torch.count_nonzero(model.fc.weight[~masks["fc.weight"]]) == 0


# ---------------------------------------------------------------------------------------------
# issue 12: layer collapse, readable densities, short mismatch messages, argument checks
# ---------------------------------------------------------------------------------------------


def test_collapsed_lists_the_layers_left_with_no_weights():
    m = Masks({"a": torch.zeros(3, 2, dtype=torch.bool), "b": torch.tensor([True, False]),
               "empty": torch.zeros(0, dtype=torch.bool), "c": torch.zeros(1, dtype=torch.bool)})
    assert m.collapsed() == ["a", "c"]  # a 0-element mask has nothing to lose
    assert Masks({"b": torch.ones(2, dtype=torch.bool)}).collapsed() == []


def test_per_layer_shows_tiny_densities_with_enough_digits_in_percent():
    big = torch.zeros(2_400_000, dtype=torch.bool)
    big[:24] = True
    almost = torch.ones(3_000_000, dtype=torch.bool)
    almost[0] = False
    m = Masks({"big": big, "none": torch.zeros(10, dtype=torch.bool), "half": torch.tensor([True, False]),
               "almost": almost})
    text = str(m.per_layer())
    rows = {line.split()[0]: line.split() for line in text.splitlines()[2:] if not set(line) <= {"-"}}
    assert rows["big"][-2:] == ["0.0010%", "99.9990%"], text
    assert rows["none"][-2:] == ["0%", "100%"], text
    assert rows["half"][-2:] == ["50.0%", "50.0%"], text
    assert rows["almost"][-2:] == ["99.999967%", "0.000033%"], text
    kept, numel = 24 + 1 + 2_999_999, 2_400_000 + 10 + 2 + 3_000_000
    total = masks_mod.format_percent(kept, numel)
    assert rows["total"][-2] == total and total.endswith("%")
    # one unit everywhere: the repr says the same as the table's total
    assert f"density={total}" in repr(m)
    assert all(row[-1].endswith("%") and row[-2].endswith("%") for row in rows.values()), text


@pytest.mark.parametrize("part, whole, text", [
    (0, 5, "0%"), (5, 5, "100%"), (1, 3, "33.3%"), (2, 3, "66.7%"), (1, 200, "0.50%"), (199, 200, "99.50%"),
    (1, 1000, "0.10%"), (24, 2_400_000, "0.0010%"), (1, 10**12, "0.00000000010%"), (0, 0, "100%"),
    (24, 2_400_010, "0.0010%"), (2_399_986, 2_400_010, "99.9990%"), (199, 20_000, "0.99%"), (1999, 200_000, "1.0%"),
])
def test_format_percent(part, whole, text):
    assert masks_mod.format_percent(part, whole) == text


def many_layer_net(n=27):
    # Linear + BatchNorm pairs: BatchNorm weights are no prunable weights and must not be suggested.
    layers = []
    for _ in range(n):
        layers += [nn.Linear(4, 4), nn.BatchNorm1d(4)]
    return nn.Sequential(*layers)


class OtherNet(nn.Module):
    def __init__(self, n=27):
        super().__init__()
        self.features = many_layer_net(n)


def test_masks_of_another_model_give_a_short_message():
    model = many_layer_net()
    other = Masks({n: torch.ones(p.shape, dtype=torch.bool)
                   for n, p in OtherNet().named_parameters()})  # 108 masks, none named like the model's
    with pytest.raises(ValueError) as ei:
        other.check(model)
    msg = str(ei.value)
    assert len(msg.splitlines()) <= 3, msg
    assert "108 masks name no parameter" in msg and "'features.0.weight'" in msg
    suggested = msg.split("similar", 1)[1]
    assert "'0.weight'" in suggested and "'1.weight'" not in suggested and ".bias" not in suggested, msg
    # stable: the same suggestions, in the model's order, whatever the masks' order
    with pytest.raises(ValueError) as again:
        Masks(dict(reversed(list(other.items())))).check(model)
    assert str(again.value).split("similar", 1)[1] == suggested
    with pytest.raises(ValueError) as via_apply:
        apply_masks(model, other)
    assert str(via_apply.value) == msg


def test_wrong_shapes_are_counted_and_a_few_shown():
    model = many_layer_net()
    wrong = Masks({f"{2 * i}.weight": torch.ones(5, 4, dtype=torch.bool) for i in range(27)})
    with pytest.raises(ValueError) as ei:
        wrong.check(model)
    msg = str(ei.value)
    assert len(msg.splitlines()) <= 3, msg
    assert "27 masks have another shape" in msg and "'0.weight' (5, 4) for (4, 4)" in msg


def test_apply_masks_and_check_refuse_arguments_of_the_wrong_kind():
    model = SmallNet()
    masks = random_masks(model)
    with pytest.raises(TypeError, match=r"masks must be .*got NoneType"):
        apply_masks(model, None)
    with pytest.raises(TypeError, match=r"model must be a torch.nn.Module, got NoneType"):
        apply_masks(None, masks)
    with pytest.raises(TypeError, match=r"model must be a torch.nn.Module, got Masks"):
        apply_masks(masks, model)
    with pytest.raises(TypeError, match=r"model must be a torch.nn.Module"):
        masks.check(None)


def test_apply_masks_refuses_meta_and_sparse_parameters():
    with torch.device("meta"):
        meta = SmallNet()
    with pytest.raises(ValueError, match=r"'conv.weight'.*meta device"):
        apply_masks(meta, random_masks(SmallNet()))
    sparse = SmallNet()
    sparse.fc.weight = nn.Parameter(sparse.fc.weight.detach().to_sparse())
    with pytest.raises(ValueError, match=r"'fc.weight'.*sparse"):
        apply_masks(sparse, random_masks(SmallNet()))


def test_masks_refuse_sparse_tensors_and_meta_masks_are_not_applied():
    with pytest.raises(ValueError, match=r"'a'.*sparse"):
        Masks({"a": torch.ones(3, dtype=torch.bool).to_sparse()})
    model = SmallNet()
    meta = random_masks(model).to("meta")  # masks without values: fine to hold, not to apply
    with pytest.raises(ValueError, match=r"mask 'conv.weight'.*meta device"):
        apply_masks(model, meta)
    assert torch.count_nonzero(model.conv.weight) == model.conv.weight.numel()


# ---------------------------------------------------------------------------------------------
# rows: the N:M check and the per-row statistics (masks viewed as (dim 0, the rest flattened))
# ---------------------------------------------------------------------------------------------


def nm_mask(shape, n, m, seed=0):
    """A mask keeping exactly n of every m consecutive entries along its rows, the kept ones drawn at random."""
    g = torch.Generator().manual_seed(seed)
    order = torch.rand(math.prod(shape) // m, m, generator=g).argsort(dim=1)
    return (order < n).reshape(shape)


def nm_oracle(mask, n, m):
    """The pattern by loops over rows and groups: None, "length", or (broken groups, row, start, kept)."""
    rows = [mask.reshape(1).tolist()] if mask.dim() == 0 else mask.reshape(mask.shape[0], -1).tolist() \
        if mask.shape[0] else []
    length = math.prod(mask.shape[1:]) if mask.dim() else 1
    if length % m:
        return "length"
    broken = [(r, s, sum(row[s:s + m])) for r, row in enumerate(rows) for s in range(0, length, m)
              if sum(row[s:s + m]) != n]
    return (len(broken), *broken[0]) if broken else None


def test_is_nm_on_masks_built_to_the_pattern_and_on_broken_ones():
    masks = Masks({"fc.weight": nm_mask((8, 16), 2, 4), "conv.weight": nm_mask((6, 3, 2, 2), 2, 4, seed=1),
                   "no_rows": torch.zeros(0, 4, dtype=torch.bool), "empty_rows": torch.zeros(5, 0, dtype=torch.bool)})
    assert masks.is_nm(2, 4) and masks.nm_violations(2, 4) == {}
    assert not masks.is_nm(1, 4) and not masks.is_nm(2, 8)
    assert Masks({"a": nm_mask((4, 32), 1, 8)}).is_nm(1, 8) and Masks({"a": nm_mask((4, 32), 8, 8)}).is_nm(8, 8)
    assert Masks({"a": torch.zeros(4, 8, dtype=torch.bool)}).is_nm(0, 4)
    assert Masks({}).is_nm(2, 4)
    broken = nm_mask((8, 16), 2, 4).clone()
    broken[3, 9] = ~broken[3, 9]  # row 3, group 8..11 now keeps 1 or 3
    broken[5, 0:4] = True
    kept = int(broken[3, 8:12].sum())
    masks = Masks({"ok": nm_mask((2, 4), 2, 4), "fc.weight": broken})
    assert not masks.is_nm(2, 4)
    assert masks.nm_violations(2, 4) == {
        "fc.weight": f"2 of 32 groups of 4 do not keep 2; the first: row 3, entries 8..11 keep {kept}"}


def test_is_nm_needs_rows_that_split_into_groups_of_m():
    masks = Masks({"fc.weight": nm_mask((4, 8), 2, 4), "odd": torch.ones(3, 10, dtype=torch.bool)})
    assert not masks.is_nm(2, 4)
    assert masks.nm_violations(2, 4) == {"odd": "its row length 10 (shape (3, 10)) is not a multiple of 4"}
    assert not Masks({"bias": torch.ones(8, dtype=torch.bool)}).is_nm(2, 4)  # 8 rows of 1 entry
    assert Masks({"bias": torch.ones(8, dtype=torch.bool), "s": torch.tensor(True)}).is_nm(1, 1)
    assert "row length 1 (shape ())" in Masks({"s": torch.tensor(True)}).nm_violations(2, 4)["s"]


def test_is_nm_agrees_with_loops_over_rows_and_groups():
    g = torch.Generator().manual_seed(3)
    for trial in range(60):
        shape = [(6, 8), (3, 4, 2), (5, 12), (2, 2, 2, 3), (4,), (), (7, 6)][trial % 7]
        n, m = [(2, 4), (1, 2), (3, 4), (0, 2), (1, 1), (2, 3)][trial % 6]
        mask = (nm_mask(shape, n, m, seed=trial) if math.prod(shape[1:]) % m == 0 and shape
                else torch.rand(shape, generator=g) < 0.5)
        if trial % 3:  # flip a few entries
            flat = mask.flatten()
            flat[torch.randint(0, flat.numel(), (trial % 4,), generator=g)] ^= True
            mask = flat.reshape(shape)
        if trial % 5 == 0 and mask.dim() == 2:
            mask = mask.t().contiguous().t()  # the same values, not contiguous
        why = Masks({"x": mask}).nm_violations(n, m).get("x")
        expect = nm_oracle(mask, n, m)
        assert Masks({"x": mask}).is_nm(n, m) == (expect is None)
        if expect == "length":
            assert "is not a multiple of" in why
        elif expect is not None:
            count, row, start, kept = expect
            assert why.startswith(f"{count} of ") and f"row {row}, entries {start}..{start + m - 1} keep {kept}" in why


@pytest.mark.parametrize("n, m, error, pattern", [
    (2.0, 4, TypeError, "n of an n:m pattern must be an int, got float 2.0"),
    (2, True, TypeError, "m of an n:m pattern must be an int, got bool True"),
    (2, None, TypeError, "m of an n:m pattern must be an int, got NoneType"),
    (0, 0, ValueError, r"m of an n:m pattern must be >= 1, got n=0, m=0"),
    (5, 4, ValueError, r"n of an n:m pattern must be in \[0, m\], got n=5, m=4"),
    (-1, 4, ValueError, r"n of an n:m pattern must be in \[0, m\], got n=-1, m=4"),
])
def test_is_nm_refuses_a_bad_pattern_naming_it(n, m, error, pattern):
    masks = hand_masks()
    for call in (masks.is_nm, masks.nm_violations):
        with pytest.raises(error, match=pattern):
            call(n, m)


def test_row_stats_counts_each_rows_kept_entries():
    conv = torch.zeros(3, 2, 2, 2, dtype=torch.bool)
    conv[0].fill_(True)  # 8 kept
    conv[1, 0, 0, 1] = True  # 1 kept; row 2 keeps nothing
    masks = Masks({"conv.weight": conv, "fc.weight": nm_mask((4, 8), 2, 4), "scalar": torch.tensor(False),
                   "bias": torch.tensor([True, False, True]), "no_rows": torch.zeros(0, 5, dtype=torch.bool)})
    table = masks.row_stats()
    assert isinstance(table, RowTable) and isinstance(table, list)
    assert table == [RowStats("conv.weight", 3, 8, 9, 0, 8, 1), RowStats("fc.weight", 4, 8, 16, 4, 4, 0),
                     RowStats("scalar", 1, 1, 0, 0, 0, 1), RowStats("bias", 3, 1, 2, 0, 1, 1),
                     RowStats("no_rows", 0, 5, 0, 0, 0, 0)]
    assert table[0].mean == 3.0 and table[1].mean == 4.0 and table[4].mean == 0.0
    assert table.total == RowStats("total", 11, 0, 27, 0, 8, 3)
    assert [r.kept for r in table] == [r.kept for r in masks.per_layer()]
    # a mask with no rows has no least or most kept to count in the total's
    assert Masks({"fc.weight": nm_mask((4, 8), 2, 4), "no_rows": torch.zeros(0, 5, dtype=torch.bool)}) \
        .row_stats().total == RowStats("total", 4, 0, 16, 4, 4, 0)
    assert Masks({}).row_stats().total == RowStats("total", 0, 0, 0, 0, 0, 0)


def test_row_stats_table_reads_as_aligned_columns():
    masks = Masks({"fc.weight": nm_mask((4, 8), 2, 4), "conv.weight": torch.zeros(3, 4, dtype=torch.bool),
                   "no_rows": torch.zeros(0, 5, dtype=torch.bool)})
    lines = str(masks.row_stats()).splitlines()
    assert lines[0].split("  ")[0] == "name" and "mean kept" in lines[0] and "empty rows" in lines[0]
    rows = {line.split()[0]: line.split() for line in lines[2:] if not set(line) <= {"-"}}
    assert rows["fc.weight"] == ["fc.weight", "4", "8", "4", "4.00", "4", "0"]
    assert rows["conv.weight"] == ["conv.weight", "3", "4", "0", "0.00", "0", "3"]
    assert rows["no_rows"] == ["no_rows", "0", "5", "-", "-", "-", "0"]
    assert rows["total"] == ["total", "7", "0", "2.29", "4", "3"]  # the row length left blank
    assert len({len(line) for line in lines}) == 1, "\n".join(lines)


def test_masks_from_the_segmented_ops_pass_the_checks_that_view_rows_alike():
    from sparseforce import ops
    g = torch.Generator().manual_seed(5)
    scores = [torch.randn(8, 16, generator=g), torch.randn(6, 3, 2, 2, generator=g), torch.randn(4, 4, generator=g)]
    for n, m in ((2, 4), (1, 4), (3, 4), (4, 4), (1, 2), (0, 1)):
        masks = Masks(zip("abc", ops.segmented_topk_masks(scores, None, segment=("nm", n, m), backend="reference")))
        assert masks.is_nm(n, m), (n, m)
    rows = ops.segmented_topk_masks(scores, [3, torch.tensor([0, 1, 2, 3, 4, 12]), 0], segment="row",
                                    backend="reference")
    table = Masks(zip("abc", rows)).row_stats()
    assert [(r.rows, r.row_length, r.min, r.max, r.empty) for r in table] == [(8, 16, 3, 3, 0), (6, 12, 0, 12, 1),
                                                                               (4, 4, 0, 0, 4)]


def test_sharded_masks_are_gathered_first_for_the_row_checks(monkeypatch):
    monkeypatch.setattr(Masks, "is_sharded", property(lambda self: True))
    masks = Masks({"fc.weight": nm_mask((4, 8), 2, 4)})
    for call in (lambda: masks.is_nm(2, 4), lambda: masks.nm_violations(2, 4), masks.row_stats):
        with pytest.raises(ValueError, match=r"Masks\.(is_nm|nm_violations|row_stats)\(\) on sharded \(DTensor\) masks: "
                                             r"call masks.full\(\) on every rank first"):
            call()
    with pytest.raises(ValueError, match="n of an n:m pattern"):  # the arguments first
        masks.is_nm(5, 4)
