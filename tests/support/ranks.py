"""Run a function on N local processes joined in a gloo process group, with a deadline.

Each rank's return value (or exception) comes back to the test; a rank that hangs past the
deadline fails the test after every rank is killed, so a distributed bug can never hang CI.
"""
from __future__ import annotations

import datetime
import os
import pickle
import tempfile
import time
import traceback

import torch.multiprocessing as mp


class RankFailed(AssertionError):
    pass


def _worker(fn, rank, world, store, out_dir, args, pg_timeout):
    import torch
    import torch.distributed as dist
    torch.set_num_threads(1)  # N ranks share the machine's cores
    # All ranks are local: keep gloo on loopback whatever the hostname resolves to.
    if os.path.exists("/sys/class/net/lo"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    os.environ.setdefault("TRITON_INTERPRET", "1")
    result = None
    try:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=pg_timeout))
        result = ("ok", fn(rank, world, *args))
    except BaseException as e:  # noqa: BLE001 -- reported to the test, which decides
        result = ("error", type(e).__name__, str(e), traceback.format_exc(), getattr(e, "index", "-"))
    with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as f:
        pickle.dump(result, f)
    try:
        if dist.is_initialized():
            dist.destroy_process_group()
    except Exception:
        pass
    # Skip interpreter teardown: a peer that died can leave gloo threads that block exit.
    os._exit(0)


def run_ranks(fn, world: int, *args, deadline: float = 240.0, pg_timeout: float = 60.0):
    """Run ``fn(rank, world, *args)`` on ``world`` processes; returns one entry per rank:
    ``("ok", value)``, ``("error", type_name, message, traceback, index)`` or ``("exit", code)``."""
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        procs = [ctx.Process(target=_worker, args=(fn, r, world, store, tmp, args, pg_timeout))
                 for r in range(world)]
        for p in procs:
            p.start()
        end = time.monotonic() + deadline
        for p in procs:
            p.join(max(0.0, end - time.monotonic()))
        hung = [r for r, p in enumerate(procs) if p.is_alive()]
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        if hung:
            raise RankFailed(f"ranks {hung} were still running after {deadline:.0f} s (a hang)")
        results = []
        for r, p in enumerate(procs):
            path = os.path.join(tmp, f"rank{r}.pkl")
            if os.path.exists(path):
                with open(path, "rb") as f:
                    results.append(pickle.load(f))
            else:
                results.append(("exit", p.exitcode))
        return results


def values(results):
    """Every rank's value; raises with the first failing rank's traceback."""
    for r, res in enumerate(results):
        if res[0] != "ok":
            detail = res[3] if res[0] == "error" else f"exit code {res[1]}"
            raise RankFailed(f"rank {r} failed:\n{detail}")
    return [res[1] for res in results]
