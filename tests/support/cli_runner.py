"""The `sparseforce` command as its user meets it: run from the checkout's root in a subprocess, and
the one-line usage error every bad argument must give (tests/apps/test_cli.py and the ablation
tests share them)."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def sparseforce(*args, env=None, timeout=180):
    """``python -m sparseforce ARGS`` from the checkout's root, so this copy is the one imported."""
    return subprocess.run([sys.executable, "-m", "sparseforce", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def assert_usage_error(proc, command, *words):
    err = proc.stderr
    assert proc.returncode == 2, (proc.returncode, proc.stdout, err)
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"sparseforce {command}: error: "), err
    for word in words:
        assert word in lines[0], (word, err)
    assert proc.stdout == "", proc.stdout  # reported before any work began
