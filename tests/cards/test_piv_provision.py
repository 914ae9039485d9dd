"""`ccidgadget card ...`: the function API and the argparse hook."""

import argparse
import datetime
import io
import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from ccidgadget import cli_card
from ccidgadget.cards import pin, provision
from ccidgadget.cards.keys import ALGORITHM
from ccidgadget.cards.piv import PivCard
from ccidgadget.cards.tlv import parse_dict, unwrap

from test_piv_support import PivClient


@pytest.fixture(autouse=True)
def cheap_kdf(monkeypatch):
    monkeypatch.setattr(pin, "SCRYPT_N", 2 ** 4)


def cli(argv):
    parser = argparse.ArgumentParser(prog="ccidgadget")
    sub = parser.add_subparsers(dest="command")
    cli_card.add_card_subcommands(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def test_create_show_and_no_secrets(tmp_path, capsys, caplog):
    d = tmp_path / "card"
    assert cli(["card", "create", "--dir", str(d), "--pin", "24681357", "--puk", "11223344",
                "--mgmt-key", "00" * 31 + "01", "--mgmt-alg", "aes256", "--serial", "42424242"]) == 0
    assert cli(["card", "create", "--dir", str(d)]) == 1
    assert cli(["card", "show", "--dir", str(d), "--json"]) == 0
    out = capsys.readouterr().out
    info = json.loads(out[out.index("{"):])
    assert info["serial"] == 42424242 and info["management_key"] == {"algorithm": "aes256", "default": False}
    assert info["pin"]["default"] is False
    everything = out + caplog.text + (d / "state.json").read_text()
    assert "24681357" not in everything and "11223344" not in everything
    assert cli(["card", "show", "--dir", str(d)]) == 0
    assert "PIV card 42424242" in capsys.readouterr().out
    assert cli(["card", "show", "--dir", str(tmp_path / "none")]) == 1
    assert cli(["card", "create", "--dir", str(tmp_path / "bad"), "--pin", "1"]) == 1


def _p12(tmp_path):
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imported")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(7).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=2))
            .sign(key, hashes.SHA256()))
    f = tmp_path / "id.p12"
    f.write_bytes(pkcs12.serialize_key_and_certificates(b"id", key, cert, None,
                                                        serialization.BestAvailableEncryption(b"pw")))
    return f, key, cert


def test_import_pkcs12_then_use_on_card(tmp_path):
    d = tmp_path / "card"
    provision.create_card(d)
    f, key, cert = _p12(tmp_path)
    assert cli(["card", "import", "--dir", str(d), "--slot", "9a", str(f)]) == 1          # password missing
    assert cli(["card", "import", "--dir", str(d), "--slot", "9a", str(f), "--password", "no"]) == 1
    assert cli(["card", "import", "--dir", str(d), "--slot", "9a", str(f), "--password", "pw"]) == 0
    assert cli(["card", "import", "--dir", str(d), "--slot", "77", str(f), "--password", "pw"]) == 1
    card = PivCard.from_directory(d)
    card.reset()
    h = PivClient(card)
    h.select()
    got = parse_dict(unwrap(h.get_object(0x5FC105)[0], 0x53))[0x70]
    assert got == cert.public_bytes(serialization.Encoding.DER)
    h.verify()
    digest = b"\x11" * 48
    out, sw = h.general_authenticate(0x14, 0x9A, digest)
    from cryptography.hazmat.primitives.asymmetric import utils
    key.public_key().verify(out, digest, ec.ECDSA(utils.Prehashed(hashes.SHA384())))
    assert provision.show_card(d)["slots"]["9a"]["origin"] == "imported"


def test_generate_self_signed_and_csr(tmp_path):
    d = tmp_path / "card"
    provision.create_card(d)
    assert cli(["card", "generate", "--dir", str(d), "--slot", "9c", "--algorithm", "eccp256",
                "--subject", "/CN=Alice/O=Example"]) == 0
    info = provision.show_card(d)["slots"]["9c"]
    assert info["subject"] == "O=Example,CN=Alice" and info["pin_policy"] == "always"
    csr_path = tmp_path / "req.pem"
    assert cli(["card", "generate", "--dir", str(d), "--slot", "9d", "--algorithm", "rsa2048",
                "--csr", str(csr_path), "--subject", "CN=Bob"]) == 0
    csr = x509.load_pem_x509_csr(csr_path.read_bytes())
    assert csr.is_signature_valid
    card = PivCard.open(provision.CardStore(d))
    assert card.state.keys[0x9D].key.matches(csr.public_key())
    assert 0x5FC10B not in card.state.objects
    assert cli(["card", "generate", "--dir", str(d), "--slot", "9d", "--algorithm", "x25519",
                "--subject", "/CN=x"]) == 1
    assert cli(["card", "generate", "--dir", str(d), "--slot", "9d", "--algorithm", "x25519"]) == 0
    assert cli(["card", "generate", "--dir", str(d), "--slot", "9d", "--algorithm", "dsa"]) == 1
    assert cli(["card", "generate", "--dir", str(d), "--slot", "9e", "--algorithm", "ed25519"]) == 0
    assert provision.show_card(d)["slots"]["9e"]["algorithm"] == "ed25519"


def test_change_pin_offline(tmp_path, monkeypatch, capsys):
    d = tmp_path / "card"
    provision.create_card(d)
    monkeypatch.setattr("sys.stdin", io.StringIO("123456\n87654321\n"))
    assert cli(["card", "change-pin", "--dir", str(d)]) == 0
    assert cli(["card", "change-pin", "--dir", str(d), "--old", "000000", "--new", "111111"]) == 1
    assert "2 tries left" in capsys.readouterr().err
    assert provision.show_card(d)["pin"]["tries_left"] == 2
    assert cli(["card", "change-pin", "--dir", str(d), "--puk", "--old", "12345678", "--new", "abcdefgh"]) == 0
    card = PivCard.open(provision.CardStore(d))
    card.reset()
    h = PivClient(card)
    h.select()
    assert h.verify("87654321") == 0x9000
    assert provision.parse_algorithm("RSA4096") == ALGORITHM.RSA4096


def test_card_commands_through_the_cli(tmp_path, capsys):
    from ccidgadget.cli import main

    d = tmp_path / "card"
    assert main(["card", "create", "--dir", str(d), "--pin", "654321", "--puk", "87654321"]) == 0
    assert main(["card", "generate", "--dir", str(d), "--slot", "9a", "--algorithm", "eccp256",
                 "--subject", "/CN=cli"]) == 0
    assert main(["card", "show", "--dir", str(d), "--json"]) == 0
    out = capsys.readouterr().out
    assert "cli" in out and "654321" not in out and "87654321" not in out
