"""The Cloudflare emulator's edge endpoints through the unmodified ``cloudflare`` SDK: zone
settings, Origin CA certificates signed by the emulator's CA, and the published IP ranges."""

from __future__ import annotations

from pathlib import Path

import cloudflare
import pytest
import requests
from cloudflare import Cloudflare
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from localcloud_harness import free_port

from casera.origin_tls import facts, new_key_and_csr, signed_by
from casera_localcloud.cloudflare import service
from casera_localcloud.cloudflare.edge import CA_CERT, PUBLISHED_IPV4

ZONE = "casera.test"
TOKEN = "casera-edge-token_0123456789abcdefghijklmn"


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory):
    state_dir = tmp_path_factory.mktemp("cloudflare-edge")
    port = free_port()
    service.start(port, state_dir, zones=[ZONE], tokens=[TOKEN], show=False)
    yield port, state_dir
    service.stop(state_dir)


@pytest.fixture(scope="module")
def cf(emulator) -> Cloudflare:
    return Cloudflare(api_token=TOKEN, base_url=service.endpoint(emulator[0]), max_retries=0,
                      timeout=5)


@pytest.fixture(scope="module")
def zone_id(cf) -> str:
    return next(iter(cf.zones.list(name=ZONE))).id


def code_of(exc: pytest.ExceptionInfo[cloudflare.APIStatusError]) -> int:
    return int(exc.value.body["errors"][0]["code"])  # type: ignore[index]


def test_zone_settings_start_weak_and_take_only_valid_values(cf, zone_id) -> None:
    assert cf.zones.settings.get("ssl", zone_id=zone_id).value == "flexible"
    assert cf.zones.settings.get("min_tls_version", zone_id=zone_id).value == "1.0"
    assert cf.zones.settings.edit("ssl", zone_id=zone_id, value="strict").value == "strict"
    assert cf.zones.settings.get("ssl", zone_id=zone_id).value == "strict"
    for name, bad in (("ssl", "very-strict"), ("always_use_https", True),
                      ("min_tls_version", "1.4"),
                      ("security_header", {"strict_transport_security": {"max_age": -1}}),
                      ("security_header", {"strict_transport_security": {"enabled": "yes"}})):
        with pytest.raises(cloudflare.BadRequestError) as err:
            cf.zones.settings.edit(name, zone_id=zone_id, value=bad)
        assert code_of(err) == 1007, (name, bad)
    with pytest.raises(cloudflare.BadRequestError) as err:
        cf.zones.settings.get("no_such_setting", zone_id=zone_id)
    assert code_of(err) == 1006
    hsts = cf.zones.settings.edit("security_header", zone_id=zone_id, value={
        "strict_transport_security": {"enabled": True, "max_age": 600}})
    assert hsts.value.strict_transport_security.max_age == 600
    assert hsts.value.strict_transport_security.include_subdomains is False  # merged


def test_origin_ca_signs_a_csr_for_names_in_the_zone_only(cf, zone_id, emulator) -> None:
    key, csr = new_key_and_csr(f"api.{ZONE}")
    made = cf.origin_ca_certificates.create(csr=csr, hostnames=[f"api.{ZONE}"],
                                            request_type="origin-ecc", requested_validity=90)
    ca = (Path(emulator[1]) / CA_CERT).read_text()
    assert signed_by(made.certificate, ca) and facts(made.certificate).covers(f"api.{ZONE}")
    assert 89 < facts(made.certificate).days_left() <= 90
    assert key.reveal().splitlines()[1] not in str(made)  # Cloudflare never has the key
    assert made.id in [c.id for c in cf.origin_ca_certificates.list(zone_id=zone_id)]
    for hostnames, request_type, validity in (
            (["api.example.org"], "origin-ecc", 90),     # not a zone of the account
            ([f"api.{ZONE}"], "origin-rsa", 90),          # an ECDSA CSR
            ([f"api.{ZONE}"], "origin-ecc", 42),          # not an offered validity
            ([], "origin-ecc", 90)):
        with pytest.raises(cloudflare.BadRequestError):
            cf.origin_ca_certificates.create(csr=csr, hostnames=hostnames,
                                             request_type=request_type,  # type: ignore[arg-type]
                                             requested_validity=validity)  # type: ignore[arg-type]
    with pytest.raises(cloudflare.BadRequestError):
        cf.origin_ca_certificates.create(csr="garbage", hostnames=[f"api.{ZONE}"],
                                         request_type="origin-ecc")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, "x")])).sign(rsa_key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM).decode())
    assert cf.origin_ca_certificates.create(csr=rsa_csr, hostnames=[f"*.{ZONE}"],
                                            request_type="origin-rsa").requested_validity == 5475
    revoked = cf.origin_ca_certificates.delete(made.id)
    assert revoked.revoked_at is not None
    assert made.id not in [c.id for c in cf.origin_ca_certificates.list(zone_id=zone_id)]


def test_ips_are_published_without_a_token_and_can_change(cf, emulator) -> None:
    anonymous = Cloudflare(api_token="x" * 40, base_url=service.endpoint(emulator[0]),
                           max_retries=0)
    first = anonymous.ips.list()
    assert first.ipv4_cidrs == PUBLISHED_IPV4 and first.ipv6_cidrs
    changed = requests.put(f"http://127.0.0.1:{emulator[0]}/_casera/ips", timeout=5,
                           headers={"Authorization": f"Bearer {TOKEN}"},
                           json={"ipv4_cidrs": ["198.51.100.0/24"], "ipv6_cidrs": []})
    assert changed.status_code == 200, changed.text
    second = cf.ips.list()
    assert second.ipv4_cidrs == ["198.51.100.0/24"] and second.etag != first.etag
    refused = requests.put(f"http://127.0.0.1:{emulator[0]}/_casera/ips", timeout=5,
                           json={"ipv4_cidrs": [], "ipv6_cidrs": []})
    assert refused.status_code in (400, 401, 403)
