"""Request validation and the batcher's queue without a server: surrogates, limits, batch keys, 429."""

from __future__ import annotations

import time

import numpy as np
import pytest

import t5ort
from t5ort.demo import PREFIX, bundled

pytest.importorskip("fastapi")

from t5ort.serve.config import ServeConfig  # noqa: E402
from t5ort.serve.scheduler import Entry, GenerateJob, QueueFull, RequestQueue, ShuttingDown  # noqa: E402
from t5ort.serve.schemas import CompletionRequest, GenerateRequest  # noqa: E402
from t5ort.serve.validation import RequestError, completion_plan, tgi_plan  # noqa: E402


@pytest.fixture(scope="module")
def rt():
    return t5ort.load(bundled("onnx"), threads=1)


def test_library_refuses_lone_surrogates_naming_the_text(rt):
    with pytest.raises(ValueError, match=r"texts\[1\] holds a lone UTF-16 surrogate \('\\ud800' at character 3\)"):
        rt.generate(["fine", "abc\ud800def"], max_new_tokens=2)
    with pytest.raises(ValueError, match=r"texts\[0\] holds a lone UTF-16 surrogate"):
        rt.score(["\udfff"], ["x"])
    # a proper astral character (a surrogate pair in UTF-16, one code point here) is fine
    assert rt.generate(["\U0001F600"], max_new_tokens=2).sequences.shape[0] == 1


def test_schema_refuses_surrogates_and_unknown_fields():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="inputs\n.*lone UTF-16 surrogate"):
        GenerateRequest.model_validate({"inputs": "a\ud800"})
    with pytest.raises(ValidationError, match="parameters.stop.0\n.*lone UTF-16 surrogate"):
        GenerateRequest.model_validate({"inputs": "a", "parameters": {"stop": ["\udc00"]}})
    with pytest.raises(ValidationError, match="parameters.max_length\n.*Extra inputs are not permitted"):
        GenerateRequest.model_validate({"inputs": "a", "parameters": {"max_length": 3}})
    with pytest.raises(ValidationError, match="max_new_tokens\n.*valid integer"):
        GenerateRequest.model_validate({"inputs": "a", "parameters": {"max_new_tokens": "3"}})


def plan(rt, config=ServeConfig(), stream=False, **parameters):
    return tgi_plan(rt, config, GenerateRequest.model_validate({"inputs": PREFIX + "nineteen",
                                                                "parameters": parameters}), "r", stream=stream)


@pytest.mark.parametrize("parameters, field, match", [
    ({"max_new_tokens": 257}, "parameters.max_new_tokens", "<= 256"),
    ({"top_n_tokens": 6}, "parameters.top_n_tokens", "<= 5"),
    ({"best_of": 2}, "parameters.best_of", "not supported"),
    ({"watermark": True}, "parameters.watermark", "not supported"),
    ({"num_return_sequences": 2}, "parameters", "num_return_sequences > 1 needs num_beams > 1 or do_sample"),
    ({"min_new_tokens": 30, "max_new_tokens": 5}, "parameters", "min_new_tokens"),
    ({"num_beams": 5}, "parameters.num_beams", "<= 4"),
    ({"suppress_tokens": [999]}, "parameters", "suppress_tokens must be token id"),
])
def test_tgi_parameters_refused_naming_the_field(rt, parameters, field, match):
    with pytest.raises(RequestError, match=match) as info:
        plan(rt, **parameters)
    assert info.value.field == field and info.value.status == 422


def test_stream_refuses_beams_and_long_inputs(rt):
    with pytest.raises(RequestError, match="beam search cannot stream"):
        plan(rt, stream=True, num_beams=2)
    with pytest.raises(RequestError, match="over this server's max_input_tokens=3") as info:
        plan(rt, ServeConfig(max_input_tokens=3))
    assert info.value.field == "inputs"
    assert len(plan(rt, ServeConfig(max_input_tokens=3), truncate=3).job.input_ids) == 3


def test_tgi_warpers_imply_sampling_and_batch_keys(rt):
    greedy, other = plan(rt), plan(rt, max_new_tokens=7)
    assert greedy.job.batch_key == other.job.batch_key  # max_new_tokens is per job in a stream batch
    sampled = plan(rt, temperature=0.5)
    assert sampled.job.options_dict == {"do_sample": True, "temperature": 0.5, "top_k": 0}
    seeded = [plan(rt, temperature=0.5, seed=3).job.batch_key for _ in range(2)]
    assert seeded[0] != seeded[1]  # seeded sampling runs alone: its draws depend on the row index
    assert plan(rt, num_beams=2).job.batch_key != plan(rt, num_beams=2, max_new_tokens=7).job.batch_key


def test_openai_refusals(rt):
    def request(**kw):
        return completion_plan(rt, ServeConfig(model_name="m"), CompletionRequest.model_validate(
            {"model": "m", "prompt": "x", **kw}), "r")

    assert request(temperature=0).jobs[0].options_dict == {}
    assert request().jobs[0].options_dict["do_sample"] is True  # OpenAI's default temperature 1 samples
    for kw, field in [({"echo": True}, "echo"), ({"n": 2, "temperature": 0}, "n"), ({"logprobs": 6}, "logprobs"),
                      ({"suffix": "s"}, "suffix"), ({"logit_bias": {"1": 2.0}}, "logit_bias"),
                      ({"model": "other"}, "model"), ({"stop": ["a"] * 5}, "stop"), ({"max_tokens": 999}, "max_tokens")]:
        with pytest.raises(RequestError) as info:
            request(**kw)
        assert info.value.field == field, kw
    assert len(request(prompt=[[5, 6, 1], [7, 1]]).jobs) == 2


def test_queue_is_bounded_and_batches_compatible_jobs():
    class Sink:
        closed = False

        def send(self, event):
            return True

    def job(key_opts=()):
        return GenerateJob("r", np.array([1]), key_opts, 4)

    q = RequestQueue(3)
    q.put(Entry(job(), Sink()))
    q.put(Entry(job((("num_beams", 2),)), Sink()))
    q.put(Entry(job(), Sink()))
    with pytest.raises(QueueFull, match="3 requests waiting"):
        q.put(Entry(job(), Sink()))
    batch = q.next_batch(8, 0.0)
    assert len(batch) == 2 and all(e.job.options == () for e in batch)  # the beam job waits for its own batch
    assert len(q.next_batch(8, 0.0)) == 1
    q.close()
    assert q.next_batch(8, 0.0) is None
    with pytest.raises(ShuttingDown):
        q.put(Entry(job(), Sink()))


# ---- the dynamic batcher alone, without HTTP -------------------------------------------


class ListChannel:
    """A channel that keeps its events; ``leave_after`` tokens, it reports the receiver gone."""

    def __init__(self, leave_after: int | None = None):
        self.events, self.leave_after, self.closed = [], leave_after, False
        import threading

        self.done = threading.Event()

    def send(self, event):
        if self.closed:
            return False
        self.events.append(event)
        if self.leave_after is not None and len(self.events) >= self.leave_after:
            self.closed = True
        if not hasattr(event, "row"):  # Finished, ScoreFinished or Failed
            self.done.set()
        return True


def test_dynamic_batcher_answers_each_job_as_the_library_and_drops_cancelled_rows(rt):
    from t5ort.serve.metrics import ServeMetrics
    from t5ort.serve.scheduler import DynamicBatcher, Failed, Finished, TokenEvent

    config = ServeConfig(max_batch_size=8, batch_window_ms=50.0, request_timeout=30.0)
    metrics = ServeMetrics()
    batcher = DynamicBatcher(rt, config, metrics)
    texts = [PREFIX + n for n in ("three hundred forty-two", "nineteen", "five hundred thousand one")]
    lengths = [3, 12, 8]
    channels = [ListChannel() for _ in texts]
    for text, n, channel in zip(texts, lengths, channels):
        batcher.submit(GenerateJob("r", rt.encode_texts([text])[0][0], (), n, top_n=2), channel)
    leaver = ListChannel(leave_after=3)  # leaves after 3 tokens of a long forced generation
    batcher.submit(GenerateJob("x", rt.encode_texts(["x"])[0][0], (("min_new_tokens", 200),), 200), leaver)
    batcher.start()
    try:
        for channel in channels:
            assert channel.done.wait(30)
        for text, n, channel in zip(texts, lengths, channels):
            want = rt.generate([text], max_new_tokens=n)
            final = channel.events[-1]
            assert isinstance(final, Finished)
            tokens = [e.id for e in channel.events if isinstance(e, TokenEvent)]
            assert tokens == list(final.rows[0].ids) == want.sequences[0, 1:1 + len(tokens)].tolist()
            np.testing.assert_allclose(final.rows[0].logprobs, want.token_logprobs[0, :len(tokens)], atol=1e-4)
            assert final.rows[0].text == want.texts[0]
        deadline = time.monotonic() + 20
        while not leaver.closed or metrics.rows_in_flight._value.get() != 0:  # its batch ran, then ended
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert len(leaver.events) == 3  # nothing more was sent, and the batch did not run to 200 steps
        assert metrics.generated_tokens._value.get() < 3 + 12 + 8 + 200
    finally:
        batcher.stop(5.0)
    late = ListChannel()
    with pytest.raises(ShuttingDown):
        batcher.submit(GenerateJob("late", np.array([1]), (), 2), late)
    timed_out = ListChannel()
    slow = DynamicBatcher(rt, config, ServeMetrics())
    slow.submit(GenerateJob("t", np.array([1]), (("min_new_tokens", 5000),), 5000, deadline=time.monotonic() + 0.2),
                timed_out)
    slow.start()
    try:
        assert timed_out.done.wait(30)
        assert isinstance(timed_out.events[-1], Failed) and timed_out.events[-1].kind == "timeout"
        assert len(timed_out.events) < 5000
    finally:
        slow.stop(5.0)
