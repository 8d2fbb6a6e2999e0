"""The README is short, cites the paper correctly, links only inside the repository, and
every number in its result tables is regenerated from benchmarks/results/."""

from __future__ import annotations

import re

from conftest import ROOT, load_benchmark

README = (ROOT / "README.md").read_text()


def test_short_with_the_right_citation():
    assert len(README.splitlines()) <= 150
    assert "Henry Li, Ronen Basri and Yuval Kluger" in README
    assert "Likelihood Training of Cascaded" in README and "ICLR 2024" in README
    assert "Li & Cao" not in README
    assert "Li & Cao" not in (ROOT / "docs" / "math.md").read_text()


def test_links_stay_inside_the_repository():
    links = re.findall(r"\]\(([^)]+)\)", README)
    assert links
    for link in links:
        assert not re.match(r"[a-z]+://", link), link
        assert (ROOT / link.split("#")[0]).exists(), link


def test_result_tables_are_the_regenerated_ones():
    readme = load_benchmark("readme")
    blocks = readme.BLOCK.findall(README)
    assert blocks, "the README has no generated result table"
    assert readme.regenerate(README) == README


def test_no_hand_typed_results_outside_the_generated_tables():
    readme = load_benchmark("readme")
    prose = readme.BLOCK.sub("", README)
    prose = re.sub(r"```.*?```", "", prose, flags=re.S)  # commands (version pins)
    assert re.findall(r"\d+\.\d{2,}", prose) == []
