"""Step five of six: the exported FP32 ONNX model made smaller or faster for where it runs, and checked.

`int8_onnx`: static INT8 quantisation (onnxruntime.quantization, QDQ, per-channel weights) calibrated on a fixed,
seeded sample of the train split; `fp16`: half-precision weights and activations (inputs and outputs stay FP32) for
GPUs; `tensorrt`: an engine built from the ONNX model where CUDA and TensorRT are, else one clear error. Each
optimised model is compared with the FP32 model on the whole test split before it is kept.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .errors import BadInput, MissingInput
from .serving import softmax

log = logging.getLogger(__name__)
METHODS = ("int8_onnx", "fp16", "tensorrt")


def quantize_int8(fp32: Path, out: Path, calibration: np.ndarray, *, per_channel: bool = True) -> None:
    """Static INT8 (QDQ, signed 8-bit activations and weights) with activation ranges from `calibration`
    (normalised float images, NCHW)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(np.array_split(calibration, max(1, len(calibration) // 16)))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"images": np.ascontiguousarray(batch, dtype=np.float32)}

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
    )
    prepared.unlink()


def convert_fp16(fp32: Path, out: Path) -> None:
    """Weights and activations in float16; the `images` input and `logits` output stay float32."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
    onnx.save(model, str(out))


def build_tensorrt(fp32: Path, out: Path) -> None:
    """A serialized TensorRT engine (FP16) from the ONNX model: needs CUDA and the `tensorrt` package."""
    import torch

    try:
        import tensorrt as trt
    except ImportError:
        trt = None
    if trt is None or not torch.cuda.is_available():
        missing = " and ".join(
            what for what, ok in (("CUDA", torch.cuda.is_available()), ("tensorrt", trt is not None)) if not ok
        )
        raise MissingInput(
            f"optimise=tensorrt needs CUDA and the tensorrt package; this machine lacks {missing} "
            "(use optimise=int8_onnx on a CPU, or run on an NVIDIA machine with `pip install tensorrt`)"
        )
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(fp32.read_bytes()):
        raise BadInput(f"TensorRT cannot parse {fp32}: {parser.get_error(0)}")
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    shape = tuple(network.get_input(0).shape)[1:]
    profile.set_shape("images", (1, *shape), (32, *shape), (128, *shape))
    config.add_optimization_profile(profile)
    out.write_bytes(bytes(builder.build_serialized_network(network, config)))


class OnnxRunner:
    """Class probabilities of an ONNX model, batch after batch (CPU: onnxruntime's CPU provider)."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return softmax(self.session.run(["logits"], {"images": images})[0].astype(np.float64))


class TensorRTRunner:
    """Class probabilities of a serialized TensorRT engine on the GPU (inputs and outputs through torch)."""

    def __init__(self, path: Path) -> None:
        import tensorrt as trt

        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        self.context = self.engine.create_execution_context()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).cuda()
        self.context.set_input_shape("images", tuple(x.shape))
        out = torch.empty(tuple(self.context.get_tensor_shape("logits")), dtype=torch.float32, device="cuda")
        self.context.set_tensor_address("images", x.data_ptr())
        self.context.set_tensor_address("logits", out.data_ptr())
        stream = torch.cuda.current_stream()
        self.context.execute_async_v3(stream.cuda_stream)
        stream.synchronize()
        return softmax(out.cpu().numpy().astype(np.float64))


def optimised_file(method: str) -> str:
    return "model.plan" if method == "tensorrt" else "model.onnx"


def build(method: str, fp32: Path, out: Path, calibration: np.ndarray, *, per_channel: bool = True):
    """Write the optimised model to `out` and return a runner for it."""
    if method not in METHODS:
        raise BadInput(f"optimise.method={method!r}; choose one of: {', '.join(METHODS)}")
    if method == "int8_onnx":
        if len(calibration) == 0:
            raise BadInput("optimise=int8_onnx needs calibration images: optimise.calibration_images >= 1")
        quantize_int8(fp32, out, calibration, per_channel=per_channel)
    elif method == "fp16":
        convert_fp16(fp32, out)
    else:
        build_tensorrt(fp32, out)
        return TensorRTRunner(out)
    return OnnxRunner(out)


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
    return figures


def calibration_indices(n: int, count: int, seed: int) -> np.ndarray:
    """A fixed, seeded sample of `count` of the train split's `n` images (sorted: read in file order)."""
    return np.sort(np.random.default_rng(seed).choice(n, size=min(count, n), replace=False))
