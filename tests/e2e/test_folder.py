"""User story 1 through DVC: a folder of class sub-folders outside the repo, tracked as a dependency."""

import json
import shutil

import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from imgclf.data.split import data_version
from imgclf.models.build import build_model

from .conftest import STAGES, changed_stages, sh
from .pages import run_page


@pytest.mark.slow
def test_digits_lab_workflow_on_a_folder(repo, env, tmp_path):
    """User story 1, as docs/tutorials/digits-lab.md tells it: a folder of class sub-folders, a few epochs, through
    `dvc exp run -S` (the tiny network: AlexNet itself is trained by the recipe and weights tests), the curves, one
    image and many, then the folder changes and DVC notices."""
    from ..conftest import make_class_folders

    folder = make_class_folders(tmp_path / "train_small", {"0": 20, "1": 20, "2": 20})
    test_small = tmp_path / "test_small"
    for name in ("0", "2"):
        (test_small / name).mkdir(parents=True)
    shutil.copy(folder / "2" / "005.png", test_small / "2" / "img_4415.png")
    shutil.copy(folder / "0" / "005.png", test_small / "0" / "img_1.png")
    # the tutorial's commands, as its page lists them (on this folder, the tiny network, two epochs)
    out = run_page(
        "tutorials/digits-lab.md",
        repo,
        env,
        paths={"/data/train_small": str(folder), "/data/test_small": str(test_small)},
        skip={},
        replaced=("model", "trainer.epochs"),
        extra=("data.split.sample_per_class=2",),
    )
    run = next(text for command, text in out.items() if command.startswith("dvc exp run"))
    for stage in STAGES:
        assert f"Running stage '{stage}'" in run
    one = out["imgclf predict /data/test_small/2/img_4415.png"]
    assert str(test_small / "2" / "img_4415.png") in one and len(one.splitlines()) >= 4  # the path, then the top 3
    assert "Data and pipelines are up to date" in out["dvc status"] and "Running stage" not in out["dvc repro"]
    rows = (repo / "predictions.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("path")  # Classify Many: the header, then both images
    assert (repo / "data/folder/split/labels.txt").read_text().split() == ["0", "1", "2"]
    metrics = json.loads((repo / "reports/evaluate/metrics.json").read_text())
    assert {"test/precision/0", "test/recall/2"} <= set(metrics)
    run = MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow.db").get_run(
        json.loads((repo / "models/run.json").read_text())["run_id"]
    )
    assert run.data.params["data.path"] == str(folder) and run.data.tags["imgclf.dataset"] == "folder"

    # the folder is outside the repo, yet a dependency: DVC notices an image edited, added or removed there
    assert changed_stages(repo, env) == set()
    edited = folder / "1" / "000.png"
    original = edited.read_bytes()
    Image.new("RGB", (8, 8), (0, 255, 0)).save(edited)  # same name, new pixels
    assert changed_stages(repo, env) == {"fetch"}
    edited.write_bytes(original)
    assert changed_stages(repo, env) == set()
    (folder / "2" / "000.png").rename(folder / "1" / "moved.png")  # relabelled: moved between classes
    assert changed_stages(repo, env) == {"fetch"}
    out = sh(["dvc", "repro", "split"], repo, env)
    assert "Running stage 'fetch'" in out and "Running stage 'split'" in out
    assert (repo / "data/folder/images/1/moved.png").is_file() and not (repo / "data/folder/images/2/000.png").exists()
    assert data_version(repo / "data/folder/split") != run.data.tags["imgclf.data_version"]  # content, not names
    assert changed_stages(repo, env) == {
        "train",
        "evaluate",
        "label_issues",
        "export",
        "optimise",
    }  # the next model learns it

    # a weights file named in the config is a dependency of train
    weights = tmp_path / "start.pt"
    torch.save(build_model("test_resnet", 3, source="timm").state_dict(), weights)
    params = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(
        params.replace(
            "weights: null\n  inputs:\n  - conf/no_input.md", f"weights: {weights}\n  inputs:\n  - {weights}"
        )
    )
    assert changed_stages(repo, env) == {"train", "evaluate", "label_issues", "export", "optimise"}
    sh(["dvc", "commit", "--force", "train"], repo, env)  # record train's deps as they are now, without training
    assert changed_stages(repo, env) == {"evaluate", "label_issues", "export", "optimise"}
    torch.save({k: v + 1 for k, v in torch.load(weights).items()}, weights)  # the weights file's content changes
    assert changed_stages(repo, env) == {"train", "evaluate", "label_issues", "export", "optimise"}
