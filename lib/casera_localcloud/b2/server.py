"""HTTP front of the emulator: routes B2's URLs to ``operations`` and streams bodies.

URLs are the ones b2sdk builds: ``<apiUrl>/b2api/v<N>/<call>`` for JSON calls, the upload
URLs this emulator hands out, ``<downloadUrl>/file/<bucket>/<name>`` and
``<downloadUrl>/b2api/v<N>/b2_download_file_by_id``. apiUrl and downloadUrl are built from the
Host header the client used, so a client on a node (10.77.0.1) gets URLs it can reach too.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import urllib.parse
from http import HTTPStatus
from pathlib import Path
from typing import BinaryIO

from casera_localcloud.b2 import auth, errors
from casera_localcloud.b2.operations import Call, Limits, Operations
from casera_localcloud.b2.store import FileVersion, Store
from casera_localcloud.http_server import (
    BaseEmulatorServer,
    JsonHandler,
    serve_until_stopped,
    strict_json,
)

log = logging.getLogger("casera_localcloud.b2")

API_PATH = re.compile(r"^/b2api/v(\d+)/(b2_[a-z_]+)(?:/(.*))?$")
HEALTH_PATH = "/_casera/health"
# Query parameters of a download that override response headers, as B2 allows for signed
# URLs (e.g. to force "attachment" on a shared link).
HEADER_OVERRIDES = {
    "b2ContentDisposition": "Content-Disposition", "b2ContentLanguage": "Content-Language",
    "b2Expires": "Expires", "b2CacheControl": "Cache-Control",
    "b2ContentEncoding": "Content-Encoding", "b2ContentType": "Content-Type",
}
# File info keys B2 turns into real response headers instead of X-Bz-Info-* ones.
SPECIAL_INFO = {
    "b2-content-disposition": "Content-Disposition", "b2-content-language": "Content-Language",
    "b2-expires": "Expires", "b2-cache-control": "Cache-Control",
    "b2-content-encoding": "Content-Encoding",
}
DRAIN_LIMIT = 256 * 1024 * 1024
# Methods per kind of URL. JSON calls take GET (parameters in the query) or POST (a JSON
# body): "This API endpoint can be called using a GET request by converting the parameters
# in the request body to query parameters" (https://www.backblaze.com/apidocs/b2-create-bucket,
# the same note on every call). Uploads are POSTs of the file itself
# (https://www.backblaze.com/apidocs/b2-upload-file); b2_download_file_by_id takes GET or POST
# (https://www.backblaze.com/apidocs/b2-download-file-by-id); b2sdk reads file info by name with
# HEAD on the download URL.
JSON_CALL_METHODS = ("GET", "POST")
UPLOAD_METHODS = ("POST",)
DOWNLOAD_BY_NAME_METHODS = ("GET", "HEAD")
DOWNLOAD_BY_ID_METHODS = ("GET", "POST", "HEAD")
HEALTH_METHODS = ("GET",)


class BodyReader:
    """The request body, bounded by Content-Length, remembering how much is left unread."""

    def __init__(self, stream: BinaryIO, length: int) -> None:
        self.stream, self.left = stream, length

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        data = self.stream.read(size) if size else b""
        self.left -= len(data)
        return data

    def drain(self) -> bool:
        """Read what the handler did not, so the connection can serve the next request."""
        if self.left > DRAIN_LIMIT:
            return False
        while self.left and self.read(1 << 20):
            pass
        return self.left == 0


class EmulatorServer(BaseEmulatorServer):
    def __init__(self, address: tuple[str, int], operations: Operations) -> None:
        self.operations = operations
        super().__init__(address, Handler)


class Handler(JsonHandler):
    server: EmulatorServer
    server_version = "casera-b2-emulator"
    content_type = "application/json;charset=utf-8"

    # plumbing ---------------------------------------------------------------------------

    @property
    def ops(self) -> Operations:
        return self.server.operations

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        # Drop query strings: signed URLs carry their token there.
        # No path yet when the request line itself could not be parsed.
        path = getattr(self, "path", "") or ""
        text = format % args
        if path:
            text = text.replace(path, path.split("?", 1)[0])
        log.info("%s %s", self.address_string(), text)

    def _base_url(self) -> str:
        address = self.server.server_address
        host = self.headers.get("Host") or f"{address[0]!s}:{address[1]}"
        return f"http://{host}"

    def answer_headers(self) -> dict[str, str]:
        return {"Cache-Control": "max-age=0, no-cache, no-store"}

    def _send_error(self, error: errors.B2ApiError, body: BodyReader) -> None:
        if not body.drain():
            self.close_connection = True
        # HEAD answers carry no body; b2sdk treats a bare 401 as "maybe expired".
        self.send_json(error.status, None if self.command == "HEAD" else error.body())

    def _token(self, query: dict[str, str]) -> str | None:
        return self.headers.get("Authorization") or query.get("Authorization")

    # entry points -----------------------------------------------------------------------
    # Methods no B2 URL takes still go through routing (JsonHandler), so that an unknown
    # path answers 404 not_found and a known one 405 method_not_allowed, both as B2's JSON.

    def refusal(self, code: int, message: str | None,
                explain: str | None) -> tuple[int, object]:
        if code == HTTPStatus.NOT_IMPLEMENTED:  # http.server's answer to an unknown method
            error = errors.method_not_allowed(str(self.command), JSON_CALL_METHODS)
        else:
            error = errors.bad_request(
                f"malformed HTTP request: {message or code}" + (f" ({explain})" if explain else ""))
        return error.status, error.body()

    def dispatch(self) -> None:
        length = self.body_length()
        body = BodyReader(self.rfile, length or 0)
        try:
            if length is None or self.headers.get("Transfer-Encoding"):
                self.close_connection = True
                raise errors.bad_request("a Content-Length header is required")
            self._route(body)
            # Calls like b2_authorize_account ignore their body ("{}" from b2sdk); unread
            # bytes would be parsed as the next request on this kept-alive connection.
            if not body.drain():
                self.close_connection = True
        except errors.B2ApiError as exc:
            self._send_error(exc, body)
        except Exception:  # noqa: BLE001 - a bug must answer 500, not kill the thread
            log.exception("internal error on %s %s", self.command, self.path.split("?")[0])
            self._send_error(errors.B2ApiError(500, "internal_error", "emulator error"), body)

    def _route(self, body: BodyReader) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        path = url.path
        if path == HEALTH_PATH:
            self._allow(HEALTH_METHODS)
            store = self.ops.store
            self.send_json(200, {"service": "casera-b2-emulator",
                                  "accountId": store.account_id,
                                  "stateDir": str(store.state_dir),
                                  "buckets": len(store.list_buckets()),
                                  "files": store.count_files()})
            return
        if path.startswith("/file/"):
            self._allow(DOWNLOAD_BY_NAME_METHODS)
            bucket_name, _, file_name = path[len("/file/"):].partition("/")
            version = self.ops.find_by_name(self._token(query), bucket_name,
                                            urllib.parse.unquote_plus(file_name))
            self._send_file(version, query)
            return
        match = API_PATH.match(path)
        if not match:
            raise errors.not_found(f"no such API path: {path}")
        version_number, name, rest = int(match[1]), match[2], match[3]
        if name == "b2_authorize_account":
            self._allow(JSON_CALL_METHODS)
            self.send_json(200, self.ops.authorize(self.headers.get("Authorization"),
                                                    version_number, self._base_url()))
        elif name == "b2_upload_file" and rest:
            self._allow(UPLOAD_METHODS)
            principal = auth.authenticate(self.ops.store, self.headers.get("Authorization"),
                                          ("upload",))
            self.send_json(200, self.ops.upload_file(principal, rest, self._plain_headers(),
                                                      body, body.left))
        elif name == "b2_upload_part" and rest:
            self._allow(UPLOAD_METHODS)
            principal = auth.authenticate(self.ops.store, self.headers.get("Authorization"),
                                          ("part",))
            self.send_json(200, self.ops.upload_part(principal, rest, self._plain_headers(),
                                                      body, body.left))
        elif name == "b2_download_file_by_id":
            self._allow(DOWNLOAD_BY_ID_METHODS)
            params = {**query, **self._json_body(body)}
            file_id = str(params.get("fileId") or "")
            self._send_file(self.ops.find_by_id(self._token(query), file_id), query)
        else:
            call = self.ops.json_call(name)
            if call is None:
                raise errors.not_found(f"{name} is not supported by the emulator")
            self._allow(JSON_CALL_METHODS)
            principal = auth.authenticate(self.ops.store, self.headers.get("Authorization"),
                                          ("account",))
            params = {**query, **self._json_body(body)}
            self.send_json(200, call(Call(principal, params, self._base_url())))

    def _allow(self, methods: tuple[str, ...]) -> None:
        if self.command not in methods:
            raise errors.method_not_allowed(self.command, methods)

    def _plain_headers(self) -> dict[str, str]:
        return dict(self.headers.items())

    def _json_body(self, body: BodyReader) -> dict[str, object]:
        if not body.left:
            return {}
        raw = body.read()
        try:
            parsed = strict_json(raw or b"{}")
        except UnicodeDecodeError as exc:
            raise errors.bad_json("body is not UTF-8 encoded JSON") from exc
        except RecursionError as exc:
            raise errors.bad_json("body is nested too deeply to be a B2 request") from exc
        except ValueError as exc:  # JSONDecodeError, NaN, Infinity, 1e400
            raise errors.bad_json(f"body is not valid JSON: {exc}") from exc
        if not isinstance(parsed, dict):
            raise errors.bad_json("body must be a JSON object of the call's parameters, "
                                  f"not {type(parsed).__name__}")
        return parsed

    # downloads --------------------------------------------------------------------------

    def _send_file(self, version: FileVersion, query: dict[str, str]) -> None:
        path = self.ops.store.blob_path(version.file_id)
        size = version.size
        start, end = 0, size - 1
        status = 200
        wanted = self.headers.get("Range")
        if wanted:
            start, end = _parse_range(wanted, size)
            status = 206
        headers = {
            "Content-Type": version.content_type or "application/octet-stream",
            "Content-Length": str(max(end - start + 1, 0)),
            "Accept-Ranges": "bytes",
            "x-bz-file-id": version.file_id,
            "x-bz-file-name": urllib.parse.quote(version.name, safe="/"),
            "x-bz-content-sha1": version.sha1 or "none",
            "x-bz-upload-timestamp": str(version.upload_ms),
        }
        for key, value in version.info.items():
            special = SPECIAL_INFO.get(key.lower())
            if special:
                headers[special] = value
            else:
                headers[f"X-Bz-Info-{key}"] = urllib.parse.quote(value, safe="")
        for param, header in HEADER_OVERRIDES.items():
            if param in query:
                headers[header] = query[param]
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command == "HEAD" or size == 0:
            return
        with Path(path).open("rb") as blob:
            blob.seek(start)
            remaining = end - start + 1
            while remaining > 0:
                chunk = blob.read(min(remaining, 1 << 20))
                if not chunk:
                    break
                self.wfile.write(chunk)
                remaining -= len(chunk)


def _parse_range(header: str, size: int) -> tuple[int, int]:
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
    if not match or not (match[1] or match[2]):
        raise errors.B2ApiError(416, "range_not_satisfiable", f"bad Range: {header}")
    if match[1]:
        start = int(match[1])
        end = min(int(match[2]), size - 1) if match[2] else size - 1
    else:  # suffix form: the last N bytes
        start, end = max(size - int(match[2]), 0), size - 1
    if start > end or start >= size:
        raise errors.B2ApiError(416, "range_not_satisfiable", f"Range {header} of {size} bytes")
    return start, end


def serve(port: int, state_dir: Path, host: str = "127.0.0.1",
          limits: Limits | None = None, also_hosts: list[str] | None = None) -> None:
    """Run the emulator in the foreground until interrupted (SIGINT or SIGTERM); one store,
    served on ``host`` and on each of ``also_hosts`` (each its own listener thread)."""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    store = Store(state_dir)
    operations = Operations(store, limits)
    server = EmulatorServer((host, port), operations)
    others = [EmulatorServer((other, port), operations) for other in also_hosts or []]
    for other in others:
        threading.Thread(target=other.serve_forever, daemon=True).start()
    log.info("B2 emulator on http://%s:%d, state in %s", ", ".join([host, *(also_hosts or [])]),
             port, state_dir)
    try:
        serve_until_stopped(server)
    finally:
        for other in others:
            other.shutdown()
            other.server_close()
        store.close()
        log.info("B2 emulator stopped")
