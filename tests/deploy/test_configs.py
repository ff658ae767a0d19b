"""docs/deployment.md shows the balancer configurations the deployment
tests run, byte for byte: each block follows a comment naming its file."""

import re

import pytest

from tests.examples import ROOT

PAGE = ROOT / "docs" / "deployment.md"


def shown(path):
    """The fenced block after ``<!-- PATH: ... -->`` in docs/deployment.md."""
    found = re.search(rf"<!-- {re.escape(path)}: [^\n]*-->\n```text\n(.*?)```\n", PAGE.read_text(), re.S)
    assert found, f"docs/deployment.md shows no block for {path}"
    return found.group(1)


@pytest.mark.parametrize("path", ["deploy/haproxy.cfg", "deploy/nginx-http.conf", "deploy/nginx-stream.conf"])
def test_the_docs_show_the_tested_file(path):
    assert shown(path) == (ROOT / path).read_text()


def test_the_tests_run_these_files():
    tests = ROOT / "tests" / "deploy"
    assert 'ROOT / "deploy" / "haproxy.cfg"' in (tests / "deployment.py").read_text()
    nginx = (tests / "test_nginx.py").read_text()
    assert '"nginx-http.conf"' in nginx and '"nginx-stream.conf"' in nginx
