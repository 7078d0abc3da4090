"""``python -m casera_localcloud.b2 [--port N] [--state-dir DIR]``: the emulator, foreground."""

from __future__ import annotations

import argparse
from pathlib import Path

from casera_localcloud.b2.operations import Limits
from casera_localcloud.b2.server import serve
from casera_localcloud.b2.service import DEFAULT_PORT, default_state_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m casera_localcloud.b2",
                                     description="B2 native API emulator of the local cloud")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (loopback or the project bridge gateway)")
    parser.add_argument("--also-host", action="append", default=[],
                        help="another address to listen on, e.g. the bridge gateway so that "
                             "tasks on the nodes (the Redis backup job) reach the emulator")
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="where buckets, keys and file contents live "
                             "(default: <local cloud home>/b2)")
    parser.add_argument("--recommended-part-size", type=int,
                        default=Limits.recommended_part_size)
    parser.add_argument("--minimum-part-size", type=int,
                        default=Limits.absolute_minimum_part_size)
    args = parser.parse_args(argv)
    try:
        serve(args.port, args.state_dir or default_state_dir(), args.host,
              Limits(args.recommended_part_size, args.minimum_part_size), args.also_host)
    except OSError as exc:  # most often: the port is taken, maybe by a running emulator
        raise SystemExit(f"cannot serve on {args.host}:{args.port}: {exc}") from exc


if __name__ == "__main__":
    main()
