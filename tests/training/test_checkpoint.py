"""Resume refuses to mix: a checkpoint is continued only with the same config, data version and code version."""

import logging

import torch

from imgclf.training.checkpoint import find_resume_checkpoint, fingerprint

CURRENT = fingerprint({"optim.lr": 0.1}, world_size=1, data_version="data-a", code_version="code-a")


def saved(tmp_path, value):
    state = {"model": {}, "optimizer": {}, "epoch": 1, "history": [], "best_epoch": 1, "best_metrics": {}, "rng": {}}
    torch.save({**state, "fingerprint": value, "run_id": "r1"}, tmp_path / "last.pt")
    torch.save({"model": {}, "epoch": 1}, tmp_path / "best.pt")


def test_same_config_data_and_code_resume(tmp_path):
    saved(tmp_path, dict(CURRENT))
    assert find_resume_checkpoint("auto", tmp_path, CURRENT).state["run_id"] == "r1"


def test_changed_data_or_code_starts_afresh_saying_why(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="imgclf")
    for key, words in (
        ("data", "the data changed (data-b -> data-a)"),
        ("code", "the code changed (code-b -> code-a)"),
    ):
        caplog.clear()
        saved(tmp_path, {**CURRENT, key: f"{key}-b"})
        assert find_resume_checkpoint("auto", tmp_path, CURRENT) is None
        (said,) = [r.getMessage() for r in caplog.records]
        # set aside, with its best.pt, where the new run's checkpoints (written to last.pt) cannot replace them
        aside = said.split("moved aside to ")[1].split(",")[0]
        assert said == (
            f"not resuming from {tmp_path / 'last.pt'}: {words}; moved aside to {aside}, starting a new run "
            "(trainer.resume=PATH resumes it)"
        )
        assert torch.load(aside)["fingerprint"][key] == f"{key}-b" and (tmp_path / aside).with_name("best.pt").is_file()
        assert not (tmp_path / "last.pt").exists() and not (tmp_path / "best.pt").exists()
        assert find_resume_checkpoint(aside, tmp_path, CURRENT).state["run_id"] == "r1"  # as the message says
    other = fingerprint({"optim.lr": 0.2}, world_size=1, data_version="data-a", code_version="code-a")
    saved(tmp_path, other)
    assert find_resume_checkpoint("auto", tmp_path, CURRENT) is None
    assert "the config (or process count) changed" in caplog.records[-1].getMessage()
    saved(tmp_path, "0123456789abcdef")  # a checkpoint from before data and code were part of the fingerprint
    assert find_resume_checkpoint("auto", tmp_path, CURRENT) is None
    assert "older imgclf" in caplog.records[-1].getMessage()


def test_process_count_is_part_of_the_config_hash():
    two = fingerprint({"optim.lr": 0.1}, world_size=2, data_version="data-a", code_version="code-a")
    assert two["config"] != CURRENT["config"] and two["data"] == CURRENT["data"]


def test_an_explicit_path_resumes_anyway_with_a_warning(tmp_path, caplog):
    saved(tmp_path, {**CURRENT, "data": "data-b"})
    assert find_resume_checkpoint(str(tmp_path / "last.pt"), tmp_path, CURRENT) is not None
    assert "resuming from" in caplog.text and "although the data changed" in caplog.text


def test_a_model_pt_given_as_resume_is_one_line_and_found_by_auto_is_set_aside(tmp_path):
    import pytest

    from imgclf.errors import BadInput

    torch.save({"model": {}, "class_names": ["a", "b"], "epoch": 3}, tmp_path / "model.pt")  # what train keeps
    with pytest.raises(BadInput, match=f"trainer.resume={tmp_path / 'model.pt'}: not a training checkpoint"):
        find_resume_checkpoint(str(tmp_path / "model.pt"), tmp_path, CURRENT)
    (tmp_path / "model.pt").rename(tmp_path / "last.pt")
    assert find_resume_checkpoint("auto", tmp_path, CURRENT) is None
    assert not (tmp_path / "last.pt").exists() and len(list(tmp_path.glob("set-aside-*/last.pt"))) == 1
