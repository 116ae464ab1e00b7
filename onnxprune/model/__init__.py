"""Stage 1: load, validate, normalize and save ONNX models; ONNX Runtime sessions."""
