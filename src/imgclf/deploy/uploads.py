"""The Classify form, read as it arrives: each uploaded file is written to a file of its own in the request's folder
and closed when its part ends, so a form holds one open file however many it sends; files, fields and a field's
size are counted as they arrive and refused past their limits, before anything more is written. (Starlette's
parser holds every file of a form open, a temporary file each, until the answer.)"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from fastapi import Request
from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from starlette.concurrency import run_in_threadpool

from imgclf.errors import BadInput, first_line

CALLBACKS = ("on_part_begin", "on_header_field", "on_header_value", "on_header_end", "on_headers_finished",
             "on_part_data", "on_part_end", "on_end")  # fmt: skip


@dataclass(frozen=True)
class Limits:
    files: int  # per form
    fields: int  # per form, besides the files
    field_bytes: int  # a field's value


@dataclass
class Form:
    files: list[tuple[str, Path]] = field(default_factory=list)  # (the name sent, where it was written)
    fields: dict[str, str] = field(default_factory=dict)


async def read_form(request: Request, folder: Path, limits: Limits, file_field: str = "files") -> Form:
    """The request's form: multipart, with the files sent as `file_field` written under `folder` (other files are
    counted, not kept), or URL-encoded fields; a body of any other type is an empty form."""
    kind, options = parse_options_header(request.headers.get("content-type", ""))
    if kind == b"application/x-www-form-urlencoded":
        sent = await request.form(max_files=0, max_fields=limits.fields, max_part_size=limits.field_bytes)
        return Form(fields={k: v for k, v in sent.multi_items() if isinstance(v, str)})
    if kind != b"multipart/form-data":
        return Form()
    if not options.get(b"boundary"):
        raise BadInput("a multipart form without a boundary; send it as a browser does (multipart/form-data)")
    parts = _Parts(folder, limits, file_field)
    parser = MultipartParser(options[b"boundary"], {name: getattr(parts, name) for name in CALLBACKS})
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            await run_in_threadpool(parts.flush)  # file work off the event loop, as Starlette does it
        parser.finalize()  # python-multipart's does not check that the form ended: on_end says so
        if not parts.ended:  # cut off before its closing boundary: its last file may be a part of one
            raise BadInput("the multipart form is incomplete: it ends before its closing boundary; send it whole")
    except FormParserError as exc:
        raise BadInput(f"not a readable multipart form ({first_line(exc)})") from None
    finally:
        parts.close()
    return parts.form


class _Parts:
    """python-multipart's callbacks for one form. Opening, writing and closing files is queued for `flush`."""

    def __init__(self, folder: Path, limits: Limits, file_field: str):
        self.folder, self.limits, self.file_field = folder, limits, file_field
        self.form, self.files, self.fields = Form(), 0, 0
        self.header, self.value, self.disposition = b"", b"", b""
        self.field: tuple[str, bytearray] | None = None  # the field part being read
        self.writing = False  # a file part being written
        self.queued: list[tuple[str, object]] = []  # ("open", path), ("write", bytes), ("close", None)
        self.out: BinaryIO | None = None
        self.ended = False  # the closing boundary was read

    def on_end(self) -> None:
        self.ended = True

    def on_part_begin(self) -> None:
        self.disposition, self.field, self.writing = b"", None, False

    def on_header_field(self, data: bytes, start: int, end: int) -> None:  # python-multipart bounds a header's size
        self.header += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.value += data[start:end]

    def on_header_end(self) -> None:
        if self.header.lower() == b"content-disposition":
            self.disposition = self.value
        self.header, self.value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.disposition)
        if b"name" not in options:
            raise BadInput('a form part without a name; each part needs Content-Disposition: form-data; name="..."')
        name = _decoded(options[b"name"])
        if b"filename" not in options:
            self.fields += 1
            if self.fields > self.limits.fields:
                raise BadInput(f"more than {self.limits.fields} fields in one form; the page sends {self.file_field}"
                               " and path")  # fmt: skip
            self.field = (name, bytearray())
            return
        self.files += 1
        if self.files > self.limits.files:  # before the file is opened, let alone written
            raise BadInput(f"more than {self.limits.files} files in one form; send at most {self.limits.files} at a "
                           "time")  # fmt: skip
        if name == self.file_field:
            sent = _decoded(options[b"filename"]) or "upload"
            path = self.folder / f"{len(self.form.files)}{_suffix(sent)}"
            self.form.files.append((sent, path))
            self.queued.append(("open", path))
            self.writing = True

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.field is not None:
            if len(self.field[1]) + end - start > self.limits.field_bytes:
                raise BadInput(f"a form field over {self.limits.field_bytes} bytes; a path is shorter")
            self.field[1].extend(data[start:end])
        elif self.writing:
            self.queued.append(("write", data[start:end]))

    def on_part_end(self) -> None:
        if self.field is not None:
            self.form.fields[self.field[0]] = _decoded(bytes(self.field[1]))
        elif self.writing:
            self.queued.append(("close", None))
        self.field, self.writing = None, False

    def flush(self) -> None:
        """Do what the callbacks queued: one file open at a time, closed as its part ends."""
        for op, arg in self.queued:
            if op == "open":
                self.out = open(arg, "xb")  # noqa: SIM115 (closed at its part's end, or by close())
            elif op == "write":
                self.out.write(arg)
            else:
                self.out.close()
                self.out = None
        self.queued.clear()

    def close(self) -> None:
        if self.out is not None:  # a form cut short: its last file (the folder is its owner's to remove)
            self.out.close()


def _decoded(raw: bytes) -> str:
    """A name or a field as sent: UTF-8, else Latin-1 (as Starlette reads them)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _suffix(name: str) -> str:
    """The sent name's extension, plain letters and digits only: the decoder goes by content, the file by this."""
    return re.sub(r"[^a-z0-9.]", "", Path(name).suffix.lower())[:8]
