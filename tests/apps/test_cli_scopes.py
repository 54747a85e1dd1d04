"""--scope, --distribution and --nm of `sparseforce prune` / `train` (issue 21)."""
import pytest
import torch

import sparseforce as sf
from cli_runner import assert_usage_error, sparseforce
from sparseforce.cli import build_parser, main
from sparseforce.train import load_checkpoint


def fresh_mlp():
    from sparseforce.cli.checks import build_model
    torch.manual_seed(0)
    return build_model("mlp", "digits", 10)


def test_the_flags_parse():
    args = build_parser().parse_args(["prune", "--scope", "layer", "--distribution", "erk"])
    assert (args.scope, args.distribution, args.nm, args.sparsity) == ("layer", "erk", None, None)
    assert build_parser().parse_args(["prune", "--nm", "02:4"]).nm == "2:4"
    assert build_parser().parse_args(["train", "--out", "r", "--nm", "1:32"]).nm == "1:32"


def test_the_cli_spells_the_scopes_as_the_library():
    from sparseforce import cli, pruning
    assert cli.options.SCOPE_NAMES == pruning.SCOPES
    assert set(pruning.LAYER_DISTRIBUTIONS) < set(cli.DISTRIBUTION_NAMES)


@pytest.mark.parametrize("extra, words", [
    (["--method", "random", "--scope", "layer"], ["--scope does not apply to --method random", "snip"]),
    (["--method", "random", "--nm", "2:4"], ["--nm does not apply to --method random"]),
    (["--method", "snip", "--nm", "3:2"], ["--nm", "1 <= N <= M <= 32", "'3:2'"]),
    (["--method", "snip", "--nm", "2x4"], ["--nm", "must be N:M"]),
    (["--method", "snip", "--nm", "0:4"], ["--nm", "1 <= N"]),
    (["--method", "snip", "--nm", "2:4", "--sparsity", "0.9"], ["--sparsity 0.9 disagrees with --nm 2:4"]),
    (["--method", "snip", "--nm", "2:4", "--scope", "layer"], ["--nm 2:4", "leave --scope and --distribution out"]),
    (["--method", "magnitude", "--nm", "2:4", "--distribution", "erk"], ["--nm 2:4", "--distribution"]),
    (["--method", "snip", "--distribution", "erk"], ["--distribution", "--method snip", "--scope layer"]),
    (["--method", "grasp", "--scope", "layer", "--distribution", "global"], ["--distribution global", "uniform"]),
    (["--method", "snip", "--scope", "foo"], ["--scope", "'foo'"]),
])
def test_bad_scope_flags_are_one_line_usage_errors(tmp_path, extra, words):
    out = tmp_path / "m.pt"
    proc = sparseforce("prune", "--dataset", "digits", "--out", out, *extra)
    assert_usage_error(proc, "prune", *words)
    assert not out.exists()


def test_prune_nm_end_to_end(tmp_path, capsys):
    out = tmp_path / "m.pt"
    assert main(["prune", "--dataset", "digits", "--model", "mlp", "--method", "magnitude", "--nm", "2:4",
                 "--backend", "reference", "--out", str(out)]) == 0
    assert "sparsity 0.5 (2:4)" in capsys.readouterr().out
    masks = sf.Masks.load(out)
    assert masks == sf.magnitude(fresh_mlp(), nm=(2, 4), backend="reference")
    for m in masks.values():
        assert (m.reshape(m.shape[0], -1, 4).sum(-1) == 2).all()


def test_prune_layer_scope_end_to_end(tmp_path, capsys):
    out = tmp_path / "m.pt"
    assert main(["prune", "--dataset", "digits", "--model", "mlp", "--method", "snip", "--scope", "layer",
                 "--distribution", "erk", "--sparsity", "0.8", "--backend", "reference", "--out", str(out)]) == 0
    from sparseforce.pruning import layer_counts
    shapes = [(128, 64), (10, 128)]
    assert [int(m.sum()) for m in sf.Masks.load(out).values()] == layer_counts(shapes, round(9472 * 0.2), "erk")


@pytest.mark.parametrize("command", ["prune", "train"])
def test_a_layer_the_nm_pattern_does_not_fit_is_named_before_any_work(tmp_path, command):
    out = tmp_path / ("m.pt" if command == "prune" else "run")
    proc = sparseforce(command, "--dataset", "digits", "--method", "snip", "--nm", "2:4", "--out", out)
    assert_usage_error(proc, command, "--nm 2:4", "layer 'features.0.weight' of --model digits_cnn has rows of 9")
    assert not out.exists()


def test_the_backend_check_asks_for_the_segmented_op(monkeypatch, tmp_path, capsys):
    from sparseforce.cli import checks
    asked = []
    monkeypatch.setattr(checks, "check_backend", lambda backend, device, ops: asked.append(tuple(ops)))
    for extra in (["--sparsity", "0.5"], ["--sparsity", "0.5", "--scope", "layer"], ["--nm", "1:2"]):
        assert main(["prune", "--dataset", "digits", "--model", "mlp", "--method", "magnitude", "--backend",
                     "reference", "--out", str(tmp_path / "m.pt"), *extra]) == 0
    assert asked == [("topk_masks",), ("segmented_topk_masks",), ("segmented_topk_masks",)]


def test_train_records_scope_and_nm_and_refuses_a_conflicting_resume(tmp_path, capsys):
    run = tmp_path / "run"
    base = ["train", "--dataset", "digits", "--model", "mlp", "--method", "magnitude", "--epochs", "2",
            "--stop-after-epoch", "1", "--batch-size", "256", "--backend", "reference", "--out", str(run)]
    assert main([*base, "--nm", "2:4"]) == 0
    meta = load_checkpoint(run / "checkpoint.pt")["meta"]
    assert (meta["nm"], meta["scope"], meta["sparsity"], meta["distribution"]) == ("2:4", "global", 0.5, None)
    assert sf.Masks.load(run / "masks.pt") == sf.magnitude(fresh_mlp(), nm=(2, 4), backend="reference")
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--nm", "1:4"]) == 2
    assert "--nm: 2:4 in the checkpoint, 1:4 given" in capsys.readouterr().err
    assert main(["train", "--out", str(run), "--resume", "--scope", "layer"]) == 2
    assert "--scope: global in the checkpoint, layer given" in capsys.readouterr().err
    assert main(["train", "--out", str(run), "--resume", "--nm", "2:4"]) == 0


def test_train_layer_scope_is_stored_resolved(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--model", "mlp", "--method", "magnitude", "--scope", "layer",
                 "--sparsity", "0.9", "--epochs", "1", "--batch-size", "256", "--backend", "reference",
                 "--out", str(run)]) == 0
    meta = load_checkpoint(run / "checkpoint.pt")["meta"]
    assert (meta["scope"], meta["distribution"], meta["nm"]) == ("layer", "uniform", None)
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--distribution", "erk"]) == 2
    assert "--distribution: uniform in the checkpoint, erk given" in capsys.readouterr().err


def test_train_with_masks_refuses_nm(tmp_path, capsys):
    masks_file = tmp_path / "m.pt"
    assert main(["prune", "--dataset", "digits", "--method", "random", "--out", str(masks_file)]) == 0
    capsys.readouterr()
    assert main(["train", "--dataset", "digits", "--masks", str(masks_file), "--nm", "2:4", "--epochs", "1",
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "--masks" in err and "--nm 2:4" in err and "--sparsity" not in err


def test_cli_nm_limit_is_the_ops():
    from sparseforce import ops
    from sparseforce.cli import options
    assert options.NM_MAX_M == ops.MAX_NM_M
