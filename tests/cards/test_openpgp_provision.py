# SPDX-License-Identifier: GPL-3.0-or-later
"""Offline provisioning of OpenPGP cards: the functions and `ccidgadget card ... ` for type openpgp."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

import ccidgadget.cards.pin as pin_module
from ccidgadget.cards.keys import ALGORITHM
from ccidgadget.cards.openpgp import KEY, OpenPgpCard
from ccidgadget.cards.openpgp import provision as pgp
from ccidgadget.cards.storage import CardStore


@pytest.fixture(autouse=True)
def fast_scrypt(monkeypatch):
    monkeypatch.setattr(pin_module, "SCRYPT_N", 2 ** 4)


def _tx(card, hexstr: str) -> tuple[bytes, int]:
    r = card.process_apdu(bytes.fromhex(hexstr) if isinstance(hexstr, str) else hexstr)
    return r[:-2], int.from_bytes(r[-2:], "big")


def _opened(directory):
    card = OpenPgpCard.open(CardStore(directory))
    card.reset()
    assert _tx(card, "00A4040006D27600012401")[1] == 0x9000
    return card


def test_create_generate_show(tmp_path):
    d = tmp_path / "c"
    pgp.create_card(d, pw1="135792", pw3="abcdefgh", serial=0xCAFE0001)
    with pytest.raises(pgp.OpenPgpProvisionError, match="already exists"):
        pgp.create_card(d)
    with pytest.raises(pgp.OpenPgpProvisionError, match="6 to 127"):
        pgp.create_card(tmp_path / "short", pw1="12345")
    info = pgp.generate_key(d, KEY.SIG, pgp.parse_algorithm("ed25519"), created=1_700_000_000)
    assert info["algorithm"] == "ed25519" and len(info["fingerprint"]) == 40
    pgp.generate_key(d, KEY.DEC, pgp.parse_algorithm("cv25519"))
    pgp.generate_key(d, KEY.AUT, pgp.parse_algorithm("nistp384"))
    with pytest.raises(pgp.OpenPgpProvisionError, match="cannot be the DEC key"):
        pgp.generate_key(d, KEY.DEC, ALGORITHM.ED25519)
    shown = pgp.show_card(d)
    assert shown["serial"] == "CAFE0001" and shown["aid"] == "D276000124010304FF00CAFE00010000"
    assert shown["keys"]["sig"]["created"] == 1_700_000_000
    assert shown["keys"]["aut"]["attributes"] == "nistp384"
    text = json.dumps(shown)
    assert "135792" not in text and "abcdefgh" not in text and "PRIVATE" not in text
    # the card sees what was provisioned: attributes, fingerprint, time, key status
    card = _opened(d)
    assert _tx(card, "00CA00C100")[0] == bytes.fromhex("162B06010401DA470F01")
    fprs = _tx(card, "00CA00C500")[0]
    assert fprs[:20].hex().upper() == info["fingerprint"]
    assert _tx(card, "00CA00CD00")[0][:4] == (1_700_000_000).to_bytes(4, "big")
    assert _tx(card, "00CA00DE00")[0] == bytes.fromhex("010102010301")
    assert _tx(card, "0020008106" + b"135792".hex())[1] == 0x9000
    sig, sw = _tx(card, "002A9E9A03616263")
    assert sw == 0x9000
    pub = card.state.keys[KEY.SIG].key.public_key
    pub.verify(sig, b"abc")


def test_import_from_pem(tmp_path):
    d = tmp_path / "c"
    pgp.create_card(d)
    key = ec.generate_private_key(ec.BrainpoolP256R1())
    pem = tmp_path / "k.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    info = pgp.import_key(d, KEY.DEC, pem)
    assert info["algorithm"] == "brainpoolP256r1"
    card = _opened(d)
    assert _tx(card, "00CA00C200")[0] == bytes.fromhex("122B2403030208010107")     # ECDH in the DEC slot
    assert _tx(card, "00CA00DE00")[0] == bytes.fromhex("010002020300")
    with pytest.raises(pgp.OpenPgpProvisionError):
        pgp.import_key(d, KEY.SIG, tmp_path / "absent.pem")


def test_change_pin_counts_tries_and_follows_kdf(tmp_path):
    d = tmp_path / "c"
    pgp.create_card(d)
    with pytest.raises(pgp.OpenPgpProvisionError, match="2 tries left"):
        pgp.change_pin(d, "000000", "654321")
    pgp.change_pin(d, "123456", "654321")
    card = _opened(d)
    assert _tx(card, "0020008106" + b"654321".hex())[1] == 0x9000
    # KDF on (as kdf-setup writes it); the offline change stores the hash GnuPG will send
    salt, count = bytes(range(8)), 65536
    h1 = pgp.s2k_iterated_salted(b"123456", salt, count, "sha256")
    h3 = pgp.s2k_iterated_salted(b"12345678", salt, count, "sha256")
    kdf = (bytes.fromhex("8101038201088304") + count.to_bytes(4, "big") + b"\x84\x08" + salt
           + b"\x87\x20" + h1 + b"\x88\x20" + h3)
    assert _tx(card, "00200083083132333435363738")[1] == 0x9000
    assert _tx(card, bytes.fromhex("00DA00F9") + bytes([len(kdf)]) + kdf)[1] == 0x9000
    pgp.change_pin(d, "12345678", "new-admin-pin", which="pw3")
    card = _opened(d)
    want = pgp.s2k_iterated_salted(b"new-admin-pin", salt, count, "sha256")
    # RFC 4880 §3.7.1.3 by hand: salt‖secret repeated to `count` bytes, one SHA-256
    data = salt + b"new-admin-pin"
    assert want == hashlib.sha256((data * (count // len(data) + 1))[:count]).digest()
    assert _tx(card, b"\x00\x20\x00\x83\x20" + want)[1] == 0x9000


def test_reset(tmp_path):
    d = tmp_path / "c"
    pgp.create_card(d, serial=7)
    pgp.generate_key(d, KEY.SIG, ALGORITHM.ECCP256)
    info = pgp.reset_card(d)
    assert info["serial"] == "00000007" and info["keys"]["sig"]["status"] == "not_present"


def _cli(*args, input=None):
    return subprocess.run([sys.executable, "-m", "ccidgadget", "card", *args], capture_output=True, text=True,
                          input=input, timeout=120)


def test_command_line(tmp_path):
    d = str(tmp_path / "c")
    p = _cli("create", "--type", "openpgp", "--dir", d, "--admin-pin", "87654321")
    assert p.returncode == 0 and "created OpenPGP card" in p.stdout, p.stderr
    p = _cli("generate", "--dir", d, "--slot", "aut", "--algorithm", "ed25519")
    assert p.returncode == 0 and "fingerprint" in p.stdout, p.stderr
    ed = ed25519.Ed25519PrivateKey.generate()
    pem = tmp_path / "ed.pem"
    pem.write_bytes(ed.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    assert _cli("import", "--dir", d, "--slot", "sig", str(pem)).returncode == 0
    p = _cli("change-pin", "--dir", d, "--admin", input="87654321\nabcdefghij\n")
    assert p.returncode == 0 and "admin PIN changed" in p.stdout, p.stderr
    p = _cli("show", "--dir", d, "--json")
    shown = json.loads(p.stdout)
    assert shown["keys"]["aut"]["status"] == "generated" and shown["keys"]["sig"]["status"] == "imported"
    assert "87654321" not in p.stdout + p.stderr and "abcdefghij" not in p.stdout + p.stderr
    p = _cli("generate", "--dir", d, "--slot", "9a", "--algorithm", "ed25519")
    assert p.returncode == 1 and "sig, dec or aut" in p.stderr
    assert _cli("reset", "--dir", d).returncode == 0
    assert json.loads(_cli("show", "--dir", d, "--json").stdout)["keys"]["sig"]["status"] == "not_present"
    # a PIV card has no `card reset`
    piv = str(tmp_path / "piv")
    assert _cli("create", "--dir", piv).returncode == 0
    p = _cli("reset", "--dir", piv)
    assert p.returncode == 1 and "only OpenPGP cards" in p.stderr
