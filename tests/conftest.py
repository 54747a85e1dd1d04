import os
import sys
from pathlib import Path

# The test suite's own tools (tests/support: the CUDA emulator, the rank launcher, the bf16
# conversions) import by their names from every test folder.
sys.path.insert(0, str(Path(__file__).resolve().parent / "support"))

import numpy as np
import pytest
import torch

# Without a GPU, the Triton backend's kernels run on CPU tensors through the Triton interpreter,
# so the shared kernel tests cover it too. Triton reads this when its kernels are decorated, i.e.
# when the backend is first used (not when sparseforce is imported); it changes nothing for
# the other backends, and `auto` never picks triton on CPU. With a GPU the kernels compile for it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import sparseforce.ops as ops  # noqa: E402

# The interpreter runs every kernel program as Python, ~0.1-0.3 s per op call on tiny inputs, so
# the hypothesis property tests run at most this many examples for triton on CPU (every other
# backend, and triton on a GPU, keeps the count the test asks for). The example-based shared
# tests run in full.
TRITON_INTERPRETER_MAX_EXAMPLES = 40


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    params = getattr(getattr(item, "callspec", None), "params", {})
    test = getattr(item, "obj", None)
    # hypothesis reads a @given test's settings from this attribute at every call.
    current = getattr(test, "_hypothesis_internal_use_settings", None)
    if (params.get("backend") != "triton" or params.get("device") != "cpu" or current is None
            or current.max_examples <= TRITON_INTERPRETER_MAX_EXAMPLES):
        yield
        return
    from hypothesis import settings
    test._hypothesis_internal_use_settings = settings(current, max_examples=TRITON_INTERPRETER_MAX_EXAMPLES)
    try:
        yield
    finally:
        test._hypothesis_internal_use_settings = current

# (title, text) tables a test wants in the run's log whatever the output capture (the ptxas
# resource use of the CUDA kernels): printed in the terminal summary.
REPORTS: list[tuple[str, str]] = []


def pytest_terminal_summary(terminalreporter):
    for title, text in REPORTS:
        terminalreporter.write_sep("-", title)
        terminalreporter.write_line(text)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def backends_for(device):
    return ops.available_backends(device)


def _emulated_cuda_backends():
    """The CUDA kernels under the CPU emulator (tests/support/cuda_emu), as extra backends on CPU tensors.

    Built with g++ (cached); a machine without g++ cannot build them. A build error fails the
    run loudly. SPARSEFORCE_TEST_NO_EMU=1 leaves them out (e.g. on a GPU, where the real kernels run)."""
    import shutil
    if os.environ.get("SPARSEFORCE_TEST_NO_EMU") or shutil.which(os.environ.get("CXX", "g++")) is None:
        return []
    from cuda_emu import register
    return register.install(os.environ.get("SFEMU_VARIANT", "default"))


EMULATED_CUDA = _emulated_cuda_backends()


def _emulated_path_backends():
    if not EMULATED_CUDA:
        return []
    from cuda_emu import register
    return EMULATED_CUDA + register.install.weak


# The path tests of the CUDA kernels (tests/ops/test_cuda_emulated*.py) run the emulated backends
# and the weak-memory schedule too, where the build has it.
EMULATED_CUDA_PATHS = _emulated_path_backends()

# Every available backend on every available device, and the emulated CUDA backends on CPU
# tensors; the shared kernel tests run once per pair.
BACKEND_DEVICE = [pytest.param(b, d, id=f"{b}-{d}") for d in DEVICES for b in backends_for(d)] + \
    [pytest.param(b, "cpu", id=f"{b}-cpu") for b in EMULATED_CUDA]


def pytest_report_header(config):
    if EMULATED_CUDA:
        from cuda_emu import register
        return f"CUDA emulator: backends {', '.join(EMULATED_CUDA)}; SFEMU_SEED={register.seed_base()}"


def oracle_keep(values, k, candidates=None):
    """Independent of the package: rank by (value descending, position ascending) with numpy.

    float64 holds every fp16/bf16/fp32 value exactly, and numpy compares -0.0 equal to +0.0.
    """
    v = np.asarray(values, dtype=np.float64)
    pos = np.arange(v.size)
    idx = pos if candidates is None else pos[np.asarray(candidates, dtype=bool)]
    order = np.lexsort((idx, -v[idx]))
    keep = np.zeros(v.size, dtype=bool)
    keep[idx[order[:k]]] = True
    return keep


def flat64(tensors):
    if not tensors:
        return np.zeros(0)
    return np.concatenate([t.detach().to("cpu", torch.float64).reshape(-1).numpy() for t in tensors])


def flat_bool(tensors):
    if not tensors:
        return np.zeros(0, dtype=bool)
    return np.concatenate([t.detach().cpu().reshape(-1).numpy() for t in tensors])


@pytest.fixture
def rng():
    # Fresh inputs every run; the seed is printed on failure by pytest's -ra summary via the id.
    seed = int(np.random.SeedSequence().entropy % (2**31))
    print(f"random seed {seed}")
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def one_thread():
    """One torch thread for the test: on tiny tensors threads only add synchronisation, which
    costs 10-50x on a busy machine. (A module opts in with ``pytestmark``.)"""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def emulator():
    """The CUDA emulator's library (tests/support/cuda_emu), built once per cache key with g++."""
    from cuda_emu import build, emu
    if os.environ.get("SPARSEFORCE_TEST_NO_EMU"):
        pytest.skip("SPARSEFORCE_TEST_NO_EMU=1 leaves the CUDA emulator out")
    try:
        path = build.build(os.environ.get("SFEMU_VARIANT", "default"), csrc=os.environ.get("SFEMU_CSRC"))
    except build.BuildError as exc:
        if "no C++ compiler" in str(exc):
            pytest.skip(str(exc))
        raise
    return emu.Emulator(path)
