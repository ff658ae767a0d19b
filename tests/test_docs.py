"""Every Python block in the guide runs, top to bottom, as a reader would."""

import re

import pytest

from tests.examples import ROOT

# Pages whose python blocks are complete programs run in order on one page.
RUNNABLE_PAGES = ["docs/guide.md", "docs/migrating.md", "docs/embedding.md"]


def python_blocks(page):
    text = (ROOT / page).read_text()
    return re.findall(r"```python\n(.+?)```", text, re.S)


@pytest.mark.parametrize("page", RUNNABLE_PAGES)
def test_every_python_block_runs(page):
    blocks = python_blocks(page)
    assert blocks, f"{page} has no python blocks"
    namespace = {"__name__": "docs_page"}  # one reader's session per page
    for number, block in enumerate(blocks, 1):
        exec(compile(block, f"{page} block {number}", "exec"), namespace)
