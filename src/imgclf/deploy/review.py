"""The web page's Review view: the label_issues stage's likeliest mislabelled images, each with its given and
suggested label; accepting a suggestion (or choosing another class, or excluding the image) writes a row of
relabel/<data set>.csv, which the split stage applies on the next dvc repro.

`imgclf serve --review DATASET` turns it on. The images and the relabel file are the project's (data/<ds>/images,
relabel/<ds>.csv) and must lie under the allowed roots, resolved, symlinks included; the issues file (reports/
label_issues/label_issues.csv) under them too, or in the label_issues report folder as it resolved when serve
started; each is checked again on every read, on the open file. The page reads and writes nothing else but the
split's classes (data/<ds>/split/labels.txt, read when it lies under the roots; else the class folders). A fix is
checked (an image listed in the issues file, a class of the data set or `exclude`) and written whole or not at all,
one writer at a time.
"""

from __future__ import annotations

import threading
from functools import partial
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from imgclf.data.relabel import EXCLUDE, ISSUE_COLUMNS, data_classes, read_fixes, read_issues, write_fixes
from imgclf.deploy.access import HEAD_ONLY, inside, json_body, open_inside
from imgclf.errors import BadInput, shown
from imgclf.paths import Paths

SHOWN = 100  # the likeliest issues listed: what one page holds (thumbnails of 96 px)
MAX_BODY = 4096


class Review:
    def __init__(self, dataset: str, roots: list[Path], paths: Paths | None = None):
        paths = paths or Paths()
        self.dataset, self.roots = dataset, [r.resolve() for r in roots]
        self.images = inside(paths.images(dataset), self.roots)  # PermissionError (403) or FileNotFoundError
        self.issues = paths.report_dir("label_issues") / "label_issues.csv"
        # the issues file's own folder, as it resolves now, like the folder of the model serve starts with: the
        # stage's report need not lie under a root, but a link planted there later leads nowhere outside
        self.readable = [*self.roots, self.issues.parent.resolve()]
        relabel = paths.relabel_file(dataset)
        self.relabel = inside(relabel.parent, self.roots) / relabel.name  # the file itself may not exist yet
        try:  # the classes split takes: the last split's labels.txt, if the page may read it
            labels = inside(paths.labels(dataset), self.roots)
        except (PermissionError, FileNotFoundError):
            labels = None  # not split yet, or outside the roots: the class folders
        self.classes = data_classes(self.images, labels)
        self.lock = threading.Lock()

    def rows(self) -> list[dict[str, str]]:
        """The likeliest issues, read only under the roots (or the report folder), checked on the open file too."""
        try:
            issues = inside(self.issues, self.readable)  # a link out: PermissionError (403), missing or not
        except FileNotFoundError:
            issues = self.issues  # not made yet: read_issues says which stage makes it
        opener = partial(open_inside, roots=self.readable)
        return read_issues(issues, opener)[:SHOWN]  # a missing column or a bad rank: one line, a 400

    def _fixes_file(self) -> Path:
        """The relabel file, checked again before each use: a link put there since must not lead outside. A link is
        answered by where it leads (inside the roots), so the write goes there, not through a link changed since."""
        if self.relabel.exists() or self.relabel.is_symlink():
            return inside(self.relabel, self.roots)
        wanted = self.relabel.absolute()  # a new file: the folder it goes in, swapped for a link since, is checked
        existing = next(p for p in wanted.parents if p.exists() or p.is_symlink())
        return inside(existing, self.roots) / wanted.relative_to(existing)

    def listing(self, thumbnail) -> dict[str, Any]:
        fixed = read_fixes(self._fixes_file(), partial(open_inside, roots=self.roots))
        opener = partial(open_inside, roots=[self.images])  # checked again on the open file
        shown = []
        for row in self.rows():
            try:
                image = inside(self.images / row["path"], [self.images])
            except (PermissionError, FileNotFoundError):
                image = None
            shown.append(
                {
                    **{k: row[k] for k in ISSUE_COLUMNS},
                    "self_confidence": row.get("self_confidence"),
                    "thumbnail": thumbnail(image, 96, opener) if image else None,
                    "fixed": fixed.get(row["path"]),
                }
            )
        return {"dataset": self.dataset, "classes": self.classes, "exclude": EXCLUDE, "issues": shown}

    def fix(self, path: str, label: str) -> dict[str, Any]:
        if path not in {r["path"] for r in self.rows()}:
            raise BadInput(f"{shown(path, 80)} is not one of the listed issues")
        if label not in self.classes and label != EXCLUDE:
            raise BadInput(f"'{shown(label, 40)}' is not a class; one of: {', '.join(self.classes)}, {EXCLUDE}")
        inside(self.images / path, [self.images])  # the image is still there, under the data set's images
        with self.lock:
            every = write_fixes(self._fixes_file(), {path: label})
        return {"path": path, "label": label, "fixes": len(every), "file": str(self.relabel)}


def review_routes(app: FastAPI, review: Review, answer, thumbnail, slots) -> None:
    """The Review view's routes; the listing decodes an image per thumbnail, so it takes one of the server's slots
    (--max-concurrent), as a classification does: memory follows the settings, not the number of clients."""

    @app.get("/api/review")
    async def listing(request: Request):
        if request.scope.get(HEAD_ONLY):  # the page asking whether there is a Review: no thumbnails decoded for it
            return JSONResponse({})
        async with slots:
            return await run_in_threadpool(review.listing, thumbnail)

    @app.post("/api/review")
    async def fix(request: Request):
        sent = await json_body(request, answer, '{"path": "...", "label": "..."}', "a fix", MAX_BODY)
        if isinstance(sent, JSONResponse):
            return sent
        path, label = sent.get("path"), sent.get("label")
        if not isinstance(path, str) or not isinstance(label, str):
            return answer(request, 400, 'the body must be a JSON object {"path": "<image>", "label": "<class>"}')
        result = await run_in_threadpool(review.fix, path, label)
        return JSONResponse(result)
