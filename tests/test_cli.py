"""The `sparseforce` command, end to end."""
import pickle

import numpy as np
import pytest

import sparseforce as sf
from sparseforce.cli import main


def test_help_is_useful(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "prune" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["prune", "--help"])
    out = capsys.readouterr().out
    for flag in ("--sparsity", "--method", "--data-dir", "--iterations", "--out", "force", "iter_snip"):
        assert flag in out


def test_prune_digits(tmp_path, capsys):
    out = tmp_path / "m.pt"
    assert main(["prune", "--dataset", "digits", "--method", "force", "--sparsity", "0.99", "--iterations", "4",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "features.0.weight" in text and "total" in text and " s\n" in text
    masks = sf.Masks.load(out)
    assert masks.num_kept() == round(masks.numel() * 0.01)


def write_cifar10(root):
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
                         b"labels": [int(v) for v in rng.integers(0, 10, 4)]}, f, protocol=2)


def test_prune_cifar10_from_the_standard_format(tmp_path, capsys):
    write_cifar10(tmp_path)
    out = tmp_path / "m.pt"
    assert main(["prune", "--model", "resnet50", "--dataset", "cifar10", "--data-dir", str(tmp_path),
                 "--method", "iter_snip", "--sparsity", "0.995", "--iterations", "2", "--batch-size", "6",
                 "--out", str(out)]) == 0
    assert "layer4.2.conv3.weight" in capsys.readouterr().out
    masks = sf.Masks.load(out)
    assert masks.numel() == 23_467_712 and masks.num_kept() == round(23_467_712 * 0.005)


def test_errors_are_reported_not_raised(tmp_path, capsys):
    assert main(["prune", "--dataset", "cifar10", "--out", str(tmp_path / "m.pt")]) == 2
    assert "data_dir" in capsys.readouterr().err
    assert main(["prune", "--dataset", "cifar10", "--data-dir", str(tmp_path / "nowhere")]) == 2
    assert "error" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()


def test_bench_command_writes_results(tmp_path, capsys):
    assert main(["bench", "--device", "cpu", "--only", "select", "--scale", "64", "--min-time", "0",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "force-select resnet50/64" in out and "itersnip-select" in out and "baseline" in out and "reference" in out
    assert len(list(tmp_path.glob("*.json"))) == 1 and len(list(tmp_path.glob("*.png"))) == 1


def test_bench_max_case_time_must_be_positive(capsys):
    assert main(["bench", "--device", "cpu", "--max-case-time", "0"]) == 2
    assert "--max-case-time must be a positive number" in capsys.readouterr().err
