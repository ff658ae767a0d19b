"""Strict mypy as a user's type checker sees evloop: over examples/, a typed
user program (tests/typing/user_program.py, which must pass) and wrong calls
(tests/typing/wrong_calls.py, each of which must be caught).

mypy cannot follow setuptools' editable-install finder to evloop.protocols
(the repository's protocols/ folder), and run from the checkout it would
find ./evloop without it. So the package is installed, as a wheel would
install it, into a staging directory, and mypy runs from outside the
checkout with only that directory on its path. Usage: python tools/check_types.py
"""

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TYPING = ROOT / "tests" / "typing"
MYPY = [sys.executable, "-m", "mypy", "--strict", "--python-version", "3.10", "--no-incremental"]


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="evloop-types-") as stage:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", stage, str(ROOT)],
            check=True,
        )
        env = dict(os.environ, MYPYPATH=stage)
        env.pop("PYTHONPATH", None)
        good = subprocess.run(
            [*MYPY, str(ROOT / "examples"), str(TYPING / "user_program.py")], cwd=stage, env=env
        )
        wrong = TYPING / "wrong_calls.py"
        found = subprocess.run([*MYPY, str(wrong)], cwd=stage, env=env, capture_output=True, text=True).stdout
    reported = {int(n) for n in re.findall(rf"{re.escape(wrong.name)}:(\d+): error", found)}
    marked = {
        n for n, line in enumerate(wrong.read_text().splitlines(), 1) if re.search(r"\S  # wrong", line)
    }
    if reported != marked:
        print(found, file=sys.stderr)
        print(
            f"check_types: wrong_calls.py lines caught {sorted(reported)}, marked {sorted(marked)}",
            file=sys.stderr,
        )
        return 1
    print(f"check_types: all {len(marked)} wrong calls caught")
    return good.returncode


if __name__ == "__main__":
    sys.exit(main())
