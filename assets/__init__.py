"""Bundled assets: exported ONNX graphs with their manifest, and icons."""
