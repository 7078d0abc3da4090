"""Stand-in for Casera's Next.js admin panel: one static page, and /healthz."""

from __future__ import annotations

import os
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .common import exit_on_sigterm, log

PAGE = (Path(__file__).with_name("admin.html")).read_bytes()


class Handler(BaseHTTPRequestHandler):
    server_version = "casera-admin-standin"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            body, kind = PAGE, "text/html; charset=utf-8"
        elif path == "/healthz":
            body, kind = b'{"status": "ok"}', "application/json"
        else:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature
        log("request", path=self.path.split("?", 1)[0], status=args[1] if len(args) > 1 else None)


def main() -> None:
    exit_on_sigterm()
    port = int(os.environ.get("PORT", "3000"))
    server = ThreadingHTTPServer((os.environ.get("BIND", "0.0.0.0"), port), Handler)
    log("listening", port=port)
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        log("stopping")


if __name__ == "__main__":
    main()
