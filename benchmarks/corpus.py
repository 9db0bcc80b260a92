"""Corpus throughput: `t5ort batch` in one process, on Ray Data, and a plain loop over Optimum's generate.

    python benchmarks/corpus.py [--rows 256] [--batch-size 32] [--new-tokens 32] [--threads 2] [--repeats 3]
        [--systems batch batch-unbucketed ray optimum] [--workdir benchmarks/.work] [--json FILE] [--quick]

Every system reads the same Parquet corpus and writes Parquet rows holding the generated ids, text,
per-step token log-probs and the top-5 alternatives of every step (ids and log-probs), on the
seeded random t5-small-shaped checkpoint of ``_model.py``:

- ``batch``: ``t5ort.corpus.run_job`` (what ``t5ort batch`` runs) in one process, ``--threads``
  onnxruntime threads, rows bucketed by length inside each 1024-row shard;
- ``batch-unbucketed``: the same with ``bucket=False`` (batches in input order): the bucketing gain;
- ``ray``: ``t5ort.ray.run_ray_job`` on a local Ray cluster (``ray.init(num_cpus=threads)``, started
  before the clock starts), ``threads`` workers x 1 thread; the time includes the actors' start and
  model load, as a job's does;
- ``optimum``: what users write today: ``ORTModelForSeq2SeqLM`` (optimum's export, t5ort's session
  options, ``--threads`` threads), a Python loop over batches of ``--batch-size`` rows in input order,
  ``generate(output_logits=True, return_dict_in_generate=True)``, log-softmax and top-5 in torch,
  one ``pq.write_table`` at the end.

The random model has no tokenizer: a copy of the t5ort export gets a word-level tokenizer naming
token i ``t{i}`` (``serve_load.word_tokenizer``), and inputs are such words, 8..64 per row (seeded).
``min_new_tokens = max_new_tokens``, so every system generates exactly rows x new-tokens tokens.
Each run is a fresh process; the systems take turns ``--repeats`` times and the best run of each
is reported with all run times and the CPU time other processes took during it (on a shared
machine, compare the ratios of one invocation).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _model import DEFAULT_WORKDIR, machine, markdown_table, other_cpu_meter, say  # noqa: E402

SYSTEMS = ("batch", "batch-unbucketed", "ray", "optimum")
TOP_N = 5


def prepare(workdir: Path, rows: int, optimum_baseline: bool = True) -> tuple[Path, Path, Path, Path]:
    """The t5ort export with a word tokenizer, optimum's export (unless ``optimum_baseline`` is False), the
    tokenizer file and the corpus."""
    from serve_load import prepare as prepare_exports

    served, optimum, tokenizer = prepare_exports(workdir, name="corpus", optimum_baseline=optimum_baseline)
    corpus = workdir / f"corpus-{rows}.parquet"
    rng = np.random.default_rng(0)
    texts = [" ".join(f"t{t}" for t in rng.integers(3, 32000, size=rng.integers(8, 65))) for _ in range(rows)]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": np.arange(rows), "src": texts}), corpus)
    return served, optimum, tokenizer, corpus


# ---- one system, in its own process ------------------------------------------------------


def run_t5ort(export: Path, corpus: Path, out: Path, args, bucket: bool) -> dict:
    import t5ort
    from t5ort.corpus import JobSpec, run_job

    rt = t5ort.load(export, threads=args.threads)
    spec = JobSpec(batch_size=args.batch_size, top_n=TOP_N, bucket=bucket,
                   generation={"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens})
    start = time.perf_counter()
    manifest = run_job(rt, corpus, out, spec)
    seconds = time.perf_counter() - start
    c = manifest["counts"]
    return {"seconds": seconds, "tokens": c["tokens_this_run"],
            "padding": c["padded_input_tokens_this_run"] / c["input_tokens_this_run"]}


def run_ray(export: Path, corpus: Path, out: Path, args) -> dict:
    import ray

    from t5ort.corpus import JobSpec
    from t5ort.ray import run_ray_job

    start = time.perf_counter()
    ray.init(num_cpus=args.threads, include_dashboard=False, log_to_driver=False,
             _temp_dir=tempfile.mkdtemp(prefix="t5ort-bench-ray-"))
    cluster_s = time.perf_counter() - start
    spec = JobSpec(batch_size=args.batch_size, top_n=TOP_N,
                   generation={"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens})
    try:
        start = time.perf_counter()
        manifest = run_ray_job(export, corpus, out, spec, workers=args.threads, threads=1)
        seconds = time.perf_counter() - start
    finally:
        ray.shutdown()
    return {"seconds": seconds, "tokens": manifest["counts"]["tokens_this_run"], "cluster_start_s": cluster_s}


def run_optimum(optimum_dir: Path, tokenizer_json: Path, corpus: Path, out: Path, args) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from optimum.onnxruntime import ORTModelForSeq2SeqLM
    from transformers import PreTrainedTokenizerFast

    from _model import ort_session_options

    torch.set_num_threads(args.threads)
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_json), pad_token="<pad>", eos_token="</s>",
                                        unk_token="<unk>")
    model = ORTModelForSeq2SeqLM.from_pretrained(optimum_dir, provider="CPUExecutionProvider",
                                                 session_options=ort_session_options(args.threads))
    start = time.perf_counter()
    table = pq.read_table(corpus)
    ids, texts = table.column("id").to_pylist(), table.column("src").to_pylist()
    rows, tokens = [], 0
    for i in range(0, len(texts), args.batch_size):
        enc = tokenizer(texts[i:i + args.batch_size], return_tensors="pt", padding=True)
        with torch.no_grad():
            result = model.generate(**enc, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                    do_sample=False, output_logits=True, return_dict_in_generate=True)
        logprobs = torch.log_softmax(torch.stack(result.logits, dim=1), dim=-1)  # [rows, steps, vocab]
        new = result.sequences[:, 1:]
        chosen = logprobs.gather(-1, new[..., None])[..., 0]
        top = logprobs.topk(TOP_N, dim=-1)
        decoded = tokenizer.batch_decode(new, skip_special_tokens=True)
        for r in range(new.shape[0]):
            rows.append({"id": ids[i + r], "src": texts[i + r], "generated_text": decoded[r],
                         "generated_ids": new[r].tolist(), "token_logprobs": chosen[r].tolist(),
                         "top_ids": top.indices[r].tolist(), "top_logprobs": top.values[r].tolist()})
            tokens += new.shape[1]
    out.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), out / "part-00000.parquet")
    return {"seconds": time.perf_counter() - start, "tokens": tokens}


def child(args) -> None:
    served, optimum, tokenizer, corpus = (Path(p) for p in args.paths)
    with tempfile.TemporaryDirectory(prefix="t5ort-corpus-bench-") as tmp:
        out = Path(tmp) / "out"
        other = other_cpu_meter()
        if args.child == "batch":
            result = run_t5ort(served, corpus, out, args, bucket=True)
        elif args.child == "batch-unbucketed":
            result = run_t5ort(served, corpus, out, args, bucket=False)
        elif args.child == "ray":
            result = run_ray(served, corpus, out, args)
        else:
            result = run_optimum(optimum, tokenizer, corpus, out, args)
        result["other_cpu_s"] = other()
    print(json.dumps(result))


# ---- driver ------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="runs per system, taking turns (best is reported)")
    p.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--child", choices=SYSTEMS, help=argparse.SUPPRESS)
    p.add_argument("--paths", nargs=4, help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true",
                   help="a smoke run (not a measurement): t5ort batch only, 16 rows, 4 new tokens, one run")
    args = p.parse_args()
    if args.child:
        return child(args)
    if args.quick:
        args.systems, args.rows, args.new_tokens, args.repeats = ["batch"], 16, 4, 1
    paths = prepare(args.workdir, args.rows, optimum_baseline="optimum" in args.systems)
    runs: dict[str, list[dict]] = {system: [] for system in args.systems}
    for repeat in range(args.repeats):  # the systems take turns, so a burst of other load hits them alike
        for system in args.systems:
            say(f"run {repeat + 1}/{args.repeats}: {system} on {args.rows} rows")
            done = subprocess.run([sys.executable, __file__, "--child", system, "--paths", *map(str, paths),
                                   "--rows", str(args.rows), "--batch-size", str(args.batch_size),
                                   "--new-tokens", str(args.new_tokens), "--threads", str(args.threads)],
                                  capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{system} failed:\n{done.stderr[-4000:]}")
            runs[system].append(json.loads(done.stdout.strip().splitlines()[-1]))
    results = {system: min(r, key=lambda x: x["seconds"]) | {"all_seconds": [x["seconds"] for x in r]}
               for system, r in runs.items()}
    base = results.get("optimum", {}).get("seconds")
    header = ["system", "threads", "best of runs, s", "all runs, s", "rows/s", "tokens/s", "vs Optimum loop",
              "other processes' CPU s (best run)"]
    names = {"batch": "t5ort batch (one process)", "batch-unbucketed": "t5ort batch, not bucketed",
             "ray": f"t5ort batch --ray ({args.threads} workers x 1 thread)", "optimum": "Optimum generate loop"}
    table = []
    for system, r in results.items():
        threads = f"{args.threads} x 1" if system == "ray" else str(args.threads)
        speed = f"{base / r['seconds']:.2f}x" if base else "-"
        table.append([names[system], threads, f"{r['seconds']:.2f}", " ".join(f"{x:.1f}" for x in r["all_seconds"]),
                      f"{args.rows / r['seconds']:.1f}", f"{r['tokens'] / r['seconds']:.0f}", speed,
                      f"{r['other_cpu_s']:.1f}"])
    print(f"{args.rows} rows of 8..64 input tokens, {args.new_tokens} new tokens each (greedy, forced), "
          f"batch size {args.batch_size}, top-{TOP_N} per step, t5-small shape, fp32, {args.repeats} runs each")
    print(markdown_table(header, table))
    if "batch" in results and "batch-unbucketed" in results:
        b, u = results["batch"], results["batch-unbucketed"]
        print(f"bucketing: {u['seconds'] / b['seconds']:.2f}x faster; encoder tokens incl. padding / real tokens "
              f"{b['padding']:.2f} bucketed vs {u['padding']:.2f} in input order")
    if "ray" in results:
        print(f"Ray cluster start (not in the job's time): {results['ray']['cluster_start_s']:.1f} s")
    info = machine(args.threads)
    print(", ".join(f"{k}: {v}" for k, v in info.items()))
    if args.json:
        args.json.write_text(json.dumps({"results": results, "machine": info, "rows": args.rows,
                                         "new_tokens": args.new_tokens, "batch_size": args.batch_size}, indent=2))


if __name__ == "__main__":
    main()
