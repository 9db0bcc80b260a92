"""What a request costs the server beyond the model: the event loop's channel, and no per-step hand-off for
answers that are not streamed (the figures: benchmarks/serve_load.py --paired-only).

The channel is tested alone against a real event loop fed from a worker thread; the non-streamed path
through the scheduler (same answer, no TokenEvent) and through a real server process (a client that leaves
a non-streamed request still stops its rows).
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

import t5ort
from t5ort.demo import PREFIX, bundled

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
from t5ort.serve.app import AsyncChannel  # noqa: E402
from t5ort.serve.config import ServeConfig  # noqa: E402
from t5ort.serve.inflight import InflightScheduler  # noqa: E402
from t5ort.serve.metrics import ServeMetrics  # noqa: E402
from t5ort.serve.scheduler import Finished, GenerateJob, TokenEvent  # noqa: E402
from test_inflight_serve import Channel  # noqa: E402
from test_serve import Server  # noqa: E402

MODEL = bundled("onnx")


@pytest.fixture(scope="module")
def rt():
    return t5ort.load(MODEL, threads=1)


# ---- the channel: worker thread -> event loop ----------------------------------------------


class CountingLoop:
    """Forwards to the running loop and counts the worker thread's wake-ups."""

    def __init__(self, loop):
        self.loop, self.wakeups = loop, 0

    def call_soon_threadsafe(self, callback, *args):
        self.wakeups += 1
        return self.loop.call_soon_threadsafe(callback, *args)

    def create_future(self):
        return self.loop.create_future()


def test_channel_delivers_in_order_and_events_sent_meanwhile_share_a_wakeup():
    async def main():
        loop = CountingLoop(asyncio.get_running_loop())
        channel = AsyncChannel(loop)
        sent = threading.Event()

        def worker():
            for i in range(50):
                assert channel.send(i)
            sent.set()

        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()  # blocks the event loop: all 50 are sent while the loop (the reader) is busy
        assert sent.is_set()
        got = [await channel.get() for _ in range(50)]
        return got, loop.wakeups

    got, wakeups = asyncio.run(main())
    assert got == list(range(50))
    assert wakeups == 1  # one wake-up for the lot, not one per event


def test_channel_wakes_a_waiting_reader_and_stops_on_interrupt():
    async def main():
        loop = asyncio.get_running_loop()
        channel = AsyncChannel(loop)
        reader = asyncio.ensure_future(channel.get())
        await asyncio.sleep(0.01)
        threading.Thread(target=channel.send, args=("token",)).start()
        first = await asyncio.wait_for(reader, 5)
        waiting = asyncio.ensure_future(channel.get())
        await asyncio.sleep(0.01)
        channel.interrupt("disconnect")
        interrupted = await asyncio.wait_for(waiting, 5)
        channel.send("late")  # sent after the interrupt: not read
        after = await channel.get()
        channel.close()
        return first, interrupted, after, channel.interrupted, channel.send("closed")

    first, interrupted, after, reason, sent_after_close = asyncio.run(main())
    assert first == "token" and interrupted is None and after is None and reason == "disconnect"
    assert sent_after_close is False


# ---- non-streamed answers: no per-step hand-off -------------------------------------------------


def test_a_job_that_does_not_stream_gets_only_its_answer_equal_to_the_streamed_one(rt):
    scheduler = InflightScheduler(rt, ServeConfig(max_batch_rows=8).validate(), ServeMetrics())
    scheduler.start()
    try:
        ids, _ = rt.encode_texts([PREFIX + "seventy-one thousand nine"])
        channels = {}
        for stream in (True, False):
            for options in ((), (("do_sample", True), ("seed", 3), ("top_k", 0))):
                job = GenerateJob(f"{stream}-{len(options)}", ids[0], options, 12, top_n=2, stream=stream,
                                  entropy=True)
                channels[stream, options] = channel = Channel()
                scheduler.submit(job, channel)
        for channel in channels.values():
            assert channel.done.wait(60)
    finally:
        scheduler.stop(5)
    for options in ((), (("do_sample", True), ("seed", 3), ("top_k", 0))):
        streamed, quiet = channels[True, options].events, channels[False, options].events
        assert [type(e) for e in quiet] == [Finished]
        tokens = [e for e in streamed if isinstance(e, TokenEvent)]
        a, b = streamed[-1].rows[0], quiet[0].rows[0]
        assert len(tokens) == len(a.ids) > 0
        assert a.ids == b.ids and a.texts == b.texts and a.finish_reason == b.finish_reason
        assert a.logprobs == b.logprobs == tuple(e.logprob for e in tokens)
        assert a.top == b.top and a.entropies == b.entropies
        want = rt.generate(input_ids=ids, max_new_tokens=12, **dict(options))
        np.testing.assert_allclose(a.logprobs, want.token_logprobs[0, : len(a.ids)], atol=1e-4)


def test_a_client_that_leaves_a_non_streamed_request_stops_its_rows(tmp_path):
    server = Server(tmp_path / "server.log", "--max-new-tokens", "4096")
    try:
        cancelled = server.metric("t5ort_request_failures_total", 'reason="cancelled"')
        body = {"inputs": PREFIX + "eight", "parameters": {"max_new_tokens": 4096, "min_new_tokens": 4096}}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server.url + "/generate", json=body, timeout=httpx.Timeout(30, read=1.0))
        deadline = time.monotonic() + 20
        while server.metric("t5ort_request_failures_total", 'reason="cancelled"') == cancelled:
            assert time.monotonic() < deadline, "the server never noticed the client leave"
            time.sleep(0.05)
        assert server.metric("t5ort_batch_current_rows") == 0
        assert server.metric("t5ort_generated_tokens_total") < 4096  # stopped, not run to the end
        answer = httpx.post(server.url + "/generate", json={"inputs": PREFIX + "eight"}, timeout=30)
        assert answer.status_code == 200 and answer.json()["generated_text"]
    finally:
        assert server.stop() == 0
