"""What a deployed model costs, per format, side by side: batch-1 latency (p50/p99), batch-32 throughput, size on
disk and test/acc, for eager PyTorch, the FP32 ONNX model, the .pt2 program, the INT8 and FP16 ONNX models and the
OpenVINO INT8 model.

Part 1, the project's model (`make pipeline`: models/model.pt, models/export; INT8 and FP16 made here with the
optimise stage's functions and calibration) on its test split. Part 2, `--arch` (AlexNet, VGG16) at 224 px with
random weights (no pretrained weights here: speed only), FP32 ONNX against INT8 ONNX and OpenVINO INT8.

    python benchmarks/deploy.py [--runs 200] [--arch alexnet]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from imgclf.contract import ServingSpec
from imgclf.data.datasets import load_split
from imgclf.data.transforms import Preprocess
from imgclf.deploy.export import export_onnx, trace
from imgclf.deploy.quantize import calibration_indices, convert_fp16, model_size_mb, quantize_int8, quantize_openvino
from imgclf.deploy.runtimes import load_runner, torch_logits
from imgclf.models.saved import load_checkpoint, model_from_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def timing(run, x1: np.ndarray, x32: np.ndarray, runs: int) -> dict[str, float]:
    run(x1)
    one = []
    for _ in range(runs):
        started = time.perf_counter()
        run(x1)
        one.append(time.perf_counter() - started)
    run(x32)
    batches = []
    for _ in range(max(3, runs // 20)):
        started = time.perf_counter()
        run(x32)
        batches.append(time.perf_counter() - started)
    return {
        "b1_p50_ms": float(np.percentile(one, 50) * 1000),
        "b1_p99_ms": float(np.percentile(one, 99) * 1000),
        "b1_per_s": float(1 / np.median(one)),
        "b32_img_per_s": float(32 / np.median(batches)),
    }


def project_table(runs: int, work: Path) -> list[tuple]:
    export = ROOT / "models" / "export"
    spec = ServingSpec.read(export)
    pre = Preprocess(spec.mean, spec.std)
    data = ROOT / "data" / "digits"
    train = load_split(data, "train", "full", spec)
    test = load_split(data, "test", "full", spec)
    x = pre(test.batch(range(len(test)))).numpy()
    labels = test.labels.numpy()
    calibration = pre(train.batch(calibration_indices(len(train), 256, 0))).numpy()
    quantize_int8(export / "model.onnx", work / "int8.onnx", calibration)
    convert_fp16(export / "model.onnx", work / "fp16.onnx")
    quantize_openvino(export / "model.onnx", work / "openvino" / "model.xml", calibration)
    formats = {
        "PyTorch eager (model.pt)": (
            torch_logits(model_from_checkpoint(load_checkpoint(ROOT / "models/model.pt"))),
            ROOT / "models/model.pt",
        ),
        "ONNX FP32 (onnxruntime)": (load_runner(export / "model.onnx"), export / "model.onnx"),
        "torch.export .pt2": (load_runner(export / "model.pt2"), export / "model.pt2"),
        "ONNX INT8 (QDQ)": (load_runner(work / "int8.onnx"), work / "int8.onnx"),
        "ONNX FP16": (load_runner(work / "fp16.onnx"), work / "fp16.onnx"),
        "OpenVINO INT8 (NNCF)": (load_runner(work / "openvino/model.xml"), work / "openvino/model.xml"),
    }
    rows = []
    for name, (run, path) in formats.items():
        acc = float((np.concatenate([run(x[i : i + 64]) for i in range(0, len(x), 64)]).argmax(1) == labels).mean())
        figures = timing(run, np.ascontiguousarray(x[:1]), np.ascontiguousarray(x[:32]), runs)
        rows.append((name, figures, model_size_mb(path), acc))
    return rows


def arch_table(arch: str, runs: int, work: Path) -> list[tuple]:
    import torchvision

    model = getattr(torchvision.models, arch)(num_classes=10).eval()
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (64, 3, 224, 224)).astype(np.float32)
    export_onnx(trace(model, torch.from_numpy(x[:1])), work / f"{arch}.onnx")
    quantize_int8(work / f"{arch}.onnx", work / f"{arch}-int8.onnx", x[:32])
    quantize_openvino(work / f"{arch}.onnx", work / f"{arch}-openvino" / "model.xml", x[:32])
    rows = []
    for name, path in (
        (f"{arch} 224 px ONNX FP32", work / f"{arch}.onnx"),
        (f"{arch} 224 px ONNX INT8", work / f"{arch}-int8.onnx"),
        (f"{arch} 224 px OpenVINO INT8", work / f"{arch}-openvino" / "model.xml"),
    ):
        figures = timing(load_runner(path), x[:1], x[:32], runs)
        rows.append((name, figures, model_size_mb(path), float("nan")))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="batch-1 calls per format")
    parser.add_argument("--arch", nargs="*", default=["alexnet"], help="torchvision networks at 224 px, speed only")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    with tempfile.TemporaryDirectory() as tmp:
        rows = project_table(args.runs, Path(tmp))
        for arch in args.arch:
            rows += arch_table(arch, max(20, args.runs // 10), Path(tmp))
    print("| format | batch 1 p50 | batch 1 p99 | batch 1 /s | batch 32 img/s | size | test/acc |")
    print("|---|---|---|---|---|---|---|")
    for name, f, size, acc in rows:
        shown = "" if np.isnan(acc) else f"{acc:.4f}"
        print(
            f"| {name} | {f['b1_p50_ms']:.2f} ms | {f['b1_p99_ms']:.2f} ms | {f['b1_per_s']:.0f} | "
            f"{f['b32_img_per_s']:.0f} | {size:.1f} MB | {shown} |"
        )


if __name__ == "__main__":
    main()
