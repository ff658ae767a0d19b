"""docs/api.md documents every public name, as the code has it now."""

import subprocess
import sys

from tests.examples import ROOT


def test_api_reference_is_current():
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "make_api_docs.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_every_public_name_has_a_docstring():
    import evloop.protocols

    import evloop

    missing = [
        f"{package.__name__}.{name}"
        for package in (evloop, evloop.protocols)
        for name in package.__all__
        if callable(getattr(package, name)) and not (getattr(package, name).__doc__ or "").strip()
    ]
    assert missing == []
