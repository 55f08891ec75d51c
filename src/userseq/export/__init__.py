"""Exporting fitted runs to other runtimes (ONNX: `userseq.export.onnx`)."""
