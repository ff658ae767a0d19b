"""Two "hosts" for the deployment tests: network namespaces joined by veth
pairs, or, where the machine does not allow them, two loopback addresses.

With namespaces (root and ``ip netns`` needed) the layout is::

    root namespace            namespace <id>lb           namespace <id>a
    the test's clients  ----  HAProxy (or nginx)  ----   evloop, 10.N.M.6:9000
    10.N.M.1                  10.N.M.2 (frontend)
                              10.N.M.5 (to host a)       namespace <id>b
                              10.N.M.9 (to host b) ----  evloop, 10.N.M.10:9000

so the clients' address (10.N.M.1), the balancer's (10.N.M.5 and .9) and
the hosts' differ, and a host can learn the client's only from the PROXY
header. The names carry the test process's id, and namespaces left by a
run that was killed are removed by the next run. The loopback fallback
puts the hosts on 127.0.0.2 and 127.0.0.3, the balancer on 127.0.0.1 and
the clients on 127.0.0.9.
"""

import ipaddress
import os
import random
import re
import shutil
import subprocess
from typing import Dict, List, Optional

__all__ = ["Host", "Topology", "make_topology", "namespaces_unavailable"]

_PREFIX = "evl"
_counter = [0]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=10)


def namespaces_unavailable() -> Optional[str]:
    """Why network namespaces cannot be used here, or None when they can."""
    if shutil.which("ip") is None:
        return "no `ip` command (Debian: iproute2)"
    if os.geteuid() != 0:
        return "not root (ip netns needs CAP_SYS_ADMIN)"
    probe = f"{_PREFIX}{os.getpid()}probe"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` fails here: {made.stderr.strip()}"
    try:
        # Entering one (it mounts a /sys of its own) and making a veth pair.
        ran = _ip("netns", "exec", probe, "ip", "link", "add", "evlprobe0", "type", "veth", check=False)
        if ran.returncode != 0:
            return f"`ip netns exec` or veth pairs fail here: {ran.stderr.strip()}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


def remove_stale_namespaces() -> None:
    """Delete the namespaces of earlier runs whose process is gone."""
    listing = _ip("netns", "list", check=False).stdout
    for name in re.findall(rf"^({_PREFIX}(\d+)\S*)", listing, re.MULTILINE):
        full, pid = name
        if not os.path.exists(f"/proc/{pid}"):
            _ip("netns", "del", full, check=False)


class Host:
    """Where one evloop host runs: its namespace (None on loopback), the
    address it serves on, and the balancer's address as it sees it."""

    def __init__(self, name: str, namespace: Optional[str], address: str, port: int, balancer: str):
        self.name = name
        self.namespace = namespace
        self.address = address
        self.port = port
        self.balancer = balancer

    def command(self, argv: List[str]) -> List[str]:
        return in_namespace(self.namespace, argv)


def in_namespace(namespace: Optional[str], argv: List[str]) -> List[str]:
    # `ip netns exec` execs the command (no fork): the pid is the command's.
    return ["ip", "netns", "exec", namespace, *argv] if namespace else list(argv)


class Topology:
    """The clients' address, the balancer's namespace and frontend, the hosts."""

    kind = "loopback"

    def __init__(self) -> None:
        self.client = "127.0.0.9"
        self.balancer_namespace: Optional[str] = None
        self.frontend = ("127.0.0.1", _free_port("127.0.0.1"))
        self.hosts: Dict[str, Host] = {
            "a": Host("a", None, "127.0.0.2", 0, "127.0.0.1"),
            "b": Host("b", None, "127.0.0.3", 0, "127.0.0.1"),
        }

    def balancer_command(self, argv: List[str]) -> List[str]:
        return in_namespace(self.balancer_namespace, argv)

    def close(self) -> None:
        pass

    def describe(self) -> str:
        hosts = ", ".join(f"{h.name} on {h.address}" for h in self.hosts.values())
        return (
            f"two loopback addresses, not network namespaces: {hosts}; balancer on "
            f"{self.frontend[0]}:{self.frontend[1]}; clients from {self.client}"
        )


class NamespaceTopology(Topology):
    kind = "netns"
    PORT = 9000

    def __init__(self) -> None:
        remove_stale_namespaces()
        _counter[0] += 1
        self.id = f"{_PREFIX}{os.getpid()}{_counter[0]}"
        self.namespaces: List[str] = []
        self.root_link = self.id + "c"
        net = _free_subnet()
        address = [str(net.network_address + i) for i in range(16)]
        try:
            self._build(address)
        except BaseException:
            self.close()
            raise
        self.client = address[1]
        self.frontend = (address[2], self.PORT)

    def _build(self, address: List[str]) -> None:
        lb = self._namespace("lb")
        # The clients' link: root <-> balancer.
        _ip("link", "add", self.root_link, "type", "veth", "peer", "name", self.id + "l", "netns", lb)
        _ip("addr", "add", address[1] + "/30", "dev", self.root_link)
        _ip("link", "set", self.root_link, "up")
        _ip("-n", lb, "addr", "add", address[2] + "/30", "dev", self.id + "l")
        _ip("-n", lb, "link", "set", self.id + "l", "up")
        self.balancer_namespace = lb
        self.hosts = {}
        for index, name in enumerate("ab", start=1):
            namespace = self._namespace(name)
            outside, inside = address[4 * index + 1], address[4 * index + 2]
            near, far = f"{self.id}l{name}", f"{self.id}h{name}"
            _ip("-n", lb, "link", "add", near, "type", "veth", "peer", "name", far, "netns", namespace)
            _ip("-n", lb, "addr", "add", outside + "/30", "dev", near)
            _ip("-n", lb, "link", "set", near, "up")
            _ip("-n", namespace, "addr", "add", inside + "/30", "dev", far)
            _ip("-n", namespace, "link", "set", far, "up")
            self.hosts[name] = Host(name, namespace, inside, self.PORT, outside)

    def _namespace(self, suffix: str) -> str:
        name = self.id + suffix
        _ip("netns", "add", name)
        self.namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")
        return name

    def close(self) -> None:
        """Remove the namespaces (their veth ends go with them) and the
        root's end of the clients' link, if it is still there."""
        for name in self.namespaces:
            _ip("netns", "del", name, check=False)
        _ip("link", "del", self.root_link, check=False)
        self.namespaces = []

    def describe(self) -> str:
        hosts = ", ".join(f"{h.name} = {h.namespace} ({h.address})" for h in self.hosts.values())
        return (
            f"network namespaces: balancer {self.balancer_namespace} "
            f"({self.frontend[0]}:{self.frontend[1]}), hosts {hosts}; clients from {self.client}"
        )


def _free_subnet() -> ipaddress.IPv4Network:
    """A /28 in 10.200.0.0/13 that no interface or route of this machine uses."""
    used = _ip("-4", "addr", check=False).stdout + _ip("-4", "route", check=False).stdout
    taken = [ipaddress.ip_network(n, strict=False) for n in re.findall(r"(\d+\.\d+\.\d+\.\d+/\d+)", used)]
    for _ in range(100):
        net = ipaddress.ip_network(
            f"10.{random.randrange(200, 208)}.{random.randrange(256)}.{16 * random.randrange(16)}/28"
        )
        if not any(net.overlaps(other) for other in taken):
            return net
    raise RuntimeError("no free 10.200.0.0/13 subnet")


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def make_topology(kind: str) -> Topology:
    return NamespaceTopology() if kind == "netns" else Topology()
