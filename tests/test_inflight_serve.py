"""In-flight batching in ``t5ort serve``: the scheduler alone (no HTTP), then through the real server process.

The core contract under batching: requests fired at random times with random options each get what
``rt.generate`` gives for that request alone (tokens equal, logprobs and raw logits within the parity
tolerance), whatever else shares the batch and whenever it joined.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import t5ort
from t5ort.demo import PREFIX, bundled

pytest.importorskip("fastapi")
from t5ort.serve.config import ServeConfig  # noqa: E402
from t5ort.serve.inflight import InflightScheduler, make_scheduler  # noqa: E402
from t5ort.serve.metrics import ServeMetrics  # noqa: E402
from t5ort.serve.scheduler import DynamicBatcher, Failed, Finished, GenerateJob, ScoreFinished, ScoreJob, TokenEvent  # noqa: E402

MODEL = bundled("onnx")
ATOL = 1e-4
NUMBERS = ["three hundred forty-two", "nineteen", "seventy-one thousand nine", "five hundred thousand one",
           "twenty thousand two hundred ten", "eight", "nine hundred ninety-nine thousand", "sixty-six",
           "four hundred", "twelve thousand twelve"]


@pytest.fixture(scope="module")
def rt():
    return t5ort.load(MODEL, threads=1)


class Channel:
    """A real channel: events in order; ``close()`` plays a client that went away."""

    def __init__(self):
        self.events: list = []
        self.done = threading.Event()
        self.closed = False

    def send(self, event) -> bool:
        if self.closed:
            return False
        self.events.append(event)
        if isinstance(event, (Finished, Failed, ScoreFinished)):
            self.done.set()
        return True

    def close(self):
        self.closed = True


def random_request(rng) -> tuple[str, dict, int]:
    """(text, options without max_new_tokens, max_new_tokens)."""
    kind = rng.choice(["greedy", "greedy", "sample", "sample", "beam"])
    options: dict = {}
    if kind == "sample":
        options.update(do_sample=True, seed=int(rng.integers(0, 10_000)), temperature=float(rng.choice([2.0, 3.0])),
                       top_k=int(rng.choice([0, 10])), top_p=float(rng.choice([1.0, 0.95])))
        if rng.random() < 0.3:
            options["num_return_sequences"] = 2
    elif kind == "beam":
        options.update(num_beams=int(rng.integers(2, 4)))
    if rng.random() < 0.3:
        options["repetition_penalty"] = 1.3
    if rng.random() < 0.2:
        options["stop_strings"] = ("hundert",)
    max_new = int(rng.integers(1, 16))
    if rng.random() < 0.3:
        options["min_new_tokens"] = int(rng.integers(0, max_new + 1))
    return PREFIX + NUMBERS[int(rng.integers(0, len(NUMBERS)))], options, max_new


def check_against_alone(rt, text, options, max_new, finished: Finished, logits: bool):
    want = rt.generate([text], max_new_tokens=max_new, **options)
    for r, row in enumerate(finished.rows):
        n = len(row.ids)
        assert list(row.ids) == want.sequences[r, 1:1 + n].tolist(), (text, options, max_new)
        assert n == max_new or want.sequences[r, 1 + n:].tolist() == [0] * (want.sequences.shape[1] - 1 - n)
        np.testing.assert_allclose(row.logprobs, want.token_logprobs[r, :n], atol=ATOL)
        if logits and not options.get("num_beams"):
            np.testing.assert_allclose(row.logits, want.logits[r, :n], rtol=0,
                                       atol=1e-4 + 2e-6 * float(np.abs(want.logits).max()))
    assert row.text == want.texts[len(finished.rows) - 1]


def test_scheduler_alone_random_requests_at_random_times_equal_generate_alone(rt):
    rng = np.random.default_rng(0)
    metrics = ServeMetrics()
    scheduler = InflightScheduler(rt, ServeConfig(max_batch_rows=12).validate(), metrics)
    scheduler.start()
    sent = []
    try:
        for i in range(24):
            text, options, max_new = random_request(rng)
            ids = rt.encode_texts([text])[0][0]
            logits = bool(rng.random() < 0.4)
            job = GenerateJob(f"r{i}", ids, tuple(sorted(options.items())), max_new, top_n=2, want_logits=logits)
            channel = Channel()
            scheduler.submit(job, channel)
            sent.append((channel, text, options, max_new, logits))
            time.sleep(float(rng.choice([0.0, 0.0, 0.002, 0.01])))
        score = Channel()
        scheduler.submit(ScoreJob("s", (rt.encode_texts([PREFIX + NUMBERS[1]])[0][0],),
                                  (rt.encode_texts(["neunzehn"])[0][0],)), score)
        for channel, *_ in sent:
            assert channel.done.wait(60)
        assert score.done.wait(60)
    finally:
        scheduler.stop(5)
    for channel, text, options, max_new, logits in sent:
        finished = channel.events[-1]
        assert isinstance(finished, Finished), finished
        check_against_alone(rt, text, options, max_new, finished, logits)
        if not options.get("num_beams"):  # streamed token by token, and the pieces add up
            tokens = [e for e in channel.events if isinstance(e, TokenEvent)]
            assert len(tokens) == sum(len(r.ids) for r in finished.rows)
            assert "".join(e.text for e in tokens if e.row == 0 and not e.special) == finished.rows[0].text
    want = rt.score([PREFIX + NUMBERS[1]], ["neunzehn"])
    np.testing.assert_allclose(score.events[-1].total_logprobs, want.total_logprob, atol=ATOL)
    stats = scheduler.main.stats
    assert max(stats.sizes) > 3 and stats.joins > 3, stats  # requests did join a running batch
    assert max(stats.sizes) <= 12  # the row cap held


def test_scheduler_row_cap_token_budget_cancel_and_timeout(rt):
    scheduler = InflightScheduler(rt, ServeConfig(max_batch_rows=2, max_batch_tokens=2 * 40).validate(),
                                  ServeMetrics())
    ids = rt.encode_texts([PREFIX + NUMBERS[0]])[0][0]
    long = (("min_new_tokens", 30),)
    channels = [Channel() for _ in range(4)]
    scheduler.start()
    try:
        scheduler.submit(GenerateJob("a", ids, long, 30), channels[0])
        scheduler.submit(GenerateJob("b", ids, long, 30), channels[1])
        # 2 rows x 50 > 80 tokens: c waits for an empty batch (and, held to 50 tokens, keeps it for 50 steps)
        scheduler.submit(GenerateJob("c", ids, (("min_new_tokens", 50),), 50), channels[2])
        while not any(isinstance(e, TokenEvent) for e in channels[1].events):
            time.sleep(0.001)
        # d queues behind c while a and b run: it could start only after b's and c's 79 more steps, and its
        # deadline passes long before that, so it times out in the queue, whatever the machine's speed
        scheduler.submit(GenerateJob("d", ids, long, 30, deadline=time.monotonic() + 0.001), channels[3])
        channels[0].close()  # a's client goes away: its row leaves
        for c in channels[1:]:
            assert c.done.wait(30)
    finally:
        scheduler.stop(5)
    assert isinstance(channels[1].events[-1], Finished) and len(channels[1].events[-1].rows[0].ids) == 30
    assert isinstance(channels[2].events[-1], Finished)
    assert isinstance(channels[3].events[-1], Failed) and channels[3].events[-1].kind == "timeout"
    assert len([e for e in channels[0].events if isinstance(e, TokenEvent)]) < 30
    assert max(scheduler.main.stats.sizes) <= 2


def test_make_scheduler_follows_config(rt):
    assert isinstance(make_scheduler(rt, ServeConfig(), ServeMetrics()), InflightScheduler)
    dynamic = make_scheduler(rt, ServeConfig(batching="dynamic"), ServeMetrics())
    none = make_scheduler(rt, ServeConfig(batching="none"), ServeMetrics())
    assert type(dynamic) is DynamicBatcher and dynamic.config.max_batch_size == 8
    assert type(none) is DynamicBatcher and none.config.max_batch_size == 1
    with pytest.raises(ValueError, match="ServeConfig.batching must be 'inflight', 'dynamic' or 'none'"):
        ServeConfig(batching="static").validate()


# ---- through the real server process ---------------------------------------------------------


def test_server_random_requests_at_random_times_equal_generate_alone(rt, tmp_path):
    httpx = pytest.importorskip("httpx")
    from test_serve import Server

    server = Server(tmp_path / "server.log")  # in-flight batching is the default
    try:
        info = httpx.get(server.url + "/info").json()
        assert "Inflight" in str(info), info
        rng = np.random.default_rng(1)
        requests = [random_request(rng) for _ in range(16)]
        # Arrivals spread over at most ~75 ms: random join times, while the early requests (the bundled model
        # answers one in tens of ms) are still running when the later ones come.
        delays = rng.choice([0.0, 0.005, 0.02], size=len(requests)) * 0.25

        def one(i):
            time.sleep(float(delays[i]) * i)
            text, options, max_new = requests[i]
            parameters = {"max_new_tokens": max_new, "details": True, "top_n_tokens": 2}
            for name, value in options.items():
                if not (name == "top_k" and value == 0):  # TGI: no top_k means none (our options say 0)
                    parameters[{"stop_strings": "stop"}.get(name, name)] = list(value) if name == "stop_strings" else value
            return httpx.post(server.url + "/generate", json={"inputs": text, "parameters": parameters}, timeout=60)

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(one, range(len(requests))))
        for (text, options, max_new), answer in zip(requests, answers):
            assert answer.status_code == 200, answer.text
            body = answer.json()
            want = rt.generate([text], max_new_tokens=max_new, **options)
            details = [body["details"], *(body["details"].get("best_of_sequences") or [])]
            for r, d in enumerate(details):
                n = len(d["tokens"])
                assert [t["id"] for t in d["tokens"]] == want.sequences[r, 1:1 + n].tolist(), (text, options)
                np.testing.assert_allclose([t["logprob"] for t in d["tokens"]], want.token_logprobs[r, :n], atol=ATOL)
            assert body["generated_text"] == want.texts[0]
        shared = server.metric("t5ort_batch_size_sum") / max(1.0, server.metric("t5ort_batch_size_count"))
        print(f"requests per admitted batch: {shared:.2f}")
        assert shared > 1.5, f"requests did not share the running batch ({shared:.2f} per batch)"
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("batching", ["dynamic", "none"])
def test_server_other_batching_modes_answer_concurrent_requests_alone_equal(rt, tmp_path, batching):
    httpx = pytest.importorskip("httpx")
    from test_serve import Server

    server = Server(tmp_path / "server.log", "--batching", batching)
    try:
        info = httpx.get(server.url + "/info").json()
        assert "DynamicBatcher" in str(info) and f"'batching': '{batching}'" in str(info), info
        texts = [PREFIX + n for n in NUMBERS[:6]]

        def one(text):
            return httpx.post(server.url + "/generate", json={"inputs": text, "parameters": {
                "max_new_tokens": 10, "details": True}}, timeout=60).json()

        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(one, texts))
        for text, answer in zip(texts, answers):
            want = rt.generate([text], max_new_tokens=10)
            n = len(answer["details"]["tokens"])
            assert [t["id"] for t in answer["details"]["tokens"]] == want.sequences[0, 1:1 + n].tolist()
        if batching == "none":  # one request per batch
            assert server.metric("t5ort_batch_size_sum") == server.metric("t5ort_batch_size_count") >= 6
    finally:
        assert server.stop() == 0
