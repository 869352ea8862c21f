"""The options of what becomes of a trained network: evaluate, label_issues, export, optimise, and the MLflow
tracking every run logs to."""

from __future__ import annotations

from dataclasses import dataclass

from imgclf.credentials import HTTP_USERINFO, unknown_store
from imgclf.errors import BadInput
from imgclf.options.data import WRITABLE
from imgclf.options.rules import BOOLEAN, METHODS, OPTIONAL_TEXT, SEED, TEXT, TTA, Group, integer, number, one_of, rule
from imgclf.targets import unmakeable_folder


@dataclass(frozen=True, kw_only=True)
class Evaluate(Group):
    tta: tuple[str, ...] = rule(TTA, ())


@dataclass(frozen=True, kw_only=True)
class LabelIssues(Group):
    folds: int = rule(integer(2), 5)
    splits: tuple[str, ...] = rule(
        (
            (lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and set(v) <= {"train", "val", "test"}),
            "a list of: train, val, test",
        ),
        ("train", "val", "test"),
    )
    top: int = rule(integer(1), 25)


@dataclass(frozen=True, kw_only=True)
class Export(Group):
    # torch's ONNX exporter writes opset 18 and up: asked for less, it keeps 18 when its down-conversion fails
    # (AlexNet's, VGG's), so a lower opset would be a file that is not what params.yaml says
    opset: int = rule(integer(18), 18)
    verify_images: int = rule(integer(1), 64)
    atol: float = rule(number(0, above=True), 1e-4)
    registered_name: str | None = rule(OPTIONAL_TEXT, None)

    def check(self, where: str) -> None:
        name = self.registered_name
        if name is not None and (not name.strip() or set("/:?#%") & set(name) or not name.isprintable()):
            raise BadInput(  # ? # %: registered, then no models:/ URI reached it (MLflow reads them as the URL's)
                f"{where}.registered_name={name!r} is not valid: null, or a name for MLflow's model registry "
                "(not blank, none of / : ? # %)"
            )
        if self.opset > 18:  # the onnx package knows the newest it reads; torch's exporter keeps 18 past it, silently
            from onnx.defs import onnx_opset_version

            if self.opset > (newest := onnx_opset_version()):
                raise BadInput(f"{where}.opset={self.opset} is not valid: an integer from 18 to {newest}")


@dataclass(frozen=True, kw_only=True)
class Optimise(Group):
    method: str = rule(one_of(*METHODS))
    calibration_images: int = rule(integer(0), 256)
    seed: int = rule(SEED, 0)
    per_channel: bool = rule(BOOLEAN, True)
    max_acc_drop: float = rule(number(0, 1, below=False), 0.005)  # 1: keep whatever the optimised model scores
    significance: float = rule(number(0, 1, below=False), 0.05)  # 1: any drop past max_acc_drop fails the gate

    def check(self, where: str) -> None:
        if "int8" in self.method and self.calibration_images < 1:
            raise BadInput(
                f"{where}.calibration_images=0 is not valid for {where}={self.method}: INT8 needs calibration "
                "images (an integer >= 1)"
            )


EXPERIMENT = "a non-blank name of at most 500 characters, no '/', not only dots"  # its artifacts go in mlruns/NAME


@dataclass(frozen=True, kw_only=True)
class Tracking(Group):
    uri: str = rule(TEXT)
    experiment: str = rule(  # MLflow's limit; a name with / or .. puts its artifacts outside mlruns/ (. and ..)
        (lambda v: TEXT[0](v) and len(v) <= 500 and "/" not in v and v.strip(".") != "", EXPERIMENT), "imgclf"
    )
    run_name: str | None = rule(OPTIONAL_TEXT, None)
    outbox: str | None = rule(OPTIONAL_TEXT, None)
    outage_wait_s: float = rule(number(0), 1800)

    def check(self, where: str) -> None:
        if why := unknown_store(self.uri):
            raise BadInput(f"{where}.uri={why}")
        if self.outbox is not None and (why := unmakeable_folder(self.outbox)):  # found only once the run was open
            raise BadInput(f"{where}.outbox={self.outbox!r} {why}; {WRITABLE}")
        # a password in tracking.uri that came from a file (params.yaml, conf/) would reach dvc.lock. On the
        # command line it never gets this far: credentials.strip_overrides moves it into MLflow's variables first
        if HTTP_USERINFO.match(self.uri):
            raise BadInput(
                f"{where}.uri in params.yaml or conf/ holds credentials (DVC would write them to dvc.lock, and "
                "`dvc exp run -S` has already written them to params.yaml): delete them there and set "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD instead"
            )
