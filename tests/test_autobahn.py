"""Autobahn|Testsuite's fuzzingclient against the echo example: every case of
1.* to 7.* (framing, pings, reserved bits, opcodes, fragmentation, UTF-8,
closing) and a sample of the permessage-deflate cases (12.*, 13.*), checked
for FAILED 0. The whole suite (517 cases, half an hour on a busy machine) is
run by hand: see docs/websocket.md.

It takes half a minute to a minute and a half, so it is opt-in:
``EVLOOP_AUTOBAHN=1 python -m pytest tests/test_autobahn.py`` (``.ci/run``
sets it). The suite runs only on Python 2.7; ``run.sh`` (``AUTOBAHN_RUN``,
default ``../shared/autobahn/run.sh`` beside the checkout) installs it for
pyenv's 2.7.18 on first use. Without it the test skips and says why.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.examples import ROOT, running_example

RUN_SH = Path(os.environ.get("AUTOBAHN_RUN", ROOT.parent / "shared" / "autobahn" / "run.sh"))
COUNTS = re.compile(
    r"autobahn: OK (\d+) / NON-STRICT (\d+) / INFORMATIONAL (\d+) / UNIMPLEMENTED (\d+) / FAILED (\d+)"
)

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("EVLOOP_AUTOBAHN") != "1", reason="opt-in: EVLOOP_AUTOBAHN=1 (.ci/run sets it)"
    ),
    pytest.mark.skipif(not RUN_SH.exists(), reason=f"no Autobahn runner at {RUN_SH} (set AUTOBAHN_RUN)"),
    pytest.mark.skipif(shutil.which("pyenv") is None, reason="the Autobahn runner needs pyenv's Python 2.7"),
]

# One case of each compression setting the suite tries (12.x: offers and
# accepts, 13.x: window sizes and context takeover), the smallest messages.
DEFLATE_SAMPLE = "12.1.1,12.2.1,12.3.1,12.4.1,12.5.1,13.1.1,13.2.1,13.3.1,13.4.1,13.5.1,13.6.1,13.7.1"


@pytest.mark.timeout(600)
@pytest.mark.parametrize("cases", ["--quick", DEFLATE_SAMPLE], ids=["1-7", "deflate-sample"])
def test_autobahn_fuzzingclient(cases, tmp_path):
    option = ["--quick"] if cases == "--quick" else ["--cases", cases]
    with running_example("websocket_echo.py", "--host", "127.0.0.1") as (host, port, _):
        result = subprocess.run(
            ["sh", str(RUN_SH), *option, "--out", str(tmp_path), f"ws://{host}:{port}/"],
            capture_output=True,
            text=True,
            timeout=580,
        )
    output = result.stdout + result.stderr
    counts = COUNTS.search(output)
    assert counts, output
    ok, non_strict, informational, unimplemented, failed = map(int, counts.groups())
    print(output.strip().splitlines()[-1])
    assert failed == 0 and unimplemented == 0, output
    assert result.returncode == 0, output
    assert ok + non_strict + informational >= (240 if cases == "--quick" else 12), output
