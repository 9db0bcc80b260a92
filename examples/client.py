"""A client of `t5ort serve`: TGI's client, OpenAI's client and plain HTTP, each reading per-token log-probs.

Start a server first (it starts nothing itself), then point this script at it:

    t5ort serve t5ort/assets/numbers/onnx --port 8000        # the bundled English-to-German numbers model
    python examples/client.py --url http://127.0.0.1:8000

`tests/test_examples.py` starts a real server on a free loopback port and runs this script against it.
"""

from __future__ import annotations

import argparse

import httpx
from huggingface_hub import InferenceClient
from openai import OpenAI

PREFIX = "translate English to German: "


def tgi(url: str) -> None:
    """TGI's client: details with each token's log-prob and its runner-up, then a stream."""
    client = InferenceClient(url)
    out = client.text_generation(PREFIX + "seventy-one thousand nine", max_new_tokens=10, details=True,
                                 top_n_tokens=2)
    print(out.generated_text, out.details.finish_reason)
    for token, top in zip(out.details.tokens, out.details.top_tokens):
        runner_up = top[1]  # huggingface_hub hands top_tokens back as dicts
        print(f"  {token.text!r:18} logprob {token.logprob:6.2f}  runner-up {runner_up['text']!r} "
              f"{runner_up['logprob']:.2f}")
    streamed = [event.token.text for event in client.text_generation(PREFIX + "nineteen", stream=True, details=True)]
    print("stream:", streamed)


def openai(url: str) -> None:
    """OpenAI's client: greedy (temperature 0) with the top-2 log-probs of each token; a misspelt input."""
    client = OpenAI(base_url=url + "/v1", api_key="unused")
    out = client.completions.create(model=client.models.list().data[0].id, prompt=PREFIX + "sevnty-one thousand nine",
                                    max_tokens=10, temperature=0, logprobs=2)
    choice = out.choices[0]
    print(choice.text, choice.finish_reason, out.usage.completion_tokens)
    for token, logprob in zip(choice.logprobs.tokens, choice.logprobs.token_logprobs):
        print(f"  {token!r:14} {logprob:6.3f}")


def score(url: str) -> None:
    """t5ort's /score: teacher-forced log-probs of several targets for one source (encoded once)."""
    answer = httpx.post(url + "/score", json={"inputs": PREFIX + "nineteen", "targets": ["neunzehn", "neun"]},
                        timeout=30).raise_for_status().json()
    for target, scored in zip(["neunzehn", "neun"], answer["scores"]):
        print(f"{target}: {scored['total_logprob']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the server (default http://127.0.0.1:8000)")
    url = parser.parse_args().url.rstrip("/")
    tgi(url)
    openai(url)
    score(url)


if __name__ == "__main__":
    main()
