"""Mislabelled images in a DIGITS-style folder, end to end: the pipeline's label_issues stage finds them, `imgclf
relabel --accept` writes the fixes to relabel/folder.csv, and `dvc repro` reruns split and what follows on the fixed
labels."""

import csv
import json
import subprocess

import pytest

from ..conftest import TINY_MODEL, make_class_folders
from .conftest import changed_stages, sh

MOVED = 3  # images of class 0 filed under class 2


@pytest.mark.slow
def test_misfiled_images_are_found_fixed_and_trained_on_again(repo, env, tmp_path):
    folder = make_class_folders(tmp_path / "train_small", {"0": 20, "1": 20, "2": 20})
    for i in range(MOVED):
        (folder / "0" / f"{i:03d}.png").rename(folder / "2" / f"from_0_{i}.png")
    sets = ["data=folder", f"data.path={folder}", "trainer.epochs=6", *TINY_MODEL]
    sh(["dvc", "exp", "run", *[a for s in sets for a in ("-S", s)], "label_issues"], repo, env)  # not export, optimise
    with open(repo / "reports/label_issues/label_issues.csv", newline="") as f:
        issues = list(csv.DictReader(f))
    top = {r["path"]: r["suggested_label"] for r in issues[:MOVED]}
    assert top == {f"2/from_0_{i}.png": "0" for i in range(MOVED)}, issues[:6]  # the likeliest issues, fixed right
    before = json.loads((repo / "reports/label_issues/metrics.json").read_text())
    assert (repo / "reports/label_issues/top_issues.png").stat().st_size > 0

    out = sh(["imgclf", "relabel", "--accept", f"1-{MOVED}"], repo, env)
    assert f"wrote {MOVED} fixes to relabel/folder.csv" in out
    assert "split" in changed_stages(repo, env)  # relabel/ is split's dependency; the rest follows its outputs
    out = sh(["dvc", "repro", "label_issues"], repo, env)
    for stage in ("split", "train", "label_issues"):
        assert f"Running stage '{stage}'" in out
    rows = [r for name in ("train", "val", "test") for r in csv.reader(open(repo / f"data/folder/split/{name}.csv"))]
    assert {(p, label) for p, label in rows if p.startswith("2/from_0_")} == {(p, "0") for p in top}
    after = json.loads((repo / "reports/label_issues/metrics.json").read_text())
    assert after["label_issues/count"] < before["label_issues/count"]
    assert after["label_issues/health"] > before["label_issues/health"]

    refused = subprocess.run(
        ["imgclf", "relabel", "2/from_0_0.png=7"], cwd=repo, env=env, capture_output=True, text=True
    )
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1 and "not a class" in refused.stderr
