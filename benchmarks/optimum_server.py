"""The baseline of benchmarks/serve_load.py: what users write today, a FastAPI app calling
Optimum's ``ORTModelForSeq2SeqLM.generate`` once per request (no batching, no streaming).

    python benchmarks/optimum_server.py OPTIMUM_DIR TOKENIZER_JSON --port 8001 [--threads 2]

``POST /generate`` takes TGI's ``{"inputs": ..., "parameters": {"max_new_tokens", "min_new_tokens",
"suppress_tokens"}}``
and answers ``{"generated_text", "details": {"generated_tokens", "tokens": [{"id", "logprob"}]}}``, the
per-token log-probs from ``compute_transition_scores`` (so it returns what the t5ort requests ask for).
The endpoint is a plain ``def``: FastAPI runs it in its thread pool, so concurrent requests run
concurrent ``generate`` calls on the shared ONNX Runtime sessions, as such apps do.
"""


import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def create_app(optimum_dir: str, tokenizer_json: str, threads: int):
    import torch
    from fastapi import FastAPI
    from optimum.onnxruntime import ORTModelForSeq2SeqLM
    from pydantic import BaseModel
    from transformers import PreTrainedTokenizerFast

    from _model import ort_session_options

    torch.set_num_threads(threads)
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=tokenizer_json, pad_token="<pad>", eos_token="</s>",
                                        unk_token="<unk>")
    model = ORTModelForSeq2SeqLM.from_pretrained(optimum_dir, provider="CPUExecutionProvider",
                                                 session_options=ort_session_options(threads))

    class Parameters(BaseModel):
        max_new_tokens: int = 20
        min_new_tokens: int = 0
        suppress_tokens: list[int] | None = None

    class Request(BaseModel):
        inputs: str
        parameters: Parameters = Parameters()

    app = FastAPI()

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.post("/generate")
    def generate(request: Request):
        encoded = tokenizer([request.inputs], return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**encoded, max_new_tokens=request.parameters.max_new_tokens,
                                 min_new_tokens=request.parameters.min_new_tokens,
                                 suppress_tokens=request.parameters.suppress_tokens, do_sample=False,
                                 output_scores=True, return_dict_in_generate=True)
        logprobs = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)[0]
        ids = out.sequences[0, 1:].tolist()
        return {"generated_text": tokenizer.decode(ids, skip_special_tokens=True),
                "details": {"generated_tokens": len(ids),
                            "tokens": [{"id": i, "logprob": float(lp)} for i, lp in zip(ids, logprobs)]}}

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("optimum_dir")
    parser.add_argument("tokenizer_json")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    uvicorn.run(create_app(args.optimum_dir, args.tokenizer_json, args.threads), host="127.0.0.1", port=args.port,
                log_level="warning")


if __name__ == "__main__":
    main()
