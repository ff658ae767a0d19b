"""Every Python block in docs/ runs, top to bottom, page by page, as a reader
would paste them into one session. Blocks fenced as ```python before (the
old tools' code in the migration pages) and other languages are not run."""

import re
import textwrap

import pytest

from tests.examples import ROOT

DOCS = ROOT / "docs"


def python_blocks(page):
    return re.findall(r"```python\n(.+?)```", page.read_text(), re.S)


PAGES = sorted(page for page in DOCS.glob("*.md") if python_blocks(page))


def reader_files(page_name, tmp_path):
    """Names a page expects the reader to have: their own certificate files."""
    if page_name == "security.md":
        from tests.certs import make_tls_files

        files = make_tls_files(tmp_path)
        return {"certfile": str(files.server_cert), "keyfile": str(files.server_key), "cafile": str(files.ca)}
    return {}


def test_the_guide_pages_have_runnable_examples():
    names = {page.name for page in PAGES}
    assert {"guide.md", "migrating.md", "embedding.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_python_block_runs(page, tmp_path):
    namespace = {"__name__": "docs_page", **reader_files(page.name, tmp_path)}
    for number, block in enumerate(python_blocks(page), 1):
        code = textwrap.dedent(block)  # a block may sit indented in a list item
        exec(compile(code, f"docs/{page.name} block {number}", "exec"), namespace)
