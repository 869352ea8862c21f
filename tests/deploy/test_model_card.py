"""Which run's model a folder holds: export and optimise write run.json beside the model, so a run id loads that
run's model (not whatever models/export holds since) and a folder's card names the run that trained its model."""

import hashlib
import json

from mlflow.tracking import MlflowClient

from imgclf.deploy.model_card import load_model
from imgclf.tracking.queries import served_models

from ..conftest import copy_of


def test_a_run_id_loads_its_own_model_after_the_workspace_export_was_replaced(trained_project, tmp_path):
    project = copy_of(trained_project, tmp_path / "project")
    uri = f"sqlite:///{project}/mlflow.db"
    run_id = json.loads((project / "models/run.json").read_text())["run_id"]
    export = project / "models/export"
    digest = hashlib.sha256((project / "models/model.pt").read_bytes()).hexdigest()  # its checkpoint
    record = json.loads((export / "run.json").read_text())
    assert (record["run_id"], record["checkpoint_sha256"]) == (run_id, digest) and "model.onnx" in record["files"]
    MlflowClient(tracking_uri=uri).set_tag(run_id, "imgclf.export_dir", str(export))  # the copy's, in the copy's store
    assert load_model(run_id, uri, tmp_path / "cache").run_id == run_id
    assert not (tmp_path / "cache" / run_id / "export").exists()  # the folder on disk is that run's: read in place

    # the workspace's export replaced by a later run's (dvc checkout, another experiment, an ad-hoc export)
    (export / "run.json").write_text(json.dumps({"run_id": "f" * 32}))
    model = load_model(run_id, uri, tmp_path / "cache2")
    assert model.run_id == run_id and (tmp_path / "cache2" / run_id / "export" / "model.onnx").is_file()  # logged copy
    assert load_model(str(export), uri, tmp_path / "cache3").run_id == "f" * 32  # the folder's card: its own run
    assert run_id not in [r["ref"] for r in served_models(uri, "test")["runs"]]  # not offered as on this disk


def test_runs_best_names_the_workspace_files_only_while_they_hold_the_runs_model(trained_project, tmp_path):
    from imgclf.tracking.compare import best_report, list_runs

    project = copy_of(trained_project, tmp_path / "project")
    uri = f"sqlite:///{project}/mlflow.db"
    run_id = json.loads((project / "models/run.json").read_text())["run_id"]
    client = MlflowClient(tracking_uri=uri)  # the copy's store names the copy's files
    client.set_tag(run_id, "imgclf.export_dir", str(project / "models/export"))
    client.set_tag(run_id, "imgclf.checkpoint", str(project / "models/model.pt"))
    (row,) = [r for r in list_runs(uri, "test") if r.id == run_id]
    shown = best_report(uri, row, "test/acc")
    assert f"export: {project / 'models/export'}" in shown and f"checkpoint: {project / 'models/model.pt'}" in shown
    for record in (project / "models/run.json", project / "models/export/run.json"):  # a later train and export
        record.write_text(json.dumps({"run_id": "f" * 32}))
    shown = best_report(uri, row, "test/acc")
    assert not [line for line in shown if line.startswith(("export:", "checkpoint:"))]
    assert any(line.startswith("checkpoint_artifact: ") for line in shown)  # the run's own copy is still named


def test_a_registered_model_by_number_latest_or_alias_names_its_run(trained_project, tmp_path):
    project = copy_of(trained_project, tmp_path / "project")
    uri = f"sqlite:///{project}/mlflow.db"
    run_id = json.loads((project / "models/run.json").read_text())["run_id"]
    MlflowClient(tracking_uri=uri).set_registered_model_alias("imgclf-tiny", "champion", "1")
    for i, ref in enumerate(("models:/imgclf-tiny/1", "models:/imgclf-tiny/latest", "models:/imgclf-tiny@champion")):
        model = load_model(ref, uri, tmp_path / f"cache{i}")
        assert model.run_id == run_id and model.card["run_id"] == run_id, ref  # its card: metrics and pictures


def test_a_registered_name_with_quotes_loads_its_own_latest_version_and_selects_no_others(trained_project, tmp_path):
    """`models:/NAME/latest` searched for `name = 'NAME'`: a name holding a quote broke the filter (`it's`) or
    changed it (`imgclf-tiny' AND name != '` selected imgclf-tiny's versions). Through the page's model switch and
    `imgclf serve --model`."""
    import signal

    from imgclf.cli._serve import main
    from imgclf.tracking.server import free_port

    from ..conftest import console, serve_client

    project = copy_of(trained_project, tmp_path / "project")
    uri = f"sqlite:///{project}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    first = client.get_model_version("imgclf-tiny", "1")
    other = client.create_run(client.get_run(first.run_id).info.experiment_id).info.run_id  # tells versions apart
    import mlflow

    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)  # MLflow finds a version's logged model (models:/m-...) in the default store
    try:
        for name, run in (
            ("it's", first.run_id),
            ("x", other),
            ("x' AND name != '", first.run_id),
            ("both'\"\\", other),
        ):
            client.create_registered_model(name)
            client.create_model_version(name, first.source, run)
    finally:
        mlflow.set_tracking_uri(before)
    page = serve_client(project, tmp_path / "cache", [project])
    for name, run in (("it's", first.run_id), ("x' AND name != '", first.run_id), ("both'\"\\", other)):
        answer = page.post("/api/model", json={"model": f"models:/{name}/latest"})
        assert answer.status_code == 200 and answer.json()["run_id"] == run, (name, answer.json())
    for name in ("imgclf-tiny' AND name != '", "x' OR name != '", 'x" AND name != "'):  # no model has these names
        answer = page.post("/api/model", json={"model": f"models:/{name}/latest"})
        assert answer.status_code == 404 and answer.json()["error"] == f"no versions of registered model {name!r}"

    handler = signal.getsignal(signal.SIGTERM)  # serve's own, set as it starts loading
    try:
        ref = "models:/imgclf-tiny' AND name != '/latest"
        said = console(main, ["--model", ref, "--uri", uri, "--port", str(free_port())], project)
    finally:
        signal.signal(signal.SIGTERM, handler)
    assert (
        said.returncode == 1
        and said.stderr == "error: no versions of registered model \"imgclf-tiny' AND name != '\"\n"
    )
