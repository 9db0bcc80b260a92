"""Wire schemas: TGI's (``/generate``, ``/generate_stream``, ``/``), OpenAI's completions, and ``/score``.

Field names and meanings follow text-generation-inference's router and OpenAI's completions API;
t5ort's extensions are documented in the OpenAPI schema (``/docs``). Every model forbids unknown
fields and every string refuses lone UTF-16 surrogates, naming the field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator


def _no_surrogates(value: str) -> str:
    if not value.isascii():
        for i, c in enumerate(value):
            if "\ud800" <= c <= "\udfff":
                raise ValueError(
                    f"holds a lone UTF-16 surrogate ({c!r} at character {i}), which is not valid Unicode text"
                )
    return value


Text = Annotated[str, AfterValidator(_no_surrogates)]
TokenId = Annotated[int, Field(ge=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# ---- TGI ----------------------------------------------------------------------------


class GenerateParameters(_Strict):
    """TGI's ``parameters``, plus t5ort's extensions (transformers' names, marked "t5ort")."""

    # TGI's fields
    best_of: int | None = Field(None, ge=1, description="TGI: only 1 (or null) is supported.")
    decoder_input_details: bool = Field(False, description="TGI: return the decoder's prefill tokens "
                                        "(for T5: the decoder start token).")
    details: bool = Field(False, description="TGI: return finish_reason, tokens, logprobs, top_tokens.")
    do_sample: bool = Field(False, description="TGI: sample (implied by temperature, top_k, top_p, typical_p).")
    frequency_penalty: float | None = Field(None, description="TGI: not supported (refused unless null or 0).")
    grammar: Any | None = Field(None, description="TGI: not supported (refused unless null).")
    max_new_tokens: int | None = Field(None, ge=1, description="TGI: tokens to generate (capped by the server).")
    repetition_penalty: float | None = Field(None, gt=0, description="TGI: 1.0 means no penalty.")
    return_full_text: bool | None = Field(None, description="TGI: prepend the input to generated_text.")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="TGI: random seed of sampling.")
    stop: list[Text] = Field(default_factory=list, max_length=4, description="TGI: stop when one of these "
                             "strings is generated (included in the output).")
    temperature: float | None = Field(None, gt=0, description="TGI: sampling temperature (> 0).")
    top_k: int | None = Field(None, gt=0, description="TGI: sample among the k most likely tokens.")
    top_n_tokens: int | None = Field(None, ge=0, description="TGI: return the n most likely tokens of each step "
                                     "(capped by the server's --max-top-n-tokens).")
    top_p: float | None = Field(None, gt=0, le=1, description="TGI: nucleus sampling.")
    truncate: int | None = Field(None, ge=1, description="TGI: keep only the last `truncate` input tokens.")
    typical_p: float | None = Field(None, gt=0, le=1, description="TGI: typical sampling.")
    watermark: bool = Field(False, description="TGI: not supported (refused if true).")
    adapter_id: Text | None = Field(None, description="TGI: not supported (refused unless null).")
    # t5ort's extensions: GenerationOptions with transformers' names
    num_beams: int | None = Field(None, ge=1, description="t5ort: beam search with this many beams "
                                  "(not with streaming).")
    num_return_sequences: int | None = Field(None, ge=1, description="t5ort: outputs per input (beam search "
                                             "or sampling); TGI's answer carries the first, `outputs` all.")
    min_new_tokens: int | None = Field(None, ge=0, description="t5ort: EOS is suppressed before this many tokens.")
    no_repeat_ngram_size: int | None = Field(None, ge=0, description="t5ort: ban repeated n-grams of this size.")
    length_penalty: float | None = Field(None, description="t5ort: beam search's length penalty exponent.")
    early_stopping: bool | Literal["never"] | None = Field(None, description="t5ort: beam search stopping rule.")
    min_p: float | None = Field(None, ge=0, le=1, description="t5ort: min-p sampling.")
    bad_words_ids: list[list[TokenId]] | None = Field(None, description="t5ort: token sequences never generated.")
    suppress_tokens: list[TokenId] | None = Field(None, description="t5ort: token ids never generated.")
    forced_bos_token_id: TokenId | None = Field(None, description="t5ort: force this first token.")
    forced_eos_token_id: TokenId | None = Field(None, description="t5ort: force EOS at the last step.")
    entropy: bool = Field(False, description="t5ort: each step's entropy (nats) of the next-token distribution "
                          "under the raw logits: `entropy` on stream events, `details.entropy` (greedy, sampling).")
    prompt_lookup_num_tokens: int | None = Field(
        None, ge=1, le=64, description="t5ort: speculative greedy decoding (greedy only; in-flight batching): "
        "draft up to this many tokens from the input (prompt lookup, as transformers' argument) and verify them "
        "in one decoder pass; the tokens are plain greedy's. Pays where the output copies the input.")


class GenerateRequest(_Strict):
    inputs: Text = Field(description="the input text")
    parameters: GenerateParameters = Field(default_factory=GenerateParameters)
    stream: bool = Field(False, description="only on the compat route `/`: stream server-sent events")


class Token(BaseModel):
    id: int
    text: str
    logprob: float | None
    special: bool


class PrefillToken(BaseModel):
    id: int
    text: str
    logprob: float | None


class Details(BaseModel):
    finish_reason: Literal["length", "eos_token", "stop_sequence"]
    generated_tokens: int
    seed: int | None
    prefill: list[PrefillToken]
    tokens: list[Token]
    top_tokens: list[list[Token]] | None = None
    best_of_sequences: None = None


class GenerateResponse(BaseModel):
    generated_text: str
    details: Details | None = None


class StreamDetails(BaseModel):
    finish_reason: Literal["length", "eos_token", "stop_sequence"]
    generated_tokens: int
    seed: int | None
    input_length: int


class StreamResponse(BaseModel):
    index: int
    token: Token
    top_tokens: list[Token]
    generated_text: str | None = None
    details: StreamDetails | None = None


class ErrorResponse(BaseModel):
    error: str
    error_type: str


# ---- OpenAI completions ----------------------------------------------------------


class StreamOptions(_Strict):
    include_usage: bool = False


class CompletionRequest(_Strict):
    """OpenAI's ``/v1/completions``. Temperature 0 is greedy decoding; anything else samples (as OpenAI)."""

    model: Text
    prompt: Text | list[Text] | list[TokenId] | list[list[TokenId]] = Field(
        description="a string, a list of strings, or token ids (a list, or a list of lists)")
    max_tokens: int | None = Field(None, ge=1, description="tokens to generate (default 16, as OpenAI)")
    temperature: float | None = Field(None, ge=0, le=2, description="0: greedy; default 1 (sampling), as OpenAI")
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, description="completions per prompt (needs temperature > 0 when > 1)")
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: int | None = Field(None, ge=0, description="return the log-probs of the chosen and the top-n tokens")
    echo: bool = Field(False, description="not supported for an encoder-decoder (refused if true)")
    stop: Text | list[Text] | None = Field(None, description="up to 4 stop strings (included in the output)")
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    presence_penalty: float | None = Field(None, description="not supported (refused unless null or 0)")
    frequency_penalty: float | None = Field(None, description="not supported (refused unless null or 0)")
    best_of: int | None = Field(None, ge=1, description="only equal to n (or null)")
    logit_bias: dict[str, float] | None = Field(None, description="not supported (refused unless null or empty)")
    suffix: Text | None = Field(None, description="not supported (refused unless null)")
    user: Text | None = None
    # extensions, vLLM's names
    top_k: int | None = Field(None, ge=0, description="t5ort (as vLLM): top-k sampling, 0 = off")
    min_tokens: int | None = Field(None, ge=0, description="t5ort (as vLLM): EOS suppressed before this many")
    repetition_penalty: float | None = Field(None, gt=0, description="t5ort (as vLLM)")
    prompt_lookup_num_tokens: int | None = Field(None, ge=1, le=64, description="t5ort: speculative greedy "
                                                 "decoding by prompt lookup (temperature 0 only; see /generate's).")


# ---- scoring --------------------------------------------------------------------


class ScorePair(_Strict):
    source: Text
    target: Text


class ScoreRequest(_Strict):
    """Teacher-forced log-probabilities of each target given its source (lm-eval's multiple-choice use):
    ``pairs`` of a source and a target each, or one source (``inputs``) and its ``targets``; every
    distinct source is encoded once. Scores come back in the order given."""

    pairs: list[ScorePair] | None = Field(default=None, min_length=1, max_length=64)
    inputs: Text | None = Field(default=None, description="one source, with targets")
    targets: list[Text] | None = Field(default=None, min_length=1, max_length=64)

    @model_validator(mode="after")
    def _one_form(self) -> ScoreRequest:
        if (self.pairs is None) == (self.inputs is None):
            raise ValueError("pass either pairs, or inputs with targets")
        if (self.inputs is None) != (self.targets is None):
            raise ValueError("inputs and targets go together")
        return self

    def as_pairs(self) -> list[ScorePair]:
        if self.pairs is not None:
            return self.pairs
        return [ScorePair(source=self.inputs, target=t) for t in self.targets]


class ScoredToken(BaseModel):
    id: int
    text: str
    logprob: float


class PairScore(BaseModel):
    total_logprob: float
    tokens: list[ScoredToken]


class ScoreResponse(BaseModel):
    scores: list[PairScore]
