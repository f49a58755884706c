"""The documentation a clone carries: a README one reads (at most 250 lines), every relative link
of it and of docs/ leading to a file of the repository, and no text pointing at files outside it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md",
         *sorted((ROOT / "datasets").rglob("README.md")), ROOT / "tests" / "reference" / "README.md"]
# What the original project's maintainers keep beside a checkout; a user of a clone has none of it.
OUTSIDE = re.compile(r"\.\./shared|/work/shared|\bSPEC\b|DATASETS\.md|PERFORMANCE_NOTES")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_the_readme_is_short_and_starts_with_the_two_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250, len(lines)
    assert lines[0] == "# limubert-jax" and lines[2].startswith("python3 -m venv") and lines[3].startswith("python3 -m venv")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_lead_into_the_repository_and_nothing_points_outside(page):
    text = page.read_text()
    assert not OUTSIDE.search(text), OUTSIDE.search(text).group(0)
    for target in LINK.findall(text):
        if re.match(r"[a-z]+://", target) or target.startswith("#"):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.is_relative_to(ROOT) and path.exists(), f"{page.name}: {target}"


def test_command_help_and_package_docstrings_point_inside_the_repository():
    for path in sorted((ROOT / "limubert_jax").rglob("*.py")) + sorted((ROOT / "datasets").rglob("*.py")):
        found = OUTSIDE.search(path.read_text())
        assert not found, f"{path.relative_to(ROOT)}: {found.group(0)}"
