"""`imgclf relabel PATH=LABEL`: a fix is written under the name the split's index gives the image, and only for an
image the split can take, so the next `dvc repro` applies it instead of refusing it."""

import re
from pathlib import Path

import pytest

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


def test_a_space_in_a_name_is_part_of_it_so_a_fix_lands_on_the_image_it_names(tiny_project, tiny_cfg):
    images = tiny_project / "data/tiny/images"
    (images / "a/000.png ").write_bytes((images / "a/001.png").read_bytes())  # another file: a trailing space
    done = console(relabel, ["--data", "tiny", "a/000.png =b"], tiny_project)
    assert done.returncode == 0, done.stderr
    assert read_fixes(tiny_project / "relabel/tiny.csv") == {"a/000.png ": "b"}  # as written
    split(tiny_cfg())
    rows = "".join((tiny_project / f"data/tiny/split/{name}.csv").read_text() for name in ("train", "val", "test"))
    assert "a/000.png ,b\n" in rows and "a/000.png,a\n" in rows  # the image named, not its neighbour
    (tiny_project / "relabel/tiny.csv").write_text("path,label\na/002.png, b\n")  # a hand-typed space
    done = console(relabel, ["--data", "tiny", "a/003.png=c"], tiny_project)
    assert done.returncode == 1 and "a/002.png -> ' b' is not a class" in done.stderr


@pytest.mark.parametrize("fixes", [["a/000.png=b", "a/000.png=c"], ["a/000.png=b", "./a/000.png=exclude"]])
def test_one_image_given_two_labels_on_the_command_line_is_refused(tiny_project, fixes):
    done = console(relabel, ["--data", "tiny", *fixes], tiny_project)
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "a/000.png is given two labels" in done.stderr
    assert not (tiny_project / "relabel").exists()
    assert console(relabel, ["--data", "tiny", "a/000.png=b", "./a/000.png=b"], tiny_project).returncode == 0


@pytest.mark.parametrize("name", ["../data/tiny", "tiny/", ".tiny", ""])
def test_a_data_name_that_is_a_path_is_refused_and_nothing_is_written(tiny_project, name):
    done = console(relabel, ["--data", name, "a/000.png=b"], tiny_project)
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "is not a data set's name" in done.stderr
    assert not (tiny_project / "data/tiny.csv").exists() and not (tiny_project / "relabel").exists()


def test_a_class_is_one_the_split_took_not_any_folder_under_images(tiny_project):
    (tiny_project / "data/tiny/images/junk").mkdir()  # empty: the next split would refuse it, not take it
    done = console(relabel, ["--data", "tiny", "a/000.png=junk"], tiny_project)
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert "'junk' is not a class; one of: a, b, c, exclude" in done.stderr
    (tiny_project / "data/tiny/split/labels.txt").unlink()  # before the first split: the folders split would take
    (tiny_project / "data/tiny/images/.cache").mkdir()
    done = console(relabel, ["--data", "tiny", "a/000.png=.cache"], tiny_project)
    assert done.returncode == 1 and "one of: a, b, c, junk, exclude" in done.stderr


@pytest.mark.parametrize(
    "row, says",
    [
        ("./a/000.png,b", "./a/000.png is not an image of this data set"),  # not as the split's index names it
        ("a/000.png,zebra", "a/000.png -> 'zebra' is not a class"),
        ("a/404.png,exclude", "a/404.png is not an image of this data set"),
    ],
    ids=["not-the-index-name", "not-a-class", "no-such-image"],
)
def test_a_row_already_in_the_file_that_split_would_refuse_is_not_written_back(tiny_project, row, says):
    target = tiny_project / "relabel/tiny.csv"
    target.parent.mkdir()
    target.write_text(f"path,label\n{row}\n")
    done = console(relabel, ["--data", "tiny", "a/001.png=c"], tiny_project)
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert f"{target.relative_to(tiny_project)}: {says}" in done.stderr
    assert target.read_text() == f"path,label\n{row}\n"


def test_an_excluded_image_in_no_index_is_still_an_image_of_the_data_set(tiny_project, tiny_cfg):
    assert console(relabel, ["--data", "tiny", "a/002.png=exclude"], tiny_project).returncode == 0
    split(tiny_cfg())  # a/002.png is now in no index
    (tiny_project / "data/tiny/images/b/000.png").unlink()  # an indexed image removed since the split
    done = console(relabel, ["--data", "tiny", "a/003.png=b"], tiny_project)
    assert done.returncode == 0, done.stderr
    done = console(relabel, ["--data", "tiny", "a/004.png=b", "b/000.png=a"], tiny_project)
    assert done.returncode == 1 and "b/000.png is not an image" in done.stderr
    assert read_fixes(tiny_project / "relabel/tiny.csv") == {"a/002.png": "exclude", "a/003.png": "b"}


def test_an_excluded_image_removed_since_is_refused_by_split_with_what_to_do(tiny_project, tiny_cfg):
    from imgclf.errors import BadInput

    assert console(relabel, ["--data", "tiny", "a/002.png=exclude"], tiny_project).returncode == 0
    (tiny_project / "data/tiny/images/a/002.png").unlink()
    says = "a/002.png is not an image of this data set (paths as in split/train.csv); if the image was removed, "
    says += "delete its row from relabel/tiny.csv"
    with pytest.raises(BadInput, match=re.escape(says)):
        split(tiny_cfg())  # refused, not ignored: a typo'd path would be ignored the same way
    done = console(relabel, ["--data", "tiny", "a/003.png=b"], tiny_project)
    assert done.returncode == 1 and says in done.stderr


def test_a_file_the_split_did_not_take_is_refused_in_one_line_and_nothing_is_written(tiny_project):
    (tiny_project / "data/tiny/images/a/notes.png").write_text("not an image: split skipped it")
    done = console(relabel, ["--data", "tiny", "a/notes.png=b"], tiny_project)
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert "a/notes.png is not an image of this data set" in done.stderr and "delete its row" not in done.stderr
    assert not (tiny_project / "relabel").exists()


def test_accept_takes_ranks_from_1_to_the_last_suggestion_and_says_so_otherwise():
    from imgclf.data.relabel import ranks
    from imgclf.errors import BadInput

    assert ranks("1-3,5", 5) == {1, 2, 3, 5} and ranks("all", 2) == {1, 2}
    for text, says in (
        ("0", "0 is not a rank or a range of ranks from 1 to 5"),
        ("5-3", "5-3 is not a rank or a range of ranks from 1 to 5"),
        ("2,99999", "99999 is not a rank or a range of ranks from 1 to 5"),
        ("x", "give ranks as 1-10, 3,7,12 or all"),
        ("1-", "give ranks as 1-10, 3,7,12 or all"),  # a range without its end, not rank 1
        ("-2", "give ranks as 1-10, 3,7,12 or all"),
        ("\u00b2", "give ranks as 1-10, 3,7,12 or all"),  # a digit to str.isdigit, not to int()
    ):
        with pytest.raises(BadInput, match=f"--accept {text}: {says}"):
            ranks(text, 5)
    with pytest.raises(BadInput, match="1 is not a rank: there are no suggestions"):
        ranks("1", 0)


def _add_fixes(target: str, writer: int, count: int) -> None:
    from pathlib import Path

    from imgclf.data.relabel import write_fixes

    for i in range(count):
        write_fixes(Path(target), {f"a/{writer:02d}_{i:02d}.png": "b"})


def test_writers_in_several_processes_at_once_lose_no_fix(tmp_path):
    import multiprocessing

    target = tmp_path / "relabel/tiny.csv"
    target.parent.mkdir()
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_add_fixes, args=(str(target), w, 10)) for w in range(8)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(60)
    assert [p.exitcode for p in writers] == [0] * 8
    assert len(read_fixes(target)) == 80  # every row each writer added
    assert sorted(p.name for p in target.parent.iterdir()) == ["tiny.csv"]  # no lock file in the DVC dependency


def test_a_relabel_file_that_is_a_link_is_written_through_and_stays_a_link(tiny_project):
    shared = tiny_project / "shared" / "fixes.csv"  # the team's fixes, kept outside relabel/
    shared.parent.mkdir()
    shared.write_text("path,label\na/000.png,b\n")
    link = tiny_project / "relabel/tiny.csv"
    link.parent.mkdir()
    link.symlink_to(Path("..") / "shared" / "fixes.csv")
    done = console(relabel, ["--data", "tiny", "a/001.png=c"], tiny_project)
    assert done.returncode == 0, done.stderr
    assert link.is_symlink() and shared.read_text() == "path,label\na/000.png,b\na/001.png,c\n"
    assert not [p.name for p in shared.parent.iterdir() if p.name != "fixes.csv"]  # no temporary file left


def test_a_read_only_relabel_file_is_refused_in_one_line_and_left_as_it_was(tiny_project):
    """Its owner made it read-only; the fixes were written by a rename, which replaces a file whatever its mode."""
    target = tiny_project / "relabel/tiny.csv"
    target.parent.mkdir()
    target.write_text("path,label\na/000.png,b\n")
    target.chmod(0o444)
    done = console(relabel, ["--data", "tiny", "a/001.png=c"], tiny_project)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    says = "error: relabel/tiny.csv is read-only: make it writable (chmod u+w, as its owner) to add fixes\n"
    assert done.stderr == says
    assert target.read_text() == "path,label\na/000.png,b\n" and target.stat().st_mode & 0o777 == 0o444
    assert sorted(p.name for p in target.parent.iterdir()) == ["tiny.csv"]


def test_a_relabel_file_saved_by_excel_as_csv_utf8_is_read_past_its_byte_order_mark(tiny_project):
    target = tiny_project / "relabel/tiny.csv"
    target.parent.mkdir()
    target.write_bytes("\ufeffpath,label\r\na/000.png,b\r\n".encode())
    assert read_fixes(target) == {"a/000.png": "b"}
    done = console(relabel, ["--data", "tiny", "a/001.png=c"], tiny_project)
    assert done.returncode == 0, done.stderr
    assert target.read_text() == "path,label\na/000.png,b\na/001.png,c\n"


@pytest.mark.parametrize(
    "content, says",
    [
        (b"path,label\na/000.png,b\na/\xe9.png,b\n", "line 3: not UTF-8 text"),
        (b"path,label\n" + b"x" * 200_000 + b",b\n", "line 2: not a CSV row (field larger than field limit"),
        (b"path,label\na/000.png,b\na/\x00.png,b\n", "line 3: a NUL character"),
    ],
    ids=["not-utf-8", "a-field-too-long", "a-nul"],
)
def test_a_malformed_relabel_file_is_one_line_naming_it_and_the_line(tiny_project, tiny_cfg, content, says):
    from imgclf.errors import BadInput

    target = tiny_project / "relabel/tiny.csv"
    target.parent.mkdir()
    target.write_bytes(content)
    with pytest.raises(BadInput, match=f"^{re.escape(str(target))} {re.escape(says)}"):
        read_fixes(target)
    with pytest.raises(BadInput, match=re.escape(says)):
        split(tiny_cfg())  # the stage: one line, exit 1
    done = console(relabel, ["--data", "tiny", "a/003.png=b"], tiny_project)
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and says in done.stderr
    assert target.read_bytes() == content


@pytest.mark.parametrize(
    "content, says",
    [
        ("root:x:0:0:root:/root:/bin/bash\n", "no rank column"),  # --issues /etc/passwd
        ("rank,path,suggested_label\n1,a/000.png,b\n", "no given_label column"),
        ("rank,path,given_label,suggested_label\n1,a/000.png,a,b\none,a/001.png,a,c\n", "line 3: rank 'one' is not"),
        ("rank,path,given_label,suggested_label\n1,a/000.png,a\n", "line 2: 3 fields where the header names 4"),
    ],
    ids=["not-label-issues", "a-column-missing", "a-rank-not-a-number", "a-field-missing"],
)
def test_accept_refuses_a_hand_edited_issues_file_in_one_line(tiny_project, content, says):
    issues = tiny_project / "issues.csv"
    issues.write_text(content)
    done = console(relabel, ["--data", "tiny", "--accept", "1", "--issues", str(issues)], tiny_project)
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and says in done.stderr, done.stderr
    assert not (tiny_project / "relabel").exists()


@pytest.mark.parametrize("accept", ["9" * 5000, "1-" + "9" * 5000, "0" * 5000 + "1"])
def test_accept_with_thousands_of_digits_is_one_line(tiny_project, accept):
    """int() of over 4,300 digits is a ValueError: a traceback, where a rank past the last is one line."""
    issues = tiny_project / "issues.csv"
    issues.write_text("rank,path,given_label,suggested_label\n1,a/000.png,a,b\n")
    done = console(relabel, ["--data", "tiny", "--accept", accept, "--issues", str(issues)], tiny_project)
    if accept.endswith("01"):  # leading zeros: rank 1
        assert done.returncode == 0 and "wrote 1 fixes" in done.stdout, done.stderr
        return
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr[-2000:]
    assert "is not a rank or a range of ranks from 1 to 1" in done.stderr and len(done.stderr) < 600, done.stderr
    assert not (tiny_project / "relabel").exists()


def test_a_rank_of_thousands_of_digits_in_the_issues_file_is_one_line(tiny_project):
    issues = tiny_project / "issues.csv"
    issues.write_text(f"rank,path,given_label,suggested_label\n{'9' * 5000},a/000.png,a,b\n")
    done = console(relabel, ["--data", "tiny", "--accept", "all", "--issues", str(issues)], tiny_project)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr[-2000:]
    assert "line 2: rank '99999" in done.stderr and "is not a whole number of at most 18 digits" in done.stderr
    assert not (tiny_project / "relabel").exists()


def test_a_large_relabel_file_is_read_row_by_row(tmp_path):
    """The file's bytes, its text and every row were held at once beside the fixes: 20 times the file's size at the
    peak. Read as it comes, the peak is the fixes themselves."""
    import tracemalloc

    path = tmp_path / "big.csv"
    path.write_text("path,label\n" + "".join(f"c{i % 10}/{i:07d}.png,b\n" for i in range(200_000)))
    tracemalloc.start()
    try:
        fixes = read_fixes(path)
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(fixes) == 200_000
    assert peak < 1.2 * kept, (peak, kept)


def test_a_relabel_file_with_any_line_ending_is_read(tmp_path):
    """Old Mac line endings (a lone CR) were refused once the file was read line by line; a bad byte is still named
    by its line."""
    for ending in (b"\r", b"\r\n", b"\n"):
        (tmp_path / "fixes.csv").write_bytes(ending.join([b"path,label", b"a/1.png,b", b'"a/x,y.png",c', b""]))
        assert read_fixes(tmp_path / "fixes.csv") == {"a/1.png": "b", "a/x,y.png": "c"}, ending
    (tmp_path / "fixes.csv").write_bytes(b"path,label\ra/1.png,b\ra/\xff.png,c\r")
    with pytest.raises(ValueError, match="fixes.csv line 3: not UTF-8 text"):
        read_fixes(tmp_path / "fixes.csv")


def test_a_relabel_dir_that_is_a_file_or_cannot_be_made_is_one_line(tiny_project):
    (tiny_project / "notes.txt").write_text("mine\n")
    for given, says in (
        ("notes.txt", "--relabel-dir notes.txt is a file, not a folder: give the folder relabel files go in"),
        ("notes.txt/fixes", "--relabel-dir notes.txt/fixes cannot be made: "),
    ):
        done = console(relabel, ["--data", "tiny", "--relabel-dir", given, "a/000.png=b"], tiny_project)
        assert done.returncode == 1 and done.stderr.startswith(f"error: {says}"), done.stderr  # not [Errno 17]
    assert (tiny_project / "notes.txt").read_text() == "mine\n"


def test_accept_keeps_a_reviewers_fix_and_refuses_suggestions_older_than_the_split(tiny_project, tiny_cfg):
    """`--accept 1` (a -> b), a reviewer's `a/000.png=a` after it, split: a later `--accept 1-2` from the same
    label_issues.csv wrote a/000.png=b again, silently undoing the reviewer's fix."""
    issues = tiny_project / "issues.csv"
    issues.write_text("rank,path,given_label,suggested_label\n1,a/000.png,a,b\n2,a/001.png,a,c\n")
    accept = ["--data", "tiny", "--issues", str(issues), "--accept"]
    assert console(relabel, [*accept, "1"], tiny_project).returncode == 0
    assert console(relabel, ["--data", "tiny", "a/000.png=a"], tiny_project).returncode == 0  # the reviewer
    done = console(relabel, [*accept, "1-2"], tiny_project)
    assert done.returncode == 0 and done.stdout.splitlines() == [
        "kept a/000.png=a from relabel/tiny.csv (suggested: b; a/000.png=b changes it)",
        "wrote 1 fixes to relabel/tiny.csv (2 in all); dvc repro applies them",
    ], done.stdout
    assert read_fixes(tiny_project / "relabel/tiny.csv") == {"a/000.png": "a", "a/001.png": "c"}
    split(tiny_cfg())  # the next dvc repro: a/001.png is labelled c now, and the suggestions say a
    before = (tiny_project / "relabel/tiny.csv").read_bytes()
    done = console(relabel, [*accept, "2"], tiny_project)
    assert done.returncode == 1 and done.stderr == (
        f"error: {issues} is older than the split: rank 2, a/001.png, was labelled a there and is c now; "
        "dvc repro label_issues for new suggestions\n"
    )
    assert (tiny_project / "relabel/tiny.csv").read_bytes() == before


def test_accept_keeps_a_fix_a_reviewer_writes_while_it_runs(tiny_project, monkeypatch):
    """The file's earlier fixes were read before the folder's lock was taken: a reviewer's fix written in between
    (the web page's Review) was replaced by the suggestion it had just been kept from."""
    from imgclf.data import relabel as module

    issues = tiny_project / "issues.csv"
    issues.write_text("rank,path,given_label,suggested_label\n1,a/000.png,a,b\n")
    checked = module.check_fixes

    def reviewer_meanwhile(target, fixes, *args, rows=True):
        if not rows:  # the suggestions' own check, before the write: the reviewer saves a/000.png=c now
            module.write_fixes(target, {"a/000.png": "c"})
        return checked(target, fixes, *args, rows=rows)

    monkeypatch.setattr(module, "check_fixes", reviewer_meanwhile)
    done = console(relabel, ["--data", "tiny", "--issues", str(issues), "--accept", "1"], tiny_project)
    assert done.returncode == 0 and done.stdout.splitlines()[0] == (
        "kept a/000.png=c from relabel/tiny.csv (suggested: b; a/000.png=b changes it)"
    ), done.stdout
    assert read_fixes(tiny_project / "relabel/tiny.csv") == {"a/000.png": "c"}


def test_relabel_writes_where_it_checked_and_says_what_is_wrong_with_what_it_reads(tiny_project, monkeypatch):
    """--relabel-dir ~/x was checked as the home folder's and written to ./~/x; a link to a folder that is not there
    was followed and its folders made; --issues naming a folder or a device said 'not found'."""
    home = tiny_project / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    done = console(relabel, ["--data", "tiny", "--relabel-dir", "~/fixes", "a/000.png=b"], tiny_project)
    assert done.returncode == 0 and read_fixes(home / "fixes/tiny.csv") == {"a/000.png": "b"}
    assert not (tiny_project / "~").exists()

    (tiny_project / "relabel").mkdir()
    (tiny_project / "relabel/tiny.csv").symlink_to(tiny_project / "nowhere/x/tiny.csv")
    done = console(relabel, ["--data", "tiny", "a/000.png=b"], tiny_project)
    assert done.returncode == 1 and done.stderr == (
        f"error: relabel/tiny.csv is a link to {tiny_project / 'nowhere/x/tiny.csv'}, whose folder is not there: "
        "make it, or remove the link\n"
    )
    assert not (tiny_project / "nowhere").exists()

    for given in ("relabel", "/dev/zero"):
        done = console(relabel, ["--data", "tiny", "--issues", given, "--accept", "1"], tiny_project)
        assert done.returncode == 1 and done.stderr == (
            f"error: {given} is not a file: give the label_issues stage's CSV (--issues)\n"
        ), done.stderr


def test_a_class_whose_name_holds_an_equals_sign_can_be_given(tmp_path):
    """PATH=LABEL was split at the last `=`: plain/000.png=x=y named the image plain/000.png=x."""
    from ..conftest import make_class_folders

    images = make_class_folders(tmp_path / "data/eq/images", {"x=y": 2, "plain": 2})
    done = console(relabel, ["--data", "eq", "--images", str(images), "plain/000.png=x=y"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert read_fixes(tmp_path / "relabel/eq.csv") == {"plain/000.png": "x=y"}


def test_names_holding_a_newline_and_an_empty_accept_are_one_line(tiny_project):
    (tiny_project / "issues.csv").write_text("rank,path,given_label,suggested_label\n1,a/000.png,a,b\n")
    for argv, says in (
        (["a/00\n3.png=b"], "error: a/00\\n3.png is not an image under"),  # the message was two lines
        (["a/000.png=b\nc"], "error: relabel/tiny.csv: a/000.png -> 'b\\nc' is not a class; one of: a, b, c,"),
        (["--accept", ""], "error: --accept : give ranks as 1-10, 3,7,12 or all"),  # was: nothing to fix
    ):
        done = console(relabel, ["--data", "tiny", "--issues", str(tiny_project / "issues.csv"), *argv], tiny_project)
        assert done.returncode == 1 and done.stderr.count("\n") == 1 and done.stderr.startswith(says), done.stderr
