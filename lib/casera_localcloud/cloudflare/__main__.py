"""``python -m casera_localcloud.cloudflare [--port N] [--state-dir DIR] [--zone Z]
[--token T]``: the Cloudflare DNS emulator, in the foreground."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from casera_localcloud.cloudflare.server import serve
from casera_localcloud.cloudflare.service import DEFAULT_PORT, default_state_dir

TOKENS_ENV = "CASERA_CLOUDFLARE_EMULATOR_TOKENS"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m casera_localcloud.cloudflare",
                                     description="Cloudflare DNS API emulator of the local cloud")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (loopback or the project bridge gateway)")
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="where zones, records and tokens live "
                             "(default: <local cloud home>/cloudflare)")
    parser.add_argument("--zone", action="append", default=[],
                        help="zone to create if missing (repeatable)")
    parser.add_argument("--token", action="append", default=[],
                        help=f"API token to accept (repeatable; also ${TOKENS_ENV}, "
                             "comma-separated, which keeps it out of the process list)")
    parser.add_argument("--allow-private-proxied", action="store_true",
                        help="accept proxied A/AAAA records on private addresses, which "
                             "Cloudflare refuses (code 9003)")
    args = parser.parse_args(argv)
    tokens = [*args.token, *filter(None, os.environ.get(TOKENS_ENV, "").split(","))]
    try:
        serve(args.port, args.state_dir or default_state_dir(), args.host, args.zone, tokens,
              args.allow_private_proxied)
    except OSError as exc:  # most often: the port is taken, maybe by a running emulator
        raise SystemExit(f"cannot serve on {args.host}:{args.port}: {exc}") from exc


if __name__ == "__main__":
    main()
