"""MkDocs hook: the committed plots stay in benchmarks/results/, and the pages link to them as
`../benchmarks/results/...png`, the path that also works on GitHub's view of docs/. The site
publishes them at `benchmarks/results/` and the links are read relative to the docs root, so
neither the plots nor the pages need a copy."""
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
OUTSIDE, INSIDE = "](../benchmarks/results/", "](benchmarks/results/"


def on_files(files, config):
    for png in sorted((ROOT / "benchmarks" / "results").rglob("*.png")):
        files.append(File(png.relative_to(ROOT).as_posix(), str(ROOT), config["site_dir"],
                          config["use_directory_urls"]))
    return files


def on_page_markdown(markdown, page, config, files):
    # only the top-level pages link there; from docs/methods/ the GitHub path would be ../../
    if "/" not in page.file.src_uri:
        markdown = markdown.replace(OUTSIDE, INSIDE)
    return markdown
