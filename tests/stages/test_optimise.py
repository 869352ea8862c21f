"""optimise: INT8 (onnxruntime, OpenVINO) and FP16 models checked against FP32 on the test split before they are
kept and served by imgclf predict; a model that loses accuracy past optimise.max_acc_drop (and significantly) is not
promoted; TensorRT (its presets and its engines in predict) fails in one clear line here."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from imgclf.config import compose
from imgclf.deploy.predict import Classifier
from imgclf.errors import MissingInput
from imgclf.stages.export import export
from imgclf.stages.optimise import optimise

from ..conftest import ROOT, TINY_OVERRIDES, trained_tiny_project


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = trained_tiny_project(tmp_path_factory.mktemp("optimise"))
    cwd = os.getcwd()
    os.chdir(root)
    yield root
    os.chdir(cwd)


def cfg(root, *overrides):
    return compose(
        [*TINY_OVERRIDES, "trainer.epochs=3", f"tracking.uri=sqlite:///{root}/mlflow.db", *overrides], root=ROOT
    )


def test_int8_and_fp16_are_checked_kept_logged_and_served(project):
    images = sorted(str(p) for p in (project / "data/tiny/images").rglob("*.png"))
    fp32 = Classifier(project / "models/export").classify(images)
    int8 = project / "models/optimised"
    for method in ("fp16", "int8_openvino", "int8_onnx"):  # int8_onnx last: its model is what stays
        metrics = optimise(cfg(project, f"optimise={method}"))
        assert metrics[f"optimise/{method}/acc_drop"] <= 0.005
        assert metrics[f"optimise/{method}/size_mb"] < metrics[f"optimise/{method}/fp32_size_mb"]
        if method == "int8_openvino":  # OpenVINO IR, served by predict from the directory as from model.xml
            assert metrics[f"optimise/{method}/size_mb"] > (int8 / "model.bin").stat().st_size / 1e6
            assert sorted(p.name for p in int8.iterdir()) == [
                "gate.json",
                "labels.txt",
                "model.bin",
                "model.xml",
                "preprocessing.json",
                "run.json",
            ]
            served = Classifier(int8).classify(images)
            assert [p.probs.argmax() for p in served] == [
                p.probs.argmax() for p in Classifier(int8 / "model.xml").classify(images)
            ]
            assert np.mean([a.probs.argmax() == b.probs.argmax() for a, b in zip(fp32, served)]) >= 0.9
    assert json.loads((project / "reports/optimise/metrics.json").read_text()) == metrics
    kept = ["gate.json", "labels.txt", "model.onnx", "preprocessing.json", "run.json"]
    assert sorted(p.name for p in int8.iterdir()) == kept
    made, exported = (json.loads((f / "run.json").read_text()) for f in (int8, project / "models/export"))
    assert {k: made[k] for k in ("run_id", "checkpoint_sha256")} == {
        k: exported[k] for k in ("run_id", "checkpoint_sha256")
    }
    assert sorted(made["files"]) == [f for f in kept if f != "run.json"]  # its own files, sealed
    assert json.loads((int8 / "gate.json").read_text())["promoted"] is True and metrics["optimise/int8_onnx/promoted"]
    import onnx

    ops = {node.op_type for node in onnx.load(str(int8 / "model.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
    # imgclf predict serves it through the same contract: top-1 as FP32's within the measured agreement
    served = Classifier(int8).classify(images)
    agreement = np.mean([a.probs.argmax() == b.probs.argmax() for a, b in zip(fp32, served)])
    assert agreement >= 0.9
    run_id = json.loads((project / "models/run.json").read_text())["run_id"]
    logged = MlflowClient(tracking_uri=f"sqlite:///{project}/mlflow.db").get_run(run_id).data.metrics
    assert logged["optimise/int8_onnx/top1_agreement"] == metrics["optimise/int8_onnx/top1_agreement"]
    # the INT8 model registered beside the FP32 one: `mlflow models serve` serves what onnxruntime gives here
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project}/mlflow.db")
    pyfunc = mlflow.pyfunc.load_model("models:/imgclf-tiny-int8_onnx/1")
    from imgclf.data.images import decode_image
    from imgclf.data.transforms import center_crop

    spec = Classifier(int8).spec  # what a client sends: preprocessing.json's resize, then the centre crop
    stored = np.stack([decode_image(p, spec.stored_size, spec.interpolation, spec.resize) for p in images[:4]])
    batch = center_crop(stored.transpose(0, 3, 1, 2), spec.image_size).transpose(0, 2, 3, 1)
    table = pyfunc.predict(np.ascontiguousarray(batch))
    assert list(table["label"]) == ["abc"[int(p.probs.argmax())] for p in served[:4]]


def test_a_model_that_loses_accuracy_is_not_promoted_and_the_experiment_is_kept(project):
    # a network whose logits all sit 1000 above zero: FP32 ranks them as before, but INT8's steps (range/255)
    # are wider than the gaps between classes, so the quantised model cannot tell them apart
    model_file = project / "models/model.pt"
    ckpt = torch.load(model_file, weights_only=True)
    bias = [k for k, v in ckpt["model"].items() if k.endswith("bias") and v.shape == (3,)][-1]
    ckpt["model"][bias] = ckpt["model"][bias] + 1000.0
    torch.save(ckpt, model_file.with_name("edited.pt"))
    model_file.with_name("edited.pt").replace(model_file)  # a new file: the run's logged checkpoint keeps its own
    export(cfg(project))
    lossy = optimise(cfg(project, "optimise.max_acc_drop=1.0", "optimise.calibration_images=8"))
    assert lossy["optimise/int8_onnx/acc_drop"] > 0.1 and lossy["optimise/int8_onnx/promoted"] == 1.0  # asked for
    optimised = project / "models/optimised"
    # 12 test images are too few for p < 0.05 (the gate's weighing is tested below): judge the drop alone
    metrics = optimise(cfg(project, "optimise.calibration_images=8", "optimise.significance=1"))
    assert metrics["optimise/int8_onnx/promoted"] == 0.0 and metrics["optimise/int8_onnx/drop_p_value"] < 1
    assert sorted(p.name for p in optimised.iterdir()) == ["gate.json"]  # the verdict, no model to serve
    verdict = json.loads((optimised / "gate.json").read_text())
    assert verdict["promoted"] is False and verdict["reason"].startswith("not promoted: int8_onnx loses ")
    assert json.loads((project / "reports/optimise/metrics.json").read_text()) == metrics  # the stage succeeded
    assert (project / "models/export/model.onnx").is_file() and model_file.is_file()  # FP32 results stay
    run_id = json.loads((project / "models/run.json").read_text())["run_id"]
    run = MlflowClient(tracking_uri=f"sqlite:///{project}/mlflow.db").get_run(run_id)
    assert run.data.metrics["optimise/int8_onnx/promoted"] == 0.0
    assert run.data.tags["imgclf.optimise.int8_onnx"] == verdict["reason"]
    with pytest.raises(MissingInput, match=r"models/optimised holds no model: not promoted: int8_onnx loses"):
        Classifier(optimised)
    assert not list((project / "models").glob(".optimised.tmp*"))


def test_the_gate_weighs_a_drop_by_the_images_behind_it():
    from imgclf.deploy.quantize import compare, drop_p_value, gate

    assert drop_p_value(0, 0) == 1.0 and drop_p_value(1, 0) == 0.5 and drop_p_value(5, 0) == pytest.approx(1 / 32)
    assert drop_p_value(3, 3) == pytest.approx(0.65625) and drop_p_value(0, 4) == 1.0
    # one test image's answer changes on a 135-image split: 0.74 points, above 0.5, but one image is no evidence
    labels = np.arange(135) % 3
    fp32 = np.eye(3)[labels]
    one_lost = fp32.copy()
    one_lost[0] = np.eye(3)[(labels[0] + 1) % 3]
    figures = compare(fp32, one_lost, labels)
    assert figures["acc_drop"] == pytest.approx(1 / 135) and figures["images_lost"] == 1
    verdict = gate("int8_onnx", figures, 0.005, 0.05)
    assert verdict["promoted"] and "within noise" in verdict["reason"]
    assert not gate("int8_onnx", figures, 0.005, 0.6)["promoted"]  # a stricter significance judges it
    six_lost = fp32.copy()
    six_lost[:18:3] = np.eye(3)[1]  # six class-0 images now wrong, none gained: p = 1/64
    verdict = gate("int8_onnx", compare(fp32, six_lost, labels), 0.005, 0.05)
    assert not verdict["promoted"] and "6 test images lost, 0 gained, p=0.0156" in verdict["reason"]


def test_an_export_of_another_checkpoint_is_refused_before_its_result_is_filed_under_this_run(project, tmp_path):
    """optimise run by hand after train alone: the INT8 twin of the old export was logged and registered under the
    new run's id, beside its FP32 figures, with no word said."""
    from imgclf.errors import BadInput

    copy = shutil.copytree(project, tmp_path / "copy", ignore=shutil.ignore_patterns("checkpoints"))
    record = copy / "models/run.json"
    exported = json.loads(record.read_text())["run_id"]
    record.write_text(json.dumps({**json.loads(record.read_text()), "run_id": "f" * 32}))
    before = {p: p.read_bytes() for p in copy.glob("*/optimise*/**/*") if p.is_file()}  # an earlier test's, if any
    os.chdir(copy)
    try:
        with pytest.raises(BadInput, match=rf"^models/export holds run {exported}'s model, .* export it first"):
            optimise(cfg(copy))
    finally:
        os.chdir(project)
    assert {p: p.read_bytes() for p in copy.glob("*/optimise*/**/*") if p.is_file()} == before


def test_an_export_past_its_tolerance_is_one_line_and_leaves_the_last_export_whole(project, monkeypatch):
    """A RuntimeError: the stage printed Hydra's "Error executing job" and a traceback."""
    from imgclf.deploy import export as exporter
    from imgclf.errors import BadInput

    checked = exporter.verify_onnx
    monkeypatch.setattr(exporter, "verify_onnx", lambda *a: {**checked(*a), "export/onnx_max_abs_diff": 0.5})
    before = {p.name: p.read_bytes() for p in (project / "models/export").iterdir()}
    with pytest.raises(BadInput, match=r"onnx output differs from PyTorch by 0.5 > export.atol=0.0001; models/export"):
        export(cfg(project))
    assert {p.name: p.read_bytes() for p in (project / "models/export").iterdir()} == before


@pytest.mark.parametrize("method", ["tensorrt", "tensorrt_int8"])
def test_tensorrt_without_cuda_is_one_clear_line(project, method):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the TensorRT presets build an engine here")
    with pytest.raises(
        MissingInput, match=f"optimise={method} needs CUDA and the tensorrt package; this machine lacks"
    ):
        optimise(cfg(project, f"optimise={method}"))


def test_predict_on_a_tensorrt_engine_without_cuda_is_one_clear_line(project, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    for name in ("labels.txt", "preprocessing.json"):
        shutil.copy(project / "models/export" / name, tmp_path / name)
    (tmp_path / "model.plan").write_bytes(b"an engine built elsewhere")
    for model in (tmp_path, tmp_path / "model.plan"):
        with pytest.raises(MissingInput, match=r"the TensorRT engine .*model.plan needs CUDA and the tensorrt package"):
            Classifier(model)


def test_tensorrt_int8_source_is_symmetric_qdq(project, tmp_path):
    """TensorRT's explicit quantisation takes Q/DQ scales with zero points of 0: what tensorrt_int8 builds from."""
    import onnx
    from onnx import numpy_helper

    from imgclf.deploy.quantize import quantize_int8

    calibration = np.random.default_rng(0).normal(0, 1, (8, 3, 32, 32)).astype(np.float32)
    for symmetric in (True, False):
        out = tmp_path / f"sym{symmetric}.onnx"
        quantize_int8(project / "models/export/model.onnx", out, calibration, symmetric=symmetric)
        graph = onnx.load(str(out)).graph
        points = [numpy_helper.to_array(i) for i in graph.initializer if "zero_point" in i.name]
        points = [p for p in points if p.dtype == np.int8]  # activations and weights (biases are int32)
        assert len(points) > 4
        assert all((p == 0).all() for p in points) == symmetric
        # TensorRT's parser rejects INT32 (bias) inputs to DequantizeLinear: the symmetric model has none
        int32 = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.INT32}
        dequantized = {n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
        assert bool(int32 & dequantized) != symmetric


def test_a_model_onnxruntime_has_no_kernel_for_is_one_line(tmp_path):
    """An ONNX opset past what this onnxruntime runs (export.opset takes any onnx reads): the INT8 twin's
    DequantizeLinear at opset 28 is one line naming the operator and export.opset, not onnxruntime's traceback."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from imgclf.deploy.runtimes import onnx_logits
    from imgclf.errors import BadInput

    consts = [
        numpy_helper.from_array(np.array(v, t), n)
        for n, v, t in (("w", [[1, 1]], np.int8), ("s", 0.5, np.float32), ("z", 0, np.int8))
    ]
    graph = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["w", "s", "z"], ["dw"]), helper.make_node("Add", ["images", "dw"],
                                                                                           ["logits"])],
        "int8",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2])],
        consts,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 28)])
    model.ir_version = 10
    onnx.save(model, tmp_path / "model.onnx")
    with pytest.raises(BadInput, match=r"cannot run model.onnx \(.*DequantizeLinear\(28\).*\): export at a lower"):
        onnx_logits(tmp_path / "model.onnx")
