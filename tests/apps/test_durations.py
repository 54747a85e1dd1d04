"""The documentation's figures that drift: how long things take, the test count, the threads table
(each on its page of docs/, which these tests read)."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sparseforce import durations
from sparseforce.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
# The page that holds each block: the durations on the demos' page, the count on the tests page,
# the threads table in the command line's "Threads".
PAGES = {"durations": DOCS / "demo.md", "test-count": DOCS / "tests.md", "threads": DOCS / "cli.md"}
# Every page a reader sees: the README and the site's pages, where no other duration figure may be.
EVERY_PAGE = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))])


def block(name):
    m = re.search(rf"<!-- {name} -->\n?(.*?)<!-- /{name} -->", PAGES[name].read_text(), re.S)
    assert m, f"{PAGES[name].relative_to(ROOT)} has no <!-- {name} --> block"
    return m.group(1)


def durations_table():
    rows = [f"| `{cmd}` | {fig} |" for cmd, fig in durations.DURATIONS.items()]
    return "\n".join(["### How long things take", "", f"| command | on {durations.MACHINE} |", "|---|---|", *rows]) + "\n"


def test_readme_durations_table_is_the_one_in_durations_py():
    assert block("durations") == durations_table()


def test_no_other_duration_figure_for_a_command_in_the_readme():
    # One place: a figure elsewhere is how "about 9", "about 10" and "10-15 minutes" came to be.
    outside = EVERY_PAGE.replace(block("durations"), "")
    # Not a command's duration: the CUDA CI build, an epoch of digits_cnn, FORCE's steps in the demo.
    allowed = {"registers (about 2 minutes", "epoch takes about", "steps take about"}
    for m in re.finditer(r".{0,12}about [0-9][0-9.,–-]* ?(minutes|min|s)\b", outside):
        assert any(a in outside[m.start() - 40:m.end() + 5] for a in allowed), m.group(0)


@pytest.mark.parametrize("command", sorted(durations.RECORDED))
def test_full_demo_figures_are_their_committed_wall_time(command):
    seconds = json.loads((ROOT / durations.RECORDED[command]).read_text())["seconds"]
    m = re.fullmatch(r"about (\d+) minutes", durations.DURATIONS[command])
    assert m and int(m.group(1)) == round(seconds / 60), (command, seconds)


def _help(command):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return " ".join(sub.choices[command].format_help().split())


def test_help_texts_quote_the_same_figures():
    demo, bench = _help("demo"), _help("bench")
    for cmd in ("sparseforce demo", "sparseforce demo --quick", "sparseforce demo --dataset mnist",
                "sparseforce demo --dataset mnist --quick"):
        assert durations.DURATIONS[cmd] in demo
    assert durations.took("sparseforce bench") in bench and durations.DURATIONS["sparseforce bench --quick"] in bench


def test_readme_test_count_is_what_a_run_collects():
    """Rounded to the hundred so that a test more or less keeps it true; collected here, with no
    GPU in CI (a GPU adds the CUDA parametrizations)."""
    import torch
    if torch.cuda.is_available():
        pytest.skip("the README states the count on a machine without a GPU")
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "tests"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    m = re.search(r"^(\d+) tests? collected", proc.stdout, re.M)
    assert m, proc.stdout[-2000:] + proc.stderr[-2000:]
    stated = int(re.fullmatch(r"about ([\d,]+)", block("test-count")).group(1).replace(",", ""))
    assert stated == round(int(m.group(1)), -2), f"README says about {stated:,}; {int(m.group(1)):,} collected"


def test_readme_threads_table_is_the_committed_measurement():
    from benchmarks.cli_threads import table
    files = sorted((ROOT / "benchmarks" / "results").glob("cli-threads-*.json"))
    assert files, "no committed measurement"
    rows = json.loads(files[-1].read_text())["rows"]
    assert block("threads").strip() == table(rows)
    # The prose quotes the training step's medians: spinning against passive, busy and quiet.
    step = {(r["load"], r["setting"].split(",")[0]): r["masks_median_s"] for r in rows
            if r["workload"].startswith("bench")}
    spin, passive = "OpenMP default (spin)", "passive waits"
    page = PAGES["threads"].read_text()
    prose = " ".join(page.split())
    assert (f"took {step['busy', spin]:.2f} s spinning and {step['busy', passive]:.2f} s with passive waits"
            in prose)
    assert f"({step['quiet', spin]:.2f} s against {step['quiet', passive]:.2f} s)" in prose
    assert f"benchmarks/results/{files[-1].name}" in page
