"""Timers and callbacks, driven by a FakeClock; one real-time wake-up test."""

import threading

import pytest

from evloop import EventLoop
from evloop.testing import FakeClock


@pytest.fixture
def clocked():
    clock = FakeClock(100.0)
    ev = EventLoop(clock=clock)
    yield ev, clock
    ev.close()


def test_call_later_fires_in_order_when_due(clocked):
    ev, clock = clocked
    fired = []
    ev.call_later(2, fired.append, "b")
    ev.call_later(1, fired.append, "a")
    ev.call_at(103, fired.append, "c")
    ev.call_later(1, fired.append, "a2")  # same time: insertion order
    ev.run_once(0)
    assert fired == []
    clock.advance(1)
    ev.run_once(0)
    assert fired == ["a", "a2"]
    clock.advance(5)
    ev.run_once(0)
    assert fired == ["a", "a2", "b", "c"]


def test_cancelled_timers_never_fire_and_are_dropped(clocked):
    ev, clock = clocked
    fired = []
    handles = [ev.call_later(1, fired.append, i) for i in range(500)]
    for handle in handles[:400]:
        handle.cancel()
    assert len(ev._timers) == 100
    assert len(ev._timers._heap) < 500  # rebuilt once cancelled ones outnumbered live ones
    clock.advance(1)
    ev.run_once(0)
    assert fired == list(range(400, 500))


def test_callbacks_scheduled_by_callbacks_run_on_the_next_pass(clocked):
    ev, _ = clocked
    order = []

    def first():
        order.append("first")
        ev.call_soon(order.append, "second")

    ev.call_soon(first)
    ev.run_once(0)
    assert order == ["first"]
    ev.run_once(0)
    assert order == ["first", "second"]


def test_a_failing_callback_is_logged_and_the_loop_goes_on(clocked, caplog):
    ev, _ = clocked
    after = []
    ev.call_soon(lambda: 1 / 0)
    ev.call_soon(after.append, "ok")
    ev.run_once(0)
    assert after == ["ok"]
    assert "ZeroDivisionError" in caplog.text


def test_cancelled_call_soon_does_not_run(clocked):
    ev, _ = clocked
    fired = []
    ev.call_soon(fired.append, 1).cancel()
    ev.run_once(0)
    assert fired == []


def test_select_sleeps_exactly_until_the_next_timer(clocked):
    ev, _clock = clocked
    waits = []
    real_select = ev._selector.select

    def spy(timeout=None):
        waits.append(timeout)
        return real_select(0)

    ev._selector.select = spy
    ev.call_later(7.5, lambda: None)
    ev.run_once(None)
    assert waits == [7.5]


def test_call_soon_threadsafe_wakes_a_sleeping_loop():
    ev = EventLoop()
    ran = threading.Event()
    thread = threading.Thread(target=ev.run)
    thread.start()
    try:
        ev.call_soon_threadsafe(ran.set)
        assert ran.wait(10)
    finally:
        ev.stop()
        thread.join(10)
        ev.close()


def test_timer_fires_in_real_time_without_polling():
    ev = EventLoop()
    fired = threading.Event()
    ev.call_later(0.05, fired.set)
    ev.call_later(0.06, ev.stop)
    ev.run()
    assert fired.is_set()
    ev.close()
