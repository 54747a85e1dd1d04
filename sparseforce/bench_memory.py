"""How much memory a benchmark call needs and how much is left: the peak above what was resident
before, the memory available on the device, the row of a case that would not fit; and the time
format of the tables."""
from __future__ import annotations

import torch


def proc_status(field: str) -> int:
    """A size field of /proc/self/status (``VmRSS``, ``VmHWM``, ``VmSize``), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no {field} in /proc/self/status")


class PeakMemory:
    """Extra memory the timed call needs at its peak: CUDA allocator stats on GPU; on CPU the
    process's peak RSS (VmHWM, reset through /proc/self/clear_refs) above the RSS before."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
                self.base = proc_status("VmRSS")
            except OSError:
                self.base = None
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.extra = torch.cuda.max_memory_allocated(self.device) - self.base
        elif self.base is None:
            self.extra = None
        else:
            self.extra = max(0, proc_status("VmHWM") - self.base)
        return False


def available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise OSError("no MemAvailable in /proc/meminfo")


def skip_row(case, variant, need, have):
    return {"case": case, "variant": variant,
            "skipped": f"needs about {need / 2**30:.1f} GiB more memory, {have / 2**30:.1f} GiB available"}


def fmt_time(s):
    if s is None:
        return "-"
    return f"{s * 1e3:,.2f} ms" if s < 10 else f"{s:,.1f} s"
