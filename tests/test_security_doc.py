"""Every python block of docs/security.md runs, in order, in one namespace
(as a reader would paste them), with PEM files made at test time standing in
for the reader's own certificate, key and CA."""

import re
from pathlib import Path

from tests.certs import make_tls_files

DOC = Path(__file__).resolve().parent.parent / "docs" / "security.md"


def test_every_python_block_of_the_security_page_runs(tmp_path):
    blocks = re.findall(r"```python\n(.+?)```", DOC.read_text(), re.S)
    assert len(blocks) >= 6
    files = make_tls_files(tmp_path)
    namespace = {
        "__name__": "docs_security",
        "certfile": str(files.server_cert),
        "keyfile": str(files.server_key),
        "cafile": str(files.ca),
    }
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)


def test_the_defaults_on_the_page_are_the_real_ones():
    from evloop import DEFAULT_LIMITS

    text = DOC.read_text()
    limits = DEFAULT_LIMITS
    assert f"| idle connection | {limits.idle_timeout:g} s |" in text
    assert f"| request once started | {limits.request_timeout:g} s from its first byte |" in text
    assert f"| output not taken | {limits.write_timeout:g} s without" in text
    assert f"| TLS handshake | {limits.handshake_timeout:g} s from accept |" in text
    assert f"| graceful shutdown | {limits.shutdown_timeout:g} s |" in text
    assert "stop reading above 1 MiB, read again at 256 KiB" in text
    assert DEFAULT_LIMITS.write_high_water == 1 << 20 and DEFAULT_LIMITS.write_low_water == 1 << 18
