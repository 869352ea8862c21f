"""The .pt2 program is data, never code: every way torch.export.load could run code from the file is refused, in
one line, by `imgclf predict` and by `imgclf serve`'s model switch, and the payloads are real (loading the same
files the unsafe way runs them)."""

import contextlib
import io
import json
import os
import shutil
import subprocess
import zipfile

import pytest
import torch

from ..conftest import BIN, console, serve_client

# how each crafted file runs `touch MARKER`, and whether torch.export.load(...).module() alone runs it
KINDS = ("pickled_weight", "pickled_sample_inputs", "guard_code", "shape_expression", "node_target", "aoti_library",
         "nul_in_a_name", "power_tower", "compressed")  # fmt: skip
RUNS_ON_LOAD = ("pickled_weight", "pickled_sample_inputs", "guard_code", "shape_expression", "nul_in_a_name")


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _pickled(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def craft(source, dest, kind, marker):
    """A copy of the exported program `source` with one hostile change of `kind`, written to `dest`."""
    command = f"touch {marker}"

    def edit(name, data):
        if kind == "pickled_weight" and name.endswith("model_weights_config.json"):
            config = json.loads(data)
            next(iter(config["config"].values()))["use_pickle"] = True
            return json.dumps(config).encode()
        if kind == "pickled_weight" and name.endswith("data/weights/weight_0"):
            return _pickled(Payload(marker))
        if kind == "pickled_sample_inputs" and name.endswith("data/sample_inputs/model.pt"):
            return _pickled((Payload(marker),))
        if kind == "power_tower" and name.endswith("models/model.json"):  # sympy computes it: hours, or no memory
            text = data.decode()
            first = text.index("Symbol(")
            return (text[:first] + "9**9**9**9 + " + text[first:]).encode()
        if kind in ("guard_code", "node_target", "shape_expression", "nul_in_a_name") and name.endswith(
            "models/model.json"
        ):
            program = json.loads(data)
            if kind == "guard_code":
                program["guards_code"] = [f"__import__('os').system('{command}')"]
            elif kind == "node_target":
                program["graph_module"]["graph"]["nodes"][0]["target"] = "torch.serialization.os.system"
            else:
                text = json.dumps(program)
                first = text.index("Symbol(")
                text = text[:first] + f"__import__('os').system('{command}') or " + text[first:]
                return text.encode()
            return json.dumps(program).encode()
        return data

    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(dest, "w") as zout:
        root = zin.namelist()[0].split("/", 1)[0]
        graph = zin.read(f"{root}/models/model.json")  # before writestr: it moves the shared ZipInfo's offsets
        for info in zin.infolist():
            zout.writestr(info, edit(info.filename, zin.read(info.filename)))
        if kind == "aoti_library":
            zout.writestr(f"{root}/data/aotinductor/model/model.so", b"\x7fELF")
        if kind == "compressed":  # a name torch allows, deflated: 10 MB of zeros in 10 KB (a bomb, in small)
            zout.writestr(f"{root}/extra/pad", b"\0" * 10_000_000, compress_type=zipfile.ZIP_DEFLATED)
        if kind == "nul_in_a_name":  # the clean graph again, last, under a name renamed below
            zout.writestr(f"{root}/models/model.jsonXzz", graph)
    if kind == "nul_in_a_name":
        # Python's zipfile cuts the name at the NUL and reads this last, clean copy as models/model.json; torch's
        # reader matches whole names and reads the first, hostile one: what a checker reading with zipfile sees
        # is not what torch loads
        data = dest.read_bytes()
        dest.write_bytes(data.replace(b"models/model.jsonXzz", b"models/model.json\x00zz"))
    return dest


@pytest.fixture
def crafted(trained_project, tmp_path):
    """A model folder per kind (the crafted model.pt2 beside the real labels.txt and preprocessing.json)."""
    export = trained_project / "models/export"
    folders = {}
    for kind in KINDS:
        folder = tmp_path / "models" / kind
        folder.mkdir(parents=True)
        for name in ("labels.txt", "preprocessing.json"):
            shutil.copy(export / name, folder / name)
        craft(export / "model.pt2", folder / "model.pt2", kind, tmp_path / f"ran-{kind}")
        folders[kind] = folder
    return folders


def test_predict_refuses_every_crafted_program_in_one_line(trained_project, crafted, tmp_path, project_env):
    image = next((trained_project / "data/tiny/images/a").iterdir())
    from imgclf.cli import predict

    for kind, folder in crafted.items():
        args = [str(image), "--model", str(folder / "model.pt2")]
        if kind == KINDS[0]:  # the installed script once, then its function in this process (seconds of imports)
            cmd = [str(BIN / "imgclf"), "predict", *args]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=project_env)
        else:
            done = console(predict, args, tmp_path)
        assert done.returncode == 1, (kind, done.stderr)
        assert done.stderr.count("\n") == 1 and done.stderr.startswith(f"error: {folder / 'model.pt2'}: refused: ")
        assert not (tmp_path / f"ran-{kind}").exists(), kind
    # the exported program itself still loads and agrees with the ONNX model
    from imgclf.deploy.predict import Classifier

    export = trained_project / "models/export"
    ours, onnx = Classifier(export / "model.pt2").classify([image]), Classifier(export).classify([image])
    assert ours[0].probs == pytest.approx(onnx[0].probs, abs=1e-4)


def test_the_payloads_are_real(crafted, tmp_path):
    for kind in RUNS_ON_LOAD:  # what torch.export.load does with them: the marker appears
        with contextlib.suppress(Exception):  # torch may notice something wrong after the payload ran
            torch.export.load(crafted[kind] / "model.pt2").module()(torch.zeros(2, 3, 32, 32))
        assert (tmp_path / f"ran-{kind}").exists(), kind


def test_serve_refuses_to_switch_to_a_crafted_program(trained_project, crafted, tmp_path):
    client = serve_client(trained_project, tmp_path / "cache", [tmp_path / "models"], max_upload_mb=5)
    for kind, folder in crafted.items():
        answer = client.post("/api/model", json={"model": str(folder / "model.pt2")})
        assert answer.status_code == 400, (kind, answer.text)
        assert answer.json()["error"].startswith(f"{folder / 'model.pt2'}: refused: ")
        assert not (tmp_path / f"ran-{kind}").exists(), kind
    # sent as text/plain (what any web page may send cross-site without asking): refused before it is read
    answer = client.post("/api/model", content=json.dumps({"model": str(crafted["guard_code"])}))
    assert answer.status_code == 415
    assert client.get("/api/model").json()["model"] == str(trained_project / "models/export")  # unchanged


def test_a_program_that_takes_one_image_only_is_refused_when_loaded(trained_project, tmp_path):
    from imgclf.deploy.predict import Classifier
    from imgclf.errors import BadInput

    export = trained_project / "models/export"
    folder = tmp_path / "static"
    shutil.copytree(export, folder)
    (folder / "run.json").unlink()  # made by hand: no record of its files, so the program's own check refuses it

    def one_image(name, data):
        if name.endswith("models/model.json"):
            program = json.loads(data)
            program["graph_module"]["graph"]["tensor_values"]["x"]["sizes"][0] = {"as_int": 1}
            return json.dumps(program).encode()
        return data

    with zipfile.ZipFile(export / "model.pt2") as zin, zipfile.ZipFile(folder / "model.pt2", "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, one_image(info.filename, zin.read(info.filename)))
    with pytest.raises(BadInput, match="does not take a batch of 3 x 32 x 32 images"):
        Classifier(folder / "model.pt2")  # not at the first batch of two a page sends


def test_the_exported_files_carry_no_image_and_name_no_folder_of_the_builder(trained_project):
    """torch keeps a program's example inputs and each graph node's source location (absolute paths into the
    builder's environment and clone). Export traces on blank images and drops the locations, so a shipped model
    carries none of the user's images, names no folder of the machine that built it, and its bytes do not depend on
    where the project was cloned. Tensors are left out of the search (a short path could occur in weights by chance);
    everything else of both files is searched."""
    import onnx

    from ..conftest import ROOT

    folders = {str(ROOT), str(trained_project), os.path.dirname(os.path.dirname(torch.__file__)), "site-packages"}
    export = trained_project / "models/export"
    with zipfile.ZipFile(export / "model.pt2") as archive:
        texts = {name: archive.read(name) for name in archive.namelist() if "/data/" not in name}
        (sample,) = [name for name in archive.namelist() if name.endswith("data/sample_inputs/model.pt")]
        (images,), _ = torch.load(io.BytesIO(archive.read(sample)), weights_only=True)
    graph = next(data for name, data in texts.items() if name.endswith("models/model.json"))
    assert b'"stack_trace"' not in graph and b"torch.ops.aten.conv2d" in graph  # the graph, without source locations
    assert images.shape[1:] == (3, 32, 32) and not images.any()  # the example: blank, not the data
    model = onnx.load(str(export / "model.onnx"))
    for tensor in model.graph.initializer:
        tensor.ClearField("raw_data")
    texts["model.onnx"] = model.SerializeToString()
    assert [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.input] == [
        ["batch", 3, 32, 32]
    ]
    leaks = {name: folder for name, data in texts.items() for folder in folders if folder.encode() in data}
    assert not leaks
