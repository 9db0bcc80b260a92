"""Ray adapters on a real local cluster on 127.0.0.1 with 2 CPUs, started by this module.

- Ray Data: ``t5ort batch --ray`` (the library call in this process, and the CLI in another
  process joining the cluster by its address, as against a `ray start --head` cluster) writes the
  rows the one-machine job writes;
- Ray Serve: 2 replicas answer as one plain server does, and both replicas serve requests.

One cluster for the whole module; it is stopped at the end and no Ray process is left behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray")

import t5ort  # noqa: E402
from t5ort.bench.server import ServerProcess, free_port, serve_command  # noqa: E402
from t5ort.corpus import CorpusError, JobSpec, run_job  # noqa: E402
from t5ort.demo import bundled  # noqa: E402
from t5ort.ray import run_ray_job  # noqa: E402
from t5ort.training.numbers import german, source  # noqa: E402

MODEL = bundled("onnx")
GEN = {"max_new_tokens": 12}
FLOATS = ["token_logprobs", "top_logprobs"]
PYTHONPATH = {"PYTHONPATH": str(Path(t5ort.__file__).parents[1])}  # the server processes import this t5ort


def ray_processes(marker: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if marker in line and "ps -eo" not in line]


@pytest.fixture(scope="module")
def cluster():
    """A local cluster on 127.0.0.1 with 2 CPUs, in its own temp dir; yields its address for other processes."""
    temp_dir = f"/tmp/t5ort-ray-{os.getpid()}"
    ray.init(num_cpus=2, _node_ip_address="127.0.0.1", include_dashboard=False, _temp_dir=temp_dir,
             log_to_driver=False, runtime_env={"env_vars": PYTHONPATH})
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        deadline = time.monotonic() + 20
        while ray_processes(temp_dir) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = ray_processes(temp_dir)
        assert not left, f"Ray processes left behind: {left}"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "in.jsonl"
    numbers = [n * 7919 % 1_000_000 if n % 3 else n for n in range(40)]
    path.write_text("".join(json.dumps({"id": i, "src": source(n), "tgt": german(n)}) + "\n"
                            for i, n in enumerate(numbers)))
    return path


def flat(column) -> np.ndarray:
    array = column.combine_chunks()
    while pa.types.is_list(array.type):
        array = array.flatten()
    return array.to_numpy()


def assert_same_rows(ray_table, local_table):
    """Every column equal; float columns to float noise (Ray forms its own batches, so padding differs)."""
    ray_table, local_table = ray_table.sort_by("id"), local_table.sort_by("id")
    assert ray_table.schema.remove_metadata().equals(local_table.schema.remove_metadata())
    for name in local_table.column_names:
        if name in FLOATS:  # same list lengths, values to 1e-4
            assert [len(v) for v in ray_table.column(name).to_pylist()] == \
                [len(v) for v in local_table.column(name).to_pylist()], name
            np.testing.assert_allclose(flat(ray_table.column(name)), flat(local_table.column(name)),
                                       atol=1e-4, rtol=1e-5, err_msg=name)
        else:
            assert ray_table.column(name).to_pylist() == local_table.column(name).to_pylist(), name


def test_ray_data_job_equals_the_local_job(cluster, corpus, tmp_path):
    spec = JobSpec(shard_rows=10, batch_size=4, top_n=3, generation=GEN)
    local = run_job(t5ort.load(MODEL, threads=1), corpus, tmp_path / "local", spec)
    manifest = run_ray_job(MODEL, corpus, tmp_path / "ray", spec, workers=2, threads=1)
    assert_same_rows(pq.read_table(tmp_path / "ray"), pq.read_table(tmp_path / "local"))
    assert manifest["counts"]["rows"] == 40
    assert manifest["counts"]["tokens_this_run"] == local["counts"]["tokens_this_run"]
    assert manifest["engine"]["workers"] == 2 and manifest["model"] == local["model"]
    assert json.loads((tmp_path / "ray" / "_manifest.json").read_text()) == manifest
    assert not list(tmp_path.glob(".ray*"))


def test_ray_data_refuses_before_any_work(cluster, corpus, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "src": "one"}\n{"id": 2, "src": 2}\n')
    with pytest.raises(CorpusError, match=r"bad\.jsonl line 2: column 'src' holds int 2"):
        run_ray_job(MODEL, bad, tmp_path / "out", JobSpec())
    no_id = tmp_path / "no_id.jsonl"
    no_id.write_text('{"src": "one"}\n')
    with pytest.raises(CorpusError, match="no id column 'id'; a Ray job needs one"):
        run_ray_job(MODEL, no_id, tmp_path / "out", JobSpec())
    with pytest.raises(CorpusError, match="is for one-machine jobs"):
        run_ray_job(MODEL, corpus, tmp_path / "out", JobSpec(save_raw_logits=True))
    assert not (tmp_path / "out").exists()


def test_cli_batch_on_a_running_cluster(cluster, corpus, tmp_path):
    """`t5ort batch --ray ADDRESS` in its own process, scoring a folder of Parquet files, against the local job."""
    import pyarrow.json as pjson

    table = pjson.read_json(corpus)
    (tmp_path / "pq").mkdir()
    pq.write_table(table.slice(0, 25), tmp_path / "pq" / "a.parquet")
    pq.write_table(table.slice(25), tmp_path / "pq" / "b.parquet")
    spec = JobSpec(task="score", shard_rows=16, batch_size=8)
    run_job(t5ort.load(MODEL, threads=1), tmp_path / "pq", tmp_path / "local", spec)
    done = subprocess.run(
        [sys.executable, "-m", "t5ort.cli", "batch", str(MODEL), str(tmp_path / "pq"), str(tmp_path / "ray"),
         "--task", "score",
         "--shard-rows", "16", "--batch-size", "8", "--ray", cluster, "--workers", "2"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, **PYTHONPATH})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("40 rows in ") and "tokens/s" in done.stdout
    ray_table, local_table = pq.read_table(tmp_path / "ray"), pq.read_table(tmp_path / "local")
    np.testing.assert_allclose(ray_table.sort_by("id").column("total_logprob").to_numpy(),
                               local_table.column("total_logprob").to_numpy(), atol=1e-4)
    assert ray_table.sort_by("id").column("target_ids").to_pylist() == local_table.column("target_ids").to_pylist()


# ---- Ray Serve -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory):
    """`t5ort serve` as a real process on a free loopback port (the reference)."""
    port = free_port()
    server = ServerProcess(serve_command(MODEL, port, "--threads", "1", "--quiet"), port,
                           log=tmp_path_factory.mktemp("plain") / "server.log", env=PYTHONPATH, ready_timeout=90)
    try:
        yield server.url
    finally:
        server.stop(30)


REQUESTS = [
    ("/generate", {"inputs": "translate English to German: three hundred forty-two",
                   "parameters": {"details": True, "top_n_tokens": 3, "max_new_tokens": 12}}),
    ("/generate", {"inputs": "translate English to German: seventy-one thousand nine",
                   "parameters": {"details": True, "max_new_tokens": 12, "num_beams": 3}}),
    ("/score", {"pairs": [{"source": "translate English to German: nineteen", "target": t} for t in ("neunzehn", "neun")]}),
    ("/v1/completions", {"model": "onnx", "prompt": "translate English to German: five hundred thousand one",
                         "max_tokens": 12, "logprobs": 2, "temperature": 0}),
]


def test_ray_serve_two_replicas_answer_as_one_server(cluster, plain_server, tmp_path):
    """`t5ort serve --ray ADDRESS --replicas 2` as a real process: same answers as `t5ort serve`, both replicas used."""
    import httpx

    from t5ort.ray import REPLICA_HEADER

    port = free_port()
    server = ServerProcess(serve_command(MODEL, port, "--ray", cluster, "--replicas", "2", "--threads", "1"), port,
                           log=tmp_path / "ray-serve.log", env=PYTHONPATH, ready_timeout=90)
    url = server.url
    try:
        for route, body in REQUESTS:
            want = httpx.post(plain_server + route, json=body, timeout=30)
            got = httpx.post(url + route, json=body, timeout=30)
            assert want.status_code == got.status_code == 200, (route, want.text, got.text)
            want, got = want.json(), got.json()
            for volatile in ("id", "created"):
                want.pop(volatile, None), got.pop(volatile, None)
            assert got == want, route
        bad = httpx.post(url + "/generate", json={"inputs": "x", "parameters": {"max_new_tokens": 0}}, timeout=30)
        assert bad.status_code == 422 and "max_new_tokens" in bad.json()["error"]  # same validation: a 4xx, JSON
        replicas = {httpx.post(url + "/generate", json=REQUESTS[0][1], timeout=30).headers[REPLICA_HEADER]
                    for _ in range(16)}
        assert len(replicas) == 2  # both replicas served (chance of one taking all 16 by luck: 2 x 2**-16)
    finally:
        code = server.stop(120)
        print(server.output()[-4000:])  # shown by pytest when the test fails
    assert code == 0
    from ray import serve

    assert "t5ort" not in serve.status().applications  # the deployment went with the process


def test_serve_deployment_options_checked_before_ray_starts(tmp_path):
    from ray.serve.deployment import Application

    from t5ort.ray import serve_deployment

    assert isinstance(serve_deployment(MODEL, autoscaling={"min_replicas": 1, "max_replicas": 3,
                                                           "target_ongoing_requests": 2}), Application)
    with pytest.raises(ValueError, match=r"autoscaling: unknown key\(s\) \['max'\]"):
        serve_deployment(MODEL, autoscaling={"max": 3})
    with pytest.raises(ValueError, match="num_replicas must be an int >= 1, got 0"):
        serve_deployment(MODEL, num_replicas=0)
    with pytest.raises(ValueError, match="threads must be an int >= 1"):
        serve_deployment(MODEL, threads=0)
    with pytest.raises(FileNotFoundError, match="no t5ort.json; pass the OUT_DIR"):
        serve_deployment(tmp_path)
    done = subprocess.run([sys.executable, "-m", "t5ort.cli", "serve", str(MODEL), "--ray", "--replicas", "2",
                           "--max-replicas", "4", "--quiet"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **PYTHONPATH})
    assert done.returncode == 2 and "--replicas is a fixed count" in done.stderr
