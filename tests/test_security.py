"""Exposure: loopback unless asked for, TLS on gRPC, model control behind a key, against a real server."""
from __future__ import annotations

import datetime
import ipaddress

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from clients.retrieval import RetrievalClient
from model_repository.launcher import GRPC_ADMIN_HEADER, ServerConfig, ServerStartError, TritonServer
from tests.conftest import start_server


def self_signed(folder) -> tuple:
    """A certificate for 127.0.0.1 and localhost, made here; it is its own root."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = folder / "server.crt", folder / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


@pytest.mark.parametrize("host,extra,message", [
    ("0.0.0.0", {}, "is not a loopback address: every port"),
    ("0.0.0.0", {"allow_public_bind": True}, "model control (load, unload) would be open to anyone"),
])
def test_beyond_loopback_needs_an_opt_in_and_a_key(repository, tmp_path, host, extra, message):
    with pytest.raises(ServerStartError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TritonServer(ServerConfig(repository, tmp_path, host=host, **extra)).start()


@pytest.fixture(scope="module")
def guarded_server(repository, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    cert, key = self_signed(folder)
    server = start_server(repository, folder / "server", tls_cert=cert, tls_key=key, admin_key="s3cret")
    yield server, cert
    server.stop()


def test_grpc_over_tls_with_a_self_signed_certificate(guarded_server, queries, server):
    guarded, cert = guarded_server
    with RetrievalClient(guarded.grpc_url, 30, tls_root_cert=str(cert)) as tls, RetrievalClient(server.grpc_url) as plain:
        np.testing.assert_allclose(tls.embed(queries[:4]), plain.embed(queries[:4]), atol=1e-6)
    with RetrievalClient(guarded.grpc_url, 5) as no_tls:  # plaintext to a TLS port: refused, not answered
        with pytest.raises(InferenceServerException):
            no_tls.embed(queries[:1])


def test_model_control_needs_the_admin_key_and_inference_does_not(guarded_server, queries):
    guarded, cert = guarded_server
    client = grpcclient.InferenceServerClient(guarded.grpc_url, ssl=True, root_certificates=str(cert))
    try:
        with pytest.raises(InferenceServerException, match=r"This protocol is restricted, expecting header"):
            client.load_model("mips_topk")  # an unauthenticated load is refused
        with pytest.raises(InferenceServerException, match=r"This protocol is restricted"):
            client.unload_model("retrieve", headers={GRPC_ADMIN_HEADER: "wrong"})
        client.load_model("mips_topk", headers={GRPC_ADMIN_HEADER: "s3cret"})  # with the key it is done
        assert client.is_model_ready("retrieve")
    finally:
        client.close()
    with RetrievalClient(guarded.grpc_url, 30, tls_root_cert=str(cert)) as tls:
        assert len(tls.retrieve(queries[:2], k=3).hits[0]) == 3  # inference needs no key


def test_the_deploy_tool_sends_the_admin_key(guarded_server, monkeypatch):
    from build import deploy

    guarded, cert = guarded_server
    monkeypatch.setenv("SN_TLS_ROOT_CERT", str(cert))
    monkeypatch.delenv("SN_ADMIN_KEY", raising=False)
    with pytest.raises(InferenceServerException, match=r"This protocol is restricted"):
        deploy.serving_version(guarded.grpc_url)
    monkeypatch.setenv("SN_ADMIN_KEY", "s3cret")
    assert deploy.serving_version(guarded.grpc_url) == 1
