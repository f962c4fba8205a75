"""PyTorch networks, self-supervised losses, training loops and ONNX export (offline side)."""
