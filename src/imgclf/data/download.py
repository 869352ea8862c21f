"""Downloads from mirrors with checksums, written under a temporary name; extraction that stays inside its target."""

from __future__ import annotations

import hashlib
import http.client
import logging
import shutil
import stat
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from imgclf.credentials import hide
from imgclf.errors import BadInput, DiskFull, MissingInput, UserError
from imgclf.files import atomic_path

log = logging.getLogger(__name__)

CHUNK = 1 << 20


class DownloadError(UserError):
    """No mirror could serve a file."""


class ChecksumError(BadInput):
    """A file's digest differs from the expected one."""


def parse_checksum(value: str) -> tuple[str, str]:
    """'md5:abc…', 'sha256:abc…' or a bare hex digest (32 chars = md5, 64 = sha256) -> (algorithm, hex)."""
    algo, _, digest = value.rpartition(":")
    digest = digest.strip().lower()
    algo = algo.lower() or {32: "md5", 64: "sha256"}.get(len(digest), "")
    if algo not in ("md5", "sha256") or len(digest) != {"md5": 32, "sha256": 64}[algo]:
        raise BadInput(
            f"bad checksum '{value}'; use an md5 (32 hex) or sha256 (64 hex) digest, "
            "optionally prefixed 'md5:' or 'sha256:'"
        )
    return algo, digest


def file_digest(path: str | Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path: str | Path, checksum: str | None, name: str | None = None) -> None:
    """Raise ChecksumError (naming the file and both digests) unless `path` matches `checksum`."""
    if not checksum:
        return
    algo, expected = parse_checksum(checksum)
    actual = file_digest(path, algo)
    if actual != expected:
        raise ChecksumError(f"{name or Path(path).name}: {algo} is {actual}, expected {expected}")


def download(
    filename: str, mirrors: Sequence[str], dest_dir: str | Path, checksum: str | None = None, timeout: float = 60.0
) -> Path:
    """Fetch `filename` from the first mirror that serves it; verify; rename into place. A verified file is kept; one
    that fails its checksum is replaced only by a verified download (it stays as it is when none comes). Without a
    checksum nothing verifies a file kept from before (a mirror's error page, saved as the file, would be read for
    ever): it is downloaded again."""
    dest = Path(dest_dir) / filename
    if dest.is_file() and checksum is None:
        log.info("%s: no checksum to verify the copy kept from before; downloading it again", dest)
    elif dest.is_file():
        try:
            verify(dest, checksum)
            log.info("%s already downloaded and verified", dest)
            return dest
        except ChecksumError:
            log.warning("%s fails its checksum; downloading it again (it is kept until a verified one comes)", dest)
    if not mirrors:
        raise DownloadError(f"no mirror configured for {filename}; set data.mirrors or data.archive")
    errors = []
    for base in mirrors:
        url = f"{base.rstrip('/')}/{filename}"
        try:
            with atomic_path(dest) as tmp:  # a bad or partial file is never left where fetch would trust it
                _fetch(url, tmp, timeout)
                verify(tmp, checksum, hide(url))
        except DiskFull:
            raise
        # a mismatch is one mirror's fault (an HTML error page served as 200, a stale copy): the next may be right;
        # so is a URL urllib cannot parse (InvalidURL, an unknown scheme) and a response cut short (IncompleteRead)
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException, DownloadError) as exc:
            why = exc if isinstance(exc, ChecksumError) else _failed(url, exc)
            log.warning("%s; trying the next mirror", why)
            errors.append(str(why))
            continue
        log.info("downloaded %s from %s", filename, hide(url))
        return dest
    raise DownloadError(f"could not download {filename} from any mirror: {'; '.join(errors)}")


def _failed(url: str, exc: Exception) -> str:
    """`URL: why` with the URL's user:password hidden, in the reason too: a port urllib cannot parse is quoted from
    the netloc (`https://user:pw@host/` reads `pw@host` as the port)."""
    said = str(getattr(exc, "reason", exc))
    password = urlsplit(url).password
    if password:
        said = said.replace(password, "***")
    kind = " (not a valid URL)" if isinstance(exc, (ValueError, http.client.InvalidURL)) else ""
    return f"{hide(url)}: {said}{kind}"


def _fetch(url: str, path: Path, timeout: float) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "imgclf"})
    with urllib.request.urlopen(request, timeout=timeout) as response, open(path, "wb") as f:
        expected = response.headers.get("Content-Length")
        shutil.copyfileobj(response, f, CHUNK)
    size = path.stat().st_size
    if expected is not None and size != int(expected):
        raise DownloadError(f"truncated: got {size} of {expected} bytes")


def fetch_files(files: Mapping[str, str | None], mirrors: Sequence[str], dest_dir: str | Path) -> dict[str, Path]:
    """Download every file (name -> checksum) into dest_dir; returns name -> path."""
    return {name: download(name, mirrors, dest_dir, checksum) for name, checksum in files.items()}


def _inside(root: Path, name: str) -> Path:
    target = (root / name).resolve()
    if target != root and root not in target.parents:
        raise BadInput(f"archive member '{name}' would be written outside {root}; refusing to extract")
    return target


def _check_room(archive: Path, dest: Path, total: int) -> None:
    """BadInput, before anything is unpacked, when the archive's members (the sizes it declares, which extraction
    does not pass) would not fit in the free space under dest: a 2 MB zip of zeros can hold gigabytes."""
    free = shutil.disk_usage(dest).free
    if total > free:
        raise BadInput(
            f"{archive.name} unpacks to {total / 1e9:.2f} GB and {dest} has {free / 1e9:.2f} GB free: free some space, "
            "or give data.fetch.download_dir on a larger disk"
        )


def extract(archive: str | Path, dest: str | Path) -> Path:
    """Extract a .tar(.gz) or .zip into dest: only regular files and folders that stay inside it; an absolute path,
    `..`, a symbolic or hard link or a device file refuses the whole archive before anything is written."""
    archive, dest = Path(archive).expanduser(), Path(dest)
    if not archive.is_file():
        raise MissingInput(f"archive {archive} not found")
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    _inside(root, info.filename)
                    if stat.S_ISLNK(info.external_attr >> 16):
                        raise BadInput(f"archive member '{info.filename}' is a link; refusing to extract")
                _check_room(archive, dest, sum(info.file_size for info in zf.infolist()))  # zipfile stops at them
                zf.extractall(dest)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                for member in tf.getmembers():
                    _inside(root, member.name)
                    if member.issym() or member.islnk():
                        raise BadInput(f"archive member '{member.name}' is a link; refusing to extract")
                    if not (member.isfile() or member.isdir()):
                        raise BadInput(f"archive member '{member.name}' is a device or pipe; refusing to extract")
                _check_room(archive, dest, sum(member.size for member in tf.getmembers() if member.isfile()))
                tf.extractall(dest, filter="data")
        else:
            raise BadInput(f"{archive} is neither a zip nor a tar archive")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as exc:
        # a truncated download or a damaged archive: name it, never a traceback from deep in tarfile
        raise BadInput(f"{archive}: corrupt or truncated archive ({type(exc).__name__}: {exc})") from None
    return dest
