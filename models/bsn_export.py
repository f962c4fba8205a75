"""ONNX export of the C-BSN / SDAP inference paths and their students, checked against PyTorch.

The exported graph takes ``x`` (N, 3, H, W), a standardised image, and returns ``y`` of the same shape.
Blind-spot masks are baked in: the masked weights are constants of the graph (constant folding of
``weight × mask``), so nothing at run time can switch the blind spot off by mistake.

The ONNX file is the single artefact we ship and register, so fine-tuning starts from it too:
:func:`load_weights_from_onnx` reads the convolution weights back in the order the network calls its
convolutions (checked by shape). For SDAP graphs, where the network runs twice, the first run's nodes
are used; masked centre taps come back as zeros, which the always-blind SDAP network never reads.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from torch import nn

OPSET = 17


def export_onnx(module: nn.Module, channels: int = 3, size: int = 64) -> bytes:
    """Serialised ONNX graph of ``module`` (eval mode, float32, CPU) with dynamic N, H and W."""
    module = module.eval().cpu()
    dummy = torch.zeros(1, channels, size, size)
    buf = io.BytesIO()
    axes = {0: "N", 2: "H", 3: "W"}
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notices are not actionable
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (dummy,), buf, input_names=["x"], output_names=["y"], opset_version=OPSET,
                          dynamic_axes={"x": axes, "y": axes}, do_constant_folding=True, dynamo=False)
    return buf.getvalue()


def onnx_output(data: bytes, x: np.ndarray) -> np.ndarray:
    """Run a serialised graph once on the CPU with one thread (for checks, not for speed)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    sess = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x.astype(np.float32)})[0]


def parity(module: nn.Module, data: bytes, size: int = 96, seed: int = 0, channels: int = 3) -> float:
    """Largest |ONNX − PyTorch| on a random standardised input of ``size``² (a multiple of 8)."""
    x = torch.randn(1, channels, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = module.eval().cpu()(x).numpy()
    return float(np.abs(onnx_output(data, x.numpy()) - expected).max())


def export_checked(module: nn.Module, tolerance: float = 1e-4, size: int = 96) -> bytes:
    """:func:`export_onnx`, refusing graphs that differ from PyTorch by more than ``tolerance`` or whose
    weights do not read back exactly."""
    data = export_onnx(module)
    diff = parity(module, data, size)
    if not diff <= tolerance:
        raise RuntimeError(f"ONNX export differs from PyTorch by {diff:.3g} (> {tolerance:g})")
    back = load_weights_from_onnx(_fresh_copy(module), data)
    for name, value in module.state_dict().items():
        if not _same_up_to_masked_centre(value, back.state_dict()[name]):
            raise RuntimeError(f"weight {name} does not read back from the ONNX graph")
    return data


def _fresh_copy(module: nn.Module) -> nn.Module:
    import copy

    fresh = copy.deepcopy(module)
    for p in fresh.parameters():
        p.data.zero_()
    return fresh


def _same_up_to_masked_centre(a: torch.Tensor, b: torch.Tensor) -> bool:
    if torch.equal(a, b):
        return True
    if a.ndim == 4 and a.shape[-1] == a.shape[-2] and a.shape[-1] > 1:  # a blind graph zeroes the centre
        c = a.shape[-1] // 2
        a = a.clone()
        a[..., c, c] = 0
        return torch.equal(a, b)
    return False


def _conv_call_order(module: nn.Module) -> list[nn.Conv2d]:
    """The convolution modules in the order one forward pass calls them (first call of each)."""
    order: list[nn.Conv2d] = []
    hooks = [m.register_forward_hook(lambda m, i, o: order.append(m) if m not in order else None)
             for m in module.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            module.eval()(torch.zeros(1, 3, 16, 16))
    finally:
        for h in hooks:
            h.remove()
    return order


def load_weights_from_onnx(module: nn.Module, data: bytes) -> nn.Module:
    """Copy the Conv weights and biases of an exported graph into ``module`` (same architecture)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load_model_from_string(data).graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:  # constant folding may leave weights as Constant nodes, and the exporter
        # stores identical tensors (e.g. zero-initialised ones) once, aliased through Identity nodes
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == "Identity" and node.input[0] in consts:
            consts[node.output[0]] = consts[node.input[0]]
    convs = [n for n in graph.node if n.op_type == "Conv"]
    targets = _conv_call_order(module)
    if len(convs) < len(targets):
        raise ValueError(f"the graph has {len(convs)} convolutions, the network needs {len(targets)}")
    with torch.no_grad():
        for node, conv in zip(convs, targets):
            weight = consts.get(node.input[1])
            if weight is None or tuple(weight.shape) != tuple(conv.weight.shape):
                got = None if weight is None else weight.shape
                raise ValueError(f"graph weight {node.input[1]} has shape {got}, expected {tuple(conv.weight.shape)}")
            conv.weight.copy_(torch.from_numpy(weight.copy()))
            if conv.bias is not None:
                conv.bias.copy_(torch.from_numpy(consts[node.input[2]].copy()))
    return module


def receptive_radius(module: nn.Module, channels: int = 3) -> int:
    """The largest distance (in pixels, along rows or columns) from an output pixel to an input pixel
    it depends on: the tiling halo that makes tiled inference exact.

    Measured structurally: on a copy with positive weights and biases every ReLU passes, so the input
    gradient of one output pixel is non-zero exactly on its dependency set (random weights could hide
    some of it behind inactive ReLUs). Every phase of the graph's ``multiple`` grid is probed.
    """
    import copy

    probe = copy.deepcopy(module).eval().double()
    with torch.no_grad():
        for conv in (m for m in probe.modules() if isinstance(m, nn.Conv2d)):
            conv.weight.copy_(conv.weight.abs() + 1e-3)
            if conv.bias is not None:
                conv.bias.fill_(1.0)
    m = getattr(module, "multiple", 1)
    size = 64
    while True:
        x = torch.ones(1, channels, size, size, dtype=torch.float64, requires_grad=True)
        y = probe(x)
        radius, touches = 0, False
        centre = size // 2 // m * m
        for dy in range(m):
            for dx in range(m):
                (grad,) = torch.autograd.grad(y[0, :, centre + dy, centre + dx].sum(), x, retain_graph=True)
                rows, cols = torch.nonzero(grad[0].abs().sum(0), as_tuple=True)
                radius = max(radius, int((rows - centre - dy).abs().max()), int((cols - centre - dx).abs().max()))
                touches |= bool(rows.min() == 0 or cols.min() == 0 or rows.max() == size - 1 or cols.max() == size - 1)
        if not touches:
            return radius
        size *= 2


def bytes_per_pixel(module: nn.Module) -> float:
    """Peak ONNX Runtime memory per pixel of a (padded) tile, for the tiling budget: float32 activations
    alive at once, with margin. Blind-spot graphs keep about eight ``width``-channel maps alive (the head
    output, both branches, a residual module's input, output and temporaries, the concatenation);
    students about five ``full``-channel maps at full resolution (branch, up-sampled features, their
    concatenation, the tail) plus input and output, and the equivalent of ``width`` channels below."""
    inner = getattr(module, "net", module)
    cfg = inner.config
    if hasattr(inner, "branch2"):
        return float(4 * (8 * cfg.width + 16))
    return float(4 * (5 * cfg.full + 2 * cfg.channels + cfg.width + 16))


def entry_fields(module: nn.Module, model_id: str, method: str, provenance: dict) -> dict:
    """Manifest fields (:class:`~quietlens.engine.catalogue.ModelEntry` minus file and sha256) for an
    exported teacher (a C-BSN/SDAP inference module) or student: tiling needs and architecture."""
    inner = getattr(module, "net", module)
    return {
        "id": model_id, "method": method, "modality": "photo",
        "inputs": [{"name": "x", "shape": ["N", 3, "H", "W"], "range": "standardised: (x - mean) / std per channel"}],
        "outputs": [{"name": "y", "shape": ["N", 3, "H", "W"], "range": "standardised"}],
        "receptive_field": receptive_radius(module), "tile_multiple": int(getattr(module, "multiple", 1)),
        "bytes_per_pixel": bytes_per_pixel(module),
        "provenance": {**provenance, "role": provenance.get("role", "teacher" if inner is not module else "student"),
                       "architecture": inner.config.to_dict()},
    }
