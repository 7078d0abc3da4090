"""Stand-in for Casera's Next.js admin panel: one static page, and /healthz."""

from __future__ import annotations

import os
from http import HTTPStatus
from pathlib import Path

from .common import AppHandler, serve

PAGE = (Path(__file__).with_name("admin.html")).read_bytes()


class Handler(AppHandler):
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
        self.send_body(HTTPStatus.OK, body, kind)


def main() -> None:
    serve(Handler, os.environ.get("BIND", "0.0.0.0"), int(os.environ.get("PORT", "3000")))


if __name__ == "__main__":
    main()
