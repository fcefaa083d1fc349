"""One file-system layer for run directories: local paths and Google Cloud Storage.

Every file a run directory holds, and every tool that reads one, goes through
these functions. A path is a plain string: a local path, or a `gs://bucket/key`
URL served by `etils.epath` (the layer orbax already writes checkpoints with),
which reaches the bucket through `gcsfs`. Local paths keep plain `os`
operations (atomic rename, append, exclusive create, free space).

Object storage differs, and the run directory's policy follows
(docs/checkpoints.md, "Workdirs in a bucket"):

- an object is written whole, and appears only once complete: `write_text`
  needs no temporary name there, and an append (`append_text`) is a read and
  a rewrite of the whole object (writers of frequent lines batch them:
  nme_train.train.metrics);
- there is no rename: `move` copies, then deletes (a "directory" object by
  object);
- there is no free-space figure: `free_bytes` is None;
- a listing can be cached by gcsfs: every read here drops the cache of the
  path first, so a process following another's writes sees them.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from typing import Any

REMOTE_SCHEMES = ("gs",)  # the object stores this layer serves (tested against an emulator)
_INSTALL_GCS = "pip install gcsfs (or the package's `gcs` extra)"


class StorageError(OSError):
    """A path this layer cannot serve, or a bucket it cannot reach; the message says why."""


def url_scheme(path: Any) -> str | None:
    """The scheme of a URL path ("gs" for gs://b/x), None for a local path."""
    match = re.match(r"([A-Za-z][\w+.-]*)://", path) if isinstance(path, str) else None
    return match.group(1) if match else None


def is_remote(path: Any) -> bool:
    return url_scheme(os.fspath(path)) is not None


def join(path: str, *parts: str) -> str:
    """`path/part/...` for a local path or a URL (os.path.join keeps `gs://` intact)."""
    return os.path.join(os.fspath(path), *parts)


def absolute(path: str) -> str:
    """An absolute local path; a URL unchanged (os.path.abspath would mangle `gs://`)."""
    path = os.fspath(path)
    return path if is_remote(path) else os.path.abspath(path)


def epath(path: str):
    """The etils.epath.Path of `path` (what orbax is given)."""
    from etils import epath as _epath

    return _epath.Path(os.fspath(path))


def _fs(path: str):
    """The fsspec file system epath uses for the URL `path`, its listing cache dropped.
    gcsfs's own log (a traceback per exhausted retry, a bucket-type guess) is silenced:
    its errors reach the caller as exceptions, which say what failed in one line."""
    from etils.epath import backend

    logging.getLogger("gcsfs").setLevel(logging.CRITICAL)
    fs = backend.fsspec_backend.fs(path)
    fs.invalidate_cache()
    return fs


def check_scheme(path: str, what: str) -> None:
    """StorageError when `path` is a URL this layer cannot serve, or its client is missing."""
    scheme = url_scheme(path)
    if scheme is None:
        return
    if scheme not in REMOTE_SCHEMES:
        raise StorageError(f"{what}={path}: {scheme}:// is not supported; give a local path or "
                           "a gs://bucket/path")
    try:
        import gcsfs  # noqa: F401  (epath's client for gs://)
    except ImportError:
        raise StorageError(f"{what}={path}: reading and writing gs:// needs gcsfs; "
                           f"{_INSTALL_GCS}") from None


def check_reachable(path: str, what: str, writable: bool = True) -> None:
    """One StorageError naming `path` and the fix when its bucket cannot be used: no
    client, no credentials, no such bucket, or no network. Local paths pass. The client
    retries failed requests for about a minute; this check gives up after
    NME_TRAIN_STORAGE_TIMEOUT seconds (default 30), before anything is built."""
    check_scheme(path, what)
    if not is_remote(path):
        return
    from fsspec.asyn import sync

    bucket = path.split("://", 1)[1].split("/", 1)[0]
    fix = ("check the bucket name, the network, and that this machine's credentials may "
           f"{'write' if writable else 'read'} it (`gcloud auth application-default login`, "
           "or the VM's service account)")
    timeout = float(os.environ.get("NME_TRAIN_STORAGE_TIMEOUT", 30))
    try:
        fs = _fs(path)
        if not sync(fs.loop, fs._exists, bucket, timeout=timeout):
            raise StorageError(f"{what}={path}: bucket {bucket} does not exist or is not "
                               f"visible with these credentials; {fix}")
        if writable:
            probe = join(path, f".write_test.{os.getpid()}")
            sync(fs.loop, fs._pipe_file, probe, b"ok", timeout=timeout)
            sync(fs.loop, fs._rm_file, probe, timeout=timeout)
    except StorageError:
        raise
    except Exception as e:  # auth, HTTP and network errors of the client, or the timeout
        text = str(e).splitlines()[0][:200] if str(e) else f"no answer in {timeout:.0f} s"
        raise StorageError(f"{what}={path}: cannot use the bucket ({type(e).__name__}: "
                           f"{text}); {fix}") from e


# -- reading -------------------------------------------------------------------
def exists(path: str) -> bool:
    if is_remote(path):
        return _fs(path).exists(path)
    return os.path.exists(path)


def isdir(path: str) -> bool:
    if is_remote(path):
        return _fs(path).isdir(path)
    return os.path.isdir(path)


def listdir(path: str) -> list[str]:
    """The names directly in the directory `path`; [] when it does not exist."""
    if is_remote(path):
        fs = _fs(path)
        try:
            entries = fs.ls(path, detail=False)
        except FileNotFoundError:
            return []
        prefix = path.split("://", 1)[1].rstrip("/") + "/"
        return sorted({e.rstrip("/")[len(prefix):].split("/")[0] for e in entries
                       if e.rstrip("/").startswith(prefix)} - {""})
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []


def read_text(path: str) -> str:
    """The text of the file `path`; FileNotFoundError when it is missing."""
    if is_remote(path):
        try:
            return _fs(path).cat_file(path).decode("utf-8")
        except FileNotFoundError:
            raise
        except OSError as e:  # gcsfs reports a missing object as an HTTP error on some paths
            if "404" in str(e) or "No such object" in str(e):
                raise FileNotFoundError(path) from e
            raise
    with open(path, encoding="utf-8") as f:
        return f.read()


def mtime(path: str) -> float:
    """The last modification time of `path` (seconds since the epoch)."""
    if is_remote(path):
        info = _fs(path).info(path)
        updated = info.get("updated") or info.get("mtime")
        if hasattr(updated, "timestamp"):
            return updated.timestamp()
        import datetime

        return datetime.datetime.fromisoformat(str(updated).replace("Z", "+00:00")).timestamp()
    return os.stat(path).st_mtime


# -- writing -------------------------------------------------------------------
def makedirs(path: str) -> None:
    """Creates the local directory `path`; nothing for a URL (objects need no folders)."""
    if not is_remote(path):
        os.makedirs(path, exist_ok=True)


def write_text(path: str, text: str | bytes) -> None:
    """Writes `path` so that a reader sees the old or the new content, never a part:
    locally through a temporary file and a rename; an object is atomic by itself."""
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    if is_remote(path):
        _fs(path).pipe_file(path, data)
        return
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def append_text(path: str, text: str) -> None:
    """Appends `text` to `path` (created when missing). An object is read and rewritten
    whole: fine for rare records (probes, machines); batch frequent ones."""
    if is_remote(path):
        try:
            old = read_text(path)
        except FileNotFoundError:
            old = ""
        write_text(path, old + text)
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)


def remove(path: str) -> None:
    """Deletes the file `path`; nothing when it is missing."""
    try:
        if is_remote(path):
            _fs(path).rm_file(path)
        else:
            os.remove(path)
    except FileNotFoundError:
        pass


def rmtree(path: str) -> None:
    """Deletes the directory `path` and everything in it; nothing when it is missing."""
    if is_remote(path):
        fs = _fs(path)
        if fs.exists(path):
            fs.rm(path, recursive=True)
        return
    shutil.rmtree(path, ignore_errors=True)


def remove_empty_dir(path: str) -> None:
    """Removes the local directory `path` if it is empty (an object store has none)."""
    if not is_remote(path) and os.path.isdir(path) and not os.listdir(path):
        os.rmdir(path)


def move(src: str, dst: str) -> None:
    """Renames the file or directory `src` to `dst` (which must not exist). Locally one
    atomic rename; in a bucket a copy of every object, then the deletion of `src`, so an
    interruption leaves `src` whole (and perhaps part of `dst`)."""
    if is_remote(src):
        fs = _fs(src)
        if fs.isdir(src):
            fs.copy(src.rstrip("/") + "/", dst.rstrip("/") + "/", recursive=True)
            fs.rm(src, recursive=True)
        else:
            fs.copy(src, dst)
            fs.rm_file(src)
        return
    os.replace(src, dst)


def copy_to_local(source: str, target: str) -> None:
    """Copies the directory `source` (in a bucket) and everything in it to the local
    directory `target`."""
    os.makedirs(target, exist_ok=True)
    fs = _fs(source)
    for name in listdir(source):
        path = join(source, name)
        if fs.isdir(path):
            copy_to_local(path, os.path.join(target, name))
        else:
            fs.get_file(path, os.path.join(target, name))


def save_figure(fig, path: str, dpi: int) -> None:
    """Writes a matplotlib figure as a PNG to `path` (local or in a bucket)."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    write_text(path, buffer.getvalue())


def local_logs(path: str) -> str:
    """Where a process's log stream for the run directory `path` goes: `path` itself when
    local; ./logs/<bucket>/<key> for a URL (a stream cannot be appended to an object)."""
    return os.path.join("logs", path.split("://", 1)[1]) if is_remote(path) else path


def free_bytes(path: str) -> int | None:
    """Free space where `path` lives; None in a bucket (it has no such figure)."""
    if is_remote(path):
        return None
    return shutil.disk_usage(path).free


# -- objects with generation preconditions (the workdir lock in a bucket) -------------
# Every write of an object makes a new generation; a request conditioned on
# ifGenerationMatch fails (HTTP 412) when the object has another generation, and
# ifGenerationMatch=0 when it exists at all. That makes create-if-absent and
# compare-and-delete atomic without a rename.
def _bucket_key(path: str) -> tuple[str, str]:
    bucket, _, key = path.split("://", 1)[1].partition("/")
    return bucket, key


def create_object(path: str, data: bytes) -> int:
    """Creates the object `path` if it does not exist; its generation. FileExistsError
    when it exists (atomic: of several creators exactly one succeeds)."""
    fs = _fs(path)
    fs.pipe_file(path, data, mode="create")
    return int(fs.info(path)["generation"])


def object_info(path: str) -> dict:
    """The object's resource: `generation`, `metadata` (custom fields), `updated`, ...;
    FileNotFoundError when it does not exist."""
    info = _fs(path).info(path)
    if info.get("type") == "directory":
        raise FileNotFoundError(path)
    return info


def delete_object(path: str, generation: int) -> bool:
    """Deletes the object if it still has `generation`; False when it has changed or gone."""
    fs = _fs(path)
    try:
        fs.call("DELETE", "b/{}/o/{}", *_bucket_key(path), ifGenerationMatch=str(generation))
    except (FileExistsError, FileNotFoundError):
        return False
    fs.invalidate_cache()
    return True


def set_object_metadata(path: str, generation: int, metadata: dict[str, str]) -> bool:
    """Sets custom metadata fields of the object if it still has `generation` (its data
    stay); False when it has changed or gone."""
    fs = _fs(path)
    try:
        fs.call("PATCH", "b/{}/o/{}", *_bucket_key(path), ifGenerationMatch=str(generation),
                json={"metadata": metadata})
    except (FileExistsError, FileNotFoundError):
        return False
    return True
