"""evloop's HTTP behind a real nginx: deploy/nginx-http.conf, the file
docs/deployment.md shows, with the addresses filled in as envsubst would.

nginx is an HTTP reverse proxy here (not the PROXY protocol: nginx's HTTP
proxy cannot send it): the hosts see nginx's address, the client's arrives
in X-Forwarded-For, and nginx keeps its connections to the hosts alive, so
the hosts see far fewer connections than requests. Topology as in
test_haproxy.py (tests/deploy/hosts.py). Needs nginx (Debian: nginx-light
or nginx; .ci/run installs nginx-light).
"""

import socket
from collections import Counter

import pytest

from tests.deploy.deployment import Deployment, need, topology_kind
from tests.deploy.processes import Load, LoggedProcess, until
from tests.examples import ROOT

pytestmark = pytest.mark.haproxy

NGINX_CONFIG = ROOT / "deploy" / "nginx-http.conf"

# The main file a test run needs around deploy/nginx-http.conf (on Debian,
# /etc/nginx/nginx.conf plays this part and includes conf.d/*.conf).
MAIN = """\
daemon off;
user root;
worker_processes 1;
pid {dir}/nginx.pid;
error_log stderr notice;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    include {dir}/evloop.conf;
}}
"""


def render(text, values):
    """envsubst, restricted to ``values`` (nginx's own $variables stay)."""
    for name, value in values.items():
        text = text.replace("${" + name + "}", value)
    return text


def connectable(address):
    try:
        socket.create_connection(address, timeout=1).close()
    except OSError:
        return False
    return True


@pytest.fixture
def behind_nginx(tmp_path):
    need("nginx", "nginx-light", proxy_protocol=False)
    running = Deployment(topology_kind("netns"), tmp_path, proxy_protocol=False)
    try:
        running.start_hosts()
        topology, hosts = running.topology, running.topology.hosts
        values = {
            "EVLOOP_FRONTEND": "{}:{}".format(*topology.frontend),
            "EVLOOP_APP1": f"{hosts['a'].address}:{hosts['a'].port}",
            "EVLOOP_APP2": f"{hosts['b'].address}:{hosts['b'].port}",
        }
        (tmp_path / "evloop.conf").write_text(render(NGINX_CONFIG.read_text(), values))
        (tmp_path / "nginx.conf").write_text(MAIN.format(dir=tmp_path))
        argv = topology.balancer_command(["nginx", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")])
        nginx = LoggedProcess("nginx", argv)
        running.others.append(nginx)
        until(lambda: connectable(topology.frontend), what=f"nginx to listen:\n{nginx.output()}")
        yield running
    except BaseException:
        print(running.logs())
        raise
    finally:
        running.close()


def test_http_through_nginx_spreads_keeps_alive_and_forwards_the_client(behind_nginx):
    topology = behind_nginx.topology
    with Load(topology.frontend, topology.client, clients=4, delay=0) as load:
        until(
            lambda: (
                min(Counter(r.answer["host"] for r in load.done() if r.ok).get(name, 0) for name in "ab")
                >= 40
            ),
            what="40 answers from each host",
        )
    records = load.done()
    assert [record for record in records if not record.ok] == []
    spread = Counter(record.answer["host"] for record in records)
    print(f"{len(records)} requests: {dict(spread)}")
    assert min(spread.values()) >= 0.3 * len(records), spread
    for record in records:
        # The client's address in X-Forwarded-For; nginx's as the peer.
        assert record.answer["forwarded"] == topology.client, record
        seen_host = record.answer["client"].rsplit(":", 1)[0]
        assert seen_host == topology.hosts[record.answer["host"]].balancer, record
    # nginx reuses its connections to the hosts: the hosts saw a handful
    # of nginx's ports, not one per request.
    connections = {record.answer["client"] for record in records}
    print(f"{len(connections)} connections from nginx to the hosts")
    assert len(connections) <= len(records) / 4
