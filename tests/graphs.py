"""Tiny ONNX graphs built with onnx.helper (no torch) for the runtime and catalogue tests."""
from __future__ import annotations

from pathlib import Path

from onnx import TensorProto, helper

from quietlens.engine import catalogue


def affine_model(scale: float, offset: float = 0.0) -> bytes:
    """y = scale·x + offset on a dynamic (N, C, H, W) float tensor."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "c", "h", "w"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "c", "h", "w"])
    consts = [helper.make_tensor("s", TensorProto.FLOAT, [], [scale]),
              helper.make_tensor("o", TensorProto.FLOAT, [], [offset])]
    nodes = [helper.make_node("Mul", ["x", "s"], ["t"]), helper.make_node("Add", ["t", "o"], ["y"])]
    graph = helper.make_graph(nodes, "affine", [x], [y], initializer=consts)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def two_input_model() -> bytes:
    a, b, y = (helper.make_tensor_value_info(n, TensorProto.FLOAT, ["k"]) for n in ("a", "b", "y"))
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "add", [a, b], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


FIELDS = {"id": "photo-test", "method": "f2n", "modality": "photo", "receptive_field": 0, "tile_multiple": 1,
          "provenance": {"script": "tests/graphs.py", "seed": 0}}


def register_affine(tmp_path: Path) -> catalogue.ModelEntry:
    """``2x + 1`` registered as the user model ``photo-test`` (QUIETLENS_DATA must point at a test folder)."""
    src = tmp_path / "trained.onnx"
    src.write_bytes(affine_model(2.0, 1.0))
    return catalogue.register_user_model(src, FIELDS)
