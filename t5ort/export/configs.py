"""ONNX export configurations t5ort adds to optimum's: UMT5, which optimum-onnx 0.1.0 lacks.

UMT5 is T5 with a relative position bias in every attention layer instead of the
first only. The traced graphs carry that bias per layer by themselves, so the
ONNX inputs, outputs and dummy inputs are exactly T5's: the config reuses
optimum's T5 configuration under the name ``umt5``.
"""

from __future__ import annotations

TASK_WITHOUT_PAST = "text2text-generation"


def custom_onnx_configs(torch_model) -> dict | None:
    """The ``custom_onnx_configs`` for optimum's exporter, or None where optimum knows the model type."""
    if torch_model.config.model_type != "umt5":
        return None
    from optimum.exporters.onnx.model_configs import T5OnnxConfig

    class UMT5OnnxConfig(T5OnnxConfig):
        """T5's inputs, outputs and normalised config names fit UMT5 unchanged."""

    config = UMT5OnnxConfig(torch_model.config, task=TASK_WITHOUT_PAST, use_past=True, use_past_in_inputs=False)
    return {
        "encoder_model": config.with_behavior("encoder"),
        "decoder_model": config.with_behavior("decoder", use_past=True, use_past_in_inputs=False),
        "decoder_with_past_model": config.with_behavior("decoder", use_past=True, use_past_in_inputs=True),
    }
