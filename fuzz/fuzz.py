#!/usr/bin/env python3
"""Coverage-guided fuzzing (atheris, libFuzzer) of evloop's framers and its
HTTP and WebSocket glue. The invariant each target checks is in
``fuzz/targets.py``; the seeds are in ``fuzz/corpus/<target>/``.

    python fuzz/fuzz.py --list
    python fuzz/fuzz.py TARGET [libFuzzer options] [corpus directories]
        e.g. python fuzz/fuzz.py resp -max_total_time=60 /tmp/resp-new fuzz/corpus/resp
    python fuzz/fuzz.py --all SECONDS
        every target for SECONDS each, new inputs kept in a temporary
        directory (the repository's corpus is only read); exit status 1
        if any target crashed, with the crashing input's path printed.
    python fuzz/fuzz.py --replay TARGET FILE...
        run the invariant on saved inputs, without atheris.

libFuzzer writes new interesting inputs into the first corpus directory it
is given: give a scratch one first to keep the repository's seeds as they are.
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from targets import TARGETS, check, checker  # noqa: E402

#: Inputs longer than this are not tried: the bytewise feed makes each run
#: O(n) framer calls, and the bugs worth finding show in a few hundred bytes.
MAX_LEN = 2048
TARGET_VARIABLE = "EVLOOP_FUZZ_TARGET"


def fuzz_one(target: str, libfuzzer_args: List[str]) -> None:
    """Fuzz ``target`` in this process (libFuzzer exits it when done)."""
    import atheris

    # Instrument what is fuzzed (and the parsers under it) for coverage.
    with atheris.instrument_imports(include=["evloop", "h11", "wsproto"]):
        import evloop.protocols
        import evloop.protocols.http
        import evloop.protocols.websocket

        import evloop.testing  # noqa: F401

    one_input = checker(target)
    # libFuzzer's -merge and -fork run this script again with its own
    # options only: the target name goes to them in the environment.
    os.environ[TARGET_VARIABLE] = target
    args = [sys.argv[0], f"-max_len={MAX_LEN}", "-timeout=20", *libfuzzer_args]
    atheris.Setup(args, one_input)
    atheris.Fuzz()


def fuzz_all(seconds: int) -> int:
    """Every target for ``seconds``, one process each; 1 if any crashed."""
    failed = []
    with tempfile.TemporaryDirectory(prefix="evloop-fuzz-") as scratch:
        for target in TARGETS:
            new = Path(scratch, target)
            new.mkdir()
            command = [
                sys.executable,
                str(HERE / "fuzz.py"),
                target,
                f"-max_total_time={seconds}",
                f"-artifact_prefix={scratch}/{target}-",
                "-print_final_stats=1",
                str(new),
                str(HERE / "corpus" / target),
            ]
            print(f"=== fuzzing {target} for {seconds}s", flush=True)
            result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            lines = result.stdout.splitlines()
            done = [line for line in lines if "DONE" in line or line.startswith("stat::number_of_executed")]
            print("\n".join(done), flush=True)
            if result.returncode != 0:
                failed.append(target)
                print("\n".join(lines[-60:]), flush=True)
                for crash in sorted(Path(scratch).glob(f"{target}-*")):
                    print(f"crashing input ({crash.name}): {crash.read_bytes()!r}", flush=True)
    if failed:
        print(f"fuzz: crashes in {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def replay(target: str, paths: List[str]) -> int:
    for path in paths:
        check(target, Path(path).read_bytes())
        print(f"{path}: ok")
    return 0


def main(argv: List[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if argv[0] == "--list":
        print("\n".join(TARGETS))
        return 0
    if argv[0] == "--all":
        return fuzz_all(int(argv[1]) if len(argv) > 1 else 10)
    if argv[0] == "--replay":
        return replay(argv[1], argv[2:])
    if argv[0].startswith("-") and TARGET_VARIABLE in os.environ:  # run again by libFuzzer
        argv = [os.environ[TARGET_VARIABLE], *argv]
    target = argv[0]
    if target not in TARGETS:
        print(f"fuzz: no target {target!r}; the targets are {', '.join(TARGETS)}", file=sys.stderr)
        return 2
    fuzz_one(target, argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
