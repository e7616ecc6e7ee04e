"""Every python code block in the README and docs/ runs; the catalogue table
in docs/formats.md is the one the code generates."""

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
    namespace = {}
    for block in python_blocks(path):  # blocks of one page share a namespace, in order
        exec(compile(block, str(path), "exec"), namespace)


def test_catalogue_table_is_current():
    text = (ROOT / "docs" / "formats.md").read_text()
    table = re.search(r"<!-- catalogue:start -->\n(.*?)<!-- catalogue:end -->", text, flags=re.S)
    assert table, "docs/formats.md lost its catalogue markers"
    assert table.group(1) == catalogue_markdown(), (
        "docs/formats.md's catalogue is stale: regenerate it with lowbit.formats.describe.catalogue_markdown()")
