"""The Triton kernels compile for a real GPU target, even on a machine without one.

The interpreter (how CI runs the kernels) accepts code the compiler rejects, and cannot show
whether loads vectorise. This compiles every kernel, in the variants the backend launches, for
sm_90 (H100/H200) down to PTX and cubin with Triton's own toolchain; no GPU or driver is needed.
It runs in a subprocess because this process has TRITON_INTERPRET=1.
"""
import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")
pytest.importorskip("triton.backends.nvidia")

SCRIPT = textwrap.dedent(r"""
    import re
    import triton
    from triton.backends.compiler import GPUTarget
    from sparseforce.ops.triton.digit import choose_digit_kernel
    from sparseforce.ops.triton.drop_grow_radix import drop_grow_histogram_kernel, drop_grow_ties_kernel
    from sparseforce.ops.triton.drop_grow_tile import drop_grow_tile_kernel
    from sparseforce.ops.triton.histogram import radix_histogram_kernel
    from sparseforce.ops.triton.mask import write_mask_kernel
    from sparseforce.ops.triton.segment_radix import segment_histogram_kernel, segment_ties_kernel
    from sparseforce.ops.triton.segment_rank import small_segments_kernel
    from sparseforce.ops.triton.sgd import masked_sgd_kernel
    from sparseforce.ops.triton.ties import exclusive_scan_kernel, tie_count_kernel
    from sparseforce.ops.triton.value import key_to_value_kernel

    TARGET = GPUTarget("cuda", 90, 32)

    def compile(fn, sig, const, num_warps=8):
        sig = {**sig, **{k: "constexpr" for k in const}}
        src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=const)
        ptx = triton.compile(src, target=TARGET, options={"num_warps": num_warps}).asm["ptx"]
        return set(re.findall(r"ld\.global\.v[24]\.b(?:32|64)", ptx))

    SEL = {"table": "*i64", "rows": "*i64", "state": "*i64"}
    # (key bits, score dtype(s), saliency): fp32 FORCE with prev masks, bf16 topk, bf16 FORCE
    # (widened by its bits), fp64 scores
    for bits, x, g, sal in [(32, "fp32", "fp32", True), (16, "bf16", "bf16", False), (32, "bf16", "bf16", True),
                            (64, "fp32", "fp64", True)]:
        flags = dict(KEY_BITS=bits, SALIENCY=sal, SCORE_F64="fp64" in (x, g), HAS_PREV=sal, BLOCK=4096)
        io = {"X": "*" + x, "G": "*" + g}
        for shift, width, first, dense in [(bits - 8, 8, True, True), (0, min(12, bits - 8), False, False)]:
            vec = compile(radix_histogram_kernel, {**SEL, "hist": "*i64", "nan_flags": "*i64", **io},
                          dict(SHIFT=shift, BITS=width, FIRST=first, DENSE=dense, **flags))
            # Full blocks must load with vector instructions: the table-loaded addresses carry
            # alignment hints and only tail blocks are masked.
            assert vec, ("radix_histogram_kernel", bits, x, "does not vectorise its loads")
        for top in (True, False):  # ops.key_histogram's pass: a 16-bit digit, one atomic per element
            compile(radix_histogram_kernel, {**SEL, "hist": "*i64", "nan_flags": "*i64", **io},
                    dict(SHIFT=bits - 16 if top else 0, BITS=16, FIRST=top, DENSE=False, **flags))
        compile(tie_count_kernel, {**SEL, "tie_counts": "*i64", **io}, flags)
        assert compile(write_mask_kernel, {**SEL, "tie_offsets": "*i64", **io}, flags)
        out = {16: "bf16", 32: "fp32", 64: "fp64"}[bits]
        compile(key_to_value_kernel, {"state": "*i64", "out": "*" + out}, dict(KEY_BITS=bits), num_warps=1)
    compile(choose_digit_kernel, {"hist": "*i64", "state": "*i64"}, dict(SHIFT=0, BITS=12), num_warps=4)
    compile(exclusive_scan_kernel, {"counts": "*i64", "n": "i64", "state": "*i64"}, dict(CHUNK=1024), num_warps=4)
    for p, f64 in [("fp32", False), ("bf16", False), ("fp64", True)]:
        assert compile(masked_sgd_kernel, {"table": "*i64", "rows": "*i64", "hyper": "*fp64",
                                           "P": "*" + p, "G": "*" + p, "B": "*" + p},
                       dict(HAS_MOMENTUM=True, NESTEROV=True, HAS_WD=True, F64=f64, BLOCK=4096))
    # The segmented ops: both small-segment ranks (N:M groups of 4 and 32, rows of up to 4096)
    # in every key width, and the per-segment radix passes.
    for bits, x, g, sal in [(16, "fp16", "fp16", False), (32, "fp32", "fp32", True), (64, "fp64", "fp64", False)]:
        flags = dict(KEY_BITS=bits, SALIENCY=sal, SCORE_F64=bits == 64, HAS_PREV=sal)
        io = {"X": "*" + x, "G": "*" + g}
        for all_pairs, segs, width in [(True, 512, 4), (True, 8, 32), (False, 64, 64), (False, 1, 4096)]:
            compile(small_segments_kernel, {"table": "*i64", "rows": "*i64", "nan_flags": "*i64", "n_keep": "i32",
                                            **io},
                    dict(PER_SEGMENT_K=not all_pairs, ALL_PAIRS=all_pairs, SEGS=segs, WIDTH=width, **flags))
        flags["BLOCK"] = 4096
        for shift, first in [(bits - 8, True), (0, False)]:
            compile(segment_histogram_kernel, {**SEL, "hist": "*i64", "nan_flags": "*i64", **io},
                    dict(SHIFT=shift, BITS=8, FIRST=first, **flags))
        for count in (True, False):
            compile(segment_ties_kernel, {**SEL, "ties": "*i64", **io}, dict(COUNT=count, **flags))
    # drop_grow_masks: the one-pass tiles (both selections, weights and scores of different
    # widths) and the radix passes of both phases in every key width.
    for (w, w_bits), (s, s_bits) in [(("fp32", 32), ("bf16", 16)), (("fp16", 16), ("fp64", 64))]:
        for all_pairs, width in [(True, 32), (False, 4096)]:
            compile(drop_grow_tile_kernel, {"table": "*i64", "nan_flags": "*i64", "keeps": "*i64", "grows": "*i64",
                                            "W": "*" + w, "S": "*" + s},
                    dict(W_BITS=w_bits, S_BITS=s_bits, ALL_PAIRS=all_pairs, WIDTH=width))
    for bits, x in [(16, "bf16"), (32, "fp32"), (64, "fp64")]:
        for grow in (False, True):
            flags = dict(GROW=grow, KEY_BITS=bits, BLOCK=4096)
            for shift, first in [(bits - 8, True), (0, False)]:
                vec = compile(drop_grow_histogram_kernel, {**SEL, "hist": "*i64", "nan_flags": "*i64", "X": "*" + x},
                              dict(SHIFT=shift, BITS=8, FIRST=first, **flags))
                assert vec, ("drop_grow_histogram_kernel", bits, "does not vectorise its loads")
            for count in (True, False):
                compile(drop_grow_ties_kernel, {**SEL, "ties": "*i64", "X": "*" + x}, dict(COUNT=count, **flags))
    print("compiled")
""")


def test_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 warns when it is unset
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=root, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0 and "compiled" in proc.stdout, proc.stdout + proc.stderr
