"""Training: recipe, masked training, crash-safe checkpoints, bit-identical resume, `sparseforce train`."""
import json
import os
import pickle
import random
import shutil
import signal
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import sparseforce as sf
from sparseforce.cli import main
from sparseforce.train import RECIPES, CheckpointError, fit, load_checkpoint
from training_runs import Net, make_data


pytestmark = pytest.mark.usefixtures("one_thread")


def make_model(seed=0):
    torch.manual_seed(seed)
    net = Net()
    masks = sf.random(net, sparsity=0.8, seed=seed)
    return net, masks


KW = dict(epochs=4, batch_size=32, lr=0.05, progress=False)


def test_recipes_are_the_papers():
    c, t = RECIPES["cifar"], RECIPES["tinyimagenet"]
    assert (c.epochs, c.milestones, c.lr, c.gamma, c.momentum, c.weight_decay, c.batch_size, c.val_fraction,
            c.optimizer, c.augment) == (350, (150, 250), 0.1, 0.1, 0.9, 5e-4, 128, 0.1, "sgd", True)
    assert (t.epochs, t.milestones, t.lr, t.momentum, t.weight_decay, t.batch_size) == (300, (150, 225), 0.1, 0.9,
                                                                                         5e-4, 128)
    assert c.replace(epochs=35).milestones == (15, 25)
    assert c.replace(epochs=35, milestones=[5]).milestones == (5,)
    assert c.replace(epochs=None, lr=0.05) == c.replace(lr=0.05)


def test_fit_trains_masked_logs_and_follows_the_schedule(tmp_path):
    train, val, test = make_data()
    net, masks = make_model()
    res = fit(net, masks, train, val, test, out_dir=tmp_path, milestones=[1, 3], **KW)
    params = dict(net.named_parameters())
    for n, m in masks.items():
        assert torch.count_nonzero(params[n][~m]) == 0
        assert torch.count_nonzero(params[n][m]) == int(m.sum())
    assert [r["epoch"] for r in res.history] == [1, 2, 3, 4]
    assert [r["lr"] for r in res.history] == pytest.approx([0.05, 0.005, 0.005, 0.0005])
    assert res.final["train_loss"] < res.history[0]["train_loss"]
    assert 0 <= res.final["test_acc"] <= 1 and 0 <= res.final["val_acc"] <= 1
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert rows == res.history
    csv_lines = (tmp_path / "log.csv").read_text().splitlines()
    assert csv_lines[0].split(",")[:3] == ["epoch", "lr", "train_loss"] and len(csv_lines) == 5
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["final"] == res.final and result["best"] == res.best
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["epoch"] == 4 and sf.Masks(ckpt["masks"]["masks"]) == masks
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def _crash_after(epoch):
    class Crash(Exception):
        pass

    def callback(row):
        if row["epoch"] == epoch:
            raise Crash(f"simulated crash after epoch {epoch}")
    return Crash, callback


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_kill_and_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path, optimizer):
    train, val, test = make_data()
    net, masks = make_model()
    full = fit(net, masks, train, val, test, out_dir=tmp_path / "full", optimizer=optimizer, **KW)

    train, val, test = make_data()
    net2, _ = make_model()
    Crash, callback = _crash_after(2)
    with pytest.raises(Crash):
        fit(net2, masks, train, val, test, out_dir=tmp_path / "cut", optimizer=optimizer, callback=callback, **KW)

    # A new process would start from other RNG states, fresh objects and other weights.
    torch.manual_seed(1234)
    np.random.seed(1234)
    random.seed(1234)
    train, val, test = make_data()
    net3, _ = make_model(seed=5)
    resumed = fit(net3, None, train, val, test, out_dir=tmp_path / "cut", resume=True, optimizer=optimizer, **KW)

    for (n, a), b in zip(net.state_dict().items(), net3.state_dict().values()):
        assert torch.equal(a, b), n
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time_s"} for r in rows]  # noqa: E731
    assert strip(resumed.history) == strip(full.history)
    log = [json.loads(line) for line in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4]


def test_stop_after_epoch_then_resume(tmp_path):
    train, val, test = make_data()
    net, masks = make_model()
    part = fit(net, masks, train, None, None, out_dir=tmp_path, stop_after_epoch=1, **KW)
    assert [r["epoch"] for r in part.history] == [1]
    assert not (tmp_path / "result.json").exists()
    net2, _ = make_model(seed=3)
    done = fit(net2, None, train, None, None, out_dir=tmp_path, resume=True, **KW)
    assert [r["epoch"] for r in done.history] == [1, 2, 3, 4]
    # resuming a finished run trains nothing more and restores its weights
    net3, _ = make_model(seed=4)
    again = fit(net3, None, train, None, None, out_dir=tmp_path, resume="auto", **KW)
    assert again.history == done.history
    assert all(torch.equal(a, b) for a, b in zip(net2.state_dict().values(), net3.state_dict().values()))


def test_a_crash_while_writing_a_checkpoint_keeps_the_last_good_one(tmp_path, monkeypatch):
    train, val, test = make_data()
    net, masks = make_model()
    real_save = torch.save
    calls = []

    def failing_save(obj, f, *a, **kw):
        calls.append(1)
        if len(calls) == 2:  # the epoch-2 checkpoint: half written, then the disk "fills up"
            f.write(b"PK\x03\x04 partial checkpoint bytes")
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        fit(net, masks, train, val, test, out_dir=tmp_path, **KW)
    monkeypatch.setattr(torch, "save", real_save)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt", "log.csv", "log.jsonl"]  # no temp file left
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1
    net2, _ = make_model(seed=9)
    res = fit(net2, None, train, val, test, out_dir=tmp_path, resume=True, **KW)
    assert [r["epoch"] for r in res.history] == [1, 2, 3, 4]


def test_truncated_or_foreign_checkpoints_are_clear_errors_and_left_alone(tmp_path):
    train, val, test = make_data()
    net, masks = make_model()
    fit(net, masks, train, None, None, out_dir=tmp_path, **dict(KW, epochs=1))
    path = tmp_path / "checkpoint.pt"
    good = path.read_bytes()

    def attempt():
        fit(make_model(seed=2)[0], None, train, None, None, out_dir=tmp_path, resume=True, **KW)

    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt.*(truncated|corrupt)"):
        attempt()
    assert path.read_bytes() == good[: len(good) // 2]  # not overwritten by a fresh start

    masks.save(path)
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt.*not a sparseforce training checkpoint.*masks file"):
        attempt()
    torch.save(net.state_dict(), path)
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt.*not a sparseforce training checkpoint"):
        attempt()
    torch.save({"format": "sparseforce.checkpoint", "version": 99}, path)
    with pytest.raises(CheckpointError, match="newer"):
        attempt()
    path.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt"):
        attempt()
    path.unlink()
    with pytest.raises(FileNotFoundError, match=r"checkpoint\.pt"):
        attempt()

    # a run that was not asked to resume refuses to clobber an existing checkpoint
    path.write_bytes(good)
    with pytest.raises(FileExistsError, match="resume"):
        fit(make_model()[0], masks, train, None, None, out_dir=tmp_path, **KW)
    assert path.read_bytes() == good
    # and resuming with other settings is refused rather than silently mixing them
    with pytest.raises(CheckpointError, match="lr=0.05 there, 0.1 now"):
        fit(make_model()[0], None, train, None, None, out_dir=tmp_path, resume=True, **dict(KW, lr=0.1))


def flip_bit_in_tensor(path, offset=3):
    """Flip one bit in the stored bytes of the first tensor of a torch.save zip; headers and directory
    stay intact, so only the member's CRC can tell."""
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if "/data/" in i.filename and i.file_size > offset)
    data = bytearray(Path(path).read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26: info.header_offset + 30])
    data[info.header_offset + 30 + name_len + extra_len + offset] ^= 0x01
    Path(path).write_bytes(bytes(data))


@pytest.fixture(scope="module")
def one_epoch_checkpoint(tmp_path_factory):
    """The bytes of a checkpoint after epoch 1 of 2, and the data to resume it."""
    out = tmp_path_factory.mktemp("ckpt")
    torch.set_num_threads(1)
    train, _, _ = make_data()
    net, masks = make_model()
    fit(net, masks, train, out_dir=out, stop_after_epoch=1, **dict(KW, epochs=2))
    return (out / "checkpoint.pt").read_bytes(), train


def test_a_flipped_bit_in_a_checkpoint_is_refused_naming_the_file(tmp_path, one_epoch_checkpoint):
    good, train = one_epoch_checkpoint
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(good)
    flip_bit_in_tensor(path)
    torch.load(path, weights_only=True)  # torch alone loads the damage
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt.*corrupt.*checksum"):
        fit(make_model(seed=2)[0], None, train, out_dir=tmp_path, resume=True, **dict(KW, epochs=2))
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt.*corrupt.*checksum"):
        load_checkpoint(path)


def _tamper(ckpt, field, value):
    *parents, last = field.split(".")
    d = ckpt
    for k in parents:
        d = d[k]
    if value is KeyError:
        del d[last]
    else:
        d[last] = value


@pytest.mark.parametrize("field, value", [
    ("epoch", -5), ("epoch", 0), ("epoch", "1"), ("epoch", True), ("epoch", 3),
    ("history", "epoch 1"), ("history", []), ("history", [{"epoch": 2}]),
    ("rng.numpy", KeyError), ("rng.python", KeyError), ("rng.torch", KeyError), ("rng.cuda", KeyError),
    ("rng.torch", torch.zeros(3)), ("rng.numpy.keys", torch.zeros(5, dtype=torch.int64)),
    ("rng.numpy.pos", "0"), ("rng.numpy.pos", 700), ("rng.numpy.name", "PCG64"), ("rng.numpy.has_gauss", 2),
    ("rng.python", (3, (1, 2), None)), ("rng.python", "state"), ("rng.cuda", torch.zeros(3)),
    ("rng.cuda", [torch.zeros(3)]), ("rng", [1, 2]),
    ("config.lr", "0.05"), ("config.lr", -1.0), ("config.epochs", KeyError), ("config.milestones", 3),
    ("config.optimizer", "lion"), ("config.batch_size", 0), ("config.nesterov", 1),
    ("model", [1]), ("model.conv.weight", 3),
    ("optimizer", None), ("optimizer.param_groups", {"lr": 1}), ("scheduler", "step"),
    ("loader.generators", [torch.zeros(2)]), ("loader.generators", None), ("loader", KeyError),
    ("masks", {"masks": {"conv.weight": torch.ones(3)}}), ("masks", 7),
    ("meta", 5),
])
def test_a_tampered_checkpoint_is_refused_naming_the_file_and_the_field(tmp_path, one_epoch_checkpoint,
                                                                         field, value):
    good, train = one_epoch_checkpoint
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(good)
    ckpt = torch.load(path, weights_only=True)
    if field == "model.conv.weight":
        ckpt["model"]["conv.weight"] = value
    else:
        _tamper(ckpt, field, value)
    torch.save(ckpt, path)
    shown = {"model.conv.weight": "model['conv.weight']"}.get(field, field)
    with pytest.raises(CheckpointError) as ei:
        load_checkpoint(path)
    assert "checkpoint.pt" in str(ei.value) and shown in str(ei.value), str(ei.value)
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt"):
        fit(make_model(seed=2)[0], None, train, out_dir=tmp_path, resume=True, **dict(KW, epochs=2))


def test_an_optimizer_state_that_does_not_fit_is_refused_naming_it(tmp_path, one_epoch_checkpoint):
    good, train = one_epoch_checkpoint
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(good)
    ckpt = torch.load(path, weights_only=True)
    ckpt["optimizer"]["param_groups"].append(dict(ckpt["optimizer"]["param_groups"][0], params=[99]))
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt.*optimizer"):
        fit(make_model(seed=2)[0], None, train, out_dir=tmp_path, resume=True, **dict(KW, epochs=2))


def test_masks_that_do_not_fit_the_model_are_refused_with_the_name(tmp_path):
    train, _, _ = make_data()
    net, masks = make_model()
    bad = dict(masks)
    bad["fc.weight"] = torch.ones(10, 129, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"'fc\.weight'.*\(10, 129\)"):
        fit(net, bad, train, **KW)
    with pytest.raises(ValueError, match=r"'head\.weight'"):
        fit(net, {**masks, "head.weight": torch.ones(3, dtype=torch.bool)}, train, **KW)
    # another set of masks than the checkpoint's is refused on resume
    fit(net, masks, train, out_dir=tmp_path, **dict(KW, epochs=1))
    other = sf.random(net, sparsity=0.5, seed=1)
    with pytest.raises(CheckpointError, match="differ"):
        fit(net, other, train, out_dir=tmp_path, resume=True, **KW)


# --------------------------------------------------------------------------------------------
# sparseforce train, on the standard CIFAR-10 on-disk format
# --------------------------------------------------------------------------------------------

def write_cifar10(root, per_batch=8):
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                         b"labels": [int(v) for v in rng.integers(0, 10, per_batch)]}, f, protocol=2)


def test_cli_train_prunes_trains_and_resumes_a_cifar_model(tmp_path, capsys):
    write_cifar10(tmp_path)
    common = ["train", "--model", "lenet5", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--method", "force",
              "--sparsity", "0.9", "--iterations", "3", "--epochs", "3", "--batch-size", "8"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    # progress bars on in one run only: drawing them must not change the data order
    assert main(common + ["--out", str(full), "--progress"]) == 0
    out = capsys.readouterr().out
    assert "features.0.weight" in out and "epoch 3/3" in out and "test accuracy" in out

    assert main(common + ["--out", str(cut), "--stop-after-epoch", "1"]) == 0
    assert f"continue with `sparseforce train --out {cut} --resume`" in capsys.readouterr().out
    assert main(common + ["--out", str(cut)]) == 2  # would overwrite the run
    assert "--resume" in capsys.readouterr().err
    assert main(common + ["--out", str(cut), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "resumed" in out and "epoch 2/3" in out and "epoch 1/3" not in out

    a, b = load_checkpoint(full / "checkpoint.pt"), load_checkpoint(cut / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == 3
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    masks = sf.Masks.load(full / "masks.pt")
    assert masks.num_kept() == round(masks.numel() * 0.1)
    for n, m in masks.items():
        assert torch.count_nonzero(a["model"][n][~m]) == 0
    assert len((cut / "log.jsonl").read_text().splitlines()) == 3

    # training with given masks skips pruning
    given = [a for i, a in enumerate(common)  # without the pruning options, which --masks refuses
             if not {a, common[i - 1]} & {"--method", "--sparsity", "--iterations"}]
    assert main(given + ["--out", str(tmp_path / "given"), "--masks", str(full / "masks.pt"), "--epochs", "1"]) == 0
    assert "loaded masks" in capsys.readouterr().out
    assert sf.Masks.load(tmp_path / "given" / "masks.pt") == masks


def test_cli_train_errors_are_reported(tmp_path, capsys):
    write_cifar10(tmp_path)
    base = ["train", "--model", "lenet5", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--epochs", "1"]
    assert main(base + ["--out", str(tmp_path / "r"), "--resume"]) == 2
    assert "checkpoint.pt" in capsys.readouterr().err
    wrong = tmp_path / "wrong.pt"
    sf.Masks({"features.0.weight": torch.ones(6, 1, 5, 5, dtype=torch.bool)}).save(wrong)
    assert main(base + ["--out", str(tmp_path / "w"), "--masks", str(wrong)]) == 2
    err = capsys.readouterr().err
    assert "features.0.weight" in err and "(6, 3, 5, 5)" in err
    assert not (tmp_path / "w").exists()  # was: left behind, empty


# --------------------------------------------------------------------------------------------
# sparseforce train --resume, as a command in a fresh process
# --------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]


def run_sparseforce(*args, code=None):
    """`python -m sparseforce ARGS` (or `python -c CODE ARGS`) in a new process, started in the
    repository root so that this checkout is the one imported."""
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "sparseforce"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run(cmd + [str(a) for a in args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


# `sparseforce train`, killed (SIGKILL) half-way through writing the checkpoint of epoch 2.
KILLED_IN_EPOCH_2 = """
import os, signal, sys, torch
from sparseforce.cli import main
real = torch.save
def save(obj, f, *a, **kw):
    if isinstance(obj, dict) and obj.get("format") == "sparseforce.checkpoint" and obj["epoch"] == 2:
        f.write(b"PK\\x03\\x04 half a checkpoint")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real(obj, f, *a, **kw)
torch.save = save
sys.exit(main(sys.argv[1:]))
"""

# Every setting away from its default, so that a resume that forgot one would show.
RUN = ["--model", "lenet5", "--dataset", "cifar10", "--method", "iter_snip", "--sparsity", "0.8",
       "--iterations", "2", "--schedule", "linear", "--epochs", "3", "--milestones", "1", "--lr", "0.05",
       "--momentum", "0.8", "--weight-decay", "1e-4", "--batch-size", "8", "--seed", "3", "--no-progress"]
# RUN without its pruning options, which --masks refuses (it prunes nothing).
RUN_ON_MASKS = [a for i, a in enumerate(RUN) if not {a, RUN[i - 1]} & {"--method", "--sparsity", "--iterations",
                                                                    "--schedule"}]


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_cli_resume_needs_only_the_run_folder_and_ends_as_an_uninterrupted_run(tmp_path):
    write_cifar10(tmp_path)
    full, cut = tmp_path / "full", tmp_path / "cut"
    done = run_sparseforce("train", *RUN, "--data-dir", tmp_path, "--out", full)
    assert done.returncode == 0, done.stderr
    killed = run_sparseforce("train", *RUN, "--data-dir", tmp_path, "--out", cut, code=KILLED_IN_EPOCH_2)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert len([n for n in os.listdir(cut) if n.endswith(".tmp")]) == 1  # what the killed write left

    resumed = run_sparseforce("train", "--out", cut, "--resume")
    assert resumed.returncode == 0 and "Traceback" not in resumed.stderr, resumed.stderr
    assert "resumed" in resumed.stdout and "after epoch 1" in resumed.stdout and "epoch 3/3" in resumed.stdout
    a, b = load_checkpoint(full / "checkpoint.pt"), load_checkpoint(cut / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == 3 and a["config"] == b["config"]
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time_s"} for r in rows]  # noqa: E731
    assert strip(a["history"]) == strip(b["history"])
    assert not [n for n in os.listdir(cut) if n.endswith(".tmp")]


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A `sparseforce train` run with RUN's settings, stopped after epoch 1 of 3."""
    root = tmp_path_factory.mktemp("stopped")
    write_cifar10(root)
    out = root / "run"
    assert main(["train", *RUN, "--data-dir", str(root), "--out", str(out), "--stop-after-epoch", "1"]) == 0
    other = root / "other.pt"
    sf.Masks({"features.0.weight": torch.ones(6, 3, 5, 5, dtype=torch.bool)}).save(other)
    return root, out, other


@pytest.mark.parametrize("flags, message", [
    (["--dataset", "cifar100"], "--dataset: cifar10 in the checkpoint, cifar100 given"),
    (["--model", "resnet50"], "--model: lenet5 in the checkpoint, resnet50 given"),
    (["--method", "force"], "--method: iter_snip in the checkpoint, force given"),
    (["--sparsity", "0.9"], "--sparsity: 0.8 in the checkpoint, 0.9 given"),
    (["--iterations", "60"], "--iterations: 2 in the checkpoint, 60 given"),
    (["--schedule", "exp"], "--schedule: linear in the checkpoint, exp given"),
    (["--batches-per-iteration", "2"], "--batches-per-iteration: 1 in the checkpoint, 2 given"),
    (["--seed", "0"], "--seed: 3 in the checkpoint, 0 given"),
    (["--recipe", "tinyimagenet"], "--recipe: cifar in the checkpoint, tinyimagenet given"),
    (["--epochs", "350"], "--epochs: 3 in the checkpoint, 350 given"),
    (["--lr", "0.1"], "--lr: 0.05 in the checkpoint, 0.1 given"),
    (["--momentum", "0.9"], "--momentum: 0.8 in the checkpoint, 0.9 given"),
    (["--weight-decay", "5e-4"], "--weight-decay: 0.0001 in the checkpoint, 0.0005 given"),
    (["--milestones", "1", "2"], "--milestones: 1 in the checkpoint, 1 2 given"),
    (["--batch-size", "16"], "--batch-size: 8 in the checkpoint, 16 given"),
    (["--optimizer", "adamw"], "--optimizer: sgd in the checkpoint, adamw given"),
    (["--masks", "OTHER"], "--masks: OTHER holds other masks than the checkpoint's"),
    (["--overwrite"], "--resume and --overwrite"),
])
def test_cli_resume_refuses_a_flag_that_disagrees_with_the_checkpoint(stopped_run, capsys, flags, message):
    root, out, other = stopped_run
    before = (out / "checkpoint.pt").read_bytes()
    flags = [str(other) if f == "OTHER" else f for f in flags]
    assert main(["train", "--out", str(out), "--resume", *flags]) == 2
    err = capsys.readouterr().err
    assert message.replace("OTHER", str(other)) in err, err
    assert err.count("\n") == 1
    assert (out / "checkpoint.pt").read_bytes() == before


def test_cli_resume_accepts_flags_that_agree(stopped_run, tmp_path, capsys):
    root, out, _ = stopped_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    # the same settings, spelled as given or as resolved, and the run's own masks
    assert main(["train", "--out", str(run), "--resume", *RUN, "--dataset", "CIFAR-10", "--recipe", "cifar",
                 "--masks", str(out / "masks.pt"), "--stop-after-epoch", "2"]) == 0
    assert "epoch 2/3" in capsys.readouterr().out
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 2


def test_cli_resume_of_a_run_on_given_masks(stopped_run, tmp_path, capsys):
    root, out, _ = stopped_run
    run = tmp_path / "run"
    given = ["train", "--model", "lenet5", "--dataset", "cifar10", "--data-dir", str(root), "--epochs", "2",
             "--batch-size", "8", "--masks", str(out / "masks.pt"), "--out", str(run)]
    assert main(given + ["--stop-after-epoch", "1"]) == 0
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--method", "snip"]) == 2
    assert f"--method: the run in the checkpoint did not prune (it trained with --masks {out / 'masks.pt'}), " \
           "snip given" in capsys.readouterr().err
    (run / ".masks.pt.999999999.0123456789ab.tmp").write_bytes(b"left by a killed save")
    assert main(["train", "--out", str(run), "--resume"]) == 0
    assert "epoch 2/2" in capsys.readouterr().out
    assert sorted(os.listdir(run)) == ["checkpoint.pt", "log.csv", "log.jsonl", "masks.pt", "result.json"]


def test_cli_resume_refusal_is_one_line_naming_every_disagreeing_option(stopped_run):
    _, out, _ = stopped_run
    r = run_sparseforce("train", "--out", out, "--resume", "--epochs", "350", "--lr", "0.1", "--model", "lenet5")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert "--epochs: 3 in the checkpoint, 350 given" in line and "--lr: 0.05 in the checkpoint, 0.1 given" in line
    assert "--model:" not in line  # it agrees


def test_cli_resume_without_a_checkpoint_is_one_clear_line(tmp_path):
    for folder in (tmp_path, tmp_path / "missing"):
        r = run_sparseforce("train", "--out", folder, "--resume")
        assert r.returncode == 2 and "Traceback" not in r.stderr
        (line,) = r.stderr.strip().splitlines()
        assert str(folder / "checkpoint.pt") in line and "without --resume" in line


def test_cli_names_a_corrupted_checkpoint_or_masks_file(stopped_run, tmp_path):
    root, out, _ = stopped_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    flip_bit_in_tensor(run / "checkpoint.pt")
    r = run_sparseforce("train", "--out", run, "--resume")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert str(run / "checkpoint.pt") in line and "corrupt" in line

    masks = tmp_path / "m.pt"
    shutil.copy(out / "masks.pt", masks)
    flip_bit_in_tensor(masks)
    r = run_sparseforce("train", *RUN_ON_MASKS, "--data-dir", root, "--out", tmp_path / "new", "--masks", masks)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert str(masks) in line and "corrupt" in line
    assert not (tmp_path / "new").exists()  # was: left behind, empty
