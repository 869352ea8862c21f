"""The zip archives torch reads (a `.pt` checkpoint, a `.pt2` program, the sample inputs inside one), checked before
torch reads them.

torch's reader inflates a compressed entry to whatever size the entry declares (973 KB of deflated zeros load as a
1 GB tensor), and entries that share their bytes each load whole. torch.save and torch.export.save write neither:
every entry stored as it is, one after the other, the directory at the end. So only that passes: entries stored,
their sizes adding up to no more than the file, a directory of at most MAX_ENTRIES entries, read only once its size
is known to be small. Memory for reading an archive that passes is then at most its own size.
"""

from __future__ import annotations

import struct
import zipfile
from typing import BinaryIO

# torch.save writes an entry per tensor and 4 of its own: a training checkpoint with AdamW's state holds 4 per
# tensor of the network (timm's most, efficientnet_l2's 1,914, come to under 8,000); zipfile makes an object of
# about 570 bytes per entry, so the directory's size is refused before it is parsed: at most 8 MB, ~100 MB parsed
MAX_ENTRIES = 20_000
ENTRY_BYTES = 400  # one entry's directory record as torch writes it: 46 bytes, a name of <= 255 + data/N, zip64
END = struct.Struct("<4s4H2LH")  # end of central directory: signature, disks, entries (2), size, offset, comment
END64 = struct.Struct("<4sQ2H2L4Q")  # its zip64 twin: signature, size, versions, disks, entries (2), size, offset
LOCATOR64 = 20  # bytes of the zip64 locator between the two


class ArchiveRefused(ValueError):
    """An archive torch could read into more memory than the file holds; the message says which rule it breaks."""


def checked_zip(f: BinaryIO) -> zipfile.ZipFile:
    """The archive in `f`, opened, when it is one torch writes (entries stored, their sizes within the file, at
    most MAX_ENTRIES of them); ArchiveRefused if not, zipfile.BadZipFile if it is no whole zip archive."""
    size = f.seek(0, 2)
    directory = _directory_size(f, size)
    if directory > MAX_ENTRIES * ENTRY_BYTES:  # zipfile reads and parses all of it: refused before it does
        raise ArchiveRefused(f"its directory is {directory:,} bytes, more than {MAX_ENTRIES:,} entries take")
    f.seek(0)
    archive = zipfile.ZipFile(f)
    refusal = _refusal(archive.infolist(), size)
    if refusal:
        archive.close()
        raise ArchiveRefused(refusal)
    return archive


def _refusal(infos: list[zipfile.ZipInfo], size: int) -> str | None:
    if len(infos) > MAX_ENTRIES:
        return f"it holds {len(infos):,} entries; at most {MAX_ENTRIES:,} are read"
    if any(i.compress_type != zipfile.ZIP_STORED or i.file_size != i.compress_size for i in infos):
        return "it holds compressed entries, which may unpack to any size, where torch stores them"
    unpacked = sum(i.file_size for i in infos)
    if unpacked > size:
        return f"its entries add up to {unpacked:,} bytes, more than the file's {size:,} (entries that share bytes)"
    return None


def _directory_size(f: BinaryIO, size: int) -> int:
    """The size of the central directory as the end record at the very end of the file gives it (zip64's when its
    locator precedes it, as zipfile reads it). torch writes no archive comment, so that record is the last 22
    bytes: the one every zip reader finds, where a record inside a comment could show two readers two archives."""
    if size < END.size:
        raise zipfile.BadZipFile("too short for a zip archive")
    f.seek(size - END.size)
    signature, *_, directory, _, comment = END.unpack(f.read(END.size))
    if signature != b"PK\x05\x06" or comment:  # cut short, or not written by torch
        raise zipfile.BadZipFile("the zip directory's end record is not the file's last 22 bytes")
    if size >= END.size + LOCATOR64 + END64.size:
        f.seek(size - END.size - LOCATOR64 - END64.size)
        record = f.read(END64.size + 4)
        if record[-4:] == b"PK\x06\x07" and record[:4] == b"PK\x06\x06":
            directory = END64.unpack(record[: END64.size])[-2]
    return directory
