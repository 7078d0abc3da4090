"""``python -m casera_localcloud.hetzner``: run the emulator in the foreground.

The token comes from ``--token`` or, better (argv shows in ``ps``), from the environment
variable ``CASERA_HCLOUD_TOKEN``. ``--backend nodes`` (the default) boots real nodes through
``casera_localcloud.nodes.backend()``; ``--backend fake`` only records calls, for tests of
other parts that need the API but no nodes.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from casera.errors import CaseraError
from casera_localcloud.hetzner.app import DEFAULT_FIRST_NODE_HOST, DEFAULT_NODE_NETWORK
from casera_localcloud.hetzner.server import EmulatorHTTPServer, create_app
from casera_localcloud.hetzner.service import DEFAULT_PORT, TOKEN_ENV, load_backend, state_dir


def _port_range(text: str) -> range:
    first, _, last = text.partition("-")
    return range(int(first), int(last or first) + 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m casera_localcloud.hetzner",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="default: <local cloud home>/hetzner")
    parser.add_argument("--token", default=None, help=f"default: ${TOKEN_ENV}")
    parser.add_argument("--backend", choices=("nodes", "fake"), default="nodes")
    parser.add_argument("--node-network", default=DEFAULT_NODE_NETWORK)
    parser.add_argument("--first-node-host", type=int, default=DEFAULT_FIRST_NODE_HOST)
    parser.add_argument("--lb-public-network", default=None,
                        help="give each LB its own loopback address from this network (e.g. "
                             "127.0.1.0/24) and listen on the real ports")
    parser.add_argument("--lb-ports", type=_port_range, default=range(18100, 18200),
                        help="loopback ports for load balancer services, e.g. 18100-18199")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    token = args.token or os.environ.get(TOKEN_ENV)
    if not token:
        parser.error(f"give --token or set {TOKEN_ENV}")
    try:
        nodes = load_backend(args.backend)
    except CaseraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    app = create_app(args.state_dir or state_dir(), nodes, node_network=args.node_network,
                     first_node_host=args.first_node_host, lb_ports=args.lb_ports,
                     lb_public_network=args.lb_public_network)
    server = EmulatorHTTPServer(app, args.host, args.port, token)

    def stop(signum: int, _frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever to return, so it cannot run on its thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logging.info("Hetzner emulator on http://%s:%d/v1 (backend %s)", args.host, args.port,
                 args.backend)
    server.serve_forever()
    server.server_close()
    app.actions.wait_idle(timeout=60)
    app.store.save()
    app.proxies.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
