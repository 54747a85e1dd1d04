"""`sparseforce train --dst rigl|set|gmp` (issue 22): the options, their one-line errors before any
work, what the run folder records, a conflicting --resume refused, and a run killed mid-epoch
that --resume ends bit-identical to an uninterrupted one."""
import os
import signal
import subprocess
import sys

import pytest

import sparseforce as sf
from cli_runner import ROOT, assert_usage_error, sparseforce
from training_runs import assert_same_run
from sparseforce.cli import build_parser, main
from sparseforce.train import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

# digits: 1,293 training images, 11 batches of 128 per epoch.
BASE = ["train", "--dataset", "digits", "--model", "mlp", "--batch-size", "128", "--backend", "reference",
        "--no-progress"]


def test_the_cli_spells_the_methods_and_options_as_the_library():
    from sparseforce.cli import dynamic as cli_dst
    from sparseforce.train import dynamic, resume
    assert cli_dst.DST_NAMES == dynamic.DST_METHODS
    assert cli_dst.DST_OPTIONS == resume.DST_OPTIONS
    taken = {o for m in dynamic.DST_METHODS for o in dynamic.option_defaults(m)}
    assert {cli_dst.option_of(d) for d in cli_dst.DST_FLAGS} <= taken


def test_the_flags_parse():
    args = build_parser().parse_args(["train", "--out", "r", "--dst", "rigl", "--dst-update-every", "50",
                                      "--dst-end", "1", "--dst-drop-fraction", "0", "--dst-scope", "global"])
    assert (args.dst, args.dst_update_every, args.dst_end, args.dst_drop_fraction, args.dst_scope) == \
        ("rigl", 50, 1.0, 0.0, "global")


@pytest.mark.parametrize("extra, words", [
    (["--dst", "rigl2"], ["--dst", "'rigl2'"]),
    (["--dst", "rigl", "--dst-update-every", "0"], ["--dst-update-every", "an integer >= 1", "'0'"]),
    (["--dst", "rigl", "--dst-end", "0"], ["--dst-end", "(0, 1]", "'0'"]),
    (["--dst", "rigl", "--dst-end", "1.5"], ["--dst-end", "(0, 1]"]),
    (["--dst", "rigl", "--dst-drop-fraction", "-0.1"], ["--dst-drop-fraction", "[0, 1]"]),
    (["--dst", "rigl", "--dst-scope", "row"], ["--dst-scope", "'row'"]),
    (["--dst-end", "0.5"], ["--dst-end applies to dynamic sparse training only", "add --dst"]),
    (["--dst", "rigl", "--dst-start", "0.1"], ["--dst-start does not apply to --dst rigl", "only gmp"]),
    (["--dst", "gmp", "--dst-drop-fraction", "0.1"], ["--dst-drop-fraction does not apply to --dst gmp"]),
    (["--dst", "set", "--method", "magnitude", "--nm", "2:4"], ["--nm 2:4", "--dst set", "leave --nm out"]),
    (["--dst", "gmp", "--method", "snip"], ["--dst gmp --method snip", "--dst-initial-sparsity"]),
    (["--dst", "gmp", "--dst-initial-sparsity", "0.5"], ["--dst-initial-sparsity", "add --method"]),
    (["--dst", "gmp", "--method", "snip", "--dst-initial-sparsity", "0.9", "--sparsity", "0.8"],
     ["--dst-initial-sparsity 0.9 must be below --sparsity 0.8"]),
    (["--dst", "rigl", "--dst-initial-sparsity", "0.5"], ["--dst-initial-sparsity applies to --dst gmp only"]),
    (["--dst", "gmp", "--iterations", "3"], ["--dst gmp without --method", "--iterations 3 does not apply"]),
    (["--dst", "gmp", "--ablation", "shuffle"], ["--dst gmp without --method", "--ablation shuffle"]),
    (["--dst", "gmp", "--dst-distribution", "erk"], ["--dst-distribution", "--dst-scope layer"]),
    # what only the dst object knows, before any pruning
    (["--dst", "gmp", "--dst-start", "0.8", "--dst-end", "0.5"], ["--dst gmp", "start must be in [0, end)"]),
    (["--dst", "gmp", "--dst-update-every", "1000", "--epochs", "2"], ["--dst gmp", "no step", "update_every=1000"]),
])
def test_bad_dst_flags_are_one_line_usage_errors_before_any_work(tmp_path, extra, words):
    out = tmp_path / "run"
    proc = sparseforce(*BASE, "--out", out, *extra)
    assert_usage_error(proc, "train", *words)
    assert not out.exists()


def test_rigl_is_recorded_resolved_and_a_conflicting_resume_refused(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*BASE, "--method", "magnitude", "--sparsity", "0.9", "--epochs", "2", "--stop-after-epoch", "1",
                 "--dst", "rigl", "--dst-update-every", "4", "--out", str(run)]) == 0
    ckpt = load_checkpoint(run / "checkpoint.pt")
    meta = ckpt["meta"]
    assert (meta["dst"], meta["dst_update_every"], meta["dst_end"], meta["dst_drop_fraction"], meta["dst_scope"],
            meta["dst_start"], meta["dst_initial_sparsity"]) == ("rigl", 4, 0.75, 0.3, "layer", None, None)
    assert ckpt["config"]["dst"] == {"method": "rigl", "total_steps": 22, "update_every": 4, "end": 0.75,
                                     "drop_fraction": 0.3, "scope": "layer"}
    start, final = sf.Masks.load(run / "masks.pt"), sf.Masks.load(run / "final_masks.pt")
    assert final != start and [int(m.sum()) for m in final.values()] == [int(m.sum()) for m in start.values()]
    assert final == sf.Masks(ckpt["masks"]["masks"])
    capsys.readouterr()
    for flags, message in [
            (["--dst", "set"], "--dst: rigl in the checkpoint, set given"),
            (["--dst-update-every", "5"], "--dst-update-every: 4 in the checkpoint, 5 given"),
            (["--dst-end", "0.5"], "--dst-end: 0.75 in the checkpoint, 0.5 given"),
            (["--dst-drop-fraction", "0.1"], "--dst-drop-fraction: 0.3 in the checkpoint, 0.1 given"),
            (["--dst-scope", "global"], "--dst-scope: layer in the checkpoint, global given"),
            (["--dst-start", "0.1"], "--dst-start: not set in the checkpoint, 0.1 given"),
            (["--masks", str(run / "final_masks.pt")], "holds other masks than the checkpoint's")]:
        assert main(["train", "--out", str(run), "--resume", *flags]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    # the defaults spelled out agree, and so do the masks it started from
    assert main(["train", "--out", str(run), "--resume", "--dst", "rigl", "--dst-end", "0.75", "--dst-scope", "layer",
                 "--masks", str(run / "masks.pt")]) == 0


def test_a_run_without_dst_refuses_dst_on_resume(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*BASE, "--method", "magnitude", "--sparsity", "0.9", "--epochs", "2", "--stop-after-epoch", "1",
                 "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--dst", "rigl"]) == 2
    assert "--dst: not set in the checkpoint, rigl given" in capsys.readouterr().err


def test_gmp_starts_dense_and_ends_at_the_target(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*BASE, "--epochs", "2", "--dst", "gmp", "--sparsity", "0.9", "--dst-update-every", "2",
                 "--out", str(run)]) == 0
    assert "gmp starts from every prunable weight kept" in capsys.readouterr().out
    start, final = sf.Masks.load(run / "masks.pt"), sf.Masks.load(run / "final_masks.pt")
    assert start.density() == 1 and final.num_kept() == round(0.1 * final.numel())
    meta = load_checkpoint(run / "checkpoint.pt")["meta"]
    assert (meta["method"], meta["sparsity"], meta["dst_scope"], meta["dst_distribution"]) == (None, 0.9, "global",
                                                                                             "uniform")
    assert main(["train", "--out", str(run), "--resume", "--method", "force"]) == 2
    assert "--method: not set in the checkpoint, force given" in capsys.readouterr().err


def test_gmp_from_a_pruning_method(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*BASE, "--epochs", "2", "--dst", "gmp", "--method", "magnitude", "--dst-initial-sparsity", "0.5",
                 "--sparsity", "0.9", "--dst-update-every", "2", "--dst-scope", "layer", "--out", str(run)]) == 0
    assert "magnitude on mlp / digits, sparsity 0.5" in capsys.readouterr().out
    start, final = sf.Masks.load(run / "masks.pt"), sf.Masks.load(run / "final_masks.pt")
    assert start.num_kept() == round(0.5 * start.numel()) and final.num_kept() == round(0.1 * final.numel())
    meta = load_checkpoint(run / "checkpoint.pt")["meta"]
    assert (meta["sparsity"], meta["dst_initial_sparsity"], meta["dst_scope"]) == (0.9, 0.5, "layer")


# `sparseforce train`, killed (SIGKILL) in the middle of epoch 2, after a mask update of it.
KILLED_MID_EPOCH = """
import os, signal, sys
import sparseforce.dst
from sparseforce.cli import main
real, calls = sparseforce.dst.RigL.step, [0]
def step(self):
    calls[0] += 1
    if calls[0] == 17:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self)
sparseforce.dst.RigL.step = step
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_a_run_killed_mid_epoch_and_resumed_ends_bit_identical(tmp_path):
    run = [*BASE, "--method", "random", "--distribution", "erk", "--sparsity", "0.9", "--epochs", "3", "--seed", "2",
           "--optimizer", "adamw", "--dst", "rigl", "--dst-update-every", "3", "--dst-end", "0.9"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main([*run, "--out", str(full)]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_EPOCH, *run, "--out", str(cut)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert load_checkpoint(cut / "checkpoint.pt")["epoch"] == 1
    resumed = sparseforce("train", "--out", cut, "--resume", env={"OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0 and "resumed" in resumed.stdout, resumed.stderr
    a, b = load_checkpoint(full / "checkpoint.pt"), load_checkpoint(cut / "checkpoint.pt")
    assert a["dst"]["state"]["step"] == 33
    assert sf.Masks(a["masks"]["masks"]) != sf.Masks(a["dst"]["initial_masks"]["masks"])
    assert_same_run(a, b)
    assert sf.Masks.load(full / "final_masks.pt") == sf.Masks.load(cut / "final_masks.pt")
    assert sf.Masks.load(full / "masks.pt") == sf.Masks.load(cut / "masks.pt")
