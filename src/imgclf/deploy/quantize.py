"""Step five of six: the exported FP32 ONNX model made smaller or faster for where it runs, and checked.

`int8_onnx`: static INT8 quantisation (onnxruntime.quantization, QDQ, per-channel weights) calibrated on a fixed,
seeded sample of the train split; `int8_openvino`: OpenVINO IR quantised by NNCF's post-training quantisation from
the same sample; `fp16`: half-precision weights and activations (inputs and outputs stay FP32) for GPUs;
`tensorrt` / `tensorrt_int8`: an engine built from the FP16 / the symmetric QDQ INT8 ONNX model (TensorRT's explicit
quantisation, strongly typed) where CUDA and TensorRT are, else one clear error. Each optimised model is compared
with the FP32 model on the whole test split before it is kept; deploy/runtimes.py runs every format.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from imgclf.deploy.runtimes import Runner, probabilities, require_tensorrt
from imgclf.errors import BadInput

log = logging.getLogger(__name__)
METHODS = ("int8_onnx", "int8_openvino", "fp16", "tensorrt", "tensorrt_int8")


def calibration_batches(calibration: np.ndarray) -> list[np.ndarray]:
    return [
        np.ascontiguousarray(b, dtype=np.float32) for b in np.array_split(calibration, max(1, len(calibration) // 16))
    ]


def quantize_int8(
    fp32: Path, out: Path, calibration: np.ndarray, *, per_channel: bool = True, symmetric: bool = False
) -> None:
    """Static INT8 (QDQ, signed 8-bit activations and weights) with activation ranges from `calibration`
    (normalised float images, NCHW). `symmetric`: zero points of 0, as TensorRT's explicit quantisation needs."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration_batches(calibration))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch}

    prepared = out.with_name("prepared.onnx")
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)  # shapes and folding first, as ORT advises
    quantize_static(
        str(prepared),
        str(out),
        Batches(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        per_channel=per_channel,
        # TensorRT's parser takes no INT32 bias DequantizeLinear: with `symmetric`, biases stay float
        extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True, "QuantizeBias": not symmetric},
    )
    prepared.unlink()


def quantize_openvino(fp32: Path, out: Path, calibration: np.ndarray) -> None:
    """OpenVINO IR (`out` = model.xml, beside it model.bin) quantised to INT8 by NNCF's post-training quantisation,
    activation ranges from `calibration`."""
    import nncf
    import openvino as ov

    batches = calibration_batches(calibration)
    model = ov.Core().read_model(str(fp32))
    quantized = nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches))  # items: batches of 16
    ov.save_model(quantized, str(out), compress_to_fp16=False)


def convert_fp16(fp32: Path, out: Path) -> None:
    """Weights and activations in float16; the `images` input and `logits` output stay float32."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
    onnx.save(model, str(out))


def build_tensorrt(source: Path, out: Path, what: str = "optimise=tensorrt") -> None:
    """A serialized TensorRT engine from an ONNX model, strongly typed: it keeps the model's own precision (FP16
    from the FP16 model, INT8 where the QDQ model quantises), TensorRT's way since precision flags were deprecated."""
    trt = require_tensorrt(what)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(source.read_bytes()):
        raise BadInput(f"TensorRT cannot parse {source}: {parser.get_error(0)}")
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    shape = tuple(network.get_input(0).shape)[1:]
    profile.set_shape("images", (1, *shape), (32, *shape), (128, *shape))
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise BadInput(f"TensorRT could not build an engine from {source} (its log above says why)")
    out.write_bytes(bytes(engine))


def model_size_mb(path: Path) -> float:
    """On disk, with OpenVINO's weights file beside its model.xml."""
    files = [path, path.with_suffix(".bin")] if path.suffix == ".xml" else [path]
    return sum(f.stat().st_size for f in files) / 1e6


def optimised_file(method: str) -> str:
    return {"int8_openvino": "model.xml", "tensorrt": "model.plan", "tensorrt_int8": "model.plan"}.get(
        method, "model.onnx"
    )


def build(method: str, fp32: Path, out: Path, calibration: np.ndarray, *, per_channel: bool = True) -> Runner:
    """Write the optimised model to `out` and return its class probabilities' runner."""
    if method not in METHODS:
        raise BadInput(f"optimise.method={method!r}; choose one of: {', '.join(METHODS)}")
    if method == "int8_onnx":
        quantize_int8(fp32, out, calibration, per_channel=per_channel)
    elif method == "int8_openvino":
        quantize_openvino(fp32, out, calibration)
    elif method == "fp16":
        convert_fp16(fp32, out)
    else:  # TensorRT keeps the precision of the ONNX model it is built from
        require_tensorrt(f"optimise={method}")  # before any work
        source = out.with_name("source.onnx")
        if method == "tensorrt":
            convert_fp16(fp32, source)
        else:
            quantize_int8(fp32, source, calibration, per_channel=per_channel, symmetric=True)
        build_tensorrt(source, out, f"optimise={method}")
        source.unlink()
    return probabilities(out)


def compare(fp32: np.ndarray, optimised: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """test/acc and macro-F1 of both, the accuracy drop, top-1 agreement and the largest probability difference."""
    from sklearn.metrics import f1_score

    figures = {}
    for name, probs in (("fp32", fp32), ("optimised", optimised)):
        preds = probs.argmax(1)
        figures[f"{name}/test_acc"] = float((preds == labels).mean())
        figures[f"{name}/test_macro_f1"] = float(f1_score(labels, preds, average="macro"))
    figures["acc_drop"] = figures["fp32/test_acc"] - figures["optimised/test_acc"]
    figures["top1_agreement"] = float((fp32.argmax(1) == optimised.argmax(1)).mean())
    figures["max_prob_diff"] = float(np.abs(fp32 - optimised).max())
    lost = int(((fp32.argmax(1) == labels) & (optimised.argmax(1) != labels)).sum())
    gained = int(((fp32.argmax(1) != labels) & (optimised.argmax(1) == labels)).sum())
    figures["images_lost"], figures["images_gained"] = lost, gained
    figures["drop_p_value"] = drop_p_value(lost, gained)
    return figures


def drop_p_value(lost: int, gained: int) -> float:
    """McNemar's exact test, one-sided: the chance of `lost` or more of the `lost + gained` test images on which
    the two models disagree about being right going against the optimised model, were both equally accurate.
    One image out of one disagreement is 0.5 (no evidence); 5 of 5 is 0.031."""
    n = lost + gained
    return float(sum(math.comb(n, k) for k in range(lost, n + 1)) / 2**n) if n else 1.0


def gate(method: str, figures: dict, max_acc_drop: float, significance: float) -> dict:
    """Promoted unless test/acc drops by more than max_acc_drop with p < significance; the reason in one line."""
    drop, p = figures["acc_drop"], figures["drop_p_value"]
    said = (
        f"{method} loses {100 * drop:.2f} points of test/acc ({figures['fp32/test_acc']:.4f} -> "
        f"{figures['optimised/test_acc']:.4f}: {figures['images_lost']} test images lost, "
        f"{figures['images_gained']} gained, p={p:.3g})"
    )
    if drop <= max_acc_drop:
        promoted, reason = True, f"promoted: {said} <= optimise.max_acc_drop={max_acc_drop}"
    elif p >= significance:
        promoted = True
        reason = (
            f"promoted: {said}; above optimise.max_acc_drop={max_acc_drop} but within noise (p >= "
            f"optimise.significance={significance})"
        )
    else:
        promoted = False
        reason = (
            f"not promoted: {said} > optimise.max_acc_drop={max_acc_drop} with p < optimise.significance="
            f"{significance}; serve models/export (FP32), or raise optimise.calibration_images"
        )
    return {"method": method, "promoted": promoted, "reason": reason, **figures}


def calibration_indices(n: int, count: int, seed: int) -> np.ndarray:
    """A fixed, seeded sample of `count` of the train split's `n` images (sorted: read in file order)."""
    return np.sort(np.random.default_rng(seed).choice(n, size=min(count, n), replace=False))
