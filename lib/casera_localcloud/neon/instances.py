"""The computes and poolers of the local Neon, by branch: names, ports and directories."""

from __future__ import annotations

from casera_localcloud.neon.cluster import Instance
from casera_localcloud.neon.config import NeonConfig
from casera_localcloud.neon.pgbouncer import Pooler


def main_instance(cfg: NeonConfig) -> Instance:
    return Instance(
        name="main",
        data_dir=cfg.home / "data",
        port=cfg.pg_port,
        socket_dir=cfg.run_dir,
        log_file=cfg.home / "log" / "postgres-main.log",
        archive_dir=cfg.wal_dir,
    )


def main_pooler(cfg: NeonConfig) -> Pooler:
    return Pooler(name="main", port=cfg.pooler_port, conf_dir=cfg.home / "pgbouncer" / "main",
                  compute=main_instance(cfg))


def branch_instance(cfg: NeonConfig, branch_id: str, slot: int) -> Instance:
    return Instance(
        name=branch_id,
        data_dir=cfg.home / "branches" / branch_id,
        port=cfg.branch_port_base + slot,
        socket_dir=cfg.run_dir,
        log_file=cfg.home / "log" / f"postgres-{branch_id}.log",
        archive_dir=None,
    )


def branch_pooler(cfg: NeonConfig, branch_id: str, slot: int) -> Pooler:
    # Branch poolers sit just above the main pooler's port, one per branch slot.
    return Pooler(name=branch_id, port=cfg.pooler_port + 1 + slot,
                  conf_dir=cfg.home / "pgbouncer" / branch_id,
                  compute=branch_instance(cfg, branch_id, slot))
