"""Export a trained network to ONNX and check the file against PyTorch with onnxruntime."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path, opset: int = 18) -> None:
    """Write `model` as ONNX with a dynamic batch axis; input `images` (N,3,H,W float), output `logits`."""
    model = model.eval().cpu()
    # the dynamo exporter: the TorchScript one cannot export AlexNet's adaptive pooling below 224 px
    torch.onnx.export(
        model, (example.cpu(),), str(path), input_names=["images"], output_names=["logits"],
        opset_version=opset, dynamo=True, external_data=False,  # one self-contained file (< 2 GB)
        dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False,
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
