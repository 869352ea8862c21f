"""fast.ai's learning-rate finder: an exponential sweep, a suggested rate, the model and optimizer given back."""

import csv
import json

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from imgclf.data.datasets import build_loader
from imgclf.errors import BadInput
from imgclf.stages.lr_find import find_lr
from imgclf.training.lr_find import lr_find, suggest

from .test_engine import tiny_data, tiny_model, tiny_trainer


def test_sweep_is_exponential_and_leaves_model_and_optimizer_untouched():
    torch.manual_seed(0)
    model = tiny_model()
    opt = torch.optim.AdamW(
        [{"params": model[1].parameters(), "lr": 1e-4}, {"params": model[3].parameters(), "lr": 1e-3}]
    )
    trainer = tiny_trainer(model, opt)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = lr_find(
        trainer,
        build_loader(tiny_data(), 8, True, torch.Generator().manual_seed(0)),
        start_lr=1e-5,
        end_lr=100.0,
        num_batches=30,
    )
    assert 3 <= len(result.lrs) <= 30 and result.lrs[0] == pytest.approx(1e-5)
    ratios = np.diff(np.log(result.lrs))
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-6)  # one constant factor per batch
    assert result.lrs[0] <= result.suggestion <= result.lrs[-1]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [g["lr"] for g in opt.param_groups] == [1e-4, 1e-3] and not opt.state  # no moments kept either
    with pytest.raises(BadInput, match="0 < start_lr < end_lr"):
        lr_find(trainer, [], start_lr=1.0, end_lr=0.1)


def test_suggestion_is_the_steepest_fall_before_the_minimum():
    lrs = list(np.logspace(-6, 0, 7))
    losses = [2.0, 1.99, 1.9, 1.2, 1.0, 0.95, 3.0]  # falls fastest between 1e-4 and 1e-3, diverges at 1
    assert suggest(lrs, losses) == pytest.approx(1e-3)


def test_imgclf_lr_find_writes_the_plot_and_an_mlflow_run(tiny_cfg, tiny_project):
    cfg = tiny_cfg("lr_find.num_batches=12", "lr_find.end_lr=1.0")
    suggested = find_lr(cfg)
    out = tiny_project / "reports/lr_find"
    rows = list(csv.DictReader(open(out / "lr_find.csv")))
    assert 3 <= len(rows) <= 12 and float(rows[0]["lr"]) == pytest.approx(1e-7)
    assert json.loads((out / "suggestion.json").read_text())["lr_find/suggested_lr"] == suggested
    assert (out / "lr_find.png").stat().st_size > 1000
    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    runs = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    assert [r.data.tags["imgclf.role"] for r in runs] == ["lr-find"]
    assert runs[0].data.metrics["lr_find/suggested_lr"] == suggested
    assert not (tiny_project / "models").exists()  # nothing trained for keeps


def test_a_finder_stopped_while_writing_leaves_the_last_runs_three_files_together(tiny_cfg, tiny_project, monkeypatch):
    """lr_find.csv, lr_find.png and suggestion.json were three writes: stopped after the first (SIGTERM, a full
    disk), the new CSV lay beside the last run's plot and suggestion."""
    from imgclf.training import lr_find as finder

    out = tiny_project / "reports/lr_find"
    out.mkdir(parents=True)
    last = {"lr_find.csv": "lr,loss\n1e-07,2.3\n", "lr_find.png": "the last plot", "suggestion.json": "{}"}
    for name, text in last.items():
        (out / name).write_text(text)
    found = finder.LRFind(lrs=[1e-7, 1e-6, 1e-5, 1e-4], losses=[2.3, 2.0, 1.5, 9.0], suggestion=1e-5)
    monkeypatch.setattr("imgclf.stages.lr_find.lr_find", lambda *a, **k: found)

    def stopped(*args):
        raise KeyboardInterrupt  # what the stage's SIGTERM handler raises

    monkeypatch.setattr("imgclf.stages.lr_find.plot_lr_find", stopped)
    with pytest.raises(KeyboardInterrupt):
        find_lr(tiny_cfg())
    assert {p.name: p.read_text() for p in out.iterdir()} == last


def test_the_plot_leaves_out_the_exploding_tail_as_fast_ai_does(tmp_path):
    from imgclf.plots import lr_find_view, plot_lr_find

    lrs = [1e-7 * 10**i for i in range(9)] + [10.0]
    losses = [2.3, 2.3, 2.2, 1.8, 1.0, 0.6, 0.5, 0.7, 1.9, 4.5e10]  # the finder stops after the loss explodes
    xs, ys, (bottom, top) = lr_find_view(lrs, losses, skip_end=1)
    assert ys == losses[:-1] and xs == lrs[:-1]
    assert bottom < 0.5 and 2.3 <= top < 2.5  # the curve fills the plot: not a flat line under 4.5e10
    assert lr_find_view(lrs, [*losses[:-1], float("nan")], skip_end=0)[1] == losses[:-1]  # a NaN is not drawn
    _, _, (_, capped) = lr_find_view(lrs, [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.9, 0.95], skip_end=1)
    assert capped < 0.45  # at most 4 times the lowest loss, where the finder stops
    plot_lr_find(lrs, losses, 1e-3, tmp_path / "lr_find.png")
    assert (tmp_path / "lr_find.png").stat().st_size > 0


def test_a_sweep_with_no_rate_to_suggest_writes_null_never_nan(tiny_cfg, tiny_project, monkeypatch, capsys):
    """Two batches suggested NaN, written into suggestion.json (not JSON); 1e-300..1e300 overflowed to inf."""
    from imgclf.options import Options
    from imgclf.training import lr_find as finder

    with pytest.raises(BadInput, match=r"lr_find.num_batches=2 is not valid: an integer from 3 to 100000"):
        Options.from_config(tiny_cfg("lr_find.num_batches=2"))
    lrs = [finder._rate(1e-300, 1e300, i / 9) for i in range(10)]
    assert all(np.isfinite(lrs)) and lrs[0] == pytest.approx(1e-300) and lrs[-1] == pytest.approx(1e300)
    assert np.isnan(suggest([1e-7, 1e-6, 1e-5], [float("inf")] * 3))
    diverged = finder.LRFind(lrs=[1e-7, 1e-6], losses=[2.0, float("inf")], suggestion=float("nan"))
    monkeypatch.setattr("imgclf.stages.lr_find.lr_find", lambda *a, **k: diverged)
    assert np.isnan(find_lr(tiny_cfg()))
    said = json.loads((tiny_project / "reports/lr_find/suggestion.json").read_text(), parse_constant=pytest.fail)
    assert said["lr_find/suggested_lr"] is None and said["batches"] == 2
    assert capsys.readouterr().out.startswith("no learning rate could be suggested: the loss diverged after 2 batches")


@pytest.mark.parametrize(
    "override,said",
    [
        ("lr_find.end_lr=1e308", "lr_find.end_lr=1e+308 is not valid: a number from 1e-10 to 100"),
        ("lr_find.start_lr=1e-320", "lr_find.start_lr=1e-320 is not valid: a number from 1e-10 to 100"),
        ("lr_find.start_lr=50", "lr_find.start_lr=50 is not below lr_find.end_lr=10: give lr_find.start_lr <"),
    ],
)
def test_a_range_no_network_trains_in_is_one_line_before_the_finder_starts(override, said, tmp_path):
    """`imgclf lr-find lr_find.end_lr=1e308` was accepted: its batches spread over 315 powers of ten, a few on the
    rates a network learns at."""
    import shutil

    from ..conftest import ROOT, stage_main

    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    done = stage_main("lr_find", [override], tmp_path)
    assert done.returncode == 1 and done.stderr.startswith(f"error: {said}") and done.stderr.count("\n") == 1, done
    assert [p.name for p in tmp_path.iterdir()] == ["conf"]  # no run folder, no report, no store
