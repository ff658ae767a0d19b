"""The one chunking helper every framer's tests use.

Handlers go through :mod:`evloop.testing` (no socket); bare framers are fed
directly. Either way the same input is tried whole, one byte at a time, in
chunks of 2 to 9 and split at every point, with trailing bytes that must stay
untouched, and must give the same result every time.
"""

from evloop.protocols import NEED_DATA

from evloop import RemoteProtocolError
from evloop.testing import every_split, run_in_chunks


def framer_results(make_framer, chunks, eof=False):
    """Feed chunks to a fresh framer; return (requests, error or None, framer)."""
    framer = make_framer()
    requests = []
    try:
        for chunk in chunks:
            framer.feed(chunk)
            while True:
                request = framer.next_request()
                if request is NEED_DATA:
                    break
                requests.append(request)
        if eof:
            framer.feed_eof()
            while True:
                request = framer.next_request()
                if request is NEED_DATA:
                    break
                requests.append(request)
    except RemoteProtocolError as exc:
        return requests, exc, framer
    return requests, None, framer


def batched_results(make_framer, chunks, eof=False):
    """Like framer_results, through a framer's batch call maybe_requests()
    (RESP's)."""
    framer = make_framer()
    requests = []
    try:
        for chunk in chunks:
            framer.feed(chunk)
            requests += framer.maybe_requests()
        if eof:
            framer.feed_eof()
        requests += framer.maybe_requests()
        requests += framer.maybe_requests()  # an error found after commands shows now
    except RemoteProtocolError as exc:
        return requests, exc, framer
    return requests, None, framer


def assert_framer_every_split(make_framer, data, expected, *, error=None, eof=False, leftover=None):
    """Every chunking of ``data`` yields ``expected`` requests, then raises a
    RemoteProtocolError whose message contains ``error`` (if given), and
    leaves exactly ``leftover`` bytes buffered (if given)."""
    for label, chunks in every_split(data):
        requests, exc, framer = framer_results(make_framer, chunks, eof)
        assert requests == expected, label
        if error is None:
            assert exc is None, f"{label}: {exc}"
        else:
            assert exc is not None, f"{label}: no error raised"
            assert error in exc.message, f"{label}: {exc.message}"
        if leftover is not None:
            assert framer.buffered == leftover, label


def assert_handler_every_split(handler_class, data, expected_output, *, closed=None, eof=False):
    """Every chunking of ``data`` makes ``handler_class`` send exactly
    ``expected_output`` (and close, or not, as ``closed`` says)."""
    for label, chunks in every_split(data):
        output, was_closed = run_in_chunks(handler_class, chunks, eof=eof)
        assert output == expected_output, label
        if closed is not None:
            assert was_closed == closed, label


def cut(data, sizes):
    """``data`` in chunks of ``sizes`` (a hypothesis-drawn list), the rest last."""
    chunks, rest = [], data
    for size in sizes:
        chunks.append(rest[:size])
        rest = rest[size:]
    chunks.append(rest)
    return chunks


def assert_chunking_never_matters(make_framer, data, sizes, eof=False):
    """The property every framer states: any bytes yield requests or the
    protocol's RemoteProtocolError (framer_results lets nothing else
    through), and cutting them differently changes neither the requests,
    nor whether it failed, nor what stays buffered. Returns the requests."""
    whole = framer_results(make_framer, [data], eof)
    pieces = framer_results(make_framer, cut(data, sizes), eof)
    assert whole[0] == pieces[0]
    assert (whole[1] is None) == (pieces[1] is None)
    assert whole[2].buffered == pieces[2].buffered
    return whole[0]


def assert_encode_round_trips(framer, messages):
    """What ``framer.encode`` makes of ``messages``, fed back, parses to them."""
    framer.feed(b"".join(framer.encode(message) for message in messages))
    got = []
    while (request := framer.next_request()) is not NEED_DATA:
        got.append(request)
    assert got == messages
