"""The runtimes that run a deployed model file, numpy in and out: onnxruntime (ONNX FP32, INT8, FP16), OpenVINO IR,
a TensorRT engine, torch (a checkpoint's network, the .pt2 program).

With a `timeout`, every run of an onnxruntime or OpenVINO model is stopped past it (onnxruntime's terminate flag,
checked between kernels and at each iteration of a Loop; OpenVINO's cancel, checked between its operations) and is
one Overrun line: a 496-byte ONNX Loop of 2^62 iterations ran for ever. OpenVINO cannot stop a loop once it runs, and
constant-folds one of fixed length while it compiles, for as long as it runs: an IR with control flow (Loop,
TensorIterator, or an If whose branch may hold one) is refused before it is compiled. An exported classifier has
none.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from imgclf.contract import softmax
from imgclf.errors import BadInput, MissingInput, Overrun, UserError

MODEL_FILES = ("model.onnx", "model.xml", "model.plan")  # ONNX, OpenVINO IR (+ model.bin), TensorRT engine
Runner = Callable[[np.ndarray], np.ndarray]
# the default limit of one run (a batch of serve's or predict's, a load's check): a minute is far more than a
# classifier's batch takes on a CPU (decisions.md has the figure), and what a stuck request waits
RUN_SECONDS = 60.0
# OpenVINO's operations that run a body of their own: a loop, or a branch that may hold one
CONTROL_FLOW = ("Loop", "TensorIterator", "If")
# what an OpenVINO IR file opens with: an XML declaration and comments at most, then its <net> element
IR_START = re.compile(rb"\A(?:\xef\xbb\xbf)?\s*(?:<\?xml[^>]*\?>\s*)?(?:<!--.*?-->\s*)*<net[\s>/]", re.DOTALL)


@contextlib.contextmanager
def _deadline(seconds: float | None, stop: Callable[[], None]) -> Iterator[threading.Event]:
    """`stop` called from another thread once `seconds` have passed, unless the block ends first; the event says
    whether it was."""
    fired = threading.Event()
    timer = None if seconds is None else threading.Timer(seconds, lambda: (fired.set(), stop()))
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        yield fired
    finally:
        if timer is not None:
            timer.cancel()


def overran(seconds: float, images: np.ndarray) -> Overrun:
    batch = f"{len(images)} image{'s' if len(images) != 1 else ''}"
    return Overrun(f"the model ran for more than {seconds:g} s on a batch of {batch} and was stopped "
                   "(--inference-timeout)")  # fmt: skip


def onnx_logits(path: Path, timeout: float | None = None) -> Runner:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own: an operator at an opset this version has no kernel for
        if "NOT_IMPLEMENTED" not in str(exc):
            raise
        said = str(exc).split("NOT_IMPLEMENTED : ")[-1].splitlines()[0][:160]
        why = f"onnxruntime {ort.__version__} cannot run {path.name} ({said}): export at a lower export.opset"
        raise BadInput(why) from None

    def run(images: np.ndarray) -> np.ndarray:
        options = ort.RunOptions()  # one per run: the flag stops this run alone
        options.log_severity_level = 4  # a stopped run is our one line, not onnxruntime's log too
        with _deadline(timeout, lambda: setattr(options, "terminate", True)) as fired:
            try:
                return session.run(["logits"], {"images": images}, options)[0]
            except Exception:
                if fired.is_set():
                    raise overran(timeout, images) from None
                raise

    return run


def openvino_logits(path: Path, timeout: float | None = None) -> Runner:
    import openvino as ov

    with open(path, "rb") as f:
        if not IR_START.match(f.read(4096)):  # OpenVINO would open an ONNX file named .xml with its ONNX reader
            raise BadInput(f"{path}: not an OpenVINO IR (an XML file whose element is <net>, model.bin beside it)")
    core = ov.Core()
    model = core.read_model(str(path))
    if found := sorted({op.get_type_name() for op in model.get_ordered_ops()} & set(CONTROL_FLOW)):
        raise BadInput(f"{path}: refused: it holds control flow ({', '.join(found)}), and OpenVINO can stop no loop "
                       "once it runs; an exported classifier has none")  # fmt: skip
    request, lock = core.compile_model(model, "CPU").create_infer_request(), threading.Lock()

    def run(images: np.ndarray) -> np.ndarray:
        with lock:  # one infer request: imgclf serve classifies from several threads
            request.start_async({0: images})
            if timeout is None:
                request.wait()
            elif not request.wait_for(max(1, int(timeout * 1000))):
                request.cancel()
                with contextlib.suppress(RuntimeError):  # "Infer Request was canceled"
                    request.wait()
                raise overran(timeout, images)
            return np.array(request.get_output_tensor(0).data)  # a copy: the next run reuses the buffer

    return run


def require_tensorrt(what: str):
    """The tensorrt module, or one line naming what this machine lacks (CUDA, the tensorrt package or both)."""
    import torch

    try:
        import tensorrt as trt
    except ImportError:
        trt = None
    missing = [name for name, ok in (("CUDA", torch.cuda.is_available()), ("tensorrt", trt is not None)) if not ok]
    if missing:
        raise MissingInput(
            f"{what} needs CUDA and the tensorrt package; this machine lacks {' and '.join(missing)} "
            "(use optimise=int8_onnx or int8_openvino on a CPU, or an NVIDIA machine with `pip install tensorrt`)"
        )
    return trt


def tensorrt_logits(path: Path, timeout: float | None = None) -> Runner:
    """A serialized TensorRT engine on the GPU, inputs and outputs through torch's CUDA tensors. TensorRT can stop
    no run: `timeout` is not applied."""
    import torch

    trt = require_tensorrt(f"the TensorRT engine {path}")
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise BadInput(f"{path} is not a TensorRT engine this TensorRT and GPU can run; rebuild it (optimise=tensorrt)")
    context, lock = engine.create_execution_context(), threading.Lock()
    most = engine.get_tensor_profile_shape("images", 0)[2][0]  # the optimisation profile's largest batch

    def run(images: np.ndarray) -> np.ndarray:
        with lock:  # one execution context
            return np.concatenate([infer(images[i : i + most]) for i in range(0, len(images), most)])

    def infer(images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).cuda()
        if not context.set_input_shape("images", tuple(x.shape)):
            raise BadInput(f"{path} takes input {tuple(engine.get_tensor_shape('images'))}; got {tuple(x.shape)}")
        out = torch.empty(tuple(context.get_tensor_shape("logits")), dtype=torch.float32, device="cuda")
        context.set_tensor_address("images", x.data_ptr())
        context.set_tensor_address("logits", out.data_ptr())
        stream = torch.cuda.current_stream()
        if not context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT could not run {path} (its log above says why)")
        stream.synchronize()
        return out.cpu().numpy()

    return run


def torch_logits(module) -> Runner:
    """A PyTorch module (a checkpoint's network, a loaded .pt2 program) on the CPU, numpy in and out."""
    import torch

    def run(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(images)).numpy()

    return run


def program_logits(path: Path, timeout: float | None = None) -> Runner:
    """The torch.export program (.pt2) that export writes: ATen operators only, no loop, so a run ends; torch can
    stop none, and `timeout` is not applied."""
    from imgclf.deploy.program import load_program

    return torch_logits(load_program(path))


LOADERS = {
    ".onnx": onnx_logits,
    ".pt2": program_logits,
    ".xml": openvino_logits,
    ".plan": tensorrt_logits,
    ".engine": tensorrt_logits,
}


def load_runner(path: Path, timeout: float | None = None) -> Runner:
    """Logits (float32, NCHW normalised images in) of a deployed model file, by its suffix: ONNX (onnxruntime),
    the torch.export program (.pt2), OpenVINO IR (.xml) on the CPU, a TensorRT engine (.plan/.engine) on the GPU.
    `timeout`: the seconds each run may take (onnxruntime, OpenVINO), None for no limit."""
    path = Path(path)
    if path.suffix not in LOADERS:
        raise BadInput(f"{path}: not a deployable model; valid: {', '.join(LOADERS)} (or a .pt checkpoint)")
    try:
        return LOADERS[path.suffix](path, timeout)
    except (UserError, FileNotFoundError, PermissionError):
        raise
    except Exception as exc:  # noqa: BLE001 - the runtime's own words for a file it cannot load, in one line
        raise BadInput(f"{path}: not a model this runtime can load ({runtime_words(exc)})") from None


# a line of OpenVINO's that says where in its sources it raised, not what was wrong
WHERE = re.compile(r"(Exception from |Check '.*' failed at )src/\S+:\d+:$")


def runtime_words(exc: BaseException) -> str:
    """The line of a runtime's message that says what was wrong: onnxruntime's first; OpenVINO's last, below the
    lines that name its source files (`Exception from src/inference/src/cpp/core.cpp:132:`)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    said = [line for line in lines if not WHERE.match(line)]
    if not said:
        return lines[0][:300] if lines else type(exc).__name__
    return said[-1 if len(said) < len(lines) else 0][:300]


def probabilities(path: Path) -> Runner:
    """Class probabilities (float64) of a deployed model file, batch after batch."""
    logits = load_runner(path)
    return lambda images: softmax(np.asarray(logits(images), dtype=np.float64))
