"""StaticFiles: every path-traversal trick refused, symbolic links out of
the root refused, content types, conditional GET, directories, and a
100 MiB file served by a separate server process with flat memory."""

import email.utils
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytest.importorskip("h11")

from evloop.protocols.http import HTTPHandler
from evloop.protocols.routing import Router
from evloop.protocols.static import StaticFiles, content_type_for

from evloop.testing import HandlerHarness
from tests.conftest import connect

ROOT = Path(__file__).resolve().parent.parent
SECRET = b"TOP SECRET: outside the root"


@pytest.fixture
def site(tmp_path):
    """tmp/www is the root; tmp/secret.txt and tmp/outside/ lie beside it."""
    www = tmp_path / "www"
    (www / "sub").mkdir(parents=True)
    (www / "index.html").write_text("<h1>home</h1>")
    (www / "style.css").write_text("body{}")
    (www / "app.js").write_text("1;")
    (www / "data.json").write_text("{}")
    (www / "pic.png").write_bytes(b"\x89PNG\r\n")
    (www / "blob.unknownext").write_bytes(b"\x00\x01")
    (www / "sub" / "page.txt").write_text("sub page")
    (www / "sub" / "index.html").write_text("sub index")
    (www / ".env").write_text("PASSWORD=1")
    (tmp_path / "secret.txt").write_bytes(SECRET)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_bytes(SECRET)
    os.symlink(tmp_path / "secret.txt", www / "link-out.txt")
    os.symlink(tmp_path / "outside", www / "dir-out")
    os.symlink(www / "sub" / "page.txt", www / "link-in.txt")

    class Site(HTTPHandler):
        routes = Router({"/static/*": StaticFiles(str(www)), "/*": StaticFiles(str(www))})

    return Site


def request(handler_class, target, extra="", method="GET"):
    harness = HandlerHarness(handler_class)
    output = harness.feed(f"{method} {target} HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode())
    head, _, body = output.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


TRAVERSALS = [
    "/static/../secret.txt",
    "/static/sub/../../secret.txt",
    "/static/%2e%2e/secret.txt",
    "/static/%2E%2E/secret.txt",
    "/static/.%2e/secret.txt",
    "/static/..%2fsecret.txt",
    "/static/..%2Fsecret.txt",
    "/static/%2e%2e%2fsecret.txt",
    "/static/sub%2f..%2f..%2fsecret.txt",
    "/static/..%5csecret.txt",
    "/static/..\\secret.txt",
    "/static/%00/../secret.txt",
    "/static/sub/%2e%2e/%2e%2e/secret.txt",
    "/../secret.txt",
    "/%2e%2e/secret.txt",
]


@pytest.mark.parametrize("target", TRAVERSALS)
def test_each_traversal_trick_is_refused(site, target, caplog):
    status, _, body = request(site, target)
    assert status == 403
    assert SECRET not in body
    assert "tries to leave the static root" in caplog.text and "127.0.0.1:40000" in caplog.text


@pytest.mark.parametrize("target", ["/static/link-out.txt", "/static/dir-out/secret.txt"])
def test_symlinks_out_of_the_root_are_refused(site, target, caplog):
    status, _, body = request(site, target)
    assert status == 403 and SECRET not in body
    assert "outside the static root" in caplog.text


@pytest.mark.parametrize(
    "target",
    [
        "/static/%252e%252e/secret.txt",  # double encoding is a name, not a dot segment
        "//secret.txt",  # empty segments are skipped, still inside
        "/static/.env",  # hidden files stay hidden
        "/static/nothing-here",
        "/static/sub/page.txt/x",
    ],
)
def test_other_odd_paths_find_nothing(site, target):
    status, _, body = request(site, target)
    assert status == 404 and SECRET not in body


def test_symlink_inside_the_root_is_followed(site):
    assert request(site, "/static/link-in.txt")[2] == b"sub page"


@pytest.mark.parametrize(
    "name, expected",
    [
        ("index.html", "text/html; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("app.js", "text/javascript; charset=utf-8"),
        ("data.json", "application/json; charset=utf-8"),
        ("pic.png", "image/png"),
        ("blob.unknownext", "application/octet-stream"),
        ("sub/page.txt", "text/plain; charset=utf-8"),
    ],
)
def test_content_types(site, name, expected):
    status, headers, _ = request(site, "/static/" + name)
    assert status == 200
    # JavaScript's registered type changed (RFC 9239); older Pythons say application/.
    assert headers["content-type"] == expected or (
        name == "app.js" and headers["content-type"] == "application/javascript; charset=utf-8"
    )
    assert content_type_for("x.tar.gz") == "application/octet-stream"


def test_files_directories_and_redirects(site):
    status, headers, body = request(site, "/static/sub/page.txt")
    assert (status, body, headers["content-length"]) == (200, b"sub page", "8")
    assert request(site, "/static/")[2] == b"<h1>home</h1>"
    assert request(site, "/")[2] == b"<h1>home</h1>"
    assert request(site, "/static/sub/")[2] == b"sub index"
    status, headers, _ = request(site, "/static/sub?x=1")
    assert (status, headers["location"]) == (301, "/static/sub/?x=1")
    status, headers, body = request(site, "/static/style.css", method="HEAD")
    assert (status, headers["content-length"], body) == (200, "6", b"")
    status, headers, _ = request(site, "/static/style.css", method="POST")
    assert (status, headers["allow"]) == (405, "GET, HEAD")


def test_if_modified_since_and_etag(site, tmp_path):
    mtime = 1_700_000_000
    os.utime(tmp_path / "www" / "style.css", (mtime, mtime))
    status, headers, _ = request(site, "/static/style.css")
    assert headers["last-modified"] == email.utils.formatdate(mtime, usegmt=True)
    etag = headers["etag"]
    same = email.utils.formatdate(mtime, usegmt=True)
    later = email.utils.formatdate(mtime + 60, usegmt=True)
    earlier = email.utils.formatdate(mtime - 60, usegmt=True)
    status, headers, body = request(site, "/static/style.css", f"If-Modified-Since: {same}\r\n")
    assert (status, body) == (304, b"") and headers["etag"] == etag
    assert request(site, "/static/style.css", f"If-Modified-Since: {later}\r\n")[0] == 304
    assert request(site, "/static/style.css", f"If-Modified-Since: {earlier}\r\n")[0] == 200
    assert request(site, "/static/style.css", "If-Modified-Since: yesterday\r\n")[0] == 200
    assert request(site, "/static/style.css", f"If-None-Match: {etag}\r\n")[0] == 304
    assert request(site, "/static/style.css", f'If-None-Match: "other", W/{etag}\r\n')[0] == 304
    # If-None-Match wins over If-Modified-Since (RFC 9110 section 13.1.3).
    assert (
        request(site, "/static/style.css", f'If-None-Match: "other"\r\nIf-Modified-Since: {later}\r\n')[0]
        == 200
    )


def test_range_requests(site, tmp_path):
    (tmp_path / "www" / "digits.txt").write_bytes(b"0123456789")
    status, headers, body = request(site, "/static/digits.txt")
    assert (status, headers["accept-ranges"], body) == (200, "bytes", b"0123456789")
    etag, modified = headers["etag"], headers["last-modified"]
    for spec, content_range, part in [
        ("bytes=2-4", "bytes 2-4/10", b"234"),
        ("bytes=7-", "bytes 7-9/10", b"789"),
        ("bytes=-3", "bytes 7-9/10", b"789"),
        ("bytes=8-100", "bytes 8-9/10", b"89"),
        ("bytes=-100", "bytes 0-9/10", b"0123456789"),
    ]:
        status, headers, body = request(site, "/static/digits.txt", f"Range: {spec}\r\n")
        assert (status, headers["content-range"], headers["content-length"], body) == (
            206,
            content_range,
            str(len(part)),
            part,
        ), spec
    # Past the end: 416 with the size (RFC 9110 section 15.5.17).
    for spec in ("bytes=10-", "bytes=10-20", "bytes=-0"):
        status, headers, _ = request(site, "/static/digits.txt", f"Range: {spec}\r\n")
        assert (status, headers["content-range"]) == (416, "bytes */10"), spec
    # Ignored: several ranges, another unit, bad syntax, a HEAD.
    for extra in (
        "Range: bytes=0-1,4-5\r\n",
        "Range: items=0-1\r\n",
        "Range: bytes=5-2\r\n",
        "Range: bytes=x\r\n",
    ):
        assert request(site, "/static/digits.txt", extra)[0] == 200, extra
    assert request(site, "/static/digits.txt", "Range: bytes=0-1\r\n", method="HEAD")[0] == 200
    # If-Range: the same ETag or date keeps the range, another sends it all.
    for validator, status in [
        (etag, 206),
        (modified, 206),
        ('"stale"', 200),
        (f"W/{etag}", 200),
        ("junk", 200),
    ]:
        got = request(site, "/static/digits.txt", f"Range: bytes=0-1\r\nIf-Range: {validator}\r\n")
        assert got[0] == status, validator
        assert got[2] == (b"01" if status == 206 else b"0123456789")


def test_range_over_a_real_socket(site, tmp_path, running_loop):
    import http.client

    payload = os.urandom(300_000)
    (tmp_path / "www" / "big.bin").write_bytes(payload)
    server = running_loop.serve(site)
    client = http.client.HTTPConnection(server.host, server.port, timeout=10)
    client.request("GET", "/static/big.bin", headers={"Range": "bytes=100000-250000"})
    reply = client.getresponse()
    assert reply.status == 206 and reply.read() == payload[100000:250001]
    client.request("GET", "/static/big.bin")
    assert client.getresponse().read() == payload
    client.close()


def test_root_must_be_a_directory(tmp_path):
    with pytest.raises(ValueError):
        StaticFiles(str(tmp_path / "missing"))


# -- a 100 MiB file with flat memory ----------------------------------------------------

SERVER = """
import sys
from evloop import Server, loop
from evloop.protocols.http import HTTPHandler
from evloop.protocols.static import StaticFiles

class Files(HTTPHandler):
    routes = {"/*": StaticFiles(sys.argv[1])}

server = Server("127.0.0.1", 0)
print(f"listening on {server.host}:{server.port}", flush=True)
loop(server, Files)
"""


def memory_kib(pid, field):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to read memory use")
def test_a_100_mib_file_is_served_with_flat_memory(tmp_path):
    size = 100 * 1024 * 1024
    (tmp_path / "big.bin").write_bytes(b"")
    with open(tmp_path / "big.bin", "r+b") as file:
        file.truncate(size)  # sparse: quick to make, the same 100 MiB to send
        file.seek(size - 4)
        file.write(b"END!")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(tmp_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        lines = queue.Queue()
        threading.Thread(target=lambda: lines.put(process.stdout.readline()), daemon=True).start()
        line = lines.get(timeout=30)
        assert line.startswith("listening on "), line
        port = int(line.rsplit(":", 1)[1])
        server = type("Address", (), {"host": "127.0.0.1", "port": port})
        # Warm up: the first request imports and allocates what any request needs.
        with connect(server) as sock:
            sock.sendall(b"GET /nothing HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            while sock.recv(65536):
                pass
        before = memory_kib(process.pid, "VmRSS")
        received = 0
        tail = b""
        buffer = bytearray(1024 * 1024)
        with connect(server) as sock:
            sock.sendall(b"GET /big.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            view = memoryview(buffer)
            while True:
                count = sock.recv_into(view)
                if not count:
                    break
                received += count
                tail = (tail + bytes(view[:count]))[-4:]
        peak = memory_kib(process.pid, "VmHWM")
    finally:
        process.terminate()
        process.wait(10)
        process.stdout.close()
    assert received > size and tail == b"END!"
    growth_mib = (peak - before) / 1024
    print(
        f"server RSS before {before / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB, "
        f"growth {growth_mib:.1f} MiB for a 100 MiB file"
    )
    assert growth_mib < 16, f"server memory grew by {growth_mib:.1f} MiB while sending 100 MiB"
