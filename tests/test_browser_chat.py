"""A real browser uses the chat page: two headless Chromium pages exchange
messages through examples/websocket_chat.py.

Chromium is driven over the Chrome DevTools protocol, whose endpoint is a
WebSocket: the ``websockets`` client speaks it. Waiting happens inside the
pages (a promise that settles when the expected text shows up), never with
sleeps on this side.
"""

import itertools
import json
import queue
import shutil
import subprocess
import threading

import pytest

from tests.examples import running_example

websockets_client = pytest.importorskip("websockets.sync.client")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (Debian package 'chromium'; .ci/run installs it)"
)

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Containers often have a small /dev/shm; Chromium then crashes without this.
    "--disable-dev-shm-usage",
    "--remote-debugging-port=0",
    "--remote-debugging-address=127.0.0.1",
]


class DevTools:
    """A minimal Chrome DevTools protocol client over one WebSocket."""

    def __init__(self, socket):
        self.socket = socket
        self.ids = itertools.count(1)
        self.events = []  # events that arrived while waiting for a reply

    def call(self, method, session=None, timeout=20, **params):
        message = {"id": next(self.ids), "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        self.socket.send(json.dumps(message))
        while True:
            reply = json.loads(self.socket.recv(timeout))
            if reply.get("id") == message["id"]:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            if "method" in reply:
                self.events.append(reply)

    def wait_event(self, method, session, timeout=20):
        def wanted(event):
            return event.get("method") == method and event.get("sessionId") == session

        for event in self.events:
            if wanted(event):
                self.events.remove(event)
                return event["params"]
        while True:
            event = json.loads(self.socket.recv(timeout))
            if wanted(event):
                return event["params"]

    def open_page(self, url):
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Page.enable", session)
        self.call("Page.navigate", session, url=url)
        self.wait_event("Page.loadEventFired", session)
        return session

    def evaluate(self, session, expression, timeout=20):
        result = self.call(
            "Runtime.evaluate",
            session,
            timeout=timeout,
            expression=expression,
            awaitPromise=True,
            returnByValue=True,
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")


# Settles when the chat log shows a line containing the text (or after 15 s,
# with the log so far, so a failure says what the page saw).
WAIT_FOR_LINE = """
new Promise((resolve) => {
  const wanted = %s;
  const lines = () => Array.from(document.querySelectorAll('#log li')).map(li => li.textContent);
  const deadline = Date.now() + 15000;
  const check = () => {
    if (lines().some(line => line.includes(wanted))) resolve("found");
    else if (Date.now() > deadline) resolve("missing; log: " + JSON.stringify(lines()));
    else setTimeout(check, 10);
  };
  check();
})
"""

WAIT_CONNECTED = """
new Promise((resolve) => {
  const deadline = Date.now() + 15000;
  const check = () => {
    const status = document.getElementById('status').textContent;
    if (status === 'connected' || Date.now() > deadline) resolve(status);
    else setTimeout(check, 10);
  };
  check();
})
"""


def say(devtools, session, name, text):
    devtools.evaluate(
        session,
        f"""
        document.getElementById('name').value = {json.dumps(name)};
        document.getElementById('text').value = {json.dumps(text)};
        document.getElementById('send').click();
    """,
    )


@pytest.fixture
def chromium(tmp_path):
    process = subprocess.Popen(
        [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = queue.Queue()

    def read_stderr():
        for line in process.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read_stderr, daemon=True).start()
    url = None
    seen = []
    while url is None:
        try:
            line = lines.get(timeout=30)
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        if line.startswith("DevTools listening on "):
            url = line.split(" on ", 1)[1].strip()
    if url is None:
        process.kill()
        process.wait()
        pytest.fail("chromium did not open its DevTools endpoint:\n" + "".join(seen[-20:]))
    try:
        with websockets_client.connect(url, max_size=None, open_timeout=20) as socket:
            yield DevTools(socket)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_two_browser_pages_chat_through_the_server(chromium):
    with running_example("websocket_chat.py") as (host, port, _):
        url = f"http://{host}:{port}/"
        alice = chromium.open_page(url)
        bob = chromium.open_page(url)
        assert chromium.evaluate(alice, WAIT_CONNECTED) == "connected"
        assert chromium.evaluate(bob, WAIT_CONNECTED) == "connected"
        # Chromium offers permessage-deflate and the server takes it: what
        # the pages send below arrives compressed.
        assert chromium.evaluate(alice, "socket.extensions") == "permessage-deflate"
        # Both were in the room when bob joined: alice saw the count go up.
        assert chromium.evaluate(alice, WAIT_FOR_LINE % json.dumps("2 online")) == "found"

        say(chromium, alice, "alice", "hello from alice")
        assert chromium.evaluate(bob, WAIT_FOR_LINE % json.dumps("alice: hello from alice")) == "found"
        say(chromium, bob, "bob", "hi alice, bob here \u00e9\u2713")
        assert (
            chromium.evaluate(alice, WAIT_FOR_LINE % json.dumps("bob: hi alice, bob here \u00e9\u2713"))
            == "found"
        )
        # The sender sees its own message too: it went through the server.
        assert chromium.evaluate(alice, WAIT_FOR_LINE % json.dumps("alice: hello from alice")) == "found"
