"""Secrets: masked everywhere they could be printed; environment wins over the file; scrub."""

from __future__ import annotations

import base64
import json
import pickle
import re
from pathlib import Path
from urllib.parse import quote

import pytest

from casera.errors import SecretMissingError
from casera.operator_secrets import MASK, Secret, SecretStore
from casera.runner.scrub import LiveSecrets, find_leaks, scrub

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


def _embedded(prefix: bytes, value: str, urlsafe: bool = False) -> str:
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    return encode(prefix + value.encode() + b"-and-more-bytes").decode()


@pytest.mark.parametrize("form", [
    pytest.param(VALUE.encode().hex(), id="hex"),
    pytest.param(VALUE.encode().hex().upper(), id="HEX"),
    pytest.param(json.dumps(VALUE), id="json"),
    pytest.param(quote(VALUE), id="url-quoted, slash kept"),
    pytest.param(base64.urlsafe_b64encode(VALUE.encode()).decode(), id="base64url"),
])
def test_scrub_masks_whole_value_encodings(form: str) -> None:
    text = f"before {form} after"
    assert find_leaks(text, [VALUE])
    clean, count = scrub(text, [VALUE])
    assert count == 1 and find_leaks(clean, [VALUE]) == []


@pytest.mark.parametrize("prefix", [b"", b"u", b"us", b"user:", b"casera:"])
@pytest.mark.parametrize("urlsafe", [False, True])
def test_scan_finds_the_value_inside_a_base64_blob_at_any_alignment(prefix: bytes,
                                                                    urlsafe: bool) -> None:
    blob = _embedded(prefix, VALUE, urlsafe)
    assert VALUE not in blob
    leaks = find_leaks(f"Authorization: Basic {blob}", [VALUE])
    assert leaks == [f"secret #1 ({len(VALUE)} chars) as base64 inside a larger blob"]
    scrubbed = scrub(blob, [VALUE])[0]
    if len(prefix) % 3 == 0 and len(VALUE) % 3 == 0:
        # Aligned, the value's own base64 is a clean run of characters: the scrub masks it.
        assert find_leaks(scrubbed, [VALUE]) == []
    else:
        # Elsewhere the scrub leaves the blob whole, and the scan still finds the value.
        assert find_leaks(scrubbed, [VALUE])


def test_scan_is_quiet_on_unrelated_text_and_names_no_value() -> None:
    other = base64.b64encode(b"user:another-password-entirely").decode()
    assert find_leaks(f"Basic {other} {VALUE[:-1]} {VALUE.encode().hex()[2:]}", [VALUE]) == []
    assert VALUE not in " ".join(find_leaks(VALUE, [VALUE]))


def test_live_secrets_pick_up_a_key_stored_mid_run(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from casera.b2_keys import key_store

    monkeypatch.setenv("CASERA_PROJECT_DIR", str(tmp_path))
    (tmp_path / "secrets").mkdir()
    live = LiveSecrets("local", ["known-at-start"])
    assert "known-at-start" in live()
    key_store("local").put("casera-local-api-uploads", "k-1", Secret("k", "made-mid-run-77"))
    assert "made-mid-run-77" in live()


def test_lock_label_values_follow_hetzner_rules() -> None:
    from casera.runner.lock import LockHolder, label_value

    rule = re.compile(r"^(|[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9._-]{0,61}[a-zA-Z0-9])$")
    for text in ("DOMAIN\\ana@laptop", "-x-", "a" * 80, "ci runner #7", "ünïcode", "20260101"):
        assert rule.match(label_value(text)), text
    holder = LockHolder.for_this_process("0f3a9c1e", "ana@example.com", "bootstrap")
    assert all(rule.match(value) for value in holder.labels().values())
    assert LockHolder.from_labels(holder.labels()) == holder
