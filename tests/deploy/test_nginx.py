"""evloop behind a real nginx: deploy/nginx-http.conf and
deploy/nginx-stream.conf, the files docs/deployment.md shows, with the
addresses filled in as envsubst would. Topology as in test_haproxy.py
(tests/deploy/hosts.py).

- nginx-http.conf, an HTTP reverse proxy: nginx's HTTP proxy cannot send
  the PROXY protocol, so the hosts see nginx's address and the client's
  arrives in X-Forwarded-For; nginx keeps its connections to the hosts
  alive, so the hosts see far fewer connections than requests.
- nginx-stream.conf, a TCP proxy with ``proxy_protocol on`` (version 1):
  the hosts (``--proxy-protocol``) see the client's own address and port.

Needs nginx with the stream module (Debian: nginx-light and
libnginx-mod-stream; .ci/run installs them).
"""

import os
import socket
from collections import Counter

import pytest

from tests.deploy.deployment import Deployment, need, topology_kind, unavailable
from tests.deploy.processes import Load, LoggedProcess, until
from tests.examples import ROOT

pytestmark = pytest.mark.haproxy

STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"

# The main file a test run needs around the deploy/ file: on Debian,
# /etc/nginx/nginx.conf plays this part (http { } includes conf.d/*.conf).
MAIN = """\
daemon off;
user root;
worker_processes 1;
pid {dir}/nginx.pid;
error_log stderr notice;
{load}
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    {http}
}}
{top}
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


def behind_nginx(tmp_path, config, stream):
    """Two hosts and nginx running ``deploy/<config>``; a generator fixture."""
    need("nginx", "nginx-light libnginx-mod-stream", proxy_protocol=stream)
    if stream and not os.path.exists(STREAM_MODULE):
        unavailable(f"no {STREAM_MODULE} (Debian: apt-get install libnginx-mod-stream)")
    running = Deployment(topology_kind("netns"), tmp_path, proxy_protocol=stream)
    try:
        running.start_hosts()
        topology, hosts = running.topology, running.topology.hosts
        values = {
            "EVLOOP_FRONTEND": "{}:{}".format(*topology.frontend),
            "EVLOOP_APP1": f"{hosts['a'].address}:{hosts['a'].port}",
            "EVLOOP_APP2": f"{hosts['b'].address}:{hosts['b'].port}",
        }
        rendered = tmp_path / "evloop.conf"
        rendered.write_text(render((ROOT / "deploy" / config).read_text(), values))
        main = MAIN.format(
            dir=tmp_path,
            load=f"load_module {STREAM_MODULE};" if stream else "",
            http="" if stream else f"include {rendered};",
            top=f"include {rendered};" if stream else "",
        )
        (tmp_path / "nginx.conf").write_text(main)
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


@pytest.fixture
def nginx_http(tmp_path):
    yield from behind_nginx(tmp_path, "nginx-http.conf", stream=False)


@pytest.fixture
def nginx_stream(tmp_path):
    yield from behind_nginx(tmp_path, "nginx-stream.conf", stream=True)


def answers(load, host):
    return sum(1 for record in load.done() if record.ok and record.answer["host"] == host)


def spread_load(topology, count=40, even=True):
    """Requests until each host answered ``count``; none may fail; with
    ``even`` (round robin), about half each."""
    with Load(topology.frontend, topology.client, clients=4, delay=0) as load:
        until(lambda: min(answers(load, "a"), answers(load, "b")) >= count, what="answers from each host")
    records = load.done()
    assert [record for record in records if not record.ok] == []
    spread = Counter(record.answer["host"] for record in records)
    print(f"{len(records)} requests: {dict(spread)}")
    if even:
        assert min(spread.values()) >= 0.3 * len(records), spread
    return records


def test_http_through_nginx_spreads_keeps_alive_and_forwards_the_client(nginx_http):
    topology = nginx_http.topology
    records = spread_load(topology)
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


def test_nginx_stream_sends_the_client_with_the_proxy_protocol(nginx_stream):
    topology = nginx_stream.topology
    # least_conn: both hosts serve, not necessarily half each.
    for record in spread_load(topology, even=False):
        assert record.answer["client"] == "{}:{}".format(*record.local), record
        assert record.answer["forwarded"] == "-"
    for name, process in nginx_stream.hosts.items():
        lines = [line for line in process.output().splitlines() if '"GET /who?' in line]
        assert lines and all(line.startswith(topology.client + " ") for line in lines), name
