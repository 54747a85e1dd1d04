"""``sparseforce bench``: the benchmark suite (sparseforce.bench) from the command line."""
from __future__ import annotations

import math
import sys

from ..durations import DURATIONS, took
from . import checks


HELP = "time selection, masked SGD and a FORCE run: baseline vs every available backend"
DESCRIPTION = ("Benchmark today's practice (per-layer |w*g|, torch.cat, torch.topk, >=) against the reference "
               "and every available backend, side by side in one run, next to the memory-bandwidth floor "
               "measured in the same run. Prints a table; writes JSON and a PNG plot to --out. Sizes scale "
               "down on a CPU; --full adds the big cases. The default run takes "
               f"{took('sparseforce bench')}, --quick {DURATIONS['sparseforce bench --quick']}.")


def add_arguments(p) -> None:
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--quick", action="store_true",
                   help="a short run: every case at 1/8 of its size (--scale 8) and no minimum time (--min-time 0), "
                        "so 3 timed runs per implementation, 2 for the end-to-end cases")
    p.add_argument("--full", action="store_true", help="add the big cases: on CPU the 1 B-weight selection, and on any device FORCE end to end on a "
                        "2.15 B-weight bf16 model, past 2^31 (about 15 GiB, 20 GiB for today's practice beside it)")
    p.add_argument("--out", default="sparseforce-bench",
                   help="folder for the JSON and PNG results, relative to the current directory "
                        "(the committed runs are in the repository's benchmarks/results)")
    p.add_argument("--min-time", type=float, default=None, metavar="SECONDS",
                   help="seconds of repeats per measurement, at least 3 runs (2 end to end) (default: 1; 0 with --quick)")
    p.add_argument("--only", default=None, metavar="TEXT",
                   help="run only cases whose name contains this text (default: every case)")
    p.add_argument("--scale", type=int, default=None, metavar="N",
                   help="divide every layer's output channels by N: the layer sets of the kernel cases "
                        "(parameters / N) and the ResNet50 of the end-to-end cases (parameters about / N^2); "
                        "a quick look, not the reported sizes (default: 1; 8 with --quick)")
    p.add_argument("--max-case-time", type=float, default=None, metavar="SECONDS",
                   help="cap each case's repetitions at about this many seconds, shared by its impls "
                        "(each still runs once after its warm-up; default: no cap)")


def run(args) -> int:
    from .. import bench

    def usage(message):
        print(f"sparseforce bench: error: {message}", file=sys.stderr)
        return 2

    if args.max_case_time is not None and not args.max_case_time > 0:
        return usage(f"--max-case-time must be a positive number of seconds, got {args.max_case_time}")
    if args.scale is not None and args.scale < 1:
        return usage(f"--scale must be a whole number >= 1, got {args.scale}")
    if args.min_time is not None and not 0 <= args.min_time < math.inf:
        return usage(f"--min-time must be a number of seconds >= 0, got {args.min_time}")
    checks.checked_device(args.device)
    checks.check_out_folder(args.out)
    bench.run(device=args.device, full=args.full, out_dir=args.out, min_time=args.min_time, only=args.only,
              scale=args.scale, max_case_s=args.max_case_time, quick=args.quick)
    return 0
