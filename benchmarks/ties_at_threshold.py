"""How often the official FORCE code's threshold is 0 (and its ``>=`` keeps every tie).

Runs the official ``iterative_pruning`` loop of github.com/naver/force, written out (benchmarks/peers.py, as
tests/pruning/test_conventions.py compares it: ``next(iter(loader))`` per batch from a shuffling DataLoader,
``nll_loss`` on the raw logits, ``int(N * d_t)`` kept with ``>=`` the k-th largest score, Iter SNIP
setting pruned scores to the minimum), on the package's small models and the offline data sets,
for FORCE and Iter SNIP at several sparsities and step counts, and records every step whose
threshold (the k_t-th largest score) is exactly 0, and how many weights ``>=`` then keeps.

    OMP_NUM_THREADS=1 python -m benchmarks.ties_at_threshold [--out PATH.json]

(default: benchmarks/results/ties-at-threshold-DATE.json; its printout is kept next to it as .txt).

CPU only, a few minutes. The summary line is what the README quotes.
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from benchmarks.peers import official_iterative_pruning, prunable_layers

MODELS = (("digits_cnn", "digits"), ("mlp", "digits"), ("lenet5", "mnist"), ("mnist_vgg", "mnist"))
SPARSITIES = (0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999)
STEPS = (10, 60)  # their script's default --num_steps, and the paper's
METHODS = (("force", 3), ("iter_snip", 1))
BATCH_SIZE = 128


def official_steps(model, loader, pruning_factor, num_steps, prune_method):
    """The official loop (mode exp, num_batches 1), one record per step."""
    records = []

    def record(k, threshold, scores, mask):
        records.append({"k": k, "kept": int(sum(int(m.sum()) for m in mask)), "threshold": float(threshold.detach()),
                        "zeros": int((scores == 0).sum())})

    official_iterative_pruning(model, loader, pruning_factor, num_steps, "exp", prune_method, on_step=record)
    return records


def main(argv=None):
    from sparseforce.models import get_model
    from sparseforce.train import get_splits

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="JSON file (default: benchmarks/results/ties-at-threshold-DATE.json)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.out is None:
        args.out = f"benchmarks/results/ties-at-threshold-{time.strftime('%Y-%m-%d')}.json"
    torch.set_num_threads(1)
    started = time.time()
    rows = []
    for model_name, dataset in MODELS:
        train, _, _ = get_splits(dataset, seed=args.seed, augment=False)
        for steps in STEPS:
            for sparsity in SPARSITIES:
                for method, prune_method in METHODS:
                    torch.manual_seed(args.seed)
                    model = get_model(model_name)
                    loader = torch.utils.data.DataLoader(train, batch_size=BATCH_SIZE, shuffle=True)
                    records = official_steps(model, loader, 1 - sparsity, steps, prune_method)
                    zero = [t + 1 for t, r in enumerate(records) if r["threshold"] == 0.0]
                    rows.append({"model": model_name, "dataset": dataset, "method": method, "steps": steps,
                                 "sparsity": sparsity, "zero_threshold_steps": zero,
                                 "final": records[-1], "final_dense": records[-1]["kept"] == sum(
                                     m.weight.numel() for m in prunable_layers(model))})
                    print(f"{model_name:10s} {method:9s} T={steps:2d} sparsity={sparsity}: zero threshold at "
                          f"{len(zero)} of {steps} steps; final kept {records[-1]['kept']} (k={records[-1]['k']})",
                          flush=True)
    high = [r for r in rows if r["sparsity"] >= 0.99]
    summary = {
        "settings": len(rows),
        "with_a_zero_threshold_at_some_step": sum(bool(r["zero_threshold_steps"]) for r in rows),
        "with_a_zero_final_threshold": sum(r["final"]["threshold"] == 0.0 for r in rows),
        "with_a_dense_final_mask": sum(r["final_dense"] for r in rows),
        "settings_at_sparsity_ge_0.99": len(high),
        "of_those_with_a_zero_threshold_at_some_step": sum(bool(r["zero_threshold_steps"]) for r in high),
        "of_those_with_a_zero_final_threshold": sum(r["final"]["threshold"] == 0.0 for r in high),
        "of_those_with_a_dense_final_mask": sum(r["final_dense"] for r in high),
    }
    meta = {"torch": torch.__version__, "machine": platform.machine(), "seed": args.seed, "batch_size": BATCH_SIZE,
            "seconds": round(time.time() - started, 1), "date": time.strftime("%Y-%m-%d")}
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "summary": summary, "rows": rows}, f, indent=1)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
