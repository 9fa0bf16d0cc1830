"""ONNX graph rewrites for generation: fused attention, and a UNet cut into parts."""
