"""The command's OpenMP default: threads that wait sleep instead of spinning (README, "Threads")."""
import os
import subprocess
import sys

import pytest

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def _spin_counts(tmp_path, **env):
    """How long each OpenMP runtime in a real `sparseforce prune` process spins before it sleeps,
    as it reports at load (OMP_DISPLAY_ENV=VERBOSE makes libgomp print what it settled on)."""
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    base.update(env, OMP_DISPLAY_ENV="VERBOSE", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "sparseforce", "prune", "--dataset", "digits", "--iterations", "1",
                           "--out", str(tmp_path / "m.pt")], cwd=ROOT, env=base, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    counts = {ln.split("=", 1)[1].strip().strip("'") for ln in proc.stderr.splitlines()
              if ln.strip().startswith("GOMP_SPINCOUNT")}
    assert counts, "no OpenMP runtime reported its settings"
    return counts


def test_the_command_waits_passively_by_default(tmp_path):
    # libgomp's own default is to spin 300,000 times at every barrier.
    assert _spin_counts(tmp_path) == {"0"}


@pytest.mark.parametrize("env, spins", [({"OMP_WAIT_POLICY": "active"}, "30000000000"),
                                        ({"GOMP_SPINCOUNT": "1234"}, "1234")])
def test_a_users_openmp_setting_wins(tmp_path, env, spins):
    assert _spin_counts(tmp_path, **env) == {spins}


def test_too_late_once_torch_is_loaded(monkeypatch):
    """In a process that imported torch (a user calling cli.main from Python), the runtime has read
    its settings already: the command leaves the environment alone rather than pretend."""
    import torch  # noqa: F401
    from sparseforce import cli
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    cli._passive_openmp_waits()
    assert "OMP_WAIT_POLICY" not in os.environ
