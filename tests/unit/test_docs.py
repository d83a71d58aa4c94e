"""The documentation holds together: every relative link and image in README.md and docs/*.md
points at a file that exists (and, for a #fragment into a Markdown file, at a heading it has);
bench/results.json copies docs/benchmarks.md's figures and invents none; the plot and diagram
scripts run."""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks, with inline code spans blanked."""
    out, fenced = [], False
    for n, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((n, re.sub(r"`[^`]*`", "``", line)))
    return out


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`([^`]*)`", r"\1", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    fenced = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m and not fenced:
            slug = github_slug(m.group(1))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_github_slug_matches_githubs_rules():
    assert github_slug("HTTP serving (issue 5)") == "http-serving-issue-5"
    assert github_slug("The README's two commands (issue 2)") == "the-readmes-two-commands-issue-2"
    assert github_slug("1. Docker Compose on one host") == "1-docker-compose-on-one-host"
    assert github_slug("Ingest — `python bench/ingest.py` (3 runs)") == \
        "ingest--python-benchingestpy-3-runs"


def test_every_relative_link_and_image_resolves():
    broken = []
    n_links = 0
    for page in PAGES:
        for n, line in prose_lines(page.read_text(encoding="utf-8")):
            for target in LINK.findall(line):
                if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                    continue
                n_links += 1
                path, _, fragment = target.partition("#")
                dest = (page.parent / path).resolve() if path else page
                where = f"{page.relative_to(ROOT)}:{n}: {target}"
                if not dest.exists():
                    broken.append(f"{where} (no such file)")
                elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
                    broken.append(f"{where} (no heading #{fragment} in {dest.name})")
    assert n_links > 50, n_links  # the pages do link to each other: the parser found them
    assert not broken, "\n".join(broken)


def test_the_new_pages_are_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for page in ("architecture", "guide-schedule", "guide-query", "guide-versions",
                 "benchmarks", "deploy"):
        assert f"](docs/{page}.md)" in readme, page
    assert readme.startswith("# ctxvec\n\n```bash\nmake demo   #")


def _numbers(value) -> list:
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [value]
    if isinstance(value, dict):
        return [x for v in value.values() for x in _numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in _numbers(v)]
    return []


def test_results_json_copies_the_figures_of_benchmarks_md():
    results = json.loads((ROOT / "bench" / "results.json").read_text(encoding="utf-8"))
    page = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    # every number written on the page (1,477 and 5.90 are read as 1477 and 5.9)
    written = {float(t.replace(",", "")) for t in re.findall(r"\d+(?:,\d{3})*(?:\.\d+)?", page)}
    missing = []
    for entry in results["entries"]:
        for key in ("id", "section", "date", "hardware", "command"):
            assert entry.get(key), (entry.get("id"), key)
        assert entry["date"] in page, entry["id"]
        missing += [f"{entry['id']}: {x}" for x in _numbers(entry)
                    if float(x) not in written]
    assert not missing, "numbers in bench/results.json that docs/benchmarks.md does not have:\n" \
        + "\n".join(missing)


def test_recorded_medians_are_the_medians_of_the_recorded_runs():
    entries = {e["id"]: e for e in json.loads(
        (ROOT / "bench" / "results.json").read_text(encoding="utf-8"))["entries"]}
    for row in entries["tokenizer_train"]["rows"]:
        assert statistics.median(row["runs_s"]) == row["median_s"], row
    for row in entries["mlm_cpu"]["rows"]:
        assert statistics.median(row["runs_tokens_s"]) == row["median_tokens_s"], row


@pytest.mark.parametrize("script, outputs", [
    ("bench/plots.py", {"bench-data-stages.png", "bench-mlm-throughput.png",
                        "bench-finetune-sts.png", "bench-embed-throughput.png",
                        "bench-index-qps.png", "bench-http-latency.png"}),
    ("docs/img/architecture.py", {"architecture.png"}),
])
def test_plot_scripts_draw_their_images(tmp_path, script, outputs):
    out = tmp_path / ("architecture.png" if "architecture" in script else "img")
    subprocess.run([sys.executable, str(ROOT / script), "--out", str(out)], check=True,
                   capture_output=True, timeout=600)
    written = {p.name for p in tmp_path.rglob("*.png")}
    assert written == outputs
    for p in tmp_path.rglob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 20_000, p
    for name in outputs:  # and the docs show each of them
        assert (ROOT / "docs" / "img" / name).is_file(), name
