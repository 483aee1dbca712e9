"""Where a run's files live: a local path, a shared filesystem, or an object store (pyarrow.fs).

Every file of a run directory is written and read through these functions, so `run.out` may be
a URI that trainers on worker nodes write to and a resume on another node reads from:
``s3://bucket/runs``, ``gs://bucket/runs``, ``hdfs://...`` or ``file:///shared/runs``, with
pyarrow's query options where needed (``s3://b/runs?endpoint_override=host:9000&scheme=http``).
A location is a plain string (a local path or such a URI): it crosses process boundaries as is.

Writes are atomic. A local file is written under a temporary name in its folder and renamed
over the target, so a crash or a full disk leaves the previous file whole; an object store's
PUT is atomic by itself (a reader sees the old object or the new one, never half of one).
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import io
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

Location = str  # a local path or a URI pyarrow.fs understands


def is_uri(location: str | os.PathLike[str]) -> bool:
    return "://" in str(location)


def local_path(location: str | os.PathLike[str]) -> Path | None:
    """The local path of a location (file:// URIs included), None for a remote one."""
    text = str(location)
    if not is_uri(text):
        return Path(text).expanduser()
    parts = urlsplit(text)
    return Path(parts.path) if parts.scheme == "file" else None


def join(location: str | os.PathLike[str], *names: str) -> Location:
    """`location`/name/...; a URI keeps its query options at the end."""
    text = str(location)
    if not is_uri(text):
        return str(Path(text, *names))
    parts = urlsplit(text)
    path = "/".join([parts.path.rstrip("/"), *(n.strip("/") for n in names)])
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def name_of(location: str | os.PathLike[str]) -> str:
    text = str(location)
    return Path(urlsplit(text).path if is_uri(text) else text).name


@functools.lru_cache(maxsize=16)
def _filesystem(scheme: str, netloc: str, query: str) -> pafs.FileSystem:
    # One client per (scheme, bucket, options): an S3 client is costly to build.
    fs, _ = pafs.FileSystem.from_uri(urlunsplit((scheme, netloc, "/", query, "")))
    return fs


def _remote(location: str) -> tuple[pafs.FileSystem, str]:
    parts = urlsplit(location)
    fs = _filesystem(parts.scheme, parts.netloc, parts.query)
    path = (parts.netloc + parts.path) if parts.scheme not in ("file", "hdfs") else parts.path
    return fs, path.rstrip("/")


class UriIOError(OSError):
    """A run location that cannot be read or written; the message says which and why."""


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def write_bytes(location: str | os.PathLike[str], data: bytes) -> Location:
    """Write `data` to `location` atomically (creating folders as needed)."""
    local = local_path(location)
    if local is not None:
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, local)
        finally:
            if tmp.exists():
                tmp.unlink()
        _sync_dir(local.parent)
        return str(location)
    fs, path = _remote(str(location))
    try:
        with fs.open_output_stream(path) as stream:  # one PUT: atomic on object stores
            stream.write(data)
    except OSError as exc:
        raise UriIOError(f"cannot write {location}: {exc}") from exc
    return str(location)


def _sync_dir(folder: Path) -> None:
    """Make a rename durable; a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write a run file: atomically to the local `path`, then to its remote twin when `path`
    is inside a working copy. Every file of a run directory is written through here."""
    write_bytes(path, data)
    publish(path)
    return Path(path)


def save_json(path: str | os.PathLike[str], obj: Any,
              default: Callable[[Any], Any] | None = None) -> Path:
    """Write a JSON run file (indented, one trailing newline) through `save`; `default` turns
    values JSON has no type for into ones it has (as in `json.dumps`)."""
    return save(path, (json.dumps(obj, indent=2, default=default) + "\n").encode())


def write_table_atomic(path: str | os.PathLike[str], table: pa.Table) -> Path:
    """Write a Parquet file of the run directory (atomic; published where it is remote)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return save(path, sink.getvalue().to_pybytes())


def write_text(location: str | os.PathLike[str], text: str) -> Location:
    return write_bytes(location, text.encode("utf-8"))


def write_parquet(location: str | os.PathLike[str], table: pa.Table) -> Location:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return write_bytes(location, sink.getvalue().to_pybytes())


def remove(location: str | os.PathLike[str]) -> None:
    """Delete a file or a whole folder; nothing if it is not there."""
    local = local_path(location)
    if local is not None:
        if local.is_dir():
            import shutil

            shutil.rmtree(local)
        elif local.exists():
            local.unlink()
        return
    fs, path = _remote(str(location))
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def read_bytes(location: str | os.PathLike[str]) -> bytes:
    local = local_path(location)
    if local is not None:
        return local.read_bytes()
    fs, path = _remote(str(location))
    try:
        with fs.open_input_stream(path) as stream:
            return bytes(stream.read())
    except FileNotFoundError:
        raise
    except OSError as exc:
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"{location} does not exist") from exc
        raise UriIOError(f"cannot read {location}: {exc}") from exc


def read_text(location: str | os.PathLike[str]) -> str:
    return read_bytes(location).decode("utf-8")


def read_parquet(location: str | os.PathLike[str], columns: list[str] | None = None) -> pa.Table:
    local = local_path(location)
    if local is not None:
        return pq.read_table(local, columns=columns)
    return pq.read_table(io.BytesIO(read_bytes(location)), columns=columns)


def _info(location: str) -> Any:
    local = local_path(location)
    if local is not None:
        return local
    fs, path = _remote(location)
    return fs.get_file_info(path)


def is_file(location: str | os.PathLike[str]) -> bool:
    info = _info(str(location))
    return info.is_file() if isinstance(info, Path) else info.type == pafs.FileType.File


def is_dir(location: str | os.PathLike[str]) -> bool:
    info = _info(str(location))
    return info.is_dir() if isinstance(info, Path) else info.type == pafs.FileType.Directory


def exists(location: str | os.PathLike[str]) -> bool:
    info = _info(str(location))
    return info.exists() if isinstance(info, Path) else info.type != pafs.FileType.NotFound


def walk(location: str | os.PathLike[str]) -> list[str]:
    """Paths of every file under a folder, relative to it, sorted; [] if it does not exist."""
    local = local_path(location)
    if local is not None:
        if not local.is_dir():
            return []
        return sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    fs, path = _remote(str(location))
    selector = pafs.FileSelector(path, allow_not_found=True, recursive=True)
    return sorted(info.path[len(path):].lstrip("/") for info in fs.get_file_info(selector)
                  if info.type == pafs.FileType.File)


# --------------------------------------------------------------------------------------------
# Working copies of remote run directories
# --------------------------------------------------------------------------------------------
#
# The code of a run reads and writes a local folder. When run.out is a URI, that folder is a
# working copy of the remote run directory: every process of the run (the driver, a trainer on
# another node) keeps its copy at the same local path, derived from the URI, and each file
# written into it is published (uploaded whole, one atomic PUT) right after its local atomic
# write. A resumed run, or `thresher analyze` on another machine, pulls what it needs first.
# The remote directory is the truth; a working copy is a cache that may be deleted.
#
# Which URI a working copy stands for is written beside it (`<copy>.uri`), not kept in this
# process's memory: a process that writes into a copy it did not make (a library's callback, a
# worker started with the folder's path) still publishes what it writes.

WORKDIR_ENV = "THRESHER_WORKDIR"  # where working copies live (default ~/.cache/thresher/runs)
_URI_SUFFIX = ".uri"  # `<copy>.uri`, beside a working copy: the URI it stands for


def _working_copies_root() -> Path:
    return Path(os.environ.get(WORKDIR_ENV) or Path.home() / ".cache" / "thresher" / "runs")


def working_dir(location: str | os.PathLike[str]) -> Path:
    """The local folder a run at `location` is read and written through: the path itself for a
    local location, a working copy (the same path on every node) for a remote one."""
    local = local_path(location)
    if local is not None:
        return local
    uri = str(location)
    digest = hashlib.sha1(uri.encode()).hexdigest()[:12]
    path = _working_copies_root() / f"{name_of(uri)}-{digest}"
    path.mkdir(parents=True, exist_ok=True)
    marker = path.with_name(path.name + _URI_SUFFIX)
    if not marker.is_file() or marker.read_text("utf-8") != uri:
        write_bytes(marker, uri.encode("utf-8"))
    return path


def location_of(path: str | os.PathLike[str]) -> Location:
    """The location a local path stands for: its URI inside a working copy, else the path."""
    resolved = Path(path).resolve()
    root = _working_copies_root().resolve()
    if root not in resolved.parents:
        return str(path)
    copy = root / resolved.relative_to(root).parts[0]
    marker = copy.with_name(copy.name + _URI_SUFFIX)
    if resolved == marker or not marker.is_file():
        return str(path)
    return join(marker.read_text("utf-8"), *resolved.relative_to(copy).parts)


def publish(path: str | os.PathLike[str]) -> None:
    """Upload a file just written into a working copy; nothing for a plain local path."""
    location = location_of(path)
    if is_uri(location):
        write_bytes(location, Path(path).read_bytes())


def unpublish(path: str | os.PathLike[str]) -> None:
    """Remove the remote twin of a file or folder deleted from a working copy."""
    location = location_of(path)
    if is_uri(location):
        remove(location)


def publish_tree(path: str | os.PathLike[str]) -> None:
    """Upload every file under a folder of a working copy (one written by a library that does
    not go through this module, such as the report's images)."""
    for relative in walk(path):
        publish(Path(path, relative))


def pull(path: str | os.PathLike[str], skip: tuple[str, ...] = ()) -> int:
    """Make the local folder `path` of a working copy equal to its remote twin, except under
    the relative folders matching a glob in `skip` (``saes/*/checkpoint``); returns the files
    downloaded. A no-op for a plain local path."""
    location = location_of(path)
    if not is_uri(location):
        return 0

    def skipped(relative: str) -> bool:
        parts = relative.split("/")
        return any(fnmatch.fnmatchcase("/".join(parts[:i]), pattern)
                   for pattern in skip for i in range(1, len(parts) + 1))

    local = Path(path)
    remote_files = [r for r in walk(location) if not skipped(r)]
    for stale in set(walk(local)) - set(remote_files):
        if not skipped(stale):
            (local / stale).unlink()
    for relative in remote_files:
        write_bytes(local / relative, read_bytes(join(location, *relative.split("/"))))
    return len(remote_files)
