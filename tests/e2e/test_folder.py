"""User story 1 through DVC: a folder of class sub-folders outside the repo, tracked as a dependency."""

import json

import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from imgclf.data.split import data_version
from imgclf.models.build import build_model

from .conftest import STAGES, TINY, changed_stages, sh


@pytest.mark.slow
def test_digits_lab_workflow_on_a_folder(repo, env, tmp_path):
    """User story 1: a folder of class sub-folders, a few epochs, through `dvc exp run -S` (the tiny network:
    AlexNet itself is trained by the recipe and weights tests)."""
    from ..conftest import make_class_folders

    folder = make_class_folders(tmp_path / "train_small", {"0": 20, "1": 20, "2": 20})
    folder_data = ("data=folder", f"data.path={folder}", "data.split.sample_per_class=2")
    out = sh(["dvc", "exp", "run", *TINY, *(arg for o in folder_data for arg in ("-S", o))], repo, env)
    for stage in STAGES:
        assert f"Running stage '{stage}'" in out
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
    assert changed_stages(repo, env) == {"train", "evaluate", "export", "optimise"}  # the next model learns it

    # a weights file named in the config is a dependency of train
    weights = tmp_path / "start.pt"
    torch.save(build_model("test_resnet", 3, source="timm").state_dict(), weights)
    params = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(
        params.replace(
            "weights: null\n  inputs:\n  - conf/no_input.md", f"weights: {weights}\n  inputs:\n  - {weights}"
        )
    )
    assert changed_stages(repo, env) == {"train", "evaluate", "export", "optimise"}
    sh(["dvc", "commit", "--force", "train"], repo, env)  # record train's deps as they are now, without training
    assert changed_stages(repo, env) == {"evaluate", "export", "optimise"}
    torch.save({k: v + 1 for k, v in torch.load(weights).items()}, weights)  # the weights file's content changes
    assert changed_stages(repo, env) == {"train", "evaluate", "export", "optimise"}
