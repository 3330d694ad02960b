"""Certificates and node keys: SANs, chain, permissions, formats, no silent overwrite."""

import datetime as dt
import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from fedsys.deploy.certs import (
    CertPaths,
    authorize_node,
    cert_pem,
    create_node_key,
    default_ca_dir,
    generate_node_key,
    init_certs,
    issue_server_cert,
    load_ca,
    openssh_public,
    read_allowlist,
)
from fedsys.errors import DeploymentError


def _cert(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def _verify(paths, name):
    store = Store([_cert(paths.ca_cert)])
    verifier = PolicyBuilder().store(store).build_server_verifier(name)
    return verifier.verify(_cert(paths.server_cert), [])


def test_server_certificate_covers_host_extra_ips_and_loopback(tmp_path):
    paths = init_certs(tmp_path, server_host="link.example.org", server_ips=["10.0.0.5"])

    sans = _cert(paths.server_cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["link.example.org", "localhost"]
    assert set(sans.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("10.0.0.5"),
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    }


def test_chain_verifies_for_covered_names_only(tmp_path):
    paths = init_certs(tmp_path, server_host="link.example.org", loopback=False)

    chain = _verify(paths, x509.DNSName("link.example.org"))

    assert chain[-1] == _cert(paths.ca_cert)
    with pytest.raises(VerificationError):
        _verify(paths, x509.DNSName("localhost"))
    with pytest.raises(VerificationError):
        _verify(paths, x509.IPAddress(ipaddress.ip_address("127.0.0.1")))


def test_ca_may_only_sign_leaf_certificates(tmp_path):
    paths = init_certs(tmp_path, server_host="h")

    ca = _cert(paths.ca_cert).extensions.get_extension_for_class(x509.BasicConstraints).value
    leaf = _cert(paths.server_cert).extensions.get_extension_for_class(x509.BasicConstraints).value
    assert ca.ca and ca.path_length == 0
    assert not leaf.ca


def test_private_keys_are_owner_only_and_certificates_public(tmp_path):
    paths = init_certs(tmp_path, server_host="h")
    node = create_node_key(tmp_path, "site-1")
    ca = CertPaths(default_ca_dir(tmp_path))

    assert stat.S_IMODE(ca.directory.stat().st_mode) == 0o700
    for secret in (ca.ca_key, paths.server_key, node.private_key):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    for public in (paths.ca_cert, paths.server_cert, node.public_key, paths.allowlist):
        assert stat.S_IMODE(public.stat().st_mode) == 0o644


def test_nothing_is_overwritten_without_force(tmp_path):
    init_certs(tmp_path, server_host="h")
    ca_key = CertPaths(default_ca_dir(tmp_path)).ca_key
    before = ca_key.read_bytes()

    with pytest.raises(DeploymentError, match="ca.crt already exists"):
        init_certs(tmp_path, server_host="h")
    assert ca_key.read_bytes() == before
    init_certs(tmp_path, server_host="h", force=True)
    assert ca_key.read_bytes() != before


def test_the_ca_key_is_written_apart_from_what_the_server_uses(tmp_path):
    paths = init_certs(tmp_path / "certs", server_host="h", ca_dir=tmp_path / "offline")

    assert sorted(p.name for p in paths.directory.iterdir()) == ["ca.crt", "server.crt", "server.key"]
    assert sorted(p.name for p in (tmp_path / "offline").iterdir()) == ["ca.crt", "ca.key"]
    _, ca_cert = load_ca(tmp_path / "offline")
    assert cert_pem(ca_cert) == paths.ca_cert.read_bytes()


def test_the_ca_dir_must_differ_from_the_certificate_directory(tmp_path):
    with pytest.raises(DeploymentError, match="--ca-dir must not be the server's certificate directory"):
        init_certs(tmp_path, server_host="h", ca_dir=tmp_path / ".")


def test_a_holder_generates_its_key_and_the_operator_allows_only_the_public_half(tmp_path):
    holder = generate_node_key(tmp_path / "holder" / "node.key", name="site-1")
    operator = init_certs(tmp_path / "certs", server_host="h")

    authorize_node(operator.directory, "site-1", holder.public_key.read_text())

    assert holder.public_key == tmp_path / "holder" / "node.pub"
    assert stat.S_IMODE(holder.private_key.stat().st_mode) == 0o600
    key = serialization.load_ssh_private_key(holder.private_key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    [entry] = read_allowlist(operator.directory)
    assert (entry.name, entry.public_key) == ("site-1", openssh_public(key.public_key()))
    assert not any(p.suffix == ".key" and p.name != "server.key" for p in operator.directory.rglob("*"))
    with pytest.raises(DeploymentError, match="node.key already exists"):
        generate_node_key(holder.private_key, name="site-1")


def test_node_key_is_not_replaced_without_force(tmp_path):
    node = create_node_key(tmp_path, "site-1")
    key = node.private_key.read_bytes()

    with pytest.raises(DeploymentError, match="site-1.key already exists"):
        create_node_key(tmp_path, "site-1")
    assert node.private_key.read_bytes() == key
    create_node_key(tmp_path, "site-1", force=True)
    assert [e.name for e in read_allowlist(tmp_path)] == ["site-1"]


def test_node_keys_are_p384_in_the_formats_flower_reads(tmp_path):
    node = create_node_key(tmp_path, "site-1")

    private = serialization.load_ssh_private_key(node.private_key.read_bytes(), password=None)
    public = serialization.load_ssh_public_key(node.public_key.read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
    assert node.private_key.read_text().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert node.public_key.read_text().startswith("ecdsa-sha2-nistp384 ")
    assert public.public_numbers() == private.public_key().public_numbers()


def test_allowlist_records_each_node_once(tmp_path):
    a = create_node_key(tmp_path, "site-a")
    create_node_key(tmp_path, "site-b")

    entries = read_allowlist(tmp_path)
    assert [e.name for e in entries] == ["site-a", "site-b"]
    assert entries[0].public_key == " ".join(a.public_key.read_text().split()[:2])
    with pytest.raises(DeploymentError, match="already lists node 'site-a'"):
        authorize_node(tmp_path, "site-a", entries[1].public_key)
    with pytest.raises(DeploymentError, match="already allowlisted under another name"):
        authorize_node(tmp_path, "site-c", entries[0].public_key)


@pytest.mark.parametrize("name", ["", "../x", "a b", "-lead", "x" * 65])
def test_bad_node_names_are_rejected(tmp_path, name):
    with pytest.raises(DeploymentError, match="node name must match"):
        create_node_key(tmp_path, name)


def test_non_ecdsa_and_garbage_public_keys_are_rejected(tmp_path):
    with pytest.raises(DeploymentError, match="not an OpenSSH public key"):
        authorize_node(tmp_path, "x", "hello world")
    ed = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    with pytest.raises(DeploymentError, match="must be ECDSA"):
        authorize_node(tmp_path, "x", ed)


def test_bad_ip_is_named(tmp_path):
    with pytest.raises(DeploymentError, match="--server-ip must be an IP address, got 'not-an-ip'"):
        init_certs(tmp_path, server_host="h", server_ips=["not-an-ip"])


def test_an_expired_certificate_can_be_issued_for_tests(tmp_path):
    init_certs(tmp_path, server_host="h")
    ca_key, ca_cert = load_ca(default_ca_dir(tmp_path))
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)

    _, cert = issue_server_cert(ca_key, ca_cert, names=["h"], ips=[], not_before=past, valid_days=1)

    assert cert.not_valid_after_utc < dt.datetime.now(dt.UTC)
    cert.verify_directly_issued_by(ca_cert)
