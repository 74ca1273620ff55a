"""The relay connection through the generated Python bindings, against a real relay process."""

import asyncio
import threading

import pytest

import handover_ffi as h

run = asyncio.run


class Progress(h.ProgressListener):
    """A foreign (Python) implementation of the Rust callback interface."""

    def __init__(self):
        self.calls = []
        self.threads = set()

    def on_progress(self, done, total):
        self.calls.append((done, total))
        self.threads.add(threading.current_thread().name)


def test_bad_pins_are_rejected_before_connecting():
    with pytest.raises(h.HandoverError.InvalidArgument) as err:
        run(h.Relay.connect("127.0.0.1:1", "not hex"))
    assert "hex" in str(err.value)
    with pytest.raises(h.HandoverError.InvalidArgument):
        run(h.Relay.connect("127.0.0.1:1", "ab" * 31))


def test_unresolvable_address():
    with pytest.raises(h.HandoverError.RelayUnreachable):
        run(h.Relay.connect("no port here", "00" * 32))


def test_ping_and_latency_with_progress_callback(relay):
    async def flow():
        conn = await h.Relay.connect(relay.address, relay.pin)
        assert not conn.is_closed()
        now = await conn.ping()
        progress = Progress()
        report = await conn.check_latency(5, progress)
        await conn.disconnect()
        return conn, now, progress, report

    conn, now, progress, report = run(flow())
    assert now > 1_700_000_000
    assert progress.calls == [(i, 5) for i in range(1, 6)]
    assert report.pings == 5
    assert 0 <= report.min_ms <= report.median_ms <= report.max_ms
    assert report.relay_time >= now
    assert conn.is_closed()


def test_wrong_pin_is_refused(relay):
    wrong = "00" * 32
    with pytest.raises(h.HandoverError.RelayUnreachable):
        run(h.Relay.connect(relay.address, wrong))


def test_latency_check_validates_count(relay):
    async def flow():
        conn = await h.Relay.connect(relay.address, relay.pin)
        try:
            await conn.check_latency(0, Progress())
        finally:
            await conn.disconnect()

    with pytest.raises(h.HandoverError.InvalidArgument):
        run(flow())


def test_concurrent_pings_on_one_connection(relay):
    async def flow():
        conn = await h.Relay.connect(relay.address, relay.pin)
        times = await asyncio.gather(*(conn.ping() for _ in range(20)))
        await conn.disconnect()
        return times

    assert len(run(flow())) == 20


def test_cancelled_call_leaves_connection_usable(relay):
    async def flow():
        conn = await h.Relay.connect(relay.address, relay.pin)
        task = asyncio.ensure_future(conn.check_latency(100, Progress()))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        now = await conn.ping()
        await conn.disconnect()
        return now

    assert run(flow()) > 0
