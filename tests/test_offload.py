"""Blocking work in the worker pool: other clients go on being served,
replies keep request order, worker errors reach handle_error, the pool
lives and dies with its loop."""

import logging
import queue
import select
import threading
import time
from concurrent.futures import Executor, Future, ThreadPoolExecutor

import pytest
from evloop.protocols import LengthSepEcho
from hypothesis import given, settings
from hypothesis import strategies as st

from evloop import EVENT_READ, EventLoop, RemoteProtocolError, offload_executor, set_offload_executor
from evloop.offload import DEFAULT_MAX_WORKERS
from evloop.testing import HandlerHarness
from tests.conftest import RunningLoop, connect, recv_all, recv_exactly

WAIT = 10  # seconds any one step may take before the test fails


def frame(body):
    return b"%d\n" % len(body) + body


def readable(sock):
    """Whether the server has sent anything yet (no waiting)."""
    return bool(select.select([sock], [], [], 0)[0])


def reading_paused(harness):
    """Whether the handler has stopped reading from its client."""
    return not harness.loop.events_of(harness.socket) & EVENT_READ


class ManualExecutor(Executor):
    """An executor whose calls run only when the test says: no threads, so
    every interleaving is chosen, not hoped for."""

    def __init__(self):
        self.calls = []  # (future, fn, args, kwargs), in submission order
        self.shut_down = False

    def submit(self, fn, *args, **kwargs):
        if self.shut_down:
            raise RuntimeError("cannot schedule new futures after shutdown")
        future = Future()
        self.calls.append((future, fn, args, kwargs))
        return future

    def pending(self):
        return [call for call in self.calls if not call[0].done()]

    def run(self, index):
        future, fn, args, kwargs = self.calls[index]
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)

    def shutdown(self, wait=True, *, cancel_futures=False):
        self.shut_down = True
        if cancel_futures:
            for future, _, _, _ in self.calls:
                future.cancel()


def upper_frame(body):
    return frame(body.upper())


class Offloaded(LengthSepEcho):
    """Every request is answered, in upper case, by a call in the pool."""

    def make_response(self):
        return self.offload(upper_frame, self.request)


def harness_with_manual_pool(handler_class, concurrency=64, **options):
    """A harness whose pool is a ManualExecutor taking ``concurrency`` calls at once."""
    harness = HandlerHarness(handler_class, **options)
    executor = ManualExecutor()
    set_offload_executor(harness.loop, executor, concurrency=concurrency)
    return harness, executor


# -- over real sockets --------------------------------------------------------


def make_gated_handler(started, gates, seen=None):
    """A LengthSepEcho whose requests named in ``gates`` run in the pool and
    block until the test opens their gate; the rest are answered at once."""

    def blocking_echo(body):
        started.put(body)
        assert gates[body].wait(WAIT), "the test never opened the gate"
        return frame(body)

    class Gated(LengthSepEcho):
        def make_response(self):
            if seen is not None:
                seen.put(self.request)
            if self.request in gates:
                return self.offload(blocking_echo, self.request)
            return frame(self.request)

    return Gated


def test_a_slow_call_does_not_delay_another_clients_reply(running_loop):
    started = queue.Queue()
    gates = {b"slow": threading.Event()}
    server = running_loop.serve(make_gated_handler(started, gates))
    with connect(server) as slow_client, connect(server) as fast_client:
        slow_client.sendall(frame(b"slow"))
        assert started.get(timeout=WAIT) == b"slow"  # it is in the pool now
        fast_client.sendall(frame(b"fast"))
        assert recv_exactly(fast_client, len(frame(b"fast"))) == frame(b"fast")
        # The fast reply came while the slow call still blocks.
        assert not readable(slow_client)
        gates[b"slow"].set()
        assert recv_exactly(slow_client, len(frame(b"slow"))) == frame(b"slow")


def test_a_real_one_second_call_arrives_after_an_immediate_reply():
    def one_second(body):
        time.sleep(1.0)  # the slow work itself, not synchronisation
        return frame(body)

    class Sleepy(LengthSepEcho):
        def make_response(self):
            if self.request == b"slow":
                return self.offload(one_second, self.request)
            return frame(self.request)

    holder = RunningLoop().start()
    try:
        server = holder.serve(Sleepy)
        arrivals = queue.Queue()

        def client(body):
            with connect(server) as sock:
                sock.sendall(frame(body))
                arrivals.put(recv_exactly(sock, len(frame(body))))

        slow = threading.Thread(target=client, args=(b"slow",))
        slow.start()
        fast = threading.Thread(target=client, args=(b"fast",))
        fast.start()
        order = [arrivals.get(timeout=WAIT), arrivals.get(timeout=WAIT)]
        slow.join(WAIT)
        fast.join(WAIT)
        assert order == [frame(b"fast"), frame(b"slow")]
    finally:
        holder.stop()


def test_replies_keep_request_order_behind_a_slow_call(running_loop):
    started = queue.Queue()
    seen = queue.Queue()
    gates = {b"slow-1": threading.Event(), b"slow-4": threading.Event()}
    server = running_loop.serve(make_gated_handler(started, gates, seen))
    bodies = [b"slow-1", b"fast-2", b"fast-3", b"slow-4", b"fast-5"]
    expected = b"".join(frame(body) for body in bodies)
    with connect(server) as sock:
        sock.sendall(expected)
        assert [seen.get(timeout=WAIT) for _ in bodies] == bodies
        assert {started.get(timeout=WAIT), started.get(timeout=WAIT)} == set(gates)
        # The later slow call finishes first: still nothing may go out.
        gates[b"slow-4"].set()
        assert not readable(sock)
        gates[b"slow-1"].set()
        assert recv_exactly(sock, len(expected)) == expected


def test_an_error_in_the_pool_reaches_handle_error_and_drops_only_that_client(running_loop, caplog):
    errors = queue.Queue()

    def fails(body):
        raise ValueError(f"worker failed on {body!r}")

    class Failing(LengthSepEcho):
        def make_response(self):
            if self.request == b"bad":
                return self.offload(fails, self.request)
            return self.offload(upper_frame, self.request)

        def handle_error(self, exc):
            errors.put(exc)
            super().handle_error(exc)

    server = running_loop.serve(Failing)
    with connect(server) as victim, connect(server) as bystander:
        victim_address = "127.0.0.1:%d" % victim.getsockname()[1]
        victim.sendall(frame(b"one") + frame(b"bad") + frame(b"three"))
        # The reply before the failure arrives; the one after it never does.
        assert recv_all(victim) == frame(b"ONE")
        exc = errors.get(timeout=WAIT)
        assert isinstance(exc, ValueError) and "b'bad'" in str(exc)
        bystander.sendall(frame(b"still served"))
        assert recv_exactly(bystander, len(frame(b"STILL SERVED"))) == frame(b"STILL SERVED")
    assert f"{victim_address}: error in Failing" in caplog.text
    assert "worker failed" in caplog.text


# -- ordering and errors, every interleaving chosen by the test ---------------


def test_calls_finishing_in_reverse_order_still_answer_in_order():
    harness, pool = harness_with_manual_pool(Offloaded)
    assert harness.feed(frame(b"a") + frame(b"b") + frame(b"c")) == b""
    assert len(pool.calls) == 3
    pool.run(2)
    pool.run(1)
    assert harness.advance(0) == b""
    pool.run(0)
    assert harness.advance(0) == frame(b"A") + frame(b"B") + frame(b"C")
    assert not harness.closed


def test_replies_that_finished_meanwhile_leave_in_one_send():
    harness, pool = harness_with_manual_pool(Offloaded)
    bodies = [b"%d" % i for i in range(10)]
    harness.feed(b"".join(frame(body) for body in bodies))
    for index in reversed(range(10)):
        pool.run(index)
    before = harness.socket.send_calls
    assert harness.advance(0) == b"".join(upper_frame(body) for body in bodies)
    assert harness.socket.send_calls == before + 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=12), st.randoms(use_true_random=False))
def test_property_any_mix_and_completion_order_keeps_request_order(slow_flags, rnd):
    """Whatever requests are offloaded and in whatever order their calls
    finish, the bytes on the wire are the replies in request order."""

    answered = []

    class Mixed(LengthSepEcho):
        max_offloaded = 3

        def make_response(self):
            offloaded = slow_flags[len(answered)]
            answered.append(self.request)
            if offloaded:
                return self.offload(upper_frame, self.request)
            return upper_frame(self.request)

    harness, pool = harness_with_manual_pool(Mixed)
    bodies = [b"r%d" % i for i in range(len(slow_flags))]
    pending = b"".join(frame(body) for body in bodies)
    while pending:
        cut = rnd.randint(1, len(pending))
        harness.feed(pending[:cut])
        pending = pending[cut:]
        if reading_paused(harness):
            break
    while pool.pending() or pending:
        waiting = [i for i, call in enumerate(pool.calls) if not call[0].done()]
        if waiting:
            pool.run(rnd.choice(waiting))
        harness.advance(0)
        if pending and not reading_paused(harness):
            harness.feed(pending)
            pending = b""
    harness.advance(0)
    assert harness.output == b"".join(upper_frame(body) for body in bodies)
    harness.close()


def test_one_client_gets_at_most_max_offloaded_calls_and_reading_pauses():
    class Limited(Offloaded):
        max_offloaded = 2

    harness, pool = harness_with_manual_pool(Limited)
    bodies = [b"%d" % i for i in range(5)]
    harness.feed(b"".join(frame(body) for body in bodies))
    assert len(pool.calls) == 2  # the rest wait in the connection's queue
    assert reading_paused(harness)  # and no more requests are read meanwhile
    pool.run(0)
    harness.advance(0)
    assert len(pool.calls) == 3
    assert harness.output == frame(b"0")
    for index in (1, 2):
        pool.run(index)
    harness.advance(0)
    assert len(pool.calls) == 5 and not reading_paused(harness)
    for index in (3, 4):
        pool.run(index)
    harness.advance(0)
    assert harness.output == b"".join(frame(body) for body in bodies)


def test_a_remote_protocol_error_from_the_pool_gets_its_reply_in_place(caplog):
    def validate(body):
        if body == b"bad":
            raise RemoteProtocolError("request refused by the worker", reply=b"ERR\n")
        return upper_frame(body)

    class Validating(LengthSepEcho):
        def make_response(self):
            return self.offload(validate, self.request)

    harness, pool = harness_with_manual_pool(Validating, peer=("10.0.0.7", 4242))
    harness.feed(frame(b"ok") + frame(b"bad") + frame(b"late"))
    for index in (2, 1, 0):  # the later call finishes first; it must not leak out
        pool.run(index)
    harness.advance(0)
    assert harness.output == frame(b"OK") + b"ERR\n"
    assert harness.closed
    assert "10.0.0.7:4242" in caplog.text and "refused by the worker" in caplog.text


def test_calls_of_a_closed_connection_are_not_started():
    class Limited(Offloaded):
        max_offloaded = 1

    harness, pool = harness_with_manual_pool(Limited)
    harness.feed(frame(b"a") + frame(b"b") + frame(b"c"))
    assert len(pool.calls) == 1
    waiting = harness.handler  # its queued calls are still waiting
    waiting.close()
    pool.run(0)
    harness.advance(0)
    assert len(pool.calls) == 1  # b and c were never handed to the pool
    assert pool.calls[0][0].result() == frame(b"A")


def test_the_pool_refuses_work_once_the_loop_is_closed():
    harness, pool = harness_with_manual_pool(Offloaded)
    harness.feed(frame(b"a"))
    queued = pool.calls[0][0]
    harness.close()
    assert pool.shut_down and queued.cancelled()
    with pytest.raises(RuntimeError):
        offload_executor(harness.loop).submit(len, b"")


# -- the pool's lifetime ------------------------------------------------------


def test_the_default_pool_is_made_on_first_use_and_shut_down_with_the_loop():
    loop = EventLoop()
    assert getattr(loop, "_offload_pool", None) is None  # no threads for a loop that never offloads
    executor = offload_executor(loop)
    assert isinstance(executor, ThreadPoolExecutor)
    assert executor._max_workers == DEFAULT_MAX_WORKERS
    assert offload_executor(loop) is executor
    gate = threading.Event()
    running = [executor.submit(gate.wait, WAIT) for _ in range(DEFAULT_MAX_WORKERS)]
    queued = [executor.submit(len, b"x") for _ in range(3)]  # every thread is busy
    loop.close()  # does not wait for the blocked calls...
    assert all(future.cancelled() for future in queued)  # ...and drops what had not started
    with pytest.raises(RuntimeError):
        executor.submit(len, b"")
    gate.set()
    assert all(future.result(WAIT) is True for future in running)


def test_a_chosen_pool_size_and_a_shared_pool_that_outlives_the_loop():
    loop = EventLoop()
    executor = set_offload_executor(loop, max_workers=3)
    assert executor._max_workers == 3
    loop.close()
    shared = ThreadPoolExecutor(2)
    try:
        first, second = EventLoop(), EventLoop()
        for each in (first, second):
            set_offload_executor(each, shared, shutdown_with_loop=False)
        first.close()
        assert shared.submit(len, b"abc").result(WAIT) == 3
        second.close()
    finally:
        shared.shutdown()
    with pytest.raises(TypeError):
        set_offload_executor(EventLoop(), shared, max_workers=2)


def test_the_pool_cannot_be_swapped_under_running_calls():
    harness, pool = harness_with_manual_pool(Offloaded)
    harness.feed(frame(b"a"))
    with pytest.raises(RuntimeError):
        set_offload_executor(harness.loop, max_workers=1)
    pool.run(0)
    harness.advance(0)
    set_offload_executor(harness.loop, max_workers=1)  # idle now: allowed
    harness.close()


def test_a_cancelled_call_is_an_error_for_its_client_only(caplog):
    harness, pool = harness_with_manual_pool(Offloaded)
    harness.feed(frame(b"a"))
    pool.calls[0][0].cancel()
    harness.advance(0)
    assert harness.closed and harness.output == b""
    assert "CancelledError" in caplog.text


def test_logging_is_quiet_for_a_good_run(caplog):
    caplog.set_level(logging.DEBUG, logger="evloop")
    harness, pool = harness_with_manual_pool(Offloaded)
    harness.feed(frame(b"x"))
    pool.run(0)
    assert harness.advance(0) == frame(b"X")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# -- fairness: connections take turns for the pool ------------------------------


class FakeConnection:
    """What the pool needs of a handler: its loop, its share, reading switches."""

    max_offloaded = 16

    def __init__(self, loop):
        self.loop = loop
        self.closed = False
        self.reading = True

    def pause_reading(self):
        self.reading = False

    def resume_reading(self):
        self.reading = True


def test_connections_take_turns_so_a_backlog_cannot_hold_back_a_first_call():
    from evloop.offload import offload_call
    from evloop.testing import FakeClock, ManualLoop

    loop = ManualLoop(FakeClock())
    executor = ManualExecutor()
    set_offload_executor(loop, executor, concurrency=2)
    greedy, honest, third = (FakeConnection(loop) for _ in range(3))
    for n in range(16):
        offload_call(greedy, str, (f"a{n}",))
    offload_call(honest, str, ("b0",))
    offload_call(third, str, ("c0",))
    offload_call(third, str, ("c1",))
    started = 0
    while started < len(executor.calls):  # finish calls in the order they started
        executor.run(started)
        started += 1
        loop.run_once(0)
    order = [args[0] for _, _, args, _ in executor.calls]
    # Round-robin once the two workers are busy: a2 (greedy's turn), then the
    # first calls of the others, and only then the rest of greedy's backlog.
    # First come, first served would have been a0 ... a15, b0, c0, c1.
    assert order[:7] == ["a0", "a1", "a2", "b0", "c0", "a3", "c1"]
    assert order[7:] == [f"a{n}" for n in range(4, 16)]
    assert greedy.reading and honest.reading and third.reading
    loop.close()


def test_over_real_sockets_a_first_call_starts_ahead_of_other_backlogs(running_loop):
    """8 clients pipeline 16 slow calls each into a pool of 2 threads; one
    more client sends one request. Its call is the 11th the pool starts (the
    2 running, then one from each of the 8 clients ahead of it in the
    round), not the 129th, after all 128 queued before it. The pool's own
    order of starting calls is recorded (the executor's submit), so the test
    is about order, not timing."""
    order = []

    class RecordingPool(ThreadPoolExecutor):
        def submit(self, fn, *args, **kwargs):
            order.append(args[0])
            return super().submit(fn, *args, **kwargs)

    pool = RecordingPool(2)
    running_loop.call(lambda: set_offload_executor(running_loop.loop, pool, concurrency=2))
    gate = threading.Event()
    submitted = queue.Queue()

    def slow(body):
        assert gate.wait(WAIT), "the test never opened the gate"
        return frame(body)

    class Slow(LengthSepEcho):
        def make_response(self):
            future = self.offload(slow, self.request)
            submitted.put(self.request)  # after the call is in the pool's hands
            return future

    server = running_loop.serve(Slow)
    greedy = [connect(server) for _ in range(8)]
    try:
        for n, sock in enumerate(greedy):
            sock.sendall(b"".join(frame(b"g%d-%02d" % (n, i)) for i in range(16)))
        for _ in range(8 * 16):
            submitted.get(timeout=WAIT)
        assert len(order) == 2  # the two threads are busy; 126 calls wait their turn
        with connect(server) as honest:
            honest.sendall(frame(b"honest"))
            assert submitted.get(timeout=WAIT) == b"honest"
            gate.set()
            assert recv_exactly(honest, len(frame(b"honest"))) == frame(b"honest")
            for n, sock in enumerate(greedy):  # and every reply in request order
                expected = b"".join(frame(b"g%d-%02d" % (n, i)) for i in range(16))
                assert recv_exactly(sock, len(expected)) == expected
    finally:
        gate.set()
        for sock in greedy:
            sock.close()
    assert len(order) == 8 * 16 + 1
    print(f"\nthe ninth client's one call started {order.index(b'honest') + 1}th of {len(order)}")
    assert order.index(b"honest") == 2 + 8, order[:12]
