"""ONNX import: an ONNX model becomes a convgen graph (importer.from_onnx), its layer ops
(layers), tensor and shape ops (tensors) and shared helpers (ops)."""
