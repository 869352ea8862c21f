"""Export a trained network to ONNX and a torch.export program (.pt2) beside its serving contract, each checked
against PyTorch. TorchScript, deprecated by the torch we pin, is gone: torch.export expresses every supported model."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from imgclf.contract import ServingSpec, seal
from imgclf.deploy.program import load_program, save_program
from imgclf.errors import BadInput
from imgclf.files import atomic_dir

log = logging.getLogger(__name__)
FORMATS = ("onnx", "pt2")
PROGRAM = "model.pt2"


def export_model(
    model: nn.Module,
    inputs: torch.Tensor,
    out_dir: Path,
    spec: ServingSpec,
    *,
    opset: int,
    atol: float,
    run_id: str | None = None,
    checkpoint_sha256: str | None = None,
) -> dict[str, float]:
    """model.onnx, model.pt2, labels.txt, preprocessing.json and run.json (`run_id`'s) into `out_dir`, only if both
    formats agree with PyTorch on `inputs` (normalised test images) within `atol`; returns the checks' figures.
    run.json keeps `checkpoint_sha256`, the file the model came from: Grad-CAM refuses any other checkpoint."""
    with atomic_dir(out_dir) as tmp:
        program = trace(model, inputs)
        save_program(program, tmp / PROGRAM)
        export_onnx(program, tmp / "model.onnx", opset)
        report = {
            **verify_onnx(model, tmp / "model.onnx", inputs),
            **verify_program(model, tmp / PROGRAM, inputs),
        }
        log.info(
            "ONNX vs PyTorch on %d test images: max |diff| %.3g, top-1 agreement %.4f",
            len(inputs),
            report["export/onnx_max_abs_diff"],
            report["export/onnx_top1_agreement"],
        )
        for fmt in FORMATS:
            if report[f"export/{fmt}_max_abs_diff"] > atol:
                raise BadInput(  # one line: a setting too tight for this network, or an exporter at fault
                    f"{fmt} output differs from PyTorch by {report[f'export/{fmt}_max_abs_diff']:.3g}"
                    f" > export.atol={atol}; {out_dir} is left as it was: raise export.atol"
                )
        spec.write(tmp, run_id, checkpoint_sha256)
        if run_id or checkpoint_sha256:
            seal(tmp)  # each file's sha256 in run.json: one edited since is refused at its load
    return report


def trace(model: nn.Module, inputs: torch.Tensor) -> torch.export.ExportedProgram:
    """`model` as a torch.export program with a dynamic batch axis, traced on two blank images of the size of `inputs`
    (torch.export specialises a size of 1). The program keeps its example and torch records each node's source
    location, absolute paths into the builder's environment and clone: so the example is blank, not the user's
    images, and the locations are dropped. A shipped model carries none of the data and names no folder of the
    machine that built it, and its bytes do not depend on where the project was cloned."""
    example = torch.zeros(2, *inputs.shape[1:], dtype=inputs.dtype)
    program = torch.export.export(
        model.eval().cpu(), (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},)
    )
    for module in program.graph_module.modules():
        if isinstance(module, torch.fx.GraphModule):
            for node in module.graph.nodes:
                node.meta.pop("stack_trace", None)
    return program


def export_onnx(program: torch.export.ExportedProgram, path: str | Path, opset: int = 18) -> None:
    """Write a `trace`d program as ONNX, converted as it is: input `images` (batch,3,H,W float), output `logits`
    (batch,classes), with a dynamic batch axis named `batch`."""
    # the dynamo exporter: the TorchScript one cannot export AlexNet's adaptive pooling below 224 px
    torch.onnx.export(
        program,
        (),
        str(path),
        input_names=["images"],
        output_names=["logits"],
        opset_version=opset,
        dynamo=True,
        external_data=False,  # one self-contained file (< 2 GB)
        dynamic_shapes=({0: "batch"},),  # names the program's batch symbol in the file
        verbose=False,
    )


def verify_onnx(model: nn.Module, path: str | Path, inputs: torch.Tensor) -> dict[str, float]:
    """Run the ONNX file with onnxruntime and PyTorch on the same inputs; report max |diff| and top-1 agreement."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(["logits"], {"images": inputs.cpu().numpy()})[0]
    with torch.inference_mode():
        torch_logits = model.eval().cpu()(inputs.cpu()).numpy()
    return {
        "export/onnx_max_abs_diff": float(np.abs(onnx_logits - torch_logits).max()),
        "export/onnx_top1_agreement": float((onnx_logits.argmax(1) == torch_logits.argmax(1)).mean()),
        "export/verified_images": float(len(inputs)),
    }


def verify_program(model: nn.Module, path: str | Path, inputs: torch.Tensor) -> dict[str, float]:
    """Max |logit difference| and top-1 agreement of the .pt2 program against PyTorch."""
    program = load_program(path)
    with torch.inference_mode():
        pt2_logits, torch_logits = program(inputs).numpy(), model.eval()(inputs).numpy()
    return {
        "export/pt2_max_abs_diff": float(np.abs(pt2_logits - torch_logits).max()),
        "export/pt2_top1_agreement": float((pt2_logits.argmax(1) == torch_logits.argmax(1)).mean()),
    }


def measure_latency(run, inputs: torch.Tensor, batch_sizes=(1, 32), repeats: int = 3) -> dict[str, float]:
    """Median ms per batch and images/s of `run(x)` at each batch size (CPU, after one warm-up call)."""
    import time

    out = {}
    for bs in batch_sizes:
        x = inputs[:bs]
        if len(x) < bs:  # fewer real images than the batch: repeat them
            x = x.repeat((bs + len(x) - 1) // len(x), 1, 1, 1)[:bs]
        run(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run(x)
            times.append(time.perf_counter() - start)
        ms = float(np.median(times) * 1000)
        out[f"b{bs}_ms"], out[f"b{bs}_images_per_sec"] = ms, bs / (ms / 1000)
    return out


def latency_report(model: nn.Module, export_dir: Path, inputs: torch.Tensor) -> dict[str, dict[str, float]]:
    """Latency and throughput of PyTorch, ONNX (onnxruntime) and the .pt2 program at batch 1 and 32."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(export_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    program = load_program(export_dir / PROGRAM)

    def torch_run(m):
        def run(x):
            with torch.inference_mode():
                return m(x)

        return run

    return {
        "pytorch": measure_latency(torch_run(model.eval()), inputs),
        "onnxruntime": measure_latency(lambda x: session.run(["logits"], {"images": x.numpy()}), inputs),
        "pt2": measure_latency(torch_run(program), inputs),
    }
