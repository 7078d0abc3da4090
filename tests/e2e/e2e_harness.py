"""What the e2e modules share: `casera ...` as CI and operators run it, and the local
Hetzner through the official client. A module of its own (not conftest.py), so the test
modules can import it."""

from __future__ import annotations

import subprocess
import sys

from hcloud import Client

from casera_localcloud.local_credentials import read_local_secrets

HETZNER = "http://127.0.0.1:18001/v1"


def casera(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "casera.runner.cli", *args],
                          capture_output=True, text=True, timeout=timeout)
    sys.stdout.write(done.stdout[-3000:])
    sys.stderr.write(done.stderr[-3000:])
    return done


def hcloud() -> Client:
    return Client(read_local_secrets()["CASERA_HCLOUD_TOKEN"], api_endpoint=HETZNER)


