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
