"""evloop behind a real HAProxy, across two hosts.

Two hosts (network namespaces joined by veth pairs, see tests/deploy/hosts.py;
two loopback addresses where namespaces are not allowed, and the test says
so) each run ``python -m evloop serve ... --workers 2 --proxy-protocol
<HAProxy's address>``; HAProxy runs deploy/haproxy.cfg, the very file
docs/deployment.md shows: PROXY v2 to the hosts, HTTP health checks that
carry a PROXY header too. The clients are threads of this test, one request
per connection, from an address that is neither HAProxy's nor a host's.

- requests spread over both hosts, and each host sees, answers and logs
  the client's own address and port;
- a host is killed (SIGKILL to its supervisor and workers): HAProxy marks
  it down and routes around it, and the only requests that fail are ones
  in flight when it died;
- a host reloads three times (SIGHUP to its supervisor) under load: no request fails,
  HAProxy never sees it down, and the new code answers afterwards.

Needs haproxy (Debian's package; .ci/run installs it and sets
EVLOOP_REQUIRE_HAPROXY=1, which turns a skip into a failure).
"""

import os
import signal
import time
from collections import Counter

import pytest

from tests.deploy.conftest import failed
from tests.deploy.deployment import Deployment, need, topology_kind
from tests.deploy.processes import Load, until

pytestmark = pytest.mark.haproxy

ACCESS_WHO = '"GET /who?'


@pytest.fixture
def deployment(request, tmp_path):
    need("haproxy")
    running = Deployment(topology_kind(getattr(request, "param", "netns")), tmp_path)
    try:
        yield running.start()
    finally:
        try:
            if failed(request):
                print(running.logs())
        finally:
            running.close()


def answered_by(records, name, **fields):
    return [
        record
        for record in records
        if record.ok
        and record.answer["host"] == name
        and all(record.answer[k] == v for k, v in fields.items())
    ]


def access_lines(process, path=ACCESS_WHO):
    return [line for line in process.output().splitlines() if path in line]


@pytest.mark.parametrize("deployment", ["netns", "loopback"], indirect=True)
def test_requests_spread_and_each_host_logs_the_real_client(deployment):
    topology = deployment.topology
    with Load(topology.frontend, topology.client, clients=4, delay=0) as load:
        until(
            lambda: min(len(answered_by(load.done(), name)) for name in "ab") >= 20,
            what="20 answers from each host",
        )
    records = load.done()
    assert [record for record in records if not record.ok] == []
    spread = Counter(record.answer["host"] for record in records)
    print(f"{len(records)} requests: {dict(spread)}")
    assert min(spread.values()) >= 0.3 * len(records), spread  # round robin: about half each
    # Each host saw the client's own address and port (from the PROXY
    # header), not HAProxy's.
    for record in records:
        assert record.answer["client"] == "{}:{}".format(*record.local), record
    # ... and its access log names the client; the health checks, which
    # have no client (PROXY v2 LOCAL), are logged with HAProxy's address.
    for name, process in deployment.hosts.items():
        until(
            lambda process=process, count=spread[name]: len(access_lines(process)) >= count,
            what=f"host {name}'s access log lines",
        )
        assert all(line.startswith(topology.client + " ") for line in access_lines(process))
        balancer = topology.hosts[name].balancer
        checks = access_lines(process, '"GET /health ')
        assert checks and all(line.startswith(balancer + " ") for line in checks)
        # Nothing went wrong on the way (a PROXY header refused, an error).
        problems = [
            line for line in process.output().splitlines() if " WARNING " in line or " ERROR " in line
        ]
        assert problems == [], problems


def test_a_killed_host_is_routed_around(deployment):
    topology = deployment.topology
    victim = deployment.hosts["b"]
    with Load(topology.frontend, topology.client, clients=8, delay=0.05) as load:
        until(lambda: len(answered_by(load.done(), "b")) >= 10, what="answers from host b")
        killed = time.monotonic()
        victim.kill()  # SIGKILL to its supervisor and workers; returns once all are gone
        dead = time.monotonic()
        deployment.wait_status("b", "DOWN", timeout=5)
        down = time.monotonic()
        until(
            lambda: len([r for r in load.done() if r.start > down]) >= 30,
            what="30 requests after host b was marked down",
        )
    records = load.done()
    failed = [record for record in records if not record.ok]
    in_flight = [record for record in records if record.start < dead and record.end > killed]
    # Those not answered by host a: the ones that were (or may have been) on b.
    on_b = [record for record in in_flight if not (record.ok and record.answer["host"] == "a")]
    print(
        f"{len(records)} requests; {len(in_flight)} in flight while host b was killed, "
        f"{len(on_b)} of them not answered by a; {len(failed)} failed; "
        f"HAProxy marked b down {down - dead:.2f} s after"
    )
    # Only requests in flight to host b while it was being killed may fail
    # (a connection it had accepted dies with it); at most the pool's 8.
    assert all(record in on_b for record in failed), failed
    assert len(failed) <= 8
    # Once the host is gone, HAProxy's retries send a new connection to the
    # other host: none fails, even before the checks mark it down.
    assert [record for record in records if record.start > dead and not record.ok] == []
    assert {record.answer["host"] for record in records if record.start > dead} == {"a"}


def reload(deployment, load, name, version):
    """SIGHUP host ``name`` with ``version`` on disk; return once the new
    code answers and every worker of the old generation has exited. Returns
    (when it was sent, how many requests the old workers finished after it)."""
    host = deployment.hosts[name]
    old = {record.answer["pid"] for record in answered_by(load.done(), name)}
    deployment.version_file(name).write_text(version)
    sent = time.monotonic()
    os.kill(host.pid, signal.SIGHUP)
    until(
        lambda: len(answered_by(load.done(), name, version=version)) >= 10,
        what=f"host {name}'s new code to answer (log:\n{host.output()})",
    )
    until(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in old), what="the old workers to exit")
    drained = [r for r in answered_by(load.done(), name) if r.answer["pid"] in old and r.end > sent]
    return sent, len(drained)


def test_a_host_reloads_under_load_without_a_failed_request(deployment):
    topology = deployment.topology
    with Load(topology.frontend, topology.client, clients=8, delay=0.05) as load:
        until(lambda: len(answered_by(load.done(), "b")) >= 10, what="answers from host b")
        started = time.monotonic()
        # Three reloads in a row, each new generation with new code.
        drained = [reload(deployment, load, "b", version)[1] for version in "234"]
        settled = time.monotonic()
        until(lambda: len([r for r in load.done() if r.start > settled]) >= 20, what="20 more requests")
    records = load.done()
    print(
        f"{len(records)} requests, {len(answered_by(records, 'b'))} answered by host b; "
        f"3 reloads in {settled - started:.2f} s; old workers finished {drained} requests after each SIGHUP"
    )
    assert [record for record in records if not record.ok] == []
    assert deployment.server_stats("b")["chkdown"] == "0"  # never seen down
    assert deployment.server_stats("b")["status"] == "UP"
    after = [record for record in answered_by(records, "b") if record.start > settled]
    assert after and all(record.answer["version"] == "4" for record in after)
