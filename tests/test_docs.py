"""Every python code block in the README and docs/ runs; the catalogue table
in docs/formats.md is the one the code generates."""

import math
import pathlib
import re

import pytest

from lowbit.formats.describe import catalogue_markdown

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]


def python_blocks(path):
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.parametrize("path", [p for p in DOCS if python_blocks(p)], ids=lambda p: p.name)
def test_code_blocks_run(path):
    """A page that starts with <!-- requires: MODULE --> runs only where
    that optional module is installed."""
    required = re.match(r"<!-- requires: (\w+) -->", path.read_text())
    if required:
        pytest.importorskip(required.group(1))
    namespace = {}
    for block in python_blocks(path):  # blocks of one page share a namespace, in order
        exec(compile(block, str(path), "exec"), namespace)


def test_catalogue_table_is_current():
    text = (ROOT / "docs" / "formats.md").read_text()
    table = re.search(r"<!-- catalogue:start -->\n(.*?)<!-- catalogue:end -->", text, flags=re.S)
    assert table, "docs/formats.md lost its catalogue markers"
    assert table.group(1) == catalogue_markdown(), (
        "docs/formats.md's catalogue is stale: regenerate it with lowbit.formats.describe.catalogue_markdown()")


def same_up_to_rounding(expected: str, actual: str) -> bool:
    """Markdown lines equal, except table cells that are numbers within a
    last-digit rounding of each other (float sums may differ across CPUs)."""
    def close(a, b):
        try:
            return math.isclose(float(a), float(b), rel_tol=1e-3, abs_tol=0.051)
        except ValueError:
            return a == b

    lines_a, lines_b = expected.splitlines(), actual.splitlines()
    return len(lines_a) == len(lines_b) and all(
        a == b or (a.startswith("|") and len(a.split("|")) == len(b.split("|"))
                   and all(close(x.strip(), y.strip()) for x, y in zip(a.split("|"), b.split("|"))))
        for a, b in zip(lines_a, lines_b))


def test_example_report_is_current(tmp_path):
    """docs/example-report is what `lowbit report` (the README's main job)
    writes today, and every picture it names is there."""
    from lowbit.analysis.report import write_report

    fresh = write_report(tmp_path).read_text()
    example = ROOT / "docs" / "example-report"
    assert same_up_to_rounding((example / "report.md").read_text(), fresh), (
        "docs/example-report is stale: regenerate it with `lowbit report --out docs/example-report`")
    for png in re.findall(r"\]\((\w+\.png)\)", fresh):
        assert (example / png).stat().st_size > 10_000


def test_scale_rule_table_in_the_analysis_docs_is_current():
    from lowbit.analysis import Setting, error_stats, generate

    text = (ROOT / "docs" / "analysis.md").read_text()
    rows = re.findall(r"^\| (mx\w+) \| (floor|rceil) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", text, flags=re.M)
    assert len(rows) == 6
    for fmt, rule, *sqnr in rows:
        for name, documented in zip(("normal", "uniform", "llm_activations"), sqnr):
            x = generate(name)
            measured = error_stats(x, *Setting(fmt, scale_rule=rule).apply(x)).sqnr_db
            assert abs(measured - float(documented)) <= 0.051, (fmt, rule, name, measured)
