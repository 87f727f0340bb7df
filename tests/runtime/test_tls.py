"""Mutual TLS between workers and a client, with certificates made here (the `cryptography` package): a
request runs through two workers over TLS with the unsplit model's tokens; a caller without a certificate,
or with one from another CA, cannot even connect."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress

import pytest
import torch

pytest.importorskip("cryptography")
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

from profiler.generate import greedy_generate  # noqa: E402
from runtime.client import Client, RequestFailed  # noqa: E402
from runtime.transport import GrpcTransport, Tls, TransportError  # noqa: E402
from tests.runtime.conftest import TOKEN, adapter, running_workers, stage_plan  # noqa: E402


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def issue(ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], cn: str) -> Tls:
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return Tls(ca_cert.public_bytes(pem), cert.public_bytes(pem),
               key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def test_mutual_tls_between_workers_and_client(folders) -> None:
    ad = adapter(folders, "gpt2")
    prompt = torch.tensor([[3, 1, 4, 1, 5]])
    expect = greedy_generate(ad, prompt, new_tokens=6).tokens
    ca, other_ca = make_ca("aiflow test CA"), make_ca("someone else")
    worker_tls, client_tls, stranger_tls = issue(ca, "worker"), issue(ca, "client"), issue(other_ca, "stranger")

    async def scenario() -> None:
        async with running_workers(ad, ("A", "B"), tls=worker_tls) as (_, addresses):
            sp = stage_plan(ad, ["A", "B", "B", "A"], addresses)
            async with Client(sp, token=TOKEN, tls=client_tls) as client:
                assert torch.equal((await client.generate(prompt, max_new_tokens=6)).tokens, expect)
            for tls in (None, stranger_tls):                   # no certificate; a certificate of another CA
                t = GrpcTransport(TOKEN, tls=tls)
                with pytest.raises(TransportError) as err:
                    await t.health(addresses["A"], timeout=3.0)
                assert err.value.code == "UNAVAILABLE"
                await t.close()
            with pytest.raises(RequestFailed, match="not answering"):
                async with Client(sp, token=TOKEN, tls=stranger_tls, call_timeout_s=3.0):
                    pass

    asyncio.run(scenario())


def test_tls_from_the_environment_is_all_or_nothing(tmp_path) -> None:
    assert Tls.from_env({}) is None
    with pytest.raises(ValueError, match="all of AIFLOW_TLS_CA"):
        Tls.from_env({"AIFLOW_TLS_CA": "x"})
    with pytest.raises(ValueError, match="TLS CA .*missing"):
        Tls.from_env({"AIFLOW_TLS_CA": str(tmp_path / "missing"), "AIFLOW_TLS_CERT": "c", "AIFLOW_TLS_KEY": "k"})


def test_a_verifier_serves_cooperative_decoding_over_mutual_tls(tmp_path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    from profiler.models import load_adapter
    from runtime.cooperative import CoopClient, Verifier, coop_route

    cfg = GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2, bos_token_id=None,
                     eos_token_id=None)
    torch.manual_seed(5)
    target = GPT2LMHeadModel(cfg).eval()
    draft = GPT2LMHeadModel(GPT2Config(**{**cfg.to_dict(), "n_layer": 1})).eval()
    draft.load_state_dict(target.state_dict(), strict=False)
    target.save_pretrained(tmp_path / "t")
    draft.save_pretrained(tmp_path / "d")
    prompt = torch.tensor([[5, 17, 3]])
    with torch.no_grad():
        want = target.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None)[0, 3:]
    ca, other_ca = make_ca("aiflow test CA"), make_ca("someone else")

    async def scenario() -> list[int]:
        t, d = load_adapter(str(tmp_path / "t")), load_adapter(str(tmp_path / "d"))
        verifier = Verifier("cloud", t, token=TOKEN, tls=issue(ca, "verifier"))
        address = await verifier.start("127.0.0.1:0")
        try:
            for tls in (None, issue(other_ca, "stranger")):     # no certificate; one of another CA
                stranger = GrpcTransport(TOKEN, tls=tls)
                with pytest.raises(TransportError) as err:
                    await stranger.health(address, timeout=3.0)
                assert err.value.code == "UNAVAILABLE"
                await stranger.close()
            transport = GrpcTransport(TOKEN, tls=issue(ca, "client"))
            try:
                route = coop_route(t, "dev", ["cloud"] * len(t.units()), ["dev"] * len(d.units()), 3)
                res = await CoopClient(d, t, route, address, transport).generate(prompt, max_new_tokens=8, eos=None)
                return res.tokens
            finally:
                await transport.close()
        finally:
            await verifier.stop()

    assert torch.equal(torch.tensor(asyncio.run(scenario())), want)
