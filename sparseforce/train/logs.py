"""The run folder's text files: ``log.jsonl`` and ``log.csv`` (one row per epoch) and ``result.json``."""
from __future__ import annotations

import csv
import io
import json
import os

from .._files import atomic_write


def _write_text_atomic(path: str, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_logs(out_dir: str, history: list[dict]) -> None:
    """Both logs rewritten from ``history`` (the checkpoint's), so they never disagree with it."""
    _write_text_atomic(os.path.join(out_dir, "log.jsonl"), "".join(json.dumps(r) + "\n" for r in history))
    columns: list[str] = []
    for r in history:
        columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    w.writerows(history)
    _write_text_atomic(os.path.join(out_dir, "log.csv"), buf.getvalue())


def write_result(out_dir: str, summary: dict) -> None:
    """``result.json``: what a finished run reports."""
    _write_text_atomic(os.path.join(out_dir, "result.json"), json.dumps(summary, indent=2) + "\n")
