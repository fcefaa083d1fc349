"""A local Google Cloud Storage for tests and benchmarks: gcp-storage-emulator on loopback.

Needs the development extra (`pip install -e .[dev]`: gcp-storage-emulator).

`Emulator` starts the emulator (in memory) on a free port with one bucket, and gives the
environment that points the clients at it: STORAGE_EMULATOR_HOST for gcsfs (which
etils.epath uses for gs:// paths), TENSORSTORE_GCS_HTTP_URL and
GOOGLE_AUTH_TOKEN_FOR_TESTING for tensorstore (which writes orbax's arrays). Nothing
outside this machine is reached.

Additions to the emulator, made here:
- generation preconditions, as GCS documents them: an upload, delete or metadata patch
  with `ifGenerationMatch=N` fails with HTTP 412 unless the object's generation is N
  (0: unless the object does not exist). The emulator ignores them; the workdir lock
  relies on them.
- reads honour ifGenerationMatch (412) and ifGenerationNotMatch (304 Not Modified) and
  send the object's generation in the `x-goog-generation` header, as GCS does:
  tensorstore re-reads an OCDBT manifest that way, and a checkpoint with several
  commits fails ("Malformed StorageGeneration") without them.
- a request log: method, path (an upload's object name after `#`), bytes received,
  bytes sent and status of every request
  (`requests`), for the measurements of what a run writes.
"""

from __future__ import annotations

import contextvars
import logging
import socket
import threading
from http import HTTPStatus

_WANTED = contextvars.ContextVar("if_generation_match", default=None)


class _PreconditionFailed(Exception):
    pass


def _generation(storage, bucket: str, name: str) -> int:
    try:
        return int(storage.get_file_obj(bucket, name)["generation"])
    except Exception:  # noqa: BLE001 - the emulator's NotFound
        return 0


def _with_precondition(handler, object_name):
    """`handler` failing with 412 when ifGenerationMatch does not hold for the object."""

    def wrapped(request, response, storage, *args, **kwargs):
        request._request_handler.nme_object = object_name(request)  # for the request log
        wanted = request.query.get("ifGenerationMatch")
        if wanted is not None:
            bucket = request.params["bucket_name"]
            if _generation(storage, bucket, object_name(request)) != int(wanted[0]):
                response.status = HTTPStatus.PRECONDITION_FAILED
                return None
        return handler(request, response, storage, *args, **kwargs)

    return wrapped


def _read_with_generation(handler):
    """A read (metadata or media) honouring ifGenerationMatch (412) and
    ifGenerationNotMatch (304 Not Modified), with the `x-goog-generation` header."""

    def wrapped(request, response, storage, *args, **kwargs):
        generation = _generation(storage, request.params["bucket_name"],
                                 request.params["object_id"])
        match = request.query.get("ifGenerationMatch")
        not_match = request.query.get("ifGenerationNotMatch")
        if generation and match is not None and int(match[0]) != generation:
            response.status = HTTPStatus.PRECONDITION_FAILED
            return None
        if generation and not_match is not None and int(not_match[0]) == generation:
            response.status = HTTPStatus.NOT_MODIFIED
            response["x-goog-generation"] = str(generation)
            return None
        result = handler(request, response, storage, *args, **kwargs)
        if response.status.value < 300 and generation:
            response["x-goog-generation"] = str(generation)
        return result

    return wrapped


def _upload_name(request) -> str:
    if "name" in request.query:
        return request.query["name"][0]
    data = request.data
    return data["meta"].get("name") if isinstance(data, dict) else ""


class _Counting:
    def __init__(self, raw):
        self.raw, self.sent = raw, 0

    def write(self, data):
        self.sent += len(data)
        return self.raw.write(data)

    def __getattr__(self, name):
        return getattr(self.raw, name)


_PATCHED = threading.Lock()
_LOGS: list[list] = []


def _patch_emulator() -> None:
    """Installs the preconditions and the request log into the emulator (once)."""
    from gcp_storage_emulator import server
    from gcp_storage_emulator.handlers import objects

    with _PATCHED:
        if getattr(server, "_nme_patched", False):
            return
        by_name = {"insert": _upload_name,
                   "delete": lambda r: r.params["object_id"],
                   "patch": lambda r: r.params["object_id"]}
        originals = {name: getattr(objects, name) for name in by_name}
        wrapped = {name: _with_precondition(fn, by_name[name]) for name, fn in originals.items()}
        for _, handlers in server.HANDLERS:
            for method, fn in list(handlers.items()):
                for name, original in originals.items():
                    if fn is original:
                        handlers[method] = wrapped[name]
        objects.insert = wrapped["insert"]  # the router's fallback for uploads
        reads = {objects.get: _read_with_generation(objects.get),
                 objects.download: _read_with_generation(objects.download)}
        for _, handlers in server.HANDLERS:
            for method, fn in list(handlers.items()):
                if fn in reads:
                    handlers[method] = reads[fn]
        handle = server.Router.handle

        def logged(self, method):
            raw = self._request_handler
            raw.wfile = counter = _Counting(raw.wfile)
            status = []
            send_response = raw.send_response
            raw.send_response = lambda code, *a: (status.append(code), send_response(code, *a))
            try:
                handle(self, method)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client went away (a killed process): nothing to answer
            finally:
                received = int(raw.headers.get("Content-Length") or 0)
                name = getattr(raw, "nme_object", "")  # an upload names its object in the body
                for log in _LOGS:
                    log.append((method, f"{raw.path}#{name}" if name else raw.path, received,
                                counter.sent, status[0] if status else 0))

        server.Router.handle = logged
        server._nme_patched = True


class Emulator:
    """gs://BUCKET on a local emulator; `env` points clients at it; `requests` its log."""

    def __init__(self, bucket: str):
        from gcp_storage_emulator.server import create_server

        _patch_emulator()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.bucket = bucket
        self.url = f"http://127.0.0.1:{port}"
        self.requests: list[tuple[str, str, int, int, int]] = []
        self.env = {"STORAGE_EMULATOR_HOST": self.url, "TENSORSTORE_GCS_HTTP_URL": self.url,
                    "GOOGLE_AUTH_TOKEN_FOR_TESTING": "x"}
        self._server = create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
        logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)  # per request

    def start(self) -> Emulator:
        self._server.start()
        _LOGS.append(self.requests)
        return self

    def stop(self) -> None:
        _LOGS.remove(self.requests)
        self._server.stop()

    def path(self, *parts: str) -> str:
        return "/".join((f"gs://{self.bucket}", *parts))
