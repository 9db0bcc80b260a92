"""`t5ort batch` on one machine: real JSONL/CSV/Parquet files in, Parquet shards out, against rt.generate/score.

Uses the bundled numbers model. A killed run (a real process, SIGKILLed between shards) resumes
with nothing lost or duplicated.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

import t5ort
from t5ort.cli import main
from t5ort.corpus import CorpusError, JobSpec, run_job
from t5ort.demo import bundled
from t5ort.training.numbers import german, source

MODEL = bundled("onnx")
GEN = {"max_new_tokens": 12}
DISCRETE = ["id", "src", "tgt", "generated_text", "generated_ids", "top_ids", "top_tokens", "finish_reason",
            "num_input_tokens", "num_generated_tokens"]


def numbers(count: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)  # short and long inputs mixed, so bucketing has something to sort
    return [rng.randrange(0, 100) if i % 3 == 0 else rng.randrange(100, 1_000_000) for i in range(count)]


def write_jsonl(path: Path, count: int, seed: int = 0) -> list[dict]:
    rows = [{"id": f"r{i:04d}", "src": source(n), "tgt": german(n)} for i, n in enumerate(numbers(count, seed))]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return rows


@pytest.fixture(scope="module")
def rt():
    return t5ort.load(MODEL, threads=1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[dict]]:
    path = tmp_path_factory.mktemp("corpus") / "in.jsonl"
    return path, write_jsonl(path, 30)


def test_generate_job_equals_rt_generate(rt, corpus, tmp_path):
    path, rows = corpus
    spec = JobSpec(shard_rows=8, batch_size=4, top_n=3, generation=GEN)
    events = []
    manifest = run_job(rt, path, tmp_path / "out", spec, progress=events.append)
    table = pq.read_table(tmp_path / "out")
    assert table.column("id").to_pylist() == [r["id"] for r in rows]  # input order, every row once
    assert table.column("src").to_pylist() == [r["src"] for r in rows]
    assert sorted(p.name for p in (tmp_path / "out").glob("part-*.parquet")) == [f"part-{i:05d}.parquet" for i in range(4)]
    ref = rt.generate([r["src"] for r in rows], **GEN)
    assert table.column("generated_text").to_pylist() == list(ref.texts)
    top_ids, top_probs = ref.top_alternatives(3)
    for i, row in enumerate(table.to_pylist()):
        n = row["num_generated_tokens"]
        assert row["generated_ids"] == ref.sequences[i, 1:n + 1].tolist()
        assert row["generated_ids"][-1] == 1 and row["finish_reason"] == "eos"
        np.testing.assert_allclose(row["token_logprobs"], ref.token_logprobs[i, :n], atol=1e-4)
        assert row["top_ids"] == top_ids[i, :n].tolist()
        np.testing.assert_allclose(np.exp(row["top_logprobs"]), top_probs[i, :n], atol=1e-5)
        assert row["top_tokens"][0][0] == rt.tokenizer.token_string(row["top_ids"][0][0])
        assert row["num_input_tokens"] == len(rt.tokenizer.encode_batch([row["src"]])[0])
    assert (manifest["counts"]["rows"], manifest["counts"]["shards"]) == (30, 4)
    assert manifest["counts"]["tokens_this_run"] == sum(table.column("num_generated_tokens").to_pylist())
    assert manifest["options"]["generation"] == GEN and manifest["model"]["manifest_sha256"]
    assert manifest["timings"]["rows_per_s"] > 0
    assert json.loads((tmp_path / "out" / "_manifest.json").read_text()) == manifest
    assert [e.rows_done for e in events] == [0, 8, 16, 24, 30] and events[-1].tokens_done > 0


def test_finish_reason_length(rt, tmp_path):
    path = tmp_path / "in.jsonl"
    write_jsonl(path, 4)
    run_job(rt, path, tmp_path / "out", JobSpec(top_n=0, generation={"max_new_tokens": 2}))
    table = pq.read_table(tmp_path / "out")
    assert set(table.column("finish_reason").to_pylist()) == {"length"}
    assert table.column("num_generated_tokens").to_pylist() == [2] * 4
    assert "top_ids" not in table.column_names
    run_job(rt, path, tmp_path / "stop", JobSpec(top_n=0, generation={"max_new_tokens": 12,
                                                                       "stop_strings": ["hundert"]}))
    rows = pq.read_table(tmp_path / "stop").to_pylist()
    ref = rt.generate([r["src"] for r in rows], max_new_tokens=12, stop_strings=["hundert"])
    for row, text in zip(rows, ref.texts):
        assert row["generated_text"] == text
        assert row["finish_reason"] == ("stop" if text.endswith("hundert") else "eos"), text
        assert rt.tokenizer.decode_batch(np.array([row["generated_ids"]]))[0] == text


def test_csv_and_parquet_folders_give_the_same_rows(rt, corpus, tmp_path):
    path, rows = corpus
    table = pa.Table.from_pylist(rows)
    (tmp_path / "csv").mkdir()
    (tmp_path / "pq").mkdir()
    pcsv.write_csv(table.slice(0, 17), tmp_path / "csv" / "a.csv")
    pcsv.write_csv(table.slice(17), tmp_path / "csv" / "b.csv")
    pq.write_table(table.slice(0, 11), tmp_path / "pq" / "a.parquet")
    pq.write_table(table.slice(11), tmp_path / "pq" / "b.parquet")
    spec = JobSpec(shard_rows=8, batch_size=4, top_n=2, generation=GEN)
    outs = {}
    for name, source_path in (("jsonl", path), ("csv", tmp_path / "csv"), ("pq", tmp_path / "pq")):
        run_job(rt, source_path, tmp_path / f"out-{name}", spec)
        outs[name] = pq.read_table(tmp_path / f"out-{name}")
    for name in ("csv", "pq"):
        assert outs[name].select(DISCRETE[:8]).equals(outs["jsonl"].select(DISCRETE[:8])), name


def test_score_job_equals_rt_score(rt, corpus, tmp_path):
    path, rows = corpus
    run_job(rt, path, tmp_path / "out", JobSpec(task="score", shard_rows=16, batch_size=8))
    table = pq.read_table(tmp_path / "out")
    ref = rt.score([r["src"] for r in rows], [r["tgt"] for r in rows], output_logits=False)
    np.testing.assert_allclose(table.column("total_logprob").to_numpy(), ref.total_logprob, atol=1e-4)
    for i, row in enumerate(table.to_pylist()):
        n = row["num_target_tokens"]
        assert row["target_ids"] == ref.target_ids[i, :n].tolist()
        np.testing.assert_allclose(row["token_logprobs"], ref.token_logprobs[i, :n], atol=1e-4)
        assert row["mean_logprob"] == pytest.approx(row["total_logprob"] / n, abs=1e-6)


def test_raw_logits_shards(rt, corpus, tmp_path):
    path, rows = corpus
    spec = JobSpec(shard_rows=16, batch_size=4, top_n=0, save_raw_logits=True, generation=GEN)
    manifest = run_job(rt, path, tmp_path / "out", spec)
    table = pq.read_table(tmp_path / "out")  # Parquet readers skip the _raw_logits folder
    ref = rt.generate([r["src"] for r in rows], **GEN)
    assert manifest["counts"]["raw_logits_bytes"] == 30 * 12 * rt.vocab_size * 4
    for i, row in enumerate(table.to_pylist()):
        logits = np.load(tmp_path / "out" / row["raw_logits_file"], mmap_mode="r")[row["raw_logits_index"]]
        n = row["num_generated_tokens"]
        np.testing.assert_allclose(logits[:n], ref.logits[i, :n], atol=1e-4)
        assert not logits[n:].any()
    assert sorted(table.column("raw_logits_file").unique().to_pylist()) == [
        "_raw_logits/logits-00000.npy", "_raw_logits/logits-00001.npy"]


def test_raw_logits_over_budget_refused_before_any_work(rt, corpus, tmp_path):
    path, _ = corpus
    spec = JobSpec(save_raw_logits=True, raw_logits_budget=100_000, generation=GEN)
    with pytest.raises(CorpusError, match=r"0\.2 MiB of raw logits, over the budget of 0\.1 MiB"):
        run_job(rt, path, tmp_path / "out", spec)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, message", [
    ('{"id": 1, "src": "one"}\n{"id": 2, "src": 2}\n', r"in\.jsonl line 2: column 'src' holds int 2, not a string"),
    ('{"id": 1, "src": "one"}\n{"id": 2, "text": "two"}\n', r"in\.jsonl row 1 \(0-based\): column 'src' is missing"),
    ('{"id": 1, "src": "one"}\n{"id": 2, "src": null}\n', r"row 1 \(0-based\): column 'src' is missing or null"),
    ('{"id": 1, "src": "one"}\n{"id": 2\n', r"in\.jsonl line 2: not valid JSON"),
    ('{"id": 1, "src": "one", "generated_text": "x"}\n', r"input column\(s\) \['generated_text'\] have the names"),
])
def test_bad_rows_refused_before_any_work(rt, tmp_path, content, message):
    (tmp_path / "in.jsonl").write_text(content)
    with pytest.raises(CorpusError, match=message):
        run_job(rt, tmp_path / "in.jsonl", tmp_path / "out", JobSpec())
    assert not (tmp_path / "out").exists()


def test_bad_columns_and_paths(rt, tmp_path):
    pcsv.write_csv(pa.table({"id": [1], "text": ["one"]}), tmp_path / "in.csv")
    with pytest.raises(CorpusError, match=r"in\.csv: no column 'src' \(columns: id, text\); pass --text-column"):
        run_job(rt, tmp_path / "in.csv", tmp_path / "out", JobSpec())
    pq.write_table(pa.table({"src": ["one"], "tgt": [3]}), tmp_path / "in.parquet")
    with pytest.raises(CorpusError, match=r"column 'tgt' has type int64, not string"):
        run_job(rt, tmp_path / "in.parquet", tmp_path / "out", JobSpec(task="score"))
    with pytest.raises(CorpusError, match=r"INPUT .*nothing: no such file or folder"):
        run_job(rt, tmp_path / "nothing", tmp_path / "out", JobSpec())
    with pytest.raises(CorpusError, match="num_return_sequences must be 1"):
        run_job(rt, tmp_path / "in.csv", tmp_path / "out", JobSpec(generation={"num_beams": 2, "num_return_sequences": 2}))
    with pytest.raises(CorpusError, match=r"generation options \['max_new_tokens'\] do not apply"):
        run_job(rt, tmp_path / "in.csv", tmp_path / "out", JobSpec(task="score", generation=GEN))
    assert not (tmp_path / "out").exists()


def test_output_folder_refused_unless_resume_of_the_same_job(rt, corpus, tmp_path):
    path, _ = corpus
    spec = JobSpec(shard_rows=16, top_n=0, generation=GEN)
    run_job(rt, path, tmp_path / "out", spec)
    with pytest.raises(CorpusError, match="exists and is not empty; pass --resume"):
        run_job(rt, path, tmp_path / "out", spec)
    with pytest.raises(CorpusError, match=r"holds another job \(its spec differ"):
        run_job(rt, path, tmp_path / "out", JobSpec(shard_rows=16, top_n=0, generation={"max_new_tokens": 5}),
                resume=True)
    again = run_job(rt, path, tmp_path / "out", spec, resume=True)  # finished already: nothing to redo
    assert again["counts"]["rows_this_run"] == 0 and again["counts"]["rows_resumed"] == 30


def test_bucketing_pads_less_and_changes_no_token(rt, corpus, tmp_path):
    path, _ = corpus
    runs = {}
    for bucket in (True, False):
        manifest = run_job(rt, path, tmp_path / f"out-{bucket}", JobSpec(batch_size=4, top_n=2, bucket=bucket,
                                                                          generation=GEN))
        runs[bucket] = (manifest["counts"], pq.read_table(tmp_path / f"out-{bucket}"))
    assert runs[True][0]["padded_input_tokens_this_run"] < runs[False][0]["padded_input_tokens_this_run"]
    assert runs[True][0]["input_tokens_this_run"] == runs[False][0]["input_tokens_this_run"]
    assert runs[True][1].select(DISCRETE).equals(runs[False][1].select(DISCRETE))


def test_rows_without_id_get_their_row_number(rt, tmp_path):
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"src": source(n)}) + "\n" for n in range(5)))
    run_job(rt, tmp_path / "in.jsonl", tmp_path / "out", JobSpec(shard_rows=2, top_n=0, generation=GEN))
    assert pq.read_table(tmp_path / "out").column("id").to_pylist() == [0, 1, 2, 3, 4]


def test_cli_batch(corpus, tmp_path, capsys):
    path, _ = corpus
    assert main(["batch", str(MODEL), str(path), str(tmp_path / "out"), "--shard-rows", "16", "--top-n", "2",
                 "--max-new-tokens", "12", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"30 rows in 2 shards -> {tmp_path / 'out'}; ") and "tokens/s" in out
    assert pq.read_table(tmp_path / "out").num_rows == 30
    assert main(["batch", str(MODEL), str(path), str(tmp_path / "out")]) == 2
    assert "pass --resume" in capsys.readouterr().err


def test_killed_run_resumes_with_nothing_lost_or_duplicated(rt, tmp_path):
    path = tmp_path / "in.jsonl"
    rows = write_jsonl(path, 240, seed=1)
    spec = JobSpec(shard_rows=6, batch_size=3, top_n=2, generation=GEN)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "t5ort.cli", "batch", str(MODEL), str(path), str(out), "--shard-rows", "6",
               "--batch-size", "3", "--top-n", "2", "--max-new-tokens", "12", "--threads", "1", "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env={**os.environ, "PYTHONPATH": str(Path(t5ort.__file__).parents[1])})
    deadline = time.monotonic() + 60
    while len(list(out.glob("part-*.parquet"))) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()
    written = len(list(out.glob("part-*.parquet")))
    assert 3 <= written < 40 and not (out / "_manifest.json").exists()
    manifest = run_job(rt, path, out, spec, resume=True)
    assert manifest["counts"]["shards_resumed"] == written and manifest["counts"]["rows_resumed"] == 6 * written
    assert manifest["counts"]["rows_resumed"] + manifest["counts"]["rows_this_run"] == 240
    resumed = pq.read_table(out)
    assert resumed.column("id").to_pylist() == [r["id"] for r in rows]  # nothing lost, nothing twice, in order
    assert not list(out.glob(".*.tmp"))
    run_job(rt, path, tmp_path / "clean", spec)
    assert resumed.equals(pq.read_table(tmp_path / "clean"))  # same shards, same batches: bit for bit
