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


ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=ROOT, timeout=600):
    """The real command in a subprocess, importing this checkout's sparseforce whatever the cwd."""
    import os
    import subprocess
    import sys
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "sparseforce", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def test_bench_help_says_how_long_and_where():
    out = " ".join(run_cli("bench", "--help").stdout.split())
    assert "The default run takes about 4 minutes on a 2-core CPU, --quick about 2 minutes" in out
    assert "sparseforce-bench" in out and "relative to the current directory" in out


def test_bench_only_matching_nothing_is_one_line_naming_the_cases(tmp_path):
    proc = run_cli("bench", "--device", "cpu", "--only", "resnet51", "--out", str(tmp_path / "r"))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("sparseforce bench: error: --only 'resnet51' "
                                                                    "matches no case; the cases: force-select")
    assert "train-step resnet50 b=8" in proc.stderr and "force-breakdown resnet50 b=8 T=3" in proc.stderr
    assert not (tmp_path / "r").exists()
    for bad, word in (("--scale=0", "--scale"), ("--min-time=-1", "--min-time")):
        proc = run_cli("bench", "--device", "cpu", bad)
        assert proc.returncode == 2 and proc.stderr.startswith(f"sparseforce bench: error: {word} must be")


def test_bench_writes_to_a_folder_in_the_current_directory(tmp_path):
    proc = run_cli("bench", "--device", "cpu", "--only", "topk", "--scale", "64", "--min-time", "0", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "topk resnet50/64" in proc.stdout and "finished in" in proc.stdout
    assert [p.suffix for p in sorted((tmp_path / "sparseforce-bench").iterdir())] == [".json", ".png"]
