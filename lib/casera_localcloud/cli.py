"""``casera local up | down | status | kill-node | partition | heal``.

Each part of the local cloud is a module with ``up()``, ``down()`` and ``status()`` returning
lines of what it found and did (docs/local-cloud-conventions.md). ``up`` starts them in
dependency order (the engine and nodes first: the registry and PostgreSQL listen on the node
bridge's gateway), ``down`` stops them in reverse.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import secrets as random_secrets
import subprocess
import sys
import time
from types import ModuleType

from casera.errors import CaseraError
from casera.paths import local_cloud_home
from casera_localcloud.local_credentials import read_local_secrets, write_local_secret

# (name, module); order is start order.
PARTS: tuple[tuple[str, str], ...] = (
    ("nodes", "casera_localcloud.nodes.service"),
    ("registry", "casera_localcloud.registry"),
    ("images", "casera_localcloud.images"),
    ("neon", "casera_localcloud.neon.service"),
    ("b2", "casera_localcloud.b2.service"),
    ("cloudflare", "casera_localcloud.cloudflare.service"),
    ("hetzner", "casera_localcloud.hetzner.service"),
)
# The app's own secrets, which no emulator issues: the local cloud makes them up once.
APP_SECRETS = ("CASERA_SECRET_KEY", "CASERA_APNS_KEY")


def _module(path: str) -> ModuleType:
    return importlib.import_module(path)


def ensure_operator() -> list[str]:
    """The operator's SSH key (params/local.yaml points at it) and the app's own secrets."""
    lines = []
    key = local_cloud_home() / "ssh" / "operator_ed25519"
    if key.exists():
        lines.append(f"operator key {key} exists")
    else:
        key.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                        "casera-local-operator", "-f", str(key)], check=True)
        lines.append(f"created operator key {key}")
    present = read_local_secrets()
    for name in APP_SECRETS:
        if name in present:
            lines.append(f"{name} present in secrets/local.env")
        else:
            write_local_secret(name, random_secrets.token_urlsafe(32))
            lines.append(f"generated {name} into secrets/local.env")
    return lines


def up() -> int:
    started = time.monotonic()
    _print("operator", ensure_operator())
    for name, path in PARTS:
        part_started = time.monotonic()
        _print(name, _module(path).up(), time.monotonic() - part_started)
    print(f"local cloud up in {time.monotonic() - started:.0f} s")
    return 0


def down(purge: bool = False) -> int:
    """Take every part down. ``purge`` also removes what the SaaS emulators keep like a real
    account would (B2 buckets and keys, Cloudflare records, the Neon project and its
    history), so the next `up` is an empty cloud; the image caches stay either way."""
    failures = 0
    for name, path in reversed(PARTS):
        try:
            part_down = _module(path).down
            takes_purge = "purge" in inspect.signature(part_down).parameters
            _print(name, part_down(purge=True) if purge and takes_purge else part_down())
        except Exception as exc:  # noqa: BLE001 - take down the rest, then report
            failures += 1
            print(f"[{name}] could not be taken down: {exc}", file=sys.stderr)
    return 1 if failures else 0


def status() -> int:
    for name, path in PARTS:
        try:
            _print(name, _module(path).status())
        except Exception as exc:  # noqa: BLE001 - status reports, never fails
            print(f"[{name}] status unavailable: {type(exc).__name__}: {exc}")
    return 0


def _print(name: str, lines: list[str], seconds: float | None = None) -> None:
    took = f" ({seconds:.1f} s)" if seconds is not None else ""
    print(f"[{name}]{took}")
    for line in lines:
        print(f"  {line}")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="casera local")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start everything params/local.yaml points at (idempotent)")
    p_down = sub.add_parser("down", help="remove every node, network, volume and process up "
                            "made")
    p_down.add_argument("--purge", action="store_true",
                        help="also remove the emulators' account state (an empty cloud)")
    sub.add_parser("status", help="what runs, and this kernel's limits")
    for fault in ("kill-node", "partition", "heal"):
        sub.add_parser(fault).add_argument("name", help="server name, e.g. casera-local-2")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            return up()
        if args.command == "down":
            return down(purge=args.purge)
        if args.command == "status":
            return status()
        nodes = _module("casera_localcloud.nodes")
        action = {"kill-node": nodes.kill_node, "partition": nodes.partition_node,
                  "heal": nodes.heal_node}[args.command]
        action(args.name)
        print(f"{args.command} {args.name}: done")
        return 0
    except CaseraError as exc:
        print(f"casera local {args.command}: {exc}", file=sys.stderr)
        return 2


def main_argv() -> int:
    """The `casera-local` script: the same commands as `casera local`."""
    return main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main_argv())
