"""A checkpoint that carries a pickle payload (code that runs when it is unpickled) is refused, in one line, at
every door a checkpoint comes in by: training's model.weights, trainer.resume, evaluate, export, imgclf predict."""

import os

import pytest
import torch

from imgclf.errors import BadInput

MARKER = "imgclf-payload-ran"


class Payload:
    """Unpickling this runs `touch <marker>`: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def payload(tiny_project):
    marker = tiny_project / MARKER
    path = tiny_project / "payload.pt"
    torch.save({"model": {"fc.weight": torch.zeros(3, 8)}, "epoch": 1, "extra": Payload(marker)}, path)
    return path, marker


def refused(call, path, marker):
    with pytest.raises(BadInput) as err:
        call()
    message = str(err.value)
    assert f"{path.name}: refused" in message and "could run code" in message and "\n" not in message
    assert not marker.exists()  # the payload never ran


def test_every_entry_point_refuses_a_pickle_payload(tiny_project, tiny_cfg, payload):
    from imgclf.stages.evaluate import evaluate
    from imgclf.stages.export import export
    from imgclf.stages.train import train

    path, marker = payload
    refused(lambda: train(tiny_cfg(f"model.weights={path}")), path, marker)
    refused(lambda: train(tiny_cfg(f"trainer.resume={path}")), path, marker)
    (tiny_project / "models").mkdir(exist_ok=True)
    model_file = tiny_project / "models" / "model.pt"
    model_file.write_bytes(path.read_bytes())
    refused(lambda: evaluate(tiny_cfg()), model_file, marker)
    refused(lambda: export(tiny_cfg()), model_file, marker)

    from imgclf.deploy.predict import Classifier

    refused(lambda: Classifier(str(path)), path, marker)
    # the same file loaded the unsafe way would have run it: the test's payload is real
    torch.load(path, weights_only=False)
    assert marker.exists()
