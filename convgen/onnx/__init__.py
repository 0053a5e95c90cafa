"""ONNX import: an ONNX model becomes a convgen graph (importer.from_onnx), its layer ops
(layers), tensor and shape ops (tensors) and shared helpers (ops); convgen as an ONNX
backend in ONNX's sense (backend.ConvgenBackend; not imported here: it imports onnx)."""
