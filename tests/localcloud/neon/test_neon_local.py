"""The local Neon against the issue's "done when": TLS-only pooler, enforced allowlist driven
by the API (and refused on Launch), point-in-time branches, retention bounds, API auth."""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

pytestmark = pytest.mark.localcloud

PROJECT = "/projects/casera-local"


def connect(**kw):
    return psycopg.connect(**kw, connect_timeout=5, prepare_threshold=None)


def wait_operations(env, ops, timeout=120):
    deadline = time.monotonic() + timeout
    while True:
        statuses = [env.api("GET", f"{PROJECT}/operations/{op['id']}")[1]["operation"]
                    for op in ops]
        if all(s["status"] in ("finished", "failed") for s in statuses):
            return statuses
        assert time.monotonic() < deadline, f"operations still running: {statuses}"
        time.sleep(0.3)


def test_pooler_speaks_tls_and_verifies_with_the_local_ca(neon_env):
    from casera.providers.postgres import tls_attributes

    with connect(**neon_env.conninfo(neon_env.pooler_port)) as conn:
        assert conn.pgconn.ssl_in_use
        assert tls_attributes(conn)["protocol"] in ("TLSv1.2", "TLSv1.3")
        assert conn.execute("select current_user").fetchone() == ("casera",)
        # TLS ends at the pooler, as at Neon's proxy: the compute sees a plain link, so the
        # server-side view cannot prove the client's TLS here any more than on Neon.
        assert conn.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()"
                            ).fetchone() == (False,)
    with connect(**neon_env.conninfo(neon_env.pg_port)) as conn:
        # The direct endpoint is TLS-only too (Neon's is, through its proxy).
        assert conn.pgconn.ssl_in_use
    # verify-full: the endpoint name is checked against the certificate, hostaddr says where.
    with connect(**neon_env.conninfo(
            neon_env.pooler_port, host="ep-casera-local-pooler.local.neon",
            hostaddr="127.0.0.1", sslmode="verify-full", sslrootcert=str(neon_env.ca_file))):
        pass
    with pytest.raises(psycopg.OperationalError, match="does not match|certificate"):
        connect(**neon_env.conninfo(neon_env.pooler_port, host="db.example.com",
                                    hostaddr="127.0.0.1", sslmode="verify-full",
                                    sslrootcert=str(neon_env.ca_file)))


@pytest.mark.parametrize("which", ["pooler", "direct"])
def test_plain_text_connections_are_refused(neon_env, which):
    port = neon_env.pooler_port if which == "pooler" else neon_env.pg_port
    with pytest.raises(psycopg.OperationalError, match="SSL required|no encryption"):
        connect(**neon_env.conninfo(port, sslmode="disable"))


def test_direct_endpoint_takes_no_plain_text_even_from_loopback_with_an_allowlist(neon_env):
    # The pooler's plain link to its compute is the Unix socket: no TCP client, loopback
    # included, gets plain text or past the allowlist that way.
    from casera_localcloud import neon

    neon.up(plan="scale")
    try:
        status, body = neon_env.api("PATCH", PROJECT, {"project": {"settings": {
            "allowed_ips": {"ips": ["10.99.0.1"]}}}})
        assert status == 200, body
        for port in (neon_env.pg_port, neon_env.pooler_port):
            with pytest.raises(psycopg.OperationalError, match="SSL required|no encryption"):
                connect(**neon_env.conninfo(port, sslmode="disable"))
            with pytest.raises(psycopg.OperationalError, match="pg_hba|rejected"):
                connect(**neon_env.conninfo(port))
    finally:
        neon_env.api("PATCH", PROJECT, {"project": {"settings": {"allowed_ips": {"ips": []}}}})
        neon.up(plan="launch")


def test_pooler_shares_server_connections_per_transaction(neon_env):
    # In transaction mode an idle client holds no server connection, so clients that take
    # turns share one backend; session mode would give each client its own.
    clients = [connect(**neon_env.conninfo(neon_env.pooler_port), autocommit=True)
               for _ in range(4)]
    try:
        pids = {c.execute("select pg_backend_pid()").fetchone()[0] for c in clients}
    finally:
        for c in clients:
            c.close()
    assert len(pids) < len(clients), pids


def test_launch_plan_refuses_an_allowlist(neon_env):
    status, project = neon_env.api("GET", PROJECT)
    assert status == 200 and project["project"]["owner"]["subscription_type"] == "launch"
    status, body = neon_env.api("PATCH", PROJECT, {"project": {"settings": {
        "allowed_ips": {"ips": [neon_env.netns.client_ip]}}}})
    assert status == 400
    assert set(body) == {"code", "message"} and "Scale" in body["message"]
    assert neon_env.api("GET", PROJECT)[1]["project"]["settings"]["allowed_ips"]["ips"] == []


def test_allowlist_is_enforced_on_scale(neon_env):
    from casera_localcloud import neon

    ns = neon_env.netns
    remote = {"pooler": neon_env.conninfo(neon_env.pooler_port, host=ns.host_ip),
              "direct": neon_env.conninfo(neon_env.pg_port, host=ns.host_ip)}
    local = {"pooler": neon_env.conninfo(neon_env.pooler_port),
             "direct": neon_env.conninfo(neon_env.pg_port)}
    neon.up(plan="scale")
    try:
        # Empty list: everyone may connect, the namespace client included.
        for name, info in remote.items():
            ok, detail = ns.run_client(info)
            assert ok, f"{name}: {detail}"
        # The direct endpoint sees the namespace's address; through the pooler, the compute
        # sees the pooler's Unix socket (no client address at all).
        assert ns.run_client(remote["direct"])[1] == ns.client_ip
        assert ns.run_client(remote["pooler"])[1] == "None"

        status, body = neon_env.api("PATCH", PROJECT, {"project": {"settings": {
            "allowed_ips": {"ips": [ns.client_ip], "protected_branches_only": False}}}})
        assert status == 200, body
        assert body["project"]["settings"]["allowed_ips"]["ips"] == [ns.client_ip]
        for name, info in remote.items():
            ok, detail = ns.run_client(info)
            assert ok, f"{name}: {detail}"
        # Loopback is not on the list either: the host gets no back door.
        for info in local.values():
            with pytest.raises(psycopg.OperationalError, match="pg_hba|rejected"):
                connect(**info)

        # Remove the namespace client's address: its next connection is refused.
        status, body = neon_env.api("PATCH", PROJECT, {"project": {"settings": {
            "allowed_ips": {"ips": ["127.0.0.1"]}}}})
        assert status == 200, body
        for name, info in remote.items():
            ok, detail = ns.run_client(info)
            assert not ok, f"{name} still accepted {ns.client_ip}: {detail}"
            assert "pg_hba" in detail or "rejected" in detail, detail
        for info in local.values():
            with connect(**info):
                pass

        status, body = neon_env.api("PATCH", PROJECT, {"project": {"settings": {
            "allowed_ips": {"ips": []}}}})
        assert status == 200, body
        ok, detail = ns.run_client(remote["pooler"])
        assert ok, detail
    finally:
        neon_env.api("PATCH", PROJECT, {"project": {"settings": {"allowed_ips": {"ips": []}}}})
        neon.up(plan="launch")


def _committed_around(info: dict, table: str, before: str, after: str) -> datetime:
    """A moment with a row ``before`` committed just ahead of it and ``after`` just past it,
    far enough apart on each side (0.3 s) for a restore target between the two."""
    with connect(**info, autocommit=True) as conn:
        conn.execute(f"create table if not exists {table} (label text)")
        conn.execute(f"insert into {table} values ('{before}')")
    time.sleep(0.3)
    at = datetime.now(UTC)
    time.sleep(0.3)
    with connect(**info, autocommit=True) as conn:
        conn.execute(f"insert into {table} values ('{after}')")
    return at


def test_branch_at_time_holds_only_what_was_committed_before(neon_env):
    info = neon_env.conninfo(neon_env.pooler_port)
    at = _committed_around(info, "pitr_probe", "before", "after")

    started = time.monotonic()
    status, body = neon_env.api("POST", f"{PROJECT}/branches", {
        "branch": {"name": "restore-probe", "parent_timestamp": at.isoformat()},
        "endpoints": [{"type": "read_write"}]})
    assert status == 201, body
    branch_id = body["branch"]["id"]
    ops = wait_operations(neon_env, body["operations"])
    took = time.monotonic() - started
    assert all(op["status"] == "finished" for op in ops), ops
    print(f"branch created in {took:.1f}s")

    branches = neon_env.api("GET", f"{PROJECT}/branches")[1]["branches"]
    assert any(b["id"] == branch_id and b["current_state"] == "ready" for b in branches)
    for pooled in ("false", "true"):
        status, uri = neon_env.api(
            "GET", f"{PROJECT}/connection_uri?branch_id={branch_id}&database_name=casera"
                   f"&role_name=casera&pooled={pooled}")
        assert status == 200, uri
        assert ("-pooler." in uri["uri"]) == (pooled == "true")
        with psycopg.connect(uri["uri"], sslmode="verify-full",
                             sslrootcert=str(neon_env.ca_file), prepare_threshold=None) as conn:
            rows = conn.execute("select label from pitr_probe order by 1").fetchall()
        assert rows == [("before",)]
    # The parent goes on with both rows.
    with connect(**info) as conn:
        assert conn.execute("select count(*) from pitr_probe").fetchone() == (2,)

    status, body = neon_env.api("DELETE", f"{PROJECT}/branches/{branch_id}")
    assert status == 200, body
    wait_operations(neon_env, body["operations"])
    assert neon_env.api("GET", f"{PROJECT}/branches/{branch_id}")[0] == 404
    branch_port = int(uri["uri"].split("@", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", branch_port), 2):
        pass


def test_timestamps_outside_history_retention_are_refused(neon_env):
    too_old = (datetime.now(UTC) - timedelta(days=2)).isoformat()
    status, body = neon_env.api("POST", f"{PROJECT}/branches",
                                {"branch": {"parent_timestamp": too_old}})
    assert status == 400 and "retention" in body["message"], body
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert neon_env.api("POST", f"{PROJECT}/branches",
                        {"branch": {"parent_timestamp": future}})[0] == 400
    # Launch allows 7 days at most; Neon's own wording of the refusal.
    status, body = neon_env.api("PATCH", PROJECT,
                                {"project": {"history_retention_seconds": 604801}})
    assert status == 400
    assert body["message"].startswith("requested history retention seconds exceeds allowed")
    status, body = neon_env.api("PATCH", PROJECT,
                                {"project": {"history_retention_seconds": 604800}})
    assert status == 200 and body["project"]["history_retention_seconds"] == 604800


def test_api_requires_the_bearer_token(neon_env):
    for token in (None, "wrong"):
        status, body = neon_env.api("GET", PROJECT, token=token)
        assert status == 401 and set(body) == {"code", "message"}


def test_second_up_changes_nothing(neon_env):
    from casera_localcloud import neon

    started = time.monotonic()
    lines = neon.up()
    took = time.monotonic() - started
    # The times are reported, not asserted (a speed, not a behaviour).
    print(f"first up {neon_env.up_seconds:.1f}s, second up {took:.1f}s")
    assert lines[0] == "neon: everything already up", lines
    assert any("PgBouncer" in line and "up" in line for line in neon.status())


def _listening(address, port):
    try:
        with socket.create_connection((address, port), timeout=2):
            return True
    except OSError:
        return False


def test_up_reapplies_listen_addresses(neon_env, monkeypatch):
    from casera_localcloud import neon

    host_ip = neon_env.netns.host_ip
    assert _listening(host_ip, neon_env.pg_port) and _listening(host_ip, neon_env.pooler_port)
    monkeypatch.delenv("CASERA_NEON_LISTEN_EXTRA")
    lines = neon.up()
    assert any("restarted PostgreSQL main" in line for line in lines), lines
    assert not _listening(host_ip, neon_env.pg_port)
    assert not _listening(host_ip, neon_env.pooler_port)
    monkeypatch.setenv("CASERA_NEON_LISTEN_EXTRA", host_ip)
    neon.up()
    assert _listening(host_ip, neon_env.pg_port) and _listening(host_ip, neon_env.pooler_port)


def test_branches_and_settings_survive_down_and_up(neon_env):
    from casera_localcloud import neon

    status, body = neon_env.api("POST", f"{PROJECT}/branches",
                                {"endpoints": [{"type": "read_write"}]})
    assert status == 201, body
    branch_id = body["branch"]["id"]
    assert all(op["status"] == "finished" for op in wait_operations(neon_env, body["operations"]))
    neon.down()
    assert not _listening("127.0.0.1", neon_env.pooler_port)
    neon.up()
    status, uri = neon_env.api("GET", f"{PROJECT}/connection_uri?branch_id={branch_id}"
                                      "&database_name=casera&role_name=casera&pooled=true")
    assert status == 200, uri
    with psycopg.connect(uri["uri"], prepare_threshold=None) as conn:
        assert conn.execute("select current_database()").fetchone() == ("casera",)
    status, body = neon_env.api("DELETE", f"{PROJECT}/branches/{branch_id}")
    assert status == 200, body
    wait_operations(neon_env, body["operations"])


def test_branch_before_the_newest_base_backup_uses_an_older_one(neon_env):
    from casera_localcloud.neon import pitr
    from casera_localcloud.neon.config import load_config
    from casera_localcloud.neon.instances import main_instance

    info = neon_env.conninfo(neon_env.pooler_port)
    at = _committed_around(info, "backup_probe", "old", "new")
    cfg = load_config()
    pitr.take_base_backup(cfg, main_instance(cfg))
    assert pitr.backups(cfg)[-1][0] > at

    status, body = neon_env.api("POST", f"{PROJECT}/branches",
                                {"branch": {"parent_timestamp": at.isoformat()},
                                 "endpoints": [{"type": "read_write"}]})
    assert status == 201, body
    assert all(op["status"] == "finished" for op in wait_operations(neon_env, body["operations"]))
    branch_id = body["branch"]["id"]
    status, uri = neon_env.api("GET", f"{PROJECT}/connection_uri?branch_id={branch_id}"
                                      "&database_name=casera&role_name=casera")
    with psycopg.connect(uri["uri"]) as conn:
        assert conn.execute("select label from backup_probe").fetchall() == [("old",)]
    status, body = neon_env.api("DELETE", f"{PROJECT}/branches/{branch_id}")
    wait_operations(neon_env, body["operations"])


def _uri(env, branch_id, pooled="true"):
    status, body = env.api("GET", f"{PROJECT}/connection_uri?branch_id={branch_id}"
                                  f"&database_name=casera&role_name=casera&pooled={pooled}")
    assert status == 200, body
    return body["uri"]


def _add_compute(env, branch_id):
    status, body = env.api("POST", f"{PROJECT}/endpoints",
                           {"endpoint": {"branch_id": branch_id, "type": "read_write"}})
    assert status == 201, body
    assert all(op["status"] == "finished" for op in wait_operations(env, body["operations"]))


def test_a_branch_made_without_endpoints_has_no_compute_until_one_is_added(neon_env):
    info = neon_env.conninfo(neon_env.pooler_port)
    at = _committed_around(info, "nocompute_probe", "before", "after")
    status, body = neon_env.api("POST", f"{PROJECT}/branches",
                                {"branch": {"parent_timestamp": at.isoformat()}})
    assert status == 201 and body["endpoints"] == [], body
    branch_id = body["branch"]["id"]
    assert "connection_uris" not in body
    assert neon_env.api("GET", f"{PROJECT}/branches/{branch_id}/endpoints")[1] == \
        {"endpoints": []}
    status, answer = neon_env.api("GET", f"{PROJECT}/connection_uri?branch_id={branch_id}"
                                         "&database_name=casera&role_name=casera")
    assert status == 404 and "no compute endpoint" in answer["message"], answer
    # The compute added later is restored to the branch's point in time, not to now.
    _add_compute(neon_env, branch_id)
    with psycopg.connect(_uri(neon_env, branch_id), prepare_threshold=None) as conn:
        assert conn.execute("select label from nocompute_probe").fetchall() == [("before",)]
    status, again = neon_env.api("POST", f"{PROJECT}/endpoints",
                                 {"endpoint": {"branch_id": branch_id, "type": "read_write"}})
    assert status == 400 and "already has" in again["message"], again
    status, body = neon_env.api("DELETE", f"{PROJECT}/branches/{branch_id}")
    wait_operations(neon_env, body["operations"])


def test_restore_in_place_keeps_the_connection_strings_and_preserves_the_old_state(neon_env):
    from casera_localcloud.neon.config import MAIN_BRANCH_ID

    info = neon_env.conninfo(neon_env.pooler_port)
    at = _committed_around(info, "inplace_probe", "before", "after")
    with connect(**info, autocommit=True) as conn:
        conn.execute("create table inplace_dropped (n int)")
    uri_before = _uri(neon_env, MAIN_BRANCH_ID)
    path = f"{PROJECT}/branches/{MAIN_BRANCH_ID}/restore"

    started = time.monotonic()
    status, body = neon_env.api("POST", path, {
        "source_branch_id": MAIN_BRANCH_ID, "source_timestamp": at.isoformat(),
        "preserve_under_name": "pre-restore-probe"})
    assert status == 200, body
    assert body["branch"]["id"] == MAIN_BRANCH_ID
    ops = wait_operations(neon_env, body["operations"], timeout=300)
    assert all(op["status"] == "finished" for op in ops), ops
    print(f"restored in place in {time.monotonic() - started:.1f}s")

    assert _uri(neon_env, MAIN_BRANCH_ID) == uri_before
    with connect(**info) as conn:
        assert conn.execute("select label from inplace_probe").fetchall() == [("before",)]
        assert conn.execute("select to_regclass('inplace_dropped')").fetchone() == (None,)
        conn.execute("insert into inplace_probe values ('after-restore')")
        conn.commit()
    branches = neon_env.api("GET", f"{PROJECT}/branches")[1]["branches"]
    kept = [b for b in branches if b["name"] == "pre-restore-probe"]
    assert len(kept) == 1 and kept[0]["current_state"] == "ready", branches
    kept_id = kept[0]["id"]
    # Preserved without a compute, as on Neon; one added shows the state before the restore.
    assert neon_env.api("GET", f"{PROJECT}/branches/{kept_id}/endpoints")[1] == \
        {"endpoints": []}
    _add_compute(neon_env, kept_id)
    with psycopg.connect(_uri(neon_env, kept_id), prepare_threshold=None) as conn:
        assert sorted(conn.execute("select label from inplace_probe").fetchall()) == \
            [("after",), ("before",)]
        assert conn.execute("select to_regclass('inplace_dropped')").fetchone() != (None,)

    # History after the restore follows the restored timeline.
    status, body = neon_env.api("POST", f"{PROJECT}/branches",
                                {"endpoints": [{"type": "read_write"}]})
    assert status == 201, body
    assert all(op["status"] == "finished" for op in wait_operations(neon_env, body["operations"]))
    with psycopg.connect(_uri(neon_env, body["branch"]["id"]), prepare_threshold=None) as conn:
        assert sorted(conn.execute("select label from inplace_probe").fetchall()) == \
            [("after-restore",), ("before",)]

    # The preserved name is taken now: a second restore under it is refused, nothing changes.
    status, again = neon_env.api("POST", path, {
        "source_branch_id": MAIN_BRANCH_ID, "source_timestamp": at.isoformat(),
        "preserve_under_name": "pre-restore-probe"})
    assert status == 409 and "already exists" in again["message"], again
    for branch_id in (body["branch"]["id"], kept_id):
        status, gone = neon_env.api("DELETE", f"{PROJECT}/branches/{branch_id}")
        assert status == 200, gone
        wait_operations(neon_env, gone["operations"])
    assert not (neon_env.home / "neon" / "branches" / kept_id).exists()


def test_prune_keeps_what_the_history_window_needs(neon_env):
    # Runs last on purpose: it moves the start of the history the other tests branch from.
    from casera_localcloud.neon import pitr
    from casera_localcloud.neon.config import load_config
    from casera_localcloud.neon.instances import main_instance

    cfg = load_config()
    pitr.take_base_backup(cfg, main_instance(cfg))
    found = pitr.backups(cfg)
    assert len(found) >= 2
    lines = pitr.prune(cfg, 0)
    assert len(lines) == len(found) - 1
    kept = pitr.backups(cfg)
    assert kept == found[-1:]
    label = (kept[0][1] / "backup_label").read_text()
    first_wal = label.split("(file ", 1)[1].split(")", 1)[0]
    segments = [p.name for p in cfg.wal_dir.iterdir() if len(p.name) == 24]
    assert segments and min(segments) == first_wal

    status, body = neon_env.api("POST", f"{PROJECT}/branches", {})
    assert status == 201, body
    assert all(op["status"] == "finished" for op in wait_operations(neon_env, body["operations"]))
    status, body = neon_env.api("DELETE", f"{PROJECT}/branches/{body['branch']['id']}")
    wait_operations(neon_env, body["operations"])
