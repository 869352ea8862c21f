"""The serving contract: one normalise and one softmax for training, evaluation, predict and the MLflow model."""

import numpy as np
import pytest
import torch

from imgclf.contract import ServingSpec, normalize, scaled_stats, softmax
from imgclf.data.transforms import Preprocess

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def test_numpy_and_torch_normalise_bit_for_bit():
    images = np.random.default_rng(0).integers(0, 256, (4, 3, 9, 7), dtype=np.uint8)
    expected = Preprocess(MEAN, STD)(torch.from_numpy(images)).numpy()  # what training and evaluation feed
    np.testing.assert_array_equal(normalize(images, *scaled_stats(MEAN, STD)), expected)
    spec = ServingSpec(["a", "b"], 9, MEAN, STD)
    client_images = images.transpose(0, 2, 3, 1)  # what predict and the MLflow model receive: NHWC
    np.testing.assert_array_equal(spec.normalize_images(client_images), expected)
    assert expected[0, 0, 0, 0] == pytest.approx((images[0, 0, 0, 0] - 0.485 * 255) / (0.229 * 255), rel=1e-6)


def test_softmax_numpy_matches_torch():
    logits = np.random.default_rng(1).normal(0, 30, (5, 4)).astype(np.float32)  # large: overflow without the max
    np.testing.assert_allclose(softmax(logits), softmax(torch.from_numpy(logits)).numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(softmax(logits).sum(1), 1.0, rtol=1e-6)


def test_spec_round_trips_through_its_two_files(tmp_path):
    spec = ServingSpec(["cat", "dog", "two words"], 64, MEAN, STD, "bicubic")
    spec.write(tmp_path)
    assert (tmp_path / "labels.txt").read_text() == "cat\ndog\ntwo words\n"
    assert ServingSpec.read(tmp_path) == spec
    ckpt = {"class_names": spec.class_names, "image_size": 64, "mean": MEAN, "std": STD, "interpolation": "bicubic"}
    assert ServingSpec.from_checkpoint(ckpt) == spec
    assert spec.stored_size == 64  # a model written before the crop: squashed to its input size
    cropped = ServingSpec(["a", "b"], 64, MEAN, STD, "bilinear", 73, "crop", ["hflip", "crops"])
    cropped.write(tmp_path)
    assert ServingSpec.read(tmp_path) == cropped and cropped.stored_size == 73
    assert "the shorter side to 73, then the centre 64 px" in (tmp_path / "preprocessing.json").read_text()


def test_the_decoder_knows_the_contracts_resize_modes():
    from imgclf.contract import RESIZE_MODES
    from imgclf.data import images

    assert images.RESIZE_MODES == RESIZE_MODES  # two copies: contract.py imports nothing of imgclf


def test_more_class_names_than_a_classifier_has_are_refused_wherever_they_enter(trained_project, tmp_path):
    """A checkpoint's class names rebuild its head (Linear(features, N): 1.6 GB for AlexNet at 100,000 names) and a
    labels.txt's size every answer: past MAX_CLASSES either is one line, before the network is built or opened."""
    import shutil

    from imgclf.cli import predict
    from imgclf.contract import MAX_CLASSES

    from .conftest import console, serve_client

    names = [f"c{i}" for i in range(MAX_CLASSES + 1)]
    ckpt = torch.load(trained_project / "models/model.pt", weights_only=True)
    torch.save({**ckpt, "class_names": names}, tmp_path / "many.pt")
    folder = tmp_path / "export"
    shutil.copytree(trained_project / "models/export", folder)
    (folder / "run.json").unlink()  # made by hand: no record of its files, so the check under test refuses it
    (folder / "labels.txt").write_text("".join(f"{name}\n" for name in names))
    image = next((trained_project / "data/tiny/images/a").iterdir())
    client = serve_client(trained_project, tmp_path / "cache", [tmp_path])
    for model, source in ((tmp_path / "many.pt", tmp_path / "many.pt"), (folder, folder / "preprocessing.json")):
        said = f"{source}: {MAX_CLASSES + 1:,} class names; a classifier has 2 to {MAX_CLASSES:,}"
        done = console(predict, [str(image), "--model", str(model)], tmp_path)
        assert done.returncode == 1 and done.stderr == f"error: {said}\n", done.stderr
        answer = client.post("/api/model", json={"model": str(model)})
        assert answer.status_code == 400 and answer.json()["error"] == said, answer.text


def test_an_error_repeats_at_most_200_characters_of_a_value_from_a_file(trained_project, tmp_path, caplog):
    """A preprocessing.json whose mean was a 15 MB list gave a 15 MB error line, in serve both its answer and its
    log line; a checkpoint's network name the same."""
    import json
    import logging
    import shutil

    from imgclf.cli import predict

    from .conftest import console, serve_client

    folder = tmp_path / "export"
    shutil.copytree(trained_project / "models/export", folder)
    (folder / "run.json").unlink()  # made by hand: no record of its files, so the check under test refuses it
    spec = json.loads((folder / "preprocessing.json").read_text())
    (folder / "preprocessing.json").write_text(json.dumps({**spec, "mean": [[0.5] * 1000] * 300}))  # 1.5 MB
    ckpt = torch.load(trained_project / "models/model.pt", weights_only=True)
    torch.save({**ckpt, "arch": "vgg" * 300_000}, tmp_path / "named.pt")
    image = next((trained_project / "data/tiny/images/a").iterdir())
    client = serve_client(trained_project, tmp_path / "cache", [tmp_path])
    caplog.set_level(logging.INFO)
    for model, said in ((folder, "mean=[[0.5, 0.5, "), (tmp_path / "named.pt", "named.pt: unknown timm model 'vgg")):
        done = console(predict, [str(image), "--model", str(model)], tmp_path)
        assert done.returncode == 1 and done.stderr.count("\n") == 1 and said in done.stderr
        assert len(done.stderr) < 600, len(done.stderr)
        answer = client.post("/api/model", json={"model": str(model)})
        assert answer.status_code == 400 and said in answer.json()["error"] and len(answer.text) < 700
    logged = [r.getMessage() for r in caplog.records if r.name == "imgclf.deploy.webapp"]
    assert len(logged) == 2 and all(len(line) < 700 for line in logged), [len(line) for line in logged]
