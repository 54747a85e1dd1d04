"""The command's OpenMP default: on a busy machine, threads that wait sleep instead of spinning
(docs/cli.md, "Threads")."""
import os
import subprocess
import sys

import pytest

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def _spin_counts(tmp_path, load, **env):
    """How long each OpenMP runtime in a real `sparseforce prune` process spins before it sleeps,
    as it reports at load (OMP_DISPLAY_ENV=VERBOSE makes libgomp print what it settled on), with
    the machine's 1-minute load average reading ``load`` (set in the process before the command
    runs, torch not yet imported)."""
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    base.update(env, OMP_DISPLAY_ENV="VERBOSE", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    code = (f"import os, sys; os.getloadavg = lambda: ({load}, {load}, {load})\n"
            "from sparseforce.cli import main\n"
            f"sys.exit(main(['prune', '--dataset', 'digits', '--iterations', '1', '--out', {str(tmp_path / 'm.pt')!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=base, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    counts = {ln.split("=", 1)[1].strip().strip("'") for ln in proc.stderr.splitlines()
              if ln.strip().startswith("GOMP_SPINCOUNT")}
    assert counts, "no OpenMP runtime reported its settings"
    return counts


def test_the_command_waits_passively_on_a_busy_machine(tmp_path):
    assert _spin_counts(tmp_path, load=1.2) == {"0"}


def test_a_quiet_machine_keeps_openmps_spinning_default(tmp_path):
    # libgomp's own default: spin 300,000 times at a barrier, then sleep.
    assert _spin_counts(tmp_path, load=0.1) == {"300000"}


@pytest.mark.parametrize("env, spins", [({"OMP_WAIT_POLICY": "active"}, "30000000000"),
                                        ({"GOMP_SPINCOUNT": "1234"}, "1234")])
def test_a_users_openmp_setting_wins(tmp_path, env, spins):
    assert _spin_counts(tmp_path, load=1.2, **env) == {spins}


def test_too_late_once_torch_is_loaded(monkeypatch):
    """In a process that imported torch (a user calling cli.main from Python), the runtime has read
    its settings already: the command leaves the environment alone rather than pretend."""
    import torch  # noqa: F401
    from sparseforce.cli.openmp import passive_openmp_waits
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (3.0, 3.0, 3.0))
    passive_openmp_waits()
    assert "OMP_WAIT_POLICY" not in os.environ
