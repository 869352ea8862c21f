"""Stage errors: a UserError is one line and exit 1; anything else is a bug and keeps its traceback."""

import pytest

from imgclf.data.download import ChecksumError, DownloadError
from imgclf.errors import AccessDenied, BadInput, MissingInput, UserError
from imgclf.models.weights import WeightsNotFound
from imgclf.stages._app import one_line_errors
from imgclf.training.engine import NonFiniteLoss


def failing(exc):
    def task(cfg):
        raise exc

    return one_line_errors(task)


@pytest.mark.parametrize(
    "exc",
    [
        BadInput("trainer.epochs must be a positive integer; got 0"),
        MissingInput("models/model.pt not found"),
        AccessDenied("Kaggle refused (403)"),
        WeightsNotFound("no weights"),
        DownloadError("no mirror"),
        ChecksumError("md5 differs"),
        NonFiniteLoss("loss is nan"),
    ],
)
def test_user_errors_are_one_line_and_exit_1(exc, capsys, monkeypatch):
    monkeypatch.delenv("IMGCLF_DEBUG", raising=False)
    assert isinstance(exc, UserError)
    with pytest.raises(SystemExit) as exit_:
        failing(exc)(None)
    assert exit_.value.code == 1
    assert capsys.readouterr().err == f"error: {exc}\n"


@pytest.mark.parametrize("exc", [ValueError("a library bug"), KeyError("label_names"), RuntimeError("boom")])
def test_other_errors_keep_their_traceback(exc, monkeypatch):
    monkeypatch.delenv("IMGCLF_DEBUG", raising=False)
    with pytest.raises(type(exc)):
        failing(exc)(None)


def test_debug_keeps_the_traceback_of_user_errors_too(monkeypatch):
    monkeypatch.setenv("IMGCLF_DEBUG", "1")
    with pytest.raises(BadInput):
        failing(BadInput("bad"))(None)
