"""Quantized variants: the ONNX and OpenVINO quantizers, calibration, and the accuracy and speed gates."""
