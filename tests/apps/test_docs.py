"""The documentation: the site builds in strict mode, and every Python example on its pages and in
the README runs (docs/contributing.md)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
# A block that cannot run in a test says why on its first line. Each is a decision, so they are
# counted: today two, the template of a torchrun script, whose flow tests/distributed/test_distributed.py runs
# as the `sparseforce ddp` command, and the 2:4 export, which needs a GPU of compute capability 8.0 or
# newer (tests/pruning/test_semi_structured.py runs it where there is one).
NOT_RUN = "# not run: "
NOT_RUN_PER_PAGE = {"docs/distributed.md": 1, "docs/scopes.md": 1}


def python_blocks():
    """(page, line, code) of every ```python block."""
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for m in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M):
            yield page.relative_to(ROOT).as_posix(), text.count("\n", 0, m.start()) + 1, m.group(1)


BLOCKS = list(python_blocks())
RUN = [b for b in BLOCKS if not b[2].startswith(NOT_RUN)]


def run_example(code, cwd):
    """The block alone in a fresh interpreter, on the CPU, this checkout's package first."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_site_builds_strictly_with_the_api_reference(tmp_path):
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
                           "--site-dir", str(site)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "WARNING" not in proc.stderr, proc.stderr
    # mkdocstrings rendered the docstrings, not an empty page per module
    ops = (site / "api" / "ops" / "index.html").read_text(encoding="utf-8")
    assert 'id="sparseforce.ops.topk_masks"' in ops and 'id="sparseforce.ops.saliency_topk_masks"' in ops
    top = (site / "api" / "sparseforce" / "index.html").read_text(encoding="utf-8")
    assert 'id="sparseforce.force"' in top and 'id="sparseforce.Masks"' in top
    assert (site / "benchmarks" / "results" / "cpu-2026-12-07.png").is_file()  # the plot the results page shows
    # the README's links into a page's heading land on it (the site's ids are GitHub's anchors)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for page, anchor in re.findall(r"\]\(docs/([^)#\s]+)\.md#([^)\s]+)\)", readme):
        html = site / (page[:-len("/index")] if page.endswith("/index") else page) / "index.html"
        assert f'id="{anchor}"' in html.read_text(encoding="utf-8"), (page, anchor)


def test_every_docs_page_is_in_the_navigation():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for page in (ROOT / "docs").rglob("*.md"):
        assert page.relative_to(ROOT / "docs").as_posix() in nav, page


def test_readme_is_the_front_door_and_its_links_reach_the_pages():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250  # issue 20: the rest lives in docs/
    links = re.findall(r"\]\(((?:docs/)[^)#\s]+)(?:#[^)\s]*)?\)", readme)
    assert len(links) >= 20
    for link in links:
        assert (ROOT / link).is_file(), link


def test_readme_feature_table_is_the_features_page():
    # stated twice on purpose (the front door and its page); they must not drift apart
    def table(text):
        return [line for line in text.splitlines() if line.startswith("| ")]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    page = (ROOT / "docs" / "features.md").read_text(encoding="utf-8")
    # the page's links are relative to docs/, the README's to the root
    assert table(readme) and table(readme) == [re.sub(r"\]\((?!https?:)", "](docs/", line) for line in table(page)]


def test_blocks_that_do_not_run_are_few_and_say_why():
    skipped = {}
    for page, line, code in BLOCKS:
        if code.startswith(NOT_RUN):
            assert len(code.splitlines()[0]) > len(NOT_RUN) + 10, f"{page}:{line} does not say why"
            skipped[page] = skipped.get(page, 0) + 1
        else:
            assert NOT_RUN not in code, f"{page}:{line}: the marker goes on the first line"
    assert skipped == NOT_RUN_PER_PAGE
    # the pattern missed no block: as many as there are opening fences
    assert len(BLOCKS) == sum(p.read_text(encoding="utf-8").count("```python\n") for p in PAGES) > 10


def test_a_broken_example_fails(tmp_path):
    proc = run_example("import sparseforce as sf\nsf.force(None, [], sparsity=0.5)\n", tmp_path)
    assert proc.returncode != 0 and "Error" in proc.stderr


@pytest.mark.parametrize("page, line, code", RUN, ids=[f"{page}:{line}" for page, line, _ in RUN])
def test_example_runs(page, line, code, tmp_path):
    proc = run_example(code, tmp_path)
    assert proc.returncode == 0, f"the example at {page}:{line} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
