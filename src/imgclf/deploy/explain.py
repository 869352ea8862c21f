"""Grad-CAM for `imgclf predict --explain` and serve's Classify One: drawn from the trained checkpoint (the exported
formats keep no gradients), and only from the one the classifying model was exported from."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from imgclf.contract import ServingSpec, normalize, run_of, scaled_stats
from imgclf.data.images import decode_image
from imgclf.data.transforms import center_crop
from imgclf.deploy.predict import Classifier, Prediction
from imgclf.errors import BadInput, MissingInput
from imgclf.files import open_regular
from imgclf.targets import unmakeable_folder


class Explainer:
    """Grad-CAM overlays from the trained network in `checkpoint` (Grad-CAM needs its gradients, which the exported
    formats do not keep), for images classified by a model with the same classes."""

    def __init__(
        self,
        checkpoint: Path,
        class_names: Sequence[str],
        layer: str | None = None,
        *,
        made_for: Classifier | None = None,
    ):
        from imgclf.data.download import file_digest
        from imgclf.models.explain import check_layer
        from imgclf.models.saved import load_checkpoint, model_from_checkpoint

        # the network loaded, whatever the file holds later (read once; a missing file is refused below)
        self.digest = file_digest(Path(checkpoint), "sha256") if Path(checkpoint).is_file() else None
        if made_for is not None:  # before the checkpoint is loaded: another network's gradients are never drawn
            check_same_network(Path(checkpoint), made_for, self.digest)
        ckpt = load_checkpoint(checkpoint)
        self.spec = ServingSpec.from_checkpoint(ckpt, str(checkpoint))
        if list(self.spec.class_names) != list(class_names):
            raise BadInput(f"{checkpoint} has other classes than the model that classified the images")
        self.model, self.layer = model_from_checkpoint(ckpt), layer
        check_layer(self.model, layer, self.spec.image_size)  # a wrong --explain-layer is refused before any image

    def explains(self, classifier: Classifier) -> bool:
        """Whether `classifier` runs the network loaded here: the checkpoint it is, or the one its export recorded
        (a page switched to a model re-exported since, under the same name, runs another network)."""
        return network_digest(classifier) == self.digest

    def overlay(self, path: Path, class_index: int, opener: Callable[[Path], BinaryIO] | None = None) -> np.ndarray:
        """uint8 HWC: the image as the model saw it, its Grad-CAM for `class_index` over it, at least 224 px."""
        import torch

        from imgclf.models.explain import grad_cam, overlay

        spec = self.spec
        with (opener or open_regular)(path) as f:
            stored = decode_image(f, spec.stored_size, spec.interpolation, spec.resize).transpose(2, 0, 1)[None]
        image = center_crop(stored, spec.image_size)
        inputs = torch.from_numpy(normalize(image, *scaled_stats(spec.mean, spec.std)))
        drawn = overlay(image, grad_cam(self.model, inputs, [class_index], self.layer))[0].transpose(1, 2, 0)
        scale = max(1, 224 // max(drawn.shape[:2]))  # a digit's 32 px drawn big enough to see
        return drawn.repeat(scale, 0).repeat(scale, 1)


def network_digest(classifier: Classifier) -> str | None:
    """The sha256 of the checkpoint `classifier` runs: the file itself, or the one its export recorded (run.json's
    checkpoint_sha256); None when an export records none."""
    from imgclf.data.download import file_digest

    if classifier.checkpoint is not None:
        return file_digest(classifier.checkpoint, "sha256")
    return run_of(classifier.source, "checkpoint_sha256")


def check_same_network(checkpoint: Path, classifier: Classifier, digest: str | None = None) -> None:
    """Refuse Grad-CAM from `checkpoint` (its sha256 `digest`, when read already) unless it is the network
    `classifier` runs (network_digest). Same classes are not enough: a retrain keeps them."""
    from imgclf.data.download import file_digest

    if classifier.checkpoint is not None and classifier.checkpoint.resolve() == checkpoint.resolve():
        return
    if not checkpoint.is_file():
        raise MissingInput(f"--explain-model {checkpoint}: no such checkpoint; pass the model.pt to explain with")
    if (wanted := network_digest(classifier)) is None:
        raise BadInput(f"{classifier.source} does not record which checkpoint it was exported from, so Grad-CAM "
                       "cannot be checked against it; re-export it (dvc repro export)")  # fmt: skip
    if (digest or file_digest(checkpoint, "sha256")) != wanted:
        ours, theirs = (run_of(p if p.is_dir() else p.parent) or "unknown" for p in (checkpoint, classifier.source))
        runs = f" (it is run {ours}'s, the model run {theirs}'s)"
        raise BadInput(
            f"{checkpoint} is not the checkpoint {classifier.source} was made from{runs}; re-export it "
            "(dvc repro export) or pass --explain-model with the checkpoint it was exported from"
        )


class Explanations:
    """`predict --explain DIR`: a Grad-CAM overlay PNG per classified image (`<name>.cam.png`) for the class it was
    given. Made (the checkpoint loaded, the layer found, the names planned) before `write`: a refusal comes before
    any file is written, here or by the other outputs, and a file already in DIR is never replaced."""

    def __init__(
        self,
        preds: Sequence[Prediction],
        classifier: Classifier,
        checkpoint: Path,
        out_dir: Path,
        layer: str | None = None,
    ):
        self.explainer = Explainer(checkpoint, classifier.class_names, layer, made_for=classifier)
        self.done = [p for p in preds if p.probs is not None]
        names, self.targets = set(), []
        for pred in self.done:  # a.png and a.jpg, or a.png beside a.1.png: each overlay its own file
            stem, n = Path(pred.path).stem, 0
            name = f"{stem}.cam.png"
            while name in names:
                n += 1
                name = f"{stem}.{n}.cam.png"
            names.add(name)
            self.targets.append(out_dir / name)
        if why := unmakeable_folder(out_dir):
            raise BadInput(f"--explain {out_dir} {why}; nothing was written")
        if taken := [t for t in self.targets if t.exists() or t.is_symlink()]:
            raise BadInput(f"--explain: {taken[0]} is already there (and {len(taken) - 1} more); nothing was written")
        self.out_dir = out_dir
        self.written: list[Path] = []
        self.made: list[Path] = []

    def write(self) -> list[Path]:
        """The overlays; a failure part-way removes those written and the folders made for them (none for none)."""
        from PIL import Image

        from imgclf.files import atomic_path

        if not self.done:  # nothing was classified: no empty folder left behind
            return []
        self.made = [p for p in (self.out_dir.absolute(), *self.out_dir.absolute().parents) if not p.exists()]
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            for target, pred in zip(self.targets, self.done):
                with atomic_path(target) as tmp:
                    overlay = self.explainer.overlay(Path(pred.path), int(pred.probs.argmax()))
                    Image.fromarray(overlay).save(tmp, format="PNG")
                self.written.append(target)
        except BaseException:
            self.remove()
            raise
        return self.targets

    def remove(self) -> None:
        """Take back what `write` wrote: the overlays and the folders made for them."""
        from imgclf.targets import remove_empty

        for path in self.written:
            path.unlink(missing_ok=True)
        remove_empty(self.made)
        self.written = []
