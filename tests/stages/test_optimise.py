"""optimise: INT8 (onnxruntime, OpenVINO) and FP16 models checked against FP32 on the test split before they are
kept and served by imgclf predict; a model that loses accuracy past optimise.max_acc_drop is refused and nothing is
written; TensorRT (its presets and its engines in predict) fails in one clear line here."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from imgclf.config import compose
from imgclf.deploy.predict import Classifier
from imgclf.errors import BadInput, MissingInput
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
                "labels.txt",
                "model.bin",
                "model.xml",
                "preprocessing.json",
            ]
            served = Classifier(int8).classify(images)
            assert [p.probs.argmax() for p in served] == [
                p.probs.argmax() for p in Classifier(int8 / "model.xml").classify(images)
            ]
            assert np.mean([a.probs.argmax() == b.probs.argmax() for a, b in zip(fp32, served)]) >= 0.9
    assert json.loads((project / "reports/optimise/metrics.json").read_text()) == metrics
    assert sorted(p.name for p in int8.iterdir()) == ["labels.txt", "model.onnx", "preprocessing.json"]
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


def test_a_model_that_loses_accuracy_is_refused_and_nothing_is_written(project):
    # a network whose logits all sit 1000 above zero: FP32 ranks them as before, but INT8's steps (range/255)
    # are wider than the gaps between classes, so the quantised model cannot tell them apart
    model_file = project / "models/model.pt"
    ckpt = torch.load(model_file, weights_only=True)
    bias = [k for k, v in ckpt["model"].items() if k.endswith("bias") and v.shape == (3,)][-1]
    ckpt["model"][bias] = ckpt["model"][bias] + 1000.0
    torch.save(ckpt, model_file)
    export(cfg(project))
    lossy = optimise(cfg(project, "optimise.max_acc_drop=1.0", "optimise.calibration_images=8"))
    assert lossy["optimise/int8_onnx/acc_drop"] > 0.1  # the loss is real
    before = {p.name: p.read_bytes() for p in (project / "models/optimised").iterdir()}
    report = (project / "reports/optimise/metrics.json").read_text()
    with pytest.raises(
        BadInput, match=r"int8_onnx loses .* points of test/acc .* > optimise.max_acc_drop=0.0; nothing"
    ):
        optimise(cfg(project, "optimise.max_acc_drop=0.0", "optimise.calibration_images=8"))
    assert {p.name: p.read_bytes() for p in (project / "models/optimised").iterdir()} == before
    assert (project / "reports/optimise/metrics.json").read_text() == report
    assert not list((project / "models").glob(".optimised.tmp*"))


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
