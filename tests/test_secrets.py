"""Secrets: masked everywhere they could be printed; environment wins over the file; scrub."""

from __future__ import annotations

import base64
import pickle
from pathlib import Path

import pytest

from casera.errors import SecretMissingError
from casera.runner.scrub import find_leaks, scrub
from casera.secrets import MASK, Secret, SecretStore

VALUE = "s3cr3t-V@lue/with+chars="


def test_secret_never_prints_itself() -> None:
    secret = Secret("db_password", VALUE)
    for shown in (repr(secret), str(secret), f"{secret}", f"{secret!r}", "%s" % secret,  # noqa: UP031
                  repr([secret]), repr({"k": secret})):
        assert VALUE not in shown
    assert secret.reveal() == VALUE
    with pytest.raises(TypeError):
        pickle.dumps(secret)


def test_store_reads_environment_then_file_and_explains_what_is_missing(tmp_path: Path) -> None:
    file = tmp_path / "local.env"
    file.write_text("# comment\nCASERA_DB_PASSWORD=from-file\nCASERA_SECRET_KEY='quoted'\n")
    store = SecretStore("local", environ={"CASERA_DB_PASSWORD": "from-env"}, file=file)
    assert store.get("db_password").reveal() == "from-env"
    assert store.get("secret_key").reveal() == "quoted"
    assert store.source("secret_key") == "file local.env"
    with pytest.raises(SecretMissingError, match="CASERA_APNS_KEY"):
        store.get("apns_key")
    assert "from-env" not in repr(store)


def test_malformed_secrets_file_names_the_line_not_its_content(tmp_path: Path) -> None:
    file = tmp_path / "local.env"
    file.write_text("CASERA_DB_PASSWORD=ok\njust-a-secret-value\n")
    with pytest.raises(SecretMissingError) as caught:
        SecretStore("local", environ={}, file=file)
    assert "local.env:2" in str(caught.value) and "just-a-secret-value" not in str(caught.value)


def test_scrub_masks_every_form_and_scan_finds_what_is_left() -> None:
    text = (f'{{"a": "{VALUE}", "b": "s3cr3t-V%40lue%2Fwith%2Bchars%3D", '
            f'"c": "{base64.b64encode(VALUE.encode()).decode()}"}}')
    assert find_leaks(text, [VALUE])
    clean, count = scrub(text, [VALUE])
    assert count == 3 and MASK in clean
    assert find_leaks(clean, [VALUE]) == []
    assert VALUE not in clean
