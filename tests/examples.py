"""Start an example as a real subprocess and find the port it bound."""

import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"listening on (\S+):(\d+)")


@contextlib.contextmanager
def running_example(script, *args, python=sys.executable, cwd=ROOT, env=None, source_tree=True):
    """Run ``examples/<script> --port 0 *args``; yield (host, port, process).
    The example prints ``listening on HOST:PORT`` once bound. With
    ``source_tree=False`` the example imports evloop from ``python``'s
    installation, not from this checkout."""
    command = [python, str(ROOT / "examples" / script), "--port", "0", *args]
    environment = dict(os.environ, PYTHONUNBUFFERED="1")
    if source_tree:
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), environment.get("PYTHONPATH")]))
    else:
        environment.pop("PYTHONPATH", None)
    if env:
        environment.update(env)
    process = subprocess.Popen(
        command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment
    )
    try:
        seen = []
        for line in process.stdout:
            seen.append(line)
            match = LISTENING.search(line)
            if match:
                host = match.group(1).strip("[]")
                break
        else:
            raise AssertionError(f"{script} exited without listening:\n{''.join(seen)}")
        yield host, int(match.group(2)), process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()
