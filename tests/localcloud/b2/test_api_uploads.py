"""The stand-in api's uploads (``apps/uploads.py``: B2's native API over urllib, what the
steady probe's B2 half goes through) against the B2 emulator on a free port, with a
bucket-restricted key as the stack mounts it: the bytes come back, a missing name is a 404,
and a deleted key is refused (what the probe sees if a rotation retires a key a task still
uses). No cloud."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from b2sdk.v2 import B2Api, InMemoryAccountInfo
from localcloud_harness import free_port

from casera_localcloud.b2 import service
from casera_localcloud.images.apps import uploads


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, B2Api]]:
    state_dir = tmp_path_factory.mktemp("b2-api-uploads")
    port = free_port()
    service.start(port, state_dir, show=False)
    master = B2Api(InMemoryAccountInfo())
    master.authorize_account(service.endpoint(port), *service.master_credentials(state_dir))
    yield service.endpoint(port), master
    service.stop(state_dir)


def mount(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, realm: str, key_id: str,
          key: str) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir(exist_ok=True)
    (secrets / "b2_uploads_key_id").write_text(key_id)
    (secrets / "b2_uploads_key").write_text(key)
    monkeypatch.setenv("CASERA_SECRETS_DIR", str(secrets))
    monkeypatch.setenv("B2_REALM", realm)
    uploads._session.clear()


def test_an_upload_comes_back_byte_equal_and_a_deleted_key_is_refused(
        emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    realm, master = emulator
    bucket = master.create_bucket("casera-uploads-t", "allPrivate")
    key = master.create_key(["listBuckets", "listFiles", "readFiles", "writeFiles"],
                            "api-uploads-t", bucket_id=bucket.id_)
    mount(tmp_path, monkeypatch, realm, key.id_, key.application_key)

    made = uploads.put("steady-probe-0", b"first")
    assert made["size"] == 5 and made["name"] == "steady-probe-0"
    uploads.put("steady-probe-0", b"second")  # a new version
    assert uploads.get("steady-probe-0") == b"second"
    assert bucket.get_file_info_by_name("api-uploads/steady-probe-0").size == 6
    with pytest.raises(uploads.UploadError) as missing:
        uploads.get("never-uploaded")
    assert missing.value.status == 404
    with pytest.raises(ValueError, match="upload name"):
        uploads.put("../etc", b"x")

    master.delete_key_by_id(key.id_)
    uploads._session.clear()  # a new task with the deleted key
    with pytest.raises(uploads.UploadError) as refused:
        uploads.put("steady-probe-1", b"x")
    assert refused.value.status == 401


def test_an_unrestricted_key_is_not_used(emulator, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    realm, master = emulator
    key = master.create_key(["listBuckets", "readFiles", "writeFiles"], "unrestricted-t")
    mount(tmp_path, monkeypatch, realm, key.id_, key.application_key)
    with pytest.raises(uploads.UploadError, match="not restricted to a bucket"):
        uploads.put("x", b"x")
