"""Two evloop hosts (``--workers 2 --proxy-protocol``) and HAProxy running
deploy/haproxy.cfg in front of them, on a topology from tests.deploy.hosts."""

import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from tests.deploy.hosts import Topology, make_topology, namespaces_unavailable
from tests.deploy.processes import WAIT, LoggedProcess, stats, until
from tests.examples import ROOT

__all__ = ["HAPROXY_CONFIG", "Deployment", "need", "topology_kind", "unavailable"]

HAPROXY_CONFIG = ROOT / "deploy" / "haproxy.cfg"
# HAProxy's names for the hosts (the "server" lines of deploy/haproxy.cfg).
SERVER = {"a": "app1", "b": "app2"}
BACKEND = "evloop_servers"
WORKERS = 2


def need(program: str, package: str = "", proxy_protocol: bool = True) -> None:
    """Skip (fail, where CI requires it) without ``program`` or without the
    PROXY protocol in this build."""
    missing = None
    if shutil.which(program) is None:
        missing = f"{program} is not installed (Debian: apt-get install {package or program})"
    elif proxy_protocol:
        try:
            import evloop.proxy_protocol  # noqa: F401
        except ImportError:
            missing = "this build has no evloop.proxy_protocol (--proxy-protocol)"
    if missing is not None:
        unavailable(missing)


def unavailable(missing: str) -> None:
    """Skip for want of ``missing``; fail where CI requires these tests."""
    if os.environ.get("EVLOOP_REQUIRE_HAPROXY") == "1":
        pytest.fail(f"EVLOOP_REQUIRE_HAPROXY=1 but {missing}")
    pytest.skip(missing)


def topology_kind(wanted: str) -> str:
    """``wanted`` ("netns" or "loopback"), or "loopback" with a warning when
    this machine does not allow network namespaces."""
    if wanted == "netns":
        why = namespaces_unavailable()
        if why is not None:
            message = f"network namespaces unavailable ({why}): falling back to 127.0.0.2 and 127.0.0.3"
            print(message)
            warnings.warn(message, stacklevel=2)
            return "loopback"
    return wanted


class Deployment:
    """The topology, a LoggedProcess per host and HAProxy."""

    def __init__(self, kind: str, workdir: Path, proxy_protocol: bool = True):
        self.workdir = workdir
        self.proxy_protocol = proxy_protocol
        self.topology: Topology = make_topology(kind)
        print(f"deployment: {self.topology.describe()}")
        self.hosts: Dict[str, LoggedProcess] = {}
        self.haproxy: Optional[LoggedProcess] = None
        self.others: List[LoggedProcess] = []  # another balancer (nginx)
        self.stats_path = str(workdir / "haproxy.sock")

    # -- the hosts ------------------------------------------------------

    def version_file(self, name: str) -> Path:
        return self.workdir / f"version-{name}"

    def start_host(self, name: str, version: str = "1") -> LoggedProcess:
        host = self.topology.hosts[name]
        self.version_file(name).write_text(version)
        argv = [
            sys.executable, "-m", "evloop", "serve", "tests.deploy.app:App",
            "--host", host.address, "--port", str(host.port), "--workers", str(WORKERS),
            "--max-connections-per-peer", "0", "--shutdown-timeout", "5",
        ]  # fmt: skip
        if self.proxy_protocol:
            argv += ["--proxy-protocol", f"{host.balancer}/32"]
        env = dict(
            os.environ,
            PYTHONPATH=str(ROOT),
            PYTHONUNBUFFERED="1",
            EVLOOP_DEPLOY_HOST=name,
            EVLOOP_DEPLOY_VERSION_FILE=str(self.version_file(name)),
        )
        process = LoggedProcess(f"host {name}", host.command(argv), env=env, cwd=ROOT)
        self.hosts[name] = process
        found = process.wait_for(rf"listening on (\S+):(\d+) with {WORKERS} workers")
        host.port = int(found.group(2))
        return process

    # -- HAProxy ----------------------------------------------------------

    def haproxy_environment(self) -> Dict[str, str]:
        hosts = self.topology.hosts
        return dict(
            os.environ,
            EVLOOP_HAPROXY_STATS=self.stats_path,
            EVLOOP_FRONTEND="{}:{}".format(*self.topology.frontend),
            EVLOOP_APP1=f"{hosts['a'].address}:{hosts['a'].port}",
            EVLOOP_APP2=f"{hosts['b'].address}:{hosts['b'].port}",
        )

    def start_haproxy(self) -> None:
        argv = self.topology.balancer_command(["haproxy", "-db", "-f", str(HAPROXY_CONFIG)])
        self.haproxy = LoggedProcess("haproxy", argv, env=self.haproxy_environment())
        until(lambda: os.path.exists(self.stats_path), what="HAProxy's stats socket")
        for name in self.topology.hosts:
            self.wait_status(name, "UP")

    def server_stats(self, name: str) -> Dict[str, str]:
        return stats(self.stats_path)[(BACKEND, SERVER[name])]

    def wait_status(self, name: str, status: str, timeout: float = WAIT) -> None:
        """Wait until HAProxy's health checks call host ``name`` ``status``."""
        until(
            lambda: self.server_stats(name)["status"] == status,
            timeout,
            what=f"HAProxy to see host {name} {status} (log:\n{self.logs()})",
        )

    # -- the whole --------------------------------------------------------

    def start_hosts(self) -> "Deployment":
        for name in self.topology.hosts:
            self.start_host(name)
        return self

    def start(self) -> "Deployment":
        self.start_hosts()
        self.start_haproxy()
        return self

    def logs(self) -> str:
        parts = []
        for process in [*self.hosts.values(), self.haproxy, *self.others]:
            if process is not None:
                parts.append(f"--- {process.name}\n{process.output()}")
        return "\n".join(parts)

    def close(self) -> None:
        try:
            for process in [self.haproxy, *self.others, *self.hosts.values()]:
                if process is not None:
                    process.close()
        finally:
            self.topology.close()
