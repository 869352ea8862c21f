"""The web page's Review view (imgclf serve --review): label_issues' suggestions listed with their images, a fix
written to relabel/<data>.csv server-side, only from the page itself, only for a listed image and a real class, never
through a link out of the allowed roots."""

import csv
import shutil

import pytest
from fastapi.testclient import TestClient

from imgclf.deploy.review import Review
from imgclf.deploy.webapp import create_app
from imgclf.errors import BadInput

from ..conftest import serve_client

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
OWN = {"origin": "http://testserver"}


@pytest.fixture
def review(trained_project, tmp_path, monkeypatch):
    """(client, project): serve on a project whose label_issues.csv lists two images of class a as b and c."""
    project = tmp_path / "project"
    shutil.copytree(trained_project / "data/tiny/images", project / "data/tiny/images")
    (project / "relabel").mkdir()
    issues = project / "reports/label_issues/label_issues.csv"
    issues.parent.mkdir(parents=True)
    with issues.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["rank", "path", "split", "given_label", "suggested_label", "self_confidence", "suggested_prob"]
        )
        writer.writerow([1, "a/000.png", "train", "a", "b", 0.01, 0.97])
        writer.writerow([2, "a/001.png", "test", "a", "c", 0.05, 0.9])
    monkeypatch.chdir(project)
    roots = [project / "data", project / "relabel"]
    client = serve_client(trained_project, tmp_path / "cache", roots, review=Review("tiny", roots))
    return client, project


def test_the_issues_are_listed_with_their_images_and_a_fix_is_written(review):
    client, project = review
    listed = client.get("/api/review").json()
    assert listed["dataset"] == "tiny" and listed["classes"] == ["a", "b", "c"]
    assert [r["path"] for r in listed["issues"]] == ["a/000.png", "a/001.png"]
    assert all(r["thumbnail"].startswith("data:image/jpeg;base64,") and r["fixed"] is None for r in listed["issues"])
    done = client.post("/api/review", json={"path": "a/000.png", "label": "b"}, headers=OWN)
    assert done.status_code == 200 and done.json()["fixes"] == 1
    client.post("/api/review", json={"path": "a/001.png", "label": "exclude"}, headers=OWN)
    assert (project / "relabel/tiny.csv").read_text() == "path,label\na/000.png,b\na/001.png,exclude\n"
    assert [r["fixed"] for r in client.get("/api/review").json()["issues"]] == ["b", "exclude"]


@pytest.mark.parametrize(
    "body, headers, status",
    [
        ({"path": "a/000.png", "label": "zebra"}, OWN, 400),  # not a class
        ({"path": "b/000.png", "label": "a"}, OWN, 400),  # not a listed issue
        ({"path": "../../outside.png", "label": "a"}, OWN, 400),
        ({"path": "a/000.png"}, OWN, 400),
        ({"path": "a/000.png", "label": "b"}, {"origin": "http://evil.example"}, 403),  # another site's page
    ],
)
def test_a_bad_fix_is_refused_and_writes_nothing(review, body, headers, status):
    client, project = review
    answer = client.post("/api/review", json=body, headers=headers)
    assert answer.status_code == status and "error" in answer.json()
    assert not (project / "relabel/tiny.csv").exists()
    form = client.post("/api/review", data={"path": "a/000.png", "label": "b"}, headers=OWN)
    assert form.status_code == 415


def test_a_read_only_relabel_file_is_a_400_saying_so_and_is_left_as_it_was(review):
    client, project = review
    target = project / "relabel/tiny.csv"
    target.write_text("path,label\na/001.png,c\n")
    target.chmod(0o444)
    answer = client.post("/api/review", json={"path": "a/000.png", "label": "b"}, headers=OWN)
    assert answer.status_code == 400 and "is read-only: make it writable" in answer.json()["error"]
    assert target.read_text() == "path,label\na/001.png,c\n" and target.stat().st_mode & 0o777 == 0o444


def test_a_link_planted_as_the_relabel_file_is_not_followed_out_of_the_roots(review, tmp_path):
    client, project = review
    outside = tmp_path / "outside.csv"
    outside.write_text("path,label\n")
    (project / "relabel/tiny.csv").symlink_to(outside)
    assert client.post("/api/review", json={"path": "a/000.png", "label": "b"}, headers=OWN).status_code == 403
    assert client.get("/api/review").status_code == 403
    assert outside.read_text() == "path,label\n"


def test_a_relabel_folder_swapped_for_a_link_out_since_the_start_is_not_written_through(review, tmp_path):
    client, project = review
    (project / "relabel").rmdir()
    (tmp_path / "outside").mkdir()
    (project / "relabel").symlink_to(tmp_path / "outside", target_is_directory=True)
    assert client.post("/api/review", json={"path": "a/000.png", "label": "b"}, headers=OWN).status_code == 403
    assert list((tmp_path / "outside").iterdir()) == []


def test_the_issues_file_is_read_only_under_the_roots_or_its_own_folder_never_through_a_link_out(review, tmp_path):
    client, project = review
    issues = project / "reports/label_issues/label_issues.csv"
    (tmp_path / "secret.csv").write_text(issues.read_text().replace("a/001.png", "a/002.png"))
    (project / "data/issues.csv").write_text(issues.read_text())
    issues.unlink()
    issues.symlink_to(project / "data/issues.csv")  # a link to a file under a root is read
    assert [r["path"] for r in client.get("/api/review").json()["issues"]] == ["a/000.png", "a/001.png"]
    for target in (tmp_path / "secret.csv", tmp_path / "missing.csv"):  # out: the same 403, there or not
        issues.unlink()
        issues.symlink_to(target)
        listed = client.get("/api/review")
        assert listed.status_code == 403 and "is outside the allowed roots" in listed.json()["error"]
        assert "a/002.png" not in listed.text
        fixed = client.post("/api/review", json={"path": "a/002.png", "label": "b"}, headers=OWN)
        assert fixed.status_code == 403 and not (project / "relabel/tiny.csv").exists()
    # the report folder itself swapped for a link after serve started
    issues.unlink()
    shutil.move(project / "reports/label_issues", tmp_path / "moved")
    (tmp_path / "moved/label_issues.csv").write_text((project / "data/issues.csv").read_text())
    (project / "reports/label_issues").symlink_to(tmp_path / "moved")
    assert client.get("/api/review").status_code == 403


def test_a_relabel_file_linked_inside_the_roots_is_written_through_and_stays_a_link(review):
    client, project = review
    kept = project / "relabel/kept/fixes.csv"  # inside the allowed roots
    kept.parent.mkdir()
    kept.write_text("path,label\n")
    (project / "relabel/tiny.csv").symlink_to(kept)
    assert client.post("/api/review", json={"path": "a/000.png", "label": "b"}, headers=OWN).status_code == 200
    assert (project / "relabel/tiny.csv").is_symlink() and kept.read_text() == "path,label\na/000.png,b\n"


def test_review_needs_its_folders_under_the_roots_and_is_off_unless_asked(review, trained_project, tmp_path):
    client, project = review
    with pytest.raises(PermissionError):
        Review("tiny", [project / "data"])  # relabel/ not allowed: the page could not write its fixes
    plain = TestClient(create_app(serve_client(trained_project, tmp_path / "c2", [project / "data"]).service))
    assert plain.get("/api/review").status_code == 404 and plain.head("/api/review").status_code == 404


def test_the_pages_question_whether_there_is_a_review_decodes_no_image(review, monkeypatch):
    """The page asks with HEAD on every load: it was the whole listing, a slot and a thumbnail per issue (seconds
    for a hundred large photos), its body thrown away."""
    client, _ = review

    def listing(*args):
        raise AssertionError("the issues were listed for a HEAD")

    monkeypatch.setattr(client.service.review, "listing", listing)
    asked = client.head("/api/review")
    assert asked.status_code == 200 and asked.content == b""


def test_a_malformed_relabel_file_is_a_400_naming_its_line_not_a_500(review):
    client, project = review
    (project / "relabel/tiny.csv").write_bytes(b"path,label\na/\xe9.png,b\n")
    listed = client.get("/api/review")
    assert listed.status_code == 400 and "tiny.csv line 2: not UTF-8 text" in listed.json()["error"]
    done = client.post("/api/review", json={"path": "a/000.png", "label": "b"}, headers=OWN)
    assert done.status_code == 400 and "line 2: not UTF-8 text" in done.json()["error"]
    assert (project / "relabel/tiny.csv").read_bytes() == b"path,label\na/\xe9.png,b\n"


def test_an_issues_file_without_a_column_the_page_needs_is_a_400_naming_it(review):
    client, project = review
    (project / "reports/label_issues/label_issues.csv").write_text("rank,path,suggested_label\n1,a/000.png,b\n")
    listed = client.get("/api/review")
    assert listed.status_code == 400 and "no given_label column" in listed.json()["error"]
    done = client.post("/api/review", json={"path": "a/000.png", "label": "b"}, headers=OWN)
    assert done.status_code == 400 and not (project / "relabel/tiny.csv").exists()


def test_the_classes_are_the_splits_not_any_folder_under_images(review, trained_project):
    client, project = review
    roots = [project / "data", project / "relabel"]
    (project / "data/tiny/images/junk").mkdir()
    (project / "data/tiny/images/.thumbnails").mkdir()
    assert Review("tiny", roots).classes == ["a", "b", "c", "junk"]  # not split yet: the folders split would take
    (project / "data/tiny/split").mkdir()
    shutil.copy(trained_project / "data/tiny/split/labels.txt", project / "data/tiny/split/labels.txt")
    split = Review("tiny", roots)
    assert split.classes == ["a", "b", "c"]
    with pytest.raises(BadInput, match="'junk' is not a class"):
        split.fix("a/000.png", "junk")


def test_a_fix_naming_control_characters_is_refused_with_them_shown_escaped(review):
    client, project = review
    answer = client.post("/api/review", json={"path": "a/000.png", "label": "b\n\x1b[2Jz"}, headers=OWN)
    assert answer.status_code == 400 and answer.json()["error"].startswith("'b\\n\\x1b[2Jz' is not a class; one of: a")
