"""The exported ONNX model as an MLflow pyfunc model, logged and registered."""

from __future__ import annotations

import warnings
from pathlib import Path

import mlflow

from imgclf import contract as serving
from imgclf.tracking import runs
from imgclf.tracking.artifacts import local_artifact_dir, place_file


def _served_model_class():
    """The pyfunc class, defined on first use: importing mlflow.pyfunc (and defining a PythonModel) makes MLflow
    warn about type hints, which every stage would print otherwise; the signature is given explicitly instead."""
    import mlflow.pyfunc

    class OnnxImageClassifier(mlflow.pyfunc.PythonModel):
        """The exported ONNX network as an MLflow model: RGB uint8 images (N, S, S, 3) in, class probabilities out."""

        def load_context(self, context) -> None:
            import onnxruntime as ort

            self.session = ort.InferenceSession(context.artifacts["onnx"], providers=["CPUExecutionProvider"])
            self.spec = serving.ServingSpec.read(Path(context.artifacts["onnx"]).parent)

        def predict(self, context, model_input, params=None):
            import numpy as np
            import pandas as pd

            x = self.spec.normalize_images(np.asarray(model_input, dtype=np.uint8))
            probs = serving.softmax(self.session.run(["logits"], {"images": x})[0])
            table = pd.DataFrame(probs, columns=self.spec.class_names)
            table["label"] = [self.spec.class_names[i] for i in probs.argmax(1)]
            return table

    return OnnxImageClassifier


def log_served_model(export_dir: str | Path, examples, registered_name: str | None, name: str = "model") -> str:
    """Log the ONNX export as a pyfunc model (signature, input example) and register it; returns its URI."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    export_dir = Path(export_dir)
    labels = serving.ServingSpec.read(export_dir).class_names
    size = examples.shape[1]
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, size, size, 3))]),  # one unnamed tensor: {"inputs": [...]}
        outputs=Schema([ColSpec("double", c) for c in labels] + [ColSpec("string", "label")]),
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*type hints to the `predict` method.*")
        model = _served_model_class()()
    import cloudpickle

    # contract.py travels inside the pickled class, so the served model needs no imgclf (numpy, pandas, onnxruntime)
    cloudpickle.register_pickle_by_value(serving)
    mlflow.start_run(run_id=runs.active_run_id())  # log_model logs into the fluent API's active run
    try:
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=model,
            signature=signature,
            input_example=examples,
            artifacts={
                "onnx": str(export_dir / "model.onnx"),
                "labels": str(export_dir / serving.LABELS_FILE),
                "preprocessing": str(export_dir / serving.PREPROCESSING_FILE),
            },
            pip_requirements=["onnxruntime", "numpy", "pandas"],
            registered_model_name=registered_name or None,
        )
    finally:
        cloudpickle.unregister_pickle_by_value(serving)
        mlflow.end_run()  # the run's own end (its final status) follows through the outbox
    _link_the_copy(info.model_id, export_dir / "model.onnx")
    return info.model_uri


def _link_the_copy(model_id: str, onnx: Path) -> None:
    """log_model copied the ONNX file into the model's artifacts: on a local store, that copy becomes a read-only
    link to the export's file (the same bytes, checked), one file on disk (see imgclf.tracking.artifacts)."""
    import filecmp

    location = local_artifact_dir(mlflow.get_logged_model(model_id).artifact_location)
    copy = location / "artifacts" / onnx.name if location else None
    if copy is not None and copy.is_file() and filecmp.cmp(copy, onnx, shallow=False):
        place_file(onnx, copy)
