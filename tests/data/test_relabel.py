"""`imgclf relabel PATH=LABEL`: a fix is written under the name the split's index gives the image, and only for an
image the split can take, so the next `dvc repro` applies it instead of refusing it."""

from imgclf.data.relabel import command as relabel
from imgclf.data.relabel import read_fixes
from imgclf.stages.split import split

from ..conftest import console


def test_a_fix_is_written_under_the_index_name_and_split_applies_it(tiny_project, tiny_cfg):
    fixes = ["./a/000.png=b", "a//001.png=b", "c/../a/002.png=exclude"]
    done = console(relabel, ["--data", "tiny", *fixes], tiny_project)
    assert done.returncode == 0, done.stderr
    written = read_fixes(tiny_project / "relabel/tiny.csv")
    assert written == {"a/000.png": "b", "a/001.png": "b", "a/002.png": "exclude"}  # one name each: no duplicates
    split(tiny_cfg())  # the next dvc repro: applied, not refused
    rows = (tiny_project / "data/tiny/split/train.csv").read_text() + (
        tiny_project / "data/tiny/split/val.csv"
    ).read_text()
    rows += (tiny_project / "data/tiny/split/test.csv").read_text()
    assert "a/000.png,b" in rows and "a/002.png" not in rows


def test_a_file_the_split_did_not_take_is_refused_in_one_line_and_nothing_is_written(tiny_project):
    (tiny_project / "data/tiny/images/a/notes.png").write_text("not an image: split skipped it")
    done = console(relabel, ["--data", "tiny", "a/notes.png=b"], tiny_project)
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert "a/notes.png is not an image of this data set" in done.stderr
    assert not (tiny_project / "relabel").exists()
