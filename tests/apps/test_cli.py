"""The `sparseforce` command, end to end."""
import argparse
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import sparseforce as sf
from sparseforce.cli import build_parser, main

from cli_runner import assert_usage_error, sparseforce


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
    # was: "needs data_dir", the Python argument's name
    assert "--dataset cifar10 needs --data-dir" in capsys.readouterr().err
    assert main(["train", "--dataset", "cifar10", "--out", str(tmp_path / "run")]) == 2
    assert "--dataset cifar10 needs --data-dir" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    assert main(["prune", "--dataset", "cifar10", "--data-dir", str(tmp_path / "nowhere")]) == 2
    assert "error" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()


def test_train_defaults_to_the_embedded_digits_as_prune_does(tmp_path, capsys):
    # was: cifar10, which needs --data-dir, while prune took digits
    commands = _subparsers()
    assert "(default: digits)" in " ".join(commands["train"].format_help().split())
    assert commands["prune"].get_default("dataset") == "digits"
    assert main(["train", "--method", "random", "--epochs", "1", "--batch-size", "256", "--no-progress",
                 "--out", str(tmp_path / "run")]) == 0
    from sparseforce.train import load_checkpoint
    meta = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["meta"]
    assert meta["dataset"] == "digits" and meta["model"] == "digits_cnn"


def test_bench_command_writes_results(tmp_path, capsys):
    assert main(["bench", "--device", "cpu", "--only", "select", "--scale", "64", "--min-time", "0",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "force-select resnet50/64" in out and "itersnip-select" in out and "baseline" in out and "reference" in out
    assert len(list(tmp_path.glob("*.json"))) == 1 and len(list(tmp_path.glob("*.png"))) == 1


def test_bench_max_case_time_must_be_positive(capsys):
    assert main(["bench", "--device", "cpu", "--max-case-time", "0"]) == 2
    assert "--max-case-time must be a positive number" in capsys.readouterr().err


ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


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
    from sparseforce.durations import DURATIONS, took
    assert f"The default run takes {took('sparseforce bench')}, --quick {DURATIONS['sparseforce bench --quick']}" in out
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


# --------------------------------------------------------------------------------------------
# The real command in a subprocess: usage errors are one line, exit status 2, no traceback, and
# are found before any work (nothing printed on stdout, nothing written).
# --------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
NO_CUDA = {"CUDA_VISIBLE_DEVICES": ""}  # torch.cuda.is_available() is False even on a GPU machine


def _bad_arguments(tmp):
    """(command, arguments, words the one-line error must contain, environment)."""
    a_file = tmp / "a_file"
    missing = tmp / "missing"
    prune = ["prune", "--dataset", "digits", "--out", tmp / "m.pt"]
    train = ["train", "--dataset", "digits", "--method", "random", "--epochs", "1", "--out", tmp / "run"]
    train_on_masks = ["train", "--dataset", "digits", "--epochs", "1", "--out", tmp / "run"]
    demo = ["demo", "--quick", "--jobs", "1", "--out", tmp / "demo"]
    bench = ["bench", "--device", "cpu", "--only", "select", "--scale", "64", "--min-time", "0", "--out", tmp / "b"]
    ddp = ["ddp", "--device", "cpu", "--out", tmp / "ddp"]
    cases = [
        (prune, ["--iterations", "0"], ["--iterations"]),  # was: 60 iterations
        (prune, ["--batch-size", "0"], ["--batch-size"]),
        (prune, ["--batches-per-iteration", "0"], ["--batches-per-iteration"]),
        (prune, ["--sparsity", "1.5"], ["--sparsity"]),
        (prune, ["--sparsity", "nan"], ["--sparsity"]),
        (prune, ["--seed", "-1"], ["--seed"]),
        (prune, ["--seed", str(2**32)], ["--seed"]),
        (prune, ["--method", "snip", "--iterations", "5"], ["--iterations", "snip"]),
        (prune, ["--method", "random", "--batches-per-iteration", "2"], ["--batches-per-iteration", "random"]),
        (prune, ["--model", "resnet50"], ["resnet50", "3x32x32", "digits", "1x8x8"]),
        (prune, ["--model", "nonesuch"], ["--model", "nonesuch"]),
        (prune, ["--dataset", "svhn"], ["--dataset", "svhn"]),
        (prune, ["--dataset", "cifar10", "--data-dir", missing], ["--data-dir", "does not exist"]),
        (prune, ["--device", "cuda"], ["--device cuda", "CUDA"], NO_CUDA),
        (prune, ["--device", "gpu"], ["--device", "gpu"]),
        (prune, ["--device", "cpu", "--backend", "cuda"], ["--backend cuda", "reference"]),
        (prune, ["--out", missing / "m.pt"], ["--out", "does not exist"]),
        (prune, ["--out", tmp], ["--out", "directory"]),
        (prune, ["--out", "/proc/m.pt"], ["--out", "cannot write"]),
        (train, ["--epochs", "0"], ["--epochs"]),
        (train, ["--lr", "-1"], ["--lr"]),
        (train, ["--lr", "nan"], ["--lr"]),
        (train, ["--lr", "0"], ["--lr"]),
        (train, ["--momentum", "-1"], ["--momentum"]),
        (train, ["--weight-decay", "-1"], ["--weight-decay"]),
        (train, ["--num-workers", "-1"], ["--num-workers"]),
        (train, ["--batch-size", "0"], ["--batch-size"]),  # was: trained with 128
        (train, ["--milestones", "-5"], ["--milestones"]),
        (train, ["--milestones", "0"], ["--milestones"]),
        (train, ["--milestones", "3", "2"], ["--milestones", "increasing"]),
        (train, ["--stop-after-epoch", "0"], ["--stop-after-epoch"]),  # was: one epoch
        (train, ["--iterations", "0"], ["--iterations"]),
        (train, ["--sparsity", "-0.5"], ["--sparsity"]),
        (train, ["--seed", "-1"], ["--seed"]),
        (train, ["--optimizer", "adamw", "--momentum", "0.5"], ["--momentum", "adamw"]),
        (train, ["--resume", "--overwrite"], ["--resume", "--overwrite"]),
        (train_on_masks, ["--masks", missing / "m.pt"], ["--masks", "does not exist"]),
        # was: --method and --sparsity silently ignored, the loaded masks trained
        (train_on_masks, ["--masks", a_file, "--method", "snip"], ["--masks", "--method snip"]),
        (train_on_masks, ["--masks", a_file, "--sparsity", "0.5", "--iterations", "3"],
         ["--masks", "--sparsity", "--iterations"]),
        (train, ["--momentum", "1.5"], ["--momentum", "[0, 1)"]),  # was: trained, diverging
        (train, ["--momentum", "1"], ["--momentum", "[0, 1)"]),
        # was: lr never divided, without a word (a milestone m divides lr from epoch m + 1 on)
        (train, ["--epochs", "10", "--milestones", "5", "10"], ["--milestones", "10", "--epochs 10"]),
        (["train", "--dataset", "digits", "--out", tmp / "run"], ["--milestones", "400"],
         ["--milestones 400", "--epochs 350, the recipe's"]),
        (train, ["--milestones", "1"], ["--milestones 1", "--epochs 1", "leave --milestones out"]),
        (prune, ["--sparsity", "1"], ["--sparsity", "every prunable weight"]),  # was: all-empty masks, exit 0
        (train, ["--sparsity", "1"], ["--sparsity", "every prunable weight"]),
        (train, ["--out", a_file], ["--out", "not a folder"]),
        (train, ["--device", "cuda"], ["--device cuda", "CUDA"], NO_CUDA),
        (train, ["--device", "cpu", "--backend", "cuda"], ["--backend cuda", "reference"]),
        (train, ["--model", "resnet50"], ["resnet50", "3x32x32", "1x8x8"]),
        (train, ["--model", "vgg19_bn", "--dataset", "tinyimagenet", "--data-dir", tmp],
         ["vgg19_bn", "3x32x32", "tinyimagenet", "3x64x64"]),
        (demo, ["--jobs", "0"], ["--jobs"]),  # was: one per CPU core
        (demo, ["--seeds", "0"], ["--seeds"]),
        (demo, ["--epochs", "0"], ["--epochs"]),
        (demo, ["--iterations", "0"], ["--iterations"]),
        (demo, ["--sparsities", "0.9", "1"], ["--sparsities"]),
        (demo, ["--out", a_file], ["--out", "not a folder"]),
        (bench, ["--scale", "0"], ["--scale"]),
        (bench, ["--min-time", "-1"], ["--min-time"]),
        (bench, ["--min-time", "nan"], ["--min-time"]),
        (bench, ["--device", "cuda"], ["--device cuda", "CUDA"], NO_CUDA),
        (bench, ["--out", a_file], ["--out", "not a folder"]),
        (ddp, ["--epochs", "0"], ["--epochs"]),
        (ddp, ["--lr", "0"], ["--lr"]),
        (ddp, ["--iterations", "0"], ["--iterations"]),
        (ddp, ["--batch-size", "0"], ["--batch-size"]),
        (ddp, ["--timeout", "0"], ["--timeout"]),
        (ddp, ["--sparsity", "2"], ["--sparsity"]),
        (ddp, ["--sparsity", "1"], ["--sparsity", "every prunable weight"]),
        (ddp, ["--seed", "-1"], ["--seed"]),
        (ddp, ["--model", "resnet50"], ["resnet50", "3x32x32", "1x8x8"]),
        (ddp, ["--out", a_file], ["--out", "not a folder"]),
        (ddp, ["--device", "cuda"], ["--device cuda", "CUDA"], NO_CUDA),
        (ddp, ["--backend", "cuda"], ["--backend cuda", "reference"]),
    ]
    return [(base, extra, words, *env) for base, extra, words, *env in cases]


_CASES = _bad_arguments(Path("TMP"))


@pytest.mark.parametrize("i", range(len(_CASES)),
                         ids=[f"{c[0][0]} {' '.join(map(str, c[1]))}".replace("TMP", "tmp") for c in _CASES])
def test_bad_arguments_are_one_line_before_any_work(tmp_path, i):
    (tmp_path / "a_file").write_text("not a folder")
    base, extra, words, *env = _bad_arguments(tmp_path)[i]
    proc = sparseforce(*base, *extra, env=env[0] if env else None)
    assert_usage_error(proc, base[0], *words)
    for name in ("m.pt", "run", "demo", "b", "ddp"):
        assert not (tmp_path / name).exists(), name


def test_ctrl_c_in_train_says_which_checkpoint_is_kept_and_how_to_continue(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "sparseforce", "train", "--dataset", "digits", "--method",
                             "random", "--epochs", "500", "--no-progress", "--out", str(out)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a shell's background job ignores SIGINT, and children inherit that
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300
        log = out / "log.jsonl"
        while not (log.exists() and log.read_text().count("\n") >= 2):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    m = re.fullmatch(r"sparseforce train: interrupted during epoch (\d+); the checkpoint of epoch (\d+) is kept; "
                     r"continue with `sparseforce train --out (.+) --resume`", err.strip())
    assert m, err
    during, kept = int(m[1]), int(m[2])
    assert during == kept + 1 and kept >= 2 and m[3] == str(out)
    from sparseforce.train import load_checkpoint
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == kept


@pytest.mark.parametrize("args", [["--help"], ["--version"]] + [[c, "--help"] for c in
                                                                ("prune", "train", "demo", "bench", "ddp")])
def test_help_and_version_answer_without_importing_torch(args):
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "sparseforce", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    imported = {ln.rsplit("|", 1)[-1].strip() for ln in proc.stderr.splitlines() if ln.startswith("import time:")}
    assert "sparseforce" in imported and "argparse" in imported  # -X importtime did report
    assert "torch" not in imported and "numpy" not in imported
    assert ("usage: sparseforce" in proc.stdout) != (args == ["--version"])


def test_version_is_the_package_version():
    proc = sparseforce("--version")
    assert proc.returncode == 0 and proc.stdout == f"sparseforce {sf.__version__}\n"


def _subparsers():
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_option_has_a_description_and_its_default_once():
    commands = _subparsers()
    assert set(commands) == {"prune", "train", "demo", "bench", "ddp"}
    for name, sub in commands.items():
        formatter = sub._get_formatter()
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                continue
            where = f"sparseforce {name} {'/'.join(action.option_strings)}"
            text = formatter._expand_help(action) if action.help else ""
            assert text.strip(), f"{where} has no description"
            defaults = text.lower().count("default")
            if action.required:
                assert defaults == 0, (where, text)
            elif action.nargs == 0 and action.default is False:  # an on/off flag, off unless given
                assert defaults <= 1, (where, text)
            else:
                assert defaults == 1, (where, text)
            if action.default not in (None, False, argparse.SUPPRESS):
                shown = " ".join(map(str, action.default)) if isinstance(action.default, (list, tuple)) \
                    else str(action.default)
                assert shown in text, (where, text)
        help_text = sub.format_help()
        assert "(default: None)" not in help_text and "(default: False)" not in help_text, name


def test_the_cli_name_lists_match_the_library():
    # The CLI spells them out so that --help need not import torch.
    from sparseforce import cli, data, models, ops, pruning
    assert cli.METHOD_NAMES == tuple(sorted(pruning.METHODS))
    assert cli.BACKEND_NAMES == ("auto",) + ops.KNOWN_BACKENDS
    assert cli.DATASET_NAMES == tuple(data.NUM_CLASSES)
    assert cli.MODEL_NAMES == tuple(models.MODELS)


def test_the_pruning_help_names_the_methods_of_the_table():
    # The help spells out which methods take an option (no torch at --help); the checks read the table.
    from sparseforce.pruning import METHODS
    help_of = {a.option_strings[0]: a.help for a in _subparsers()["prune"]._actions if a.option_strings}
    def takers(option):
        return [m for m, e in METHODS.items() if option in e.options]

    steps = takers("iterations")
    for flag, want in (("--iterations", steps), ("--schedule", steps),
                       ("--batches-per-iteration", takers("batches_per_iteration")),
                       ("--eval-mode-scores", takers("train_mode"))):
        named = [m for m in METHODS if re.search(rf"\b{m}\b", help_of[flag])]
        assert named == want, (flag, help_of[flag])
    assert "(default: 60; synflow: 100)" in help_of["--iterations"]
    assert {m: METHODS[m].options["iterations"] for m in steps} == {"force": 60, "iter_snip": 60, "synflow": 100}


def test_the_demo_output_folder_is_ignored_by_git():
    from sparseforce import cli, demo
    assert _subparsers()["demo"].get_default("out") is None  # one folder per --dataset
    for dataset, folder in cli.DEMO_OUT.items():
        assert folder == demo.SPECS[dataset].out_dir
        assert f"/{folder}/" in (ROOT / ".gitignore").read_text().split()


def test_library_warnings_are_one_line_on_the_command_line(tmp_path):
    # Layer collapse at 99.9 % with SNIP on digits_cnn: the warning is one line naming the layers,
    # not Python's file:line plus source line.
    proc = sparseforce("prune", "--dataset", "digits", "--method", "snip", "--sparsity", "0.999",
                       "--out", tmp_path / "m.pt", env=NO_CUDA)
    assert proc.returncode == 0, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if "LayerCollapse" in l or "layer collapse" in l]
    assert lines and all(l.startswith("sparseforce prune: warning: ") for l in lines), proc.stderr
    assert "cli.py" not in proc.stderr
