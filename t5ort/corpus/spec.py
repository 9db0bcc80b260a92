"""What a corpus job does: one frozen, validated spec, shared by the one-machine job and the Ray adapter."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from ..runtime import GenerationOptions

TASKS = ("generate", "score")
DEFAULT_RAW_LOGITS_BUDGET = 4 << 30

# Output columns the job adds (an input column of the same name is refused, never overwritten).
GENERATE_COLUMNS = ("generated_text", "generated_ids", "token_logprobs", "top_ids", "top_tokens", "top_logprobs",
                    "finish_reason", "num_input_tokens", "num_generated_tokens")
SCORE_COLUMNS = ("target_ids", "token_logprobs", "total_logprob", "mean_logprob", "num_input_tokens",
                 "num_target_tokens")
RAW_LOGITS_COLUMNS = ("raw_logits_file", "raw_logits_index")


class CorpusError(ValueError):
    """A corpus job refused its input, options or output folder; the message names the file, row or column."""


@dataclass(frozen=True)
class JobSpec:
    """One corpus job, validated before any work.

    - ``task``: ``"generate"`` or ``"score"`` (teacher-forced log-probs of ``target_column``).
    - ``text_column`` / ``target_column`` / ``id_column``: input column names. An input without
      ``id_column`` gets one holding the global row number (one-machine jobs only).
    - ``batch_size``: rows per ``generate``/``score`` call; ``shard_rows``: rows per output Parquet
      shard (the unit of atomic writes and of resume; rows are bucketed by length inside a shard).
    - ``top_n``: the n most likely tokens of every step, as list columns (0: none).
    - ``save_raw_logits``: every row's raw logits in .npy shards beside the Parquet, refused
      before any work when their size would exceed ``raw_logits_budget`` bytes.
    - ``bucket``: sort a shard's rows by token length before batching (False only to measure the gain).
    - ``generation``: :class:`t5ort.GenerationOptions` fields (transformers' names), for ``generate``.
    """

    task: str = "generate"
    text_column: str = "src"
    target_column: str = "tgt"
    id_column: str = "id"
    batch_size: int = 32
    shard_rows: int = 1024
    top_n: int = 5
    save_raw_logits: bool = False
    raw_logits_budget: int = DEFAULT_RAW_LOGITS_BUDGET
    bucket: bool = True
    generation: Mapping[str, Any] = field(default_factory=dict)

    def validate(self, vocab_size: int) -> JobSpec:
        if self.task not in TASKS:
            raise CorpusError(f"task must be one of {TASKS}, got {self.task!r}.")
        for name in ("text_column", "target_column", "id_column"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise CorpusError(f"{name} must be a non-empty column name, got {getattr(self, name)!r}.")
        if self.task == "score" and self.target_column == self.text_column:
            raise CorpusError("target_column and text_column are the same column; scoring needs two.")
        for name, low in (("batch_size", 1), ("shard_rows", 1), ("top_n", 0), ("raw_logits_budget", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise CorpusError(f"{name} must be an int >= {low}, got {value!r}.")
        if self.top_n > vocab_size:
            raise CorpusError(f"top_n={self.top_n} is over the vocabulary size {vocab_size}.")
        if self.task == "score":
            if self.generation:
                raise CorpusError(f"generation options {sorted(self.generation)} do not apply to task='score'.")
        else:
            for name in ("output_logits", "output_scores", "logits_processor", "stopping_criteria"):
                if name in self.generation:
                    raise CorpusError(f"{name} is set by the corpus job itself (or not serialisable); drop it.")
            options = self.options().validate(vocab_size)
            if options.num_return_sequences != 1:
                raise CorpusError("a corpus job writes one output row per input row: num_return_sequences must be 1.")
        return self

    def options(self, output_logits: bool = False) -> GenerationOptions:
        """The generation options of every ``generate`` call (output_logits when the job needs the logits)."""
        return GenerationOptions.create(**dict(self.generation), output_logits=output_logits)

    @property
    def needs_logits(self) -> bool:
        return self.top_n > 0 or self.save_raw_logits

    @property
    def output_columns(self) -> tuple[str, ...]:
        columns = GENERATE_COLUMNS if self.task == "generate" else SCORE_COLUMNS
        if self.task == "generate" and self.top_n == 0:
            columns = tuple(c for c in columns if not c.startswith("top_"))
        return columns + (RAW_LOGITS_COLUMNS if self.save_raw_logits else ())

    @property
    def input_columns(self) -> tuple[str, ...]:
        return (self.text_column, self.target_column) if self.task == "score" else (self.text_column,)

    def to_json(self) -> dict[str, Any]:
        """The spec as JSON, with the generation options that differ from the defaults (the same job, one record)."""
        out = asdict(self)
        out["generation"] = self._changed_options() if self.task == "generate" else dict(self.generation)
        return out

    def _changed_options(self) -> dict[str, Any]:
        options, defaults = self.options(), GenerationOptions()
        changed = {name: getattr(options, name) for name in GenerationOptions.__dataclass_fields__
                   if name != "output_logits" and getattr(options, name) != getattr(defaults, name)}
        return json.loads(json.dumps(changed))  # tuples -> lists

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JobSpec:
        data = dict(data)
        data["generation"] = dict(data.get("generation", {}))
        return cls(**data)

    def key(self) -> str:
        """A canonical string of everything that changes the output (for resume checks)."""
        return json.dumps(self.to_json(), sort_keys=True)
