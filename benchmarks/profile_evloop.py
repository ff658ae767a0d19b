"""Profile an evloop server under one benchmark workload.

    python benchmarks/profile_evloop.py --workload echo-1 --tool cprofile
    python benchmarks/profile_evloop.py --workload conn --tool py-spy

The server (``benchmarks/peers.py evloop ...``) runs under the chosen
profiler, pinned to one core; the C load generator drives it from another
core for ``--duration`` seconds; then the server is stopped and the profile
printed: the functions that cost the most, and what that is per request.

- ``cprofile``: deterministic, every call counted; its overhead inflates
  small functions, so read the call counts and the shares, not the times.
- ``pyinstrument``: statistical, low overhead, the call tree.
- ``py-spy``: statistical, from outside the process, with native frames
  (``--native``), so time inside the kernel's send/recv shows as such;
  needs ptrace permission.
"""

import argparse
import collections
import os
import pstats
import re
import shutil
import signal
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from benchmarks import run  # noqa: E402

__all__ = ["main"]


def profiled_command(tool: str, output: str, server_args: list) -> list:
    if tool == "cprofile":
        return [sys.executable, "-m", "cProfile", "-o", output, run.PEERS, *server_args]
    if tool == "pyinstrument":
        return [
            sys.executable,
            "-m",
            "pyinstrument",
            "--renderer",
            "text",
            "--outfile",
            output,
            run.PEERS,
            *server_args,
        ]
    return [sys.executable, run.PEERS, *server_args]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="echo-1", choices=list(run.WORKLOADS))
    parser.add_argument("--tool", default="cprofile", choices=["cprofile", "pyinstrument", "py-spy"])
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    run.build_loadgen()
    run.raise_fd_limit()
    _title, server_workload, load_args, _impls = run.WORKLOADS[args.workload]
    workdir = tempfile.mkdtemp(prefix="evloop-profile-")
    output = os.path.join(workdir, "profile.out")
    command = profiled_command(args.tool, output, ["evloop", server_workload, "--port", "0"])
    server = _start(command)
    spy = None
    try:
        if args.tool == "py-spy":
            spy_path = shutil.which("py-spy")
            if spy_path is None:
                raise SystemExit("py-spy is not installed (pip install -e '.[bench]')")
            spy = subprocess.Popen(
                [
                    spy_path,
                    "record",
                    "--pid",
                    str(server.pid),
                    "--format",
                    "raw",
                    "--native",
                    "--rate",
                    "500",
                    "--output",
                    output,
                    "--duration",
                    str(int(args.duration + 2)),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        result = run.run_loadgen(
            [*load_args, "--warmup", "0.5", "--duration", str(args.duration)], server, timeout=120
        )
    finally:
        if spy is not None:
            spy.wait(60)
        server.stop()
    requests = result["requests"]
    print(
        f"{args.workload}: {requests} requests in {result['seconds']:.2f} s under {args.tool} "
        f"({requests / result['seconds']:,.0f}/s, server CPU "
        f"{result['server_cpu'] / requests * 1e6:.1f} us per request with the profiler on)"
    )
    if args.tool == "cprofile":
        _print_cprofile(output, requests, args.top)
    elif args.tool == "pyinstrument":
        with open(output) as text:
            print(text.read())
    else:
        _print_collapsed(output, args.top)
    return 0


def _child_setup():
    # stop() ends the profiled server with SIGINT; a background job (`&`,
    # nohup) starts with SIGINT ignored, which the child would inherit.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    pin = run._pinned(run.SERVER_CPUS)
    if pin is not None:
        pin()


def _start(command):
    class Profiled(run.ServerProcess):
        def __init__(self):  # the same process handling, another command line
            self.name = "evloop (profiled)"
            self.stderr_path = os.path.join(run.BUILD_DIR, "server-profiled.log")
            os.makedirs(run.BUILD_DIR, exist_ok=True)
            self._stderr = open(self.stderr_path, "wb")
            self.process = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                preexec_fn=_child_setup,
                cwd=run.ROOT,
            )
            self.pid = self.process.pid
            self.port = self._wait_listening(timeout=30)

        def stop(self):
            # SIGINT, not SIGTERM: the profilers write their output on the
            # way out of a KeyboardInterrupt.
            if self.alive():
                self.process.send_signal(signal.SIGINT)
                try:
                    self.process.wait(30)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            self.process.stdout.close()
            self._stderr.close()

    return Profiled()


def _print_cprofile(path: str, requests: int, top: int) -> None:
    stats = pstats.Stats(path)
    total = stats.total_tt
    print(f"profiled time {total:.2f} s = {total / requests * 1e6:.1f} us per request\n")
    rows = sorted(stats.stats.items(), key=lambda item: item[1][2], reverse=True)
    print(f"{'own us/req':>10} {'share':>6} {'calls/req':>9}  function")
    for (filename, line, name), (_cc, calls, tottime, _ct, _callers) in rows[:top]:
        where = f"{os.path.basename(filename)}:{line}" if line else filename
        print(
            f"{tottime / requests * 1e6:10.2f} {tottime / total:6.1%} {calls / requests:9.2f}  "
            f"{name} ({where})"
        )


def _print_collapsed(path: str, top: int) -> None:
    """py-spy's raw format: 'frame;frame;... count' per line. Sum by leaf."""
    leaves = collections.Counter()
    inclusive = collections.Counter()
    total = 0
    with open(path) as raw:
        for line in raw:
            stack, _, count = line.rstrip().rpartition(" ")
            if not stack:
                continue
            count = int(count)
            total += count
            frames = stack.split(";")
            leaves[frames[-1]] += count
            # One count per function however deep it recurs; line numbers
            # dropped so a function's lines add up.
            for name in {re.sub(r":\d+\)$", ")", frame) for frame in frames}:
                inclusive[name] += count
    print(f"{total} samples; most frequent innermost frames:")
    for frame, count in leaves.most_common(top):
        print(f"{count / total:6.1%}  {frame}")
    print("\nfunctions by inclusive share (on the stack, callees included):")
    for frame, count in inclusive.most_common(top):
        print(f"{count / total:6.1%}  {frame}")


if __name__ == "__main__":
    sys.exit(main())
