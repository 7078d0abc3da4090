"""The local Neon's CA and certificates, made with the openssl command line.

One server certificate serves the direct endpoints, the poolers and every branch: its SANs
carry the loopback and bridge addresses and a wildcard for the ``*.local.neon`` endpoint
names, so ``verify-full`` works whichever endpoint a client names. (The poolers reach their
computes over a Unix socket and need no certificate of their own; a ``pooler.crt`` left by an
older version is unused.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from casera_localcloud.neon.config import BRIDGE_GATEWAY, DOMAIN, MAIN_ENDPOINT_ID, NeonConfig


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def server_names() -> list[str]:
    return [
        "DNS:localhost",
        f"DNS:{MAIN_ENDPOINT_ID}.{DOMAIN}",
        f"DNS:{MAIN_ENDPOINT_ID}-pooler.{DOMAIN}",
        f"DNS:*.{DOMAIN}",
        "IP:127.0.0.1",
        f"IP:{BRIDGE_GATEWAY}",
    ]


def _leaf(cfg: NeonConfig, stem: str, cn: str, ext: str) -> bool:
    """Make ``stem.key``/``stem.crt`` signed by the CA unless both exist."""
    d = cfg.tls_dir
    key, crt = d / f"{stem}.key", d / f"{stem}.crt"
    if key.exists() and crt.exists():
        return False
    csr, ext_file = d / f"{stem}.csr", d / f"{stem}.ext"
    ext_file.write_text(ext)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", str(key),
             "-out", str(csr))
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(cfg.ca_file), "-CAkey",
             str(d / "ca.key"), "-CAcreateserial", "-days", "825", "-extfile", str(ext_file),
             "-out", str(crt))
    csr.unlink()
    return True


def ensure_tls(cfg: NeonConfig, owner: str = "postgres") -> list[str]:
    """Create the CA and certificates unless present. The CA outlives every ``up``: clients
    keep its path as ``sslrootcert``, and a new CA would break them for nothing."""
    d = cfg.tls_dir
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o755)
    done: list[str] = []
    ca_key, ca_crt = d / "ca.key", cfg.ca_file
    if not (ca_key.exists() and ca_crt.exists()):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
                 "-subj", "/CN=casera local Neon CA", "-keyout", str(ca_key), "-out", str(ca_crt),
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        os.chmod(ca_key, 0o600)
        done.append(f"made CA {ca_crt}")
    usage = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
    if _leaf(cfg, "server", f"{MAIN_ENDPOINT_ID}.{DOMAIN}",
             usage + f"extendedKeyUsage=serverAuth\nsubjectAltName={','.join(server_names())}\n"):
        done.append(f"made server certificate {d / 'server.crt'}")
    # PostgreSQL and PgBouncer refuse a key readable by others or owned by another user.
    key = d / "server.key"
    shutil.chown(key, owner, owner)
    os.chmod(key, 0o600)
    os.chmod(d / "server.crt", 0o644)
    os.chmod(ca_crt, 0o644)
    return done


def server_files(cfg: NeonConfig) -> tuple[Path, Path, Path]:
    d = cfg.tls_dir
    return d / "server.crt", d / "server.key", cfg.ca_file
