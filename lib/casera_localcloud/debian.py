"""Debian packages the local cloud needs on the host, installed on first use.

`make install` installs them all up front; this is for `casera local up` run on its own on a
fresh Debian 12 machine (as root), where the package lists may not even exist yet.
"""

from __future__ import annotations

import os
import shutil
import subprocess


def install(*packages: str) -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=True, env=env)


def ensure_command(command: str, package: str) -> bool:
    """Install ``package`` unless ``command`` is on PATH. Returns True when it installed."""
    if shutil.which(command):
        return False
    install(package)
    return True
