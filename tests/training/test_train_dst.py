"""fit(dst=...): dynamic sparse training in the training loop, its checkpoints, and a resume that
ends bit-identical to an uninterrupted run wherever the first run was killed."""
import random
import shutil

import numpy as np
import pytest
import torch

import sparseforce as sf
from sparseforce.train import CheckpointError, fit, load_checkpoint
from training_runs import Net, assert_same_run, make_data

pytestmark = pytest.mark.usefixtures("one_thread")


def make_model(seed=0, sparsity=0.8):
    torch.manual_seed(seed)
    net = Net()
    return net, sf.random(net, sparsity=sparsity, seed=seed)


# 5 batches per epoch, 4 epochs: 20 steps, an update every 3rd step up to step 15.
KW = dict(epochs=4, batch_size=32, lr=0.05, progress=False, backend="reference")
RIGL = dict(dst="rigl", dst_options={"update_every": 3, "end": 0.8, "drop_fraction": 0.5})


def counts(masks):
    return {n: int(m.sum()) for n, m in masks.items()}


def assert_pruned_zero(net, masks):
    params = dict(net.named_parameters())
    for n, m in masks.items():
        assert torch.count_nonzero(params[n].detach()[~m]) == 0, n


def test_rigl_in_fit_moves_the_masks_keeps_the_counts_and_leaves_the_callers_masks(tmp_path):
    train, val, test = make_data()
    net, masks = make_model()
    start = {n: m.clone() for n, m in masks.items()}
    res = fit(net, masks, train, val, test, out_dir=tmp_path, **RIGL, **KW)
    assert all(torch.equal(masks[n], start[n]) for n in masks)  # the caller's, untouched
    assert res.masks != masks and counts(res.masks) == counts(masks)
    assert_pruned_zero(net, res.masks)
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert sf.Masks(ckpt["masks"]["masks"]) == res.masks
    assert sf.Masks(ckpt["dst"]["initial_masks"]["masks"]) == masks
    assert ckpt["config"]["dst"] == {"method": "rigl", "total_steps": 20, "update_every": 3, "end": 0.8,
                                     "drop_fraction": 0.5, "scope": "layer"}
    assert ckpt["dst"]["state"]["step"] == 20
    assert [r["density"] for r in res.history] == [pytest.approx(masks.density())] * 4


def test_the_dst_steps_once_right_after_every_optimizer_step(monkeypatch):
    from torch.optim.optimizer import register_optimizer_step_post_hook

    events = []
    real = sf.dst.RigL.step
    monkeypatch.setattr(sf.dst.RigL, "step", lambda self: events.append("dst") or real(self))
    handle = register_optimizer_step_post_hook(lambda opt, args, kwargs: events.append("opt"))
    try:
        train, _, _ = make_data()
        net, masks = make_model()
        fit(net, masks, train, **RIGL, **{**KW, "epochs": 2})
    finally:
        handle.remove()
    assert events == ["opt", "dst"] * 10


@pytest.mark.parametrize("optimizer, keys", [("sgd", ["momentum_buffer"]),
                                            ("adamw", ["exp_avg", "exp_avg_sq", "element_step"])])
def test_the_optimizer_state_follows_the_masks(tmp_path, optimizer, keys):
    train, _, _ = make_data()
    net, masks = make_model()
    res = fit(net, masks, train, out_dir=tmp_path, optimizer=optimizer, **RIGL, **{**KW, "epochs": 2})
    params = dict(net.named_parameters())
    opt = load_checkpoint(tmp_path / "checkpoint.pt")["optimizer"]["state"]
    index = {n: i for i, n in enumerate(params)}
    for n, m in res.masks.items():
        for key in keys:  # adamw: a step count per weight, zero where inactive
            assert torch.count_nonzero(opt[index[n]][key][~m]) == 0, (n, key)
        if optimizer == "adamw":
            assert opt[index[n]]["element_step"][m].min() < 10  # grown weights count from 0


@pytest.mark.parametrize("dst, options", [
    ("set", {"update_every": 2, "end": 1.0}),
    ("gmp", {"update_every": 2, "end": 0.5, "sparsity": 0.9}),
])
def test_set_and_gmp_in_fit(tmp_path, dst, options):
    train, _, _ = make_data()
    net, masks = make_model()
    res = fit(net, None if dst == "gmp" else masks, train, out_dir=tmp_path, dst=dst, dst_options=options, seed=3,
              **KW)
    assert_pruned_zero(net, res.masks)
    config = load_checkpoint(tmp_path / "checkpoint.pt")["config"]["dst"]
    if dst == "set":
        assert counts(res.masks) == counts(masks) and res.masks != masks
        assert config["seed"] == 3  # fit's seed
    else:
        # from every prunable weight to exactly the target count
        assert res.history[0]["density"] < 1 and res.masks.num_kept() == round(res.masks.numel() * 0.1)
        assert list(res.masks) == sf.prunable_names(net)
        assert config["scope"] == "global" and config["initial_sparsity"] is None


def _crash_after_epoch(epoch):
    def callback(row):
        if row["epoch"] == epoch:
            raise KeyboardInterrupt(f"killed after epoch {epoch}")
    return callback


def _crash_at_step(net, step):
    """Kill the run in the forward pass of training step ``step`` (mid-epoch, after updates)."""
    seen = [0]

    def hook(module, args):
        if module.training:
            seen[0] += 1
            if seen[0] == step:
                raise KeyboardInterrupt(f"killed in step {step}")
    return net.register_forward_pre_hook(hook)


@pytest.mark.parametrize("optimizer, cut", [("sgd", "epoch 2"), ("sgd", "step 13"), ("adamw", "step 7"),
                                            ("sgd", "stopped after 1")])
def test_a_killed_rigl_run_resumed_ends_bit_identical(tmp_path, optimizer, cut):
    train, val, test = make_data()
    net, masks = make_model()
    fit(net, masks, train, val, test, out_dir=tmp_path / "full", optimizer=optimizer, **RIGL, **KW)

    train, val, test = make_data()
    net2, _ = make_model()
    kw = dict(out_dir=tmp_path / "cut", optimizer=optimizer, **RIGL, **KW)
    if cut == "stopped after 1":
        fit(net2, masks, train, val, test, stop_after_epoch=1, **kw)
    else:
        handle = _crash_at_step(net2, int(cut.split()[1])) if cut.startswith("step") else None
        with pytest.raises(KeyboardInterrupt):
            fit(net2, masks, train, val, test, callback=_crash_after_epoch(2) if handle is None else None, **kw)
        if handle is not None:
            handle.remove()
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["epoch"] < 4

    # a new process: other global random states, fresh objects, other weights
    torch.manual_seed(1234)
    np.random.seed(1234)
    random.seed(1234)
    train, val, test = make_data()
    net3, _ = make_model(seed=5)
    res = fit(net3, None, train, val, test, resume=True, **kw)
    full, cut_ = (load_checkpoint(tmp_path / run / "checkpoint.pt") for run in ("full", "cut"))
    assert full["dst"]["state"]["step"] == 20
    assert_same_run(full, cut_)
    assert res.masks == sf.Masks(full["masks"]["masks"])
    for (n, a), b in zip(net.state_dict().items(), net3.state_dict().values()):
        assert torch.equal(a, b), n


@pytest.mark.parametrize("options", [
    {"regrow_fraction": 0.2},
    {"initial_sparsity": 0.5},
])
def test_gmp_resumed_mid_schedule_is_bit_identical(tmp_path, options):
    kw = dict(dst="gmp", dst_options={"update_every": 2, "end": 0.9, "sparsity": 0.95, **options}, **KW)
    fit(make_model()[0], None, make_data()[0], out_dir=tmp_path / "full", **kw)
    fit(make_model()[0], None, make_data()[0], out_dir=tmp_path / "cut", stop_after_epoch=2, **kw)
    fit(make_model(seed=3)[0], None, make_data()[0], out_dir=tmp_path / "cut", resume=True, **kw)
    assert_same_run(load_checkpoint(tmp_path / "full" / "checkpoint.pt"),
                    load_checkpoint(tmp_path / "cut" / "checkpoint.pt"))


@pytest.fixture
def stopped(tmp_path):
    train, _, _ = make_data()
    net, masks = make_model()
    fit(net, masks, train, out_dir=tmp_path / "run", stop_after_epoch=2, **RIGL, **KW)
    return tmp_path / "run", train, masks


@pytest.mark.parametrize("change, words", [
    (dict(dst_options={"update_every": 4, "end": 0.8, "drop_fraction": 0.5}), ["update_every", "there"]),
    (dict(dst="set", dst_options={"update_every": 3, "end": 0.8, "drop_fraction": 0.5}), ["'set'", "'rigl'"]),
    (dict(dst=None, dst_options=None), ["dst=", "None now"]),
    (dict(epochs=6), ["written for 4 epochs", "dst='rigl'", "epochs=4"]),
])
def test_a_resume_with_other_dst_settings_is_refused(stopped, change, words):
    out, train, _ = stopped
    before = (out / "checkpoint.pt").read_bytes()
    net, _ = make_model()
    w0 = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(CheckpointError) as e:
        fit(net, None, train, out_dir=out, resume=True, **{**RIGL, **KW, **change})
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg
    assert (out / "checkpoint.pt").read_bytes() == before
    assert all(torch.equal(v, w0[k]) for k, v in net.state_dict().items())


def test_a_resume_takes_the_starting_masks_and_refuses_others(stopped, tmp_path):
    out, _, masks = stopped
    shutil.copytree(out, tmp_path / "copy")
    # given the masks it started from, it goes on with the checkpoint's, as without masks
    res = fit(make_model()[0], masks, make_data()[0], out_dir=out, resume=True, **RIGL, **KW)
    fit(make_model()[0], None, make_data()[0], out_dir=tmp_path / "copy", resume=True, **RIGL, **KW)
    assert_same_run(load_checkpoint(out / "checkpoint.pt"), load_checkpoint(tmp_path / "copy" / "checkpoint.pt"))
    assert res.masks != masks
    _, other = make_model(seed=9)
    with pytest.raises(CheckpointError, match="differ from those the run in .* started from"):
        fit(make_model()[0], other, make_data()[0], out_dir=out, resume=True, **RIGL, **KW)


@pytest.mark.parametrize("kw, error, words", [
    (dict(dst="rigl2"), ValueError, ["dst must be None or one of 'rigl', 'set', 'gmp'", "'rigl2'"]),
    (dict(dst_options={"end": 0.5}), ValueError, ["dst_options given without dst"]),
    (dict(dst="rigl", dst_options={"ends": 0.5}), ValueError, ["dst_options['ends']", "drop_fraction"]),
    (dict(dst="rigl", dst_options={"total_steps": 5}), ValueError, ["total_steps", "epochs x batches"]),
    (dict(dst="rigl", dst_options=[("end", 0.5)]), TypeError, ["dst_options must be a dict"]),
    (dict(dst="gmp", dst_options={}), ValueError, ["dst='gmp' needs dst_options['sparsity']"]),
    (dict(dst="rigl", dst_options={"update_every": 0}), ValueError, ["update_every", ">= 1"]),
    (dict(dst="rigl", dst_options={"end": 0.0}), ValueError, ["end must be in (0, 1]"]),
    (dict(dst="rigl", dst_options={"drop_fraction": 1.5}), ValueError, ["drop_fraction must be in [0, 1]"]),
    (dict(dst="rigl", dst_options={"scope": "row"}), ValueError, ["scope must be one of"]),
    (dict(dst="gmp", dst_options={"sparsity": 0.9, "start": 0.8, "end": 0.5}), ValueError, ["start must be in"]),
    (dict(dst="gmp", dst_options={"sparsity": 0.5, "update_every": 2}, reinit=3), ValueError,
     ["keep", "the target keeps"]),
    (dict(dst="rigl", masks=None), ValueError, ["dst='rigl' needs the sparse masks"]),
])
def test_bad_dst_arguments_are_refused_before_any_work(tmp_path, kw, error, words):
    train, _, _ = make_data()
    net, masks = make_model(sparsity=0.8)
    w0 = {k: v.clone() for k, v in net.state_dict().items()}
    masks = kw.pop("masks", masks)
    with pytest.raises(error) as e:
        fit(net, masks, train, out_dir=tmp_path / "run", **kw, **KW)
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg
    assert not (tmp_path / "run").exists()
    assert all(torch.equal(v, w0[k]) for k, v in net.state_dict().items())  # not even the pruned zeroed


def test_dst_needs_data_with_a_length():
    net, masks = make_model()
    batches = (b for b in [(torch.randn(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))])
    with pytest.raises(ValueError, match="needs train_data with a length"):
        fit(net, masks, batches, dst="rigl", **KW)


@pytest.mark.parametrize("field, value, words", [
    ("config.dst.method", "rigl2", ["config.dst.method", "'rigl2'"]),
    ("config.dst.total_steps", 0, ["config.dst.total_steps", "an integer >= 1"]),
    ("dst", None, ["dst"]),
    ("dst.state", [1], ["dst.state"]),
    ("dst.initial_masks", {"masks": {"w": torch.zeros(2)}}, ["dst.initial_masks"]),
])
def test_a_tampered_dst_checkpoint_is_refused_naming_the_field(stopped, field, value, words):
    out, _, _ = stopped
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    *path, last = field.split(".")
    d = ckpt
    for k in path:
        d = d[k]
    d[last] = value
    bad = out / "bad.pt"
    torch.save(ckpt, bad)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(bad)
    assert all(w in str(e.value) for w in words), str(e.value)
