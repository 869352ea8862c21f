"""model.pt read back (imgclf.models.saved): a checkpoint holds every weight of the network it names, in its shape,
or it is one line naming the file and the first weight that does not fit, before that network is built (a 1.5 KB
file named a 6.7-billion-parameter network, built at 27 GB before its weights were found missing). The crafted
files name a network of 86 M weights: built unchecked, each costs 344 MB, not gigabytes."""

import pytest
import torch

from ..conftest import ROOT, TINY_OVERRIDES, console, copy_of, serve_client, stage_main

BIG = "vit_base_patch16_224"


@pytest.fixture(scope="module")
def misfits(trained_project, tmp_path_factory):
    """name -> (a crafted checkpoint, what its refusal says after `{path}: `), from the trained one."""
    folder = tmp_path_factory.mktemp("misfits")
    ckpt = torch.load(trained_project / "models/model.pt", weights_only=True)
    with torch.device("meta"):
        import timm

        shapes = {k: v.shape for k, v in timm.create_model(BIG, num_classes=3).state_dict().items()}
    one = torch.zeros(1)
    state = ckpt["model"]
    big = f"its weights do not fit {BIG} with 3 classes: "
    cases = {
        "names_a_bigger_network": ({"arch": BIG, "model": {}}, big + f"cls_token is missing ({len(shapes)} of its "),
        "views_of_one_number": ({"arch": BIG, "model": {k: one.expand(s) for k, s in shapes.items()}},
                                big + "they take 343,203,852 bytes, and the file holds 4 "),
        "meta_tensors": ({"arch": BIG, "model": {k: torch.empty(s, device="meta") for k, s in shapes.items()}},
                         "its model is not a state dict of tensors held in the file"),
        "a_shape_that_differs": ({"model": {**state, "fc.weight": state["fc.weight"][:2]}},
                                 "its weights do not fit test_resnet with 3 classes: fc.weight is (2, 96) where the "
                                 "network's is (3, 96)"),
        "a_weight_it_has_not": ({"model": {**state, "fc.extra": one}}, "fc.extra is no weight of that network"),
    }  # fmt: skip
    made = {}
    for name, (changes, says) in cases.items():
        torch.save({**ckpt, "source": "timm", **changes}, folder / f"{name}.pt")
        made[name] = (folder / f"{name}.pt", says)
    return made


def test_predict_and_serve_refuse_a_checkpoint_whose_weights_do_not_fit_its_network(trained_project, misfits, tmp_path):
    from imgclf.cli import predict

    image = next((trained_project / "data/tiny/images/a").iterdir())
    client = serve_client(trained_project, tmp_path / "cache", [next(iter(misfits.values()))[0].parent])
    for name, (path, says) in misfits.items():
        done = console(predict, [str(image), "--model", str(path)], tmp_path)
        assert done.returncode == 1 and done.stderr.count("\n") == 1, (name, done.stderr[-3000:])
        assert done.stderr.startswith(f"error: {path}: ") and says in done.stderr, (name, done.stderr)
        answer = client.post("/api/model", json={"model": str(path)})
        assert answer.status_code == 400 and says in answer.json()["error"], (name, answer.text[-3000:])
    assert client.get("/api/model").json()["model"] == str(trained_project / "models/export")  # still served


def test_a_stage_after_train_refuses_a_checkpoint_that_does_not_fit_in_one_line(trained_project, misfits, tmp_path):
    project = copy_of(trained_project, tmp_path / "project")
    path, says = misfits["a_shape_that_differs"]
    (project / "models/model.pt").unlink()
    (project / "models/model.pt").write_bytes(path.read_bytes())
    argv = ["--config-dir", str(ROOT / "conf"), *TINY_OVERRIDES, f"tracking.uri=sqlite:///{project}/mlflow.db"]
    done = stage_main("evaluate", argv, project)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr[-3000:]
    assert done.stderr.startswith(f"error: models/model.pt: {says}"), done.stderr


def test_a_checkpoint_that_fits_rebuilds_its_weights_and_draws_nothing_from_the_seeded_generator(trained_project):
    """The network is checked on the meta device first, then built as before: the same weights, the same init
    (the RNG is forked around the check), so evaluate and export compute what they did."""
    from imgclf.models.saved import load_checkpoint, model_from_checkpoint

    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    ckpt = load_checkpoint(trained_project / "models/model.pt")
    assert torch.equal(torch.rand(4), expected)
    rebuilt = model_from_checkpoint(ckpt).state_dict()
    assert rebuilt.keys() == ckpt["model"].keys()
    assert all(torch.equal(rebuilt[k], v) for k, v in ckpt["model"].items())


def test_a_checkpoint_whose_config_is_no_mapping_is_read_as_one_without_config(trained_project, tmp_path):
    """The config only tells a stage whether its own `model` section differs: a list there was an AttributeError."""
    from imgclf.cli import predict

    ckpt = torch.load(trained_project / "models/model.pt", weights_only=True)
    torch.save({**ckpt, "config": ["not", "a", "mapping"]}, tmp_path / "listed.pt")
    image = next((trained_project / "data/tiny/images/a").iterdir())
    done = console(predict, [str(image), "--model", str(tmp_path / "listed.pt")], tmp_path)
    assert done.returncode == 0 and "1. " in done.stdout, done.stderr[-2000:]
