"""ONNX export configurations t5ort gives optimum's exporter, for every model type.

- The with-past decoder takes the decoder self-attention mask, ``attention_mask``
  [batch, past_decoder_sequence_length + decoder_sequence_length] (1: attend, 0:
  padding), which optimum's T5 configuration leaves out. With it, rows whose
  histories differ in length share one batch: a row that joined late sits
  left-padded in the shared cache with its padding masked out. T5's decoder
  position bias depends only on the query-key distance, so such a row gets the
  logits it gets alone (tests/test_inflight.py proves it against PyTorch).
- UMT5, which optimum-onnx 0.1.0 lacks, is T5 with a relative position bias in
  every attention layer instead of the first only. The traced graphs carry that
  bias per layer by themselves, so the ONNX inputs, outputs and dummy inputs are
  exactly T5's: the config reuses optimum's T5 configuration under ``umt5``.
"""

from __future__ import annotations

from ..runtime.manifest import SELF_ATTENTION_AXIS

TASK_WITHOUT_PAST = "text2text-generation"
SELF_ATTENTION_MASK = "decoder_attention_mask"  # the model's argument; optimum names the graph input attention_mask


def custom_onnx_configs(torch_model) -> dict:
    """The ``custom_onnx_configs`` for optimum's exporter: encoder, decoder and with-past decoder."""
    from optimum.exporters.onnx import model_configs
    from optimum.utils.input_generators import DummySeq2SeqDecoderTextInputGenerator

    # T5's inputs, outputs and normalised config names fit UMT5 unchanged.
    bases = {"t5": "T5OnnxConfig", "mt5": "MT5OnnxConfig", "longt5": "LongT5OnnxConfig", "umt5": "T5OnnxConfig"}
    base = getattr(model_configs, bases[torch_model.config.model_type])

    class SelfAttentionMaskGenerator(DummySeq2SeqDecoderTextInputGenerator):
        """All-ones [batch, past + 1]: optimum's past key/value generator gives the decoder a cache of
        ``sequence_length`` positions, and the with-past decoder feeds one new token."""

        SUPPORTED_INPUT_NAMES = (SELF_ATTENTION_MASK,)

        def generate(self, input_name, framework="pt", int_dtype="int64", float_dtype="fp32"):
            import torch

            return torch.ones((self.batch_size, self.sequence_length + 1), dtype=torch.int64)

    class MaskedConfig(base):
        """optimum's configuration for ``model_type``, with the self-attention mask in the with-past decoder."""

        DUMMY_INPUT_GENERATOR_CLASSES = (*base.DUMMY_INPUT_GENERATOR_CLASSES, SelfAttentionMaskGenerator)

        def _create_dummy_input_generator_classes(self, **kwargs):
            # First, so that its [batch, past + 1] shape wins over the decoder text generator's.
            generators = super()._create_dummy_input_generator_classes(**kwargs)
            return [SelfAttentionMaskGenerator(self.task, self._normalized_config, **kwargs), *generators]

        @property
        def inputs(self):
            inputs = super().inputs
            if self._behavior.value == "decoder" and self.use_past_in_inputs:
                inputs[SELF_ATTENTION_MASK] = {0: "batch_size", 1: SELF_ATTENTION_AXIS}
            return inputs

    config = MaskedConfig(torch_model.config, task=TASK_WITHOUT_PAST, use_past=True, use_past_in_inputs=False)
    return {
        "encoder_model": config.with_behavior("encoder"),
        "decoder_model": config.with_behavior("decoder", use_past=True, use_past_in_inputs=False),
        "decoder_with_past_model": config.with_behavior("decoder", use_past=True, use_past_in_inputs=True),
    }
