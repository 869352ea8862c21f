"""Hostile model folders made in milliseconds: a few ONNX nodes (or their OpenVINO IR) beside a valid serving
contract for 8 px images and two classes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SIZE = 8


def write_contract(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "labels.txt").write_text("cat\ndog\n")
    spec = {"image_size": SIZE, "mean": [0.5] * 3, "std": [0.5] * 3, "resize": "squash"}
    (folder / "preprocessing.json").write_text(json.dumps(spec))
    return folder


def _save(folder: Path, nodes: list, initializers: list) -> Path:
    """model.onnx: `nodes` must make a [N, 1] float `extra`; logits = mean(images) + extra, for 2 classes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    axes = numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes")
    head = [
        helper.make_node("ReduceMean", ["images", "axes"], ["mean"], keepdims=1),
        helper.make_node("Flatten", ["mean"], ["flat"], axis=1),
        helper.make_node("Add", ["flat", "extra"], ["one"]),
        helper.make_node("Concat", ["one", "one"], ["logits"], axis=1),
    ]
    graph = helper.make_graph(
        [*nodes, *head],
        "crafted",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        [*initializers, axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, write_contract(folder) / "model.onnx")
    return folder


def plain(folder: Path) -> Path:
    """A model that answers at once."""
    from onnx import numpy_helper

    return _save(folder, [], [numpy_helper.from_array(np.zeros((1, 1), np.float32), "extra")])


def looping(folder: Path, *, on_images: bool = False) -> Path:
    """A Loop of 4e18 iterations (a few hundred bytes): at once, or with `on_images` only on an image whose
    normalised pixels are not all 0 (the load's check on blank images passes, a real image then runs for ever)."""
    from onnx import TensorProto, helper, numpy_helper

    body = helper.make_graph(
        [helper.make_node("Identity", ["go_in"], ["go_on"]), helper.make_node("Identity", ["x_in"], ["x_on"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("go_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_in", TensorProto.FLOAT, [1, 1])],
        [helper.make_tensor_value_info("go_on", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x_on", TensorProto.FLOAT, [1, 1])],
    )  # fmt: skip
    constants = [numpy_helper.from_array(np.array(v, t), n) for n, v, t in
                 (("go", True, np.bool_), ("x0", [[0.0]], np.float32), ("trips", 4e18, np.float32))]  # fmt: skip
    if on_images:  # trips x the largest absolute pixel: 0 on blank images
        nodes = [helper.make_node("Abs", ["images"], ["absolute"]),
                 helper.make_node("ReduceMax", ["absolute"], ["most"], keepdims=0),
                 helper.make_node("Mul", ["most", "trips"], ["count"])]  # fmt: skip
    else:
        nodes = [helper.make_node("ReduceMax", ["images"], ["most"], keepdims=0),  # an input: not folded away
                 helper.make_node("Add", ["most", "trips"], ["count"])]  # fmt: skip
    nodes += [helper.make_node("Cast", ["count"], ["m"], to=TensorProto.INT64),
              helper.make_node("Loop", ["m", "go", "x0"], ["extra"], body=body)]  # fmt: skip
    return _save(folder, nodes, constants)


def as_ir(source: Path, folder: Path) -> Path:
    """The ONNX model of `source` as OpenVINO IR (model.xml, model.bin) in `folder`, with the same contract."""
    import openvino as ov

    ov.save_model(ov.Core().read_model(source / "model.onnx"), write_contract(folder) / "model.xml",
                  compress_to_fp16=False)  # fmt: skip
    return folder


def within(seconds: float, call):
    """`call()`'s result, or AssertionError once `seconds` have passed: a hang fails its test and the suite goes on
    (the call is left running in a daemon thread)."""
    import threading

    done: list = []

    def run():
        try:
            done.append((True, call()))
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            done.append((False, exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert done, f"still running after {seconds} s"
    ok, value = done[0]
    if not ok:
        raise value
    return value
