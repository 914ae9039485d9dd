"""The emulated CAC card driven with APDUs, as OpenSC's cac driver drives it (card-cac.c)."""

from __future__ import annotations

import datetime
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

import ccidgadget.cards.pin as pin_module
from ccidgadget.cards.cac import CAC_LABELS, CacCard, CacMaterialError, load_cac_material
from ccidgadget.cards.cac import simpletlv as stlv
from ccidgadget.cards.cac.applets import ACA_AID, CCC_AID, pki_aid

PIV_AID = bytes.fromhex("A000000308000010000100")
SUBJECTS = ["John Doe", "John Doe (signing)", "John Doe (encryption)"]
CHUNK = 240          # card-cac.c CAC_MAX_CHUNK_SIZE


@pytest.fixture(autouse=True)
def fast_scrypt(monkeypatch):
    monkeypatch.setattr(pin_module, "SCRYPT_N", 2 ** 4)


def make_cert(key, cn: str, serial: int, issuer_key=None, issuer_cn: str | None = None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn or cn)])
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
            .serial_number(serial).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .sign(issuer_key or key, hashes.SHA256()))


def pem_of(key, cert) -> bytes:
    return (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()) + cert.public_bytes(serialization.Encoding.PEM))


@pytest.fixture(scope="session")
def keys():
    return [rsa.generate_private_key(65537, 2048) for _ in SUBJECTS]


@pytest.fixture(scope="session")
def cert_files(tmp_path_factory, keys):
    d = tmp_path_factory.mktemp("certs")
    paths = []
    for i, (key, cn) in enumerate(zip(keys, SUBJECTS)):
        p = d / f"cert{i}.pem"
        p.write_bytes(pem_of(key, make_cert(key, cn, i + 1)))
        paths.append(str(p))
    return paths


@pytest.fixture
def card(tmp_path, cert_files):
    c = CacCard.from_sources(tmp_path / "state", certs=cert_files)
    c.reset()
    return c


def tx(card, apdu: bytes | str) -> tuple[bytes, int]:
    """Send one APDU, follow 61xx with GET RESPONSE; return (data, SW)."""
    if isinstance(apdu, str):
        apdu = bytes.fromhex(apdu.replace(" ", ""))
    r = card.process_apdu(apdu)
    data, sw = r[:-2], int.from_bytes(r[-2:], "big")
    while sw >> 8 == 0x61:
        r = card.process_apdu(bytes((0x00, 0xC0, 0x00, 0x00, sw & 0xFF)))
        data, sw = data + r[:-2], int.from_bytes(r[-2:], "big")
    return data, sw


def ok(card, apdu) -> bytes:
    data, sw = tx(card, apdu)
    assert sw == 0x9000, f"{apdu}: SW {sw:04X}"
    return data


def select(card, aid: bytes, p2: int = 0x00) -> int:
    return tx(card, bytes((0x00, 0xA4, 0x04, p2, len(aid))) + aid + b"\x00")[1]


def read_file(card, which: int) -> bytes:
    """cac_read_file: 2 bytes of size, then 240-byte chunks from offset 2."""
    head = ok(card, bytes((0x00, 0x52, 0x00, 0x00, 0x02, which, 0x02, 0xFF)))
    size = int.from_bytes(head, "little")
    out = b""
    offset = 2
    while len(out) < size:
        n = min(CHUNK, size - len(out))
        part = ok(card, bytes((0x00, 0x52, offset >> 8, offset & 0xFF, 0x02, which, n, 0xFF)))
        assert len(part) == n
        out += part
        offset += n
    return head + out


def read_object(card) -> list[tuple[int, bytes]]:
    return stlv.join_buffers(read_file(card, 0x01), read_file(card, 0x02))


def sign_block(card, block: bytes) -> tuple[bytes, int]:
    """cac_rsa_op: 240-byte pieces with P1=80, the rest with P1=00."""
    while len(block) > CHUNK:
        data, sw = tx(card, bytes((0x80, 0x42, 0x80, 0x00, CHUNK)) + block[:CHUNK] + b"\xFF")
        assert (data, sw) == (b"", 0x9000)
        block = block[CHUNK:]
    return tx(card, bytes((0x80, 0x42, 0x00, 0x00, len(block))) + block + b"\x00")


def verify_pin(card, pin: bytes) -> int:
    block = pin.ljust(8, b"\xFF")
    return tx(card, bytes((0x00, 0x20, 0x00, 0x00, 8)) + block)[1]


def pkcs1_sign_block(message: bytes, size: int) -> bytes:
    digest_info = bytes.fromhex("3031300d060960864801650304020105000420") + hashlib.sha256(message).digest()
    return b"\x00\x01" + b"\xFF" * (size - 3 - len(digest_info)) + b"\x00" + digest_info


# -- recognition, as OpenSC probes ------------------------------------------------

def test_atr_is_libcacards_cac_atr(card):
    assert card.atr() == bytes.fromhex("3B7A18000073667465206364313434")


def test_opensc_probe_sequence_finds_three_pki_applets(card, keys):
    # PIV-II probes first (the ATR is in piv_atrs) and must step aside.
    assert select(card, PIV_AID) == 0x6A82
    # cac_find_and_initialize: SELECT CCC with P2=0C, then READ BUFFER TL and V.
    assert select(card, CCC_AID, p2=0x0C) == 0x9000
    ccc = read_object(card)
    tags = [t for t, _ in ccc]
    assert tags[:3] == [0xF0, 0xF1, 0xF2]
    assert tags[-6:] == [0xF7, 0xFA, 0xFB, 0xFC, 0xFD, 0xFE]      # empty ones last (see applets.py)
    cuid = dict(ccc)[0xF0]
    assert cuid[:7] == bytes.fromhex("A00000007903 02".replace(" ", "")) and len(cuid) == 21
    urls = [v for t, v in ccc if t == 0xF3]
    pki = [u for u in urls if u[5] == 0x04]
    assert len(urls) == 14 and len(pki) == 3
    for index, url in enumerate(pki):
        # cac_path_from_cardurl: AID = RID + applicationID, path = objectID.
        aid, oid = url[:5] + url[8:10], url[6:8]
        assert aid == pki_aid(index) and oid == bytes((1, index))
        # pkcs15 read: select the applet, select the object (P1=02), GET PROPERTIES, read TL+V.
        assert select(card, aid) == 0x9000
        assert ok(card, b"\x00\xA4\x02\x00\x02" + oid + b"\x00") == b""
        props = dict(stlv.iter_simpletlv(ok(card, "00 56 01 00 FF")))
        assert props[0x01] == bytes.fromhex("1002060203") and props[0x40] == b"\x01"
        obj = dict(stlv.iter_simpletlv(props[0x51]))
        assert obj[0x41] == oid
        assert obj[0x43] == bytes((0x06, 2048 // 64, 0x01, 0x01))
        tl, v = read_file(card, 1), read_file(card, 2)
        assert obj[0x42] == b"\x00" + len(tl).to_bytes(2, "little") + len(v).to_bytes(2, "little")
        content = stlv.join_buffers(tl, v)
        assert [t for t, _ in content] == [0x71, 0x70, 0x72, 0xFE]
        assert dict(content)[0x71] == b"\x00"            # not compressed
        cert = x509.load_der_x509_certificate(dict(content)[0x70])
        assert cert.subject.rfc4514_string() == f"CN={SUBJECTS[index]}"
        assert cert.public_key().public_numbers() == keys[index].public_key().public_numbers()


def test_every_card_url_leads_to_an_applet_and_object(card):
    assert select(card, CCC_AID) == 0x9000
    for tag, url in read_object(card):
        if tag != 0xF3:
            continue
        aid, oid = url[:5] + url[8:10], url[6:8]
        assert select(card, aid) == 0x9000, aid.hex()
        assert tx(card, b"\x00\xA4\x02\x00\x02" + oid)[1] == 0x9000, (aid.hex(), oid.hex())
        props = dict(stlv.iter_simpletlv(ok(card, "00 56 01 00 00")))
        assert props[0x01] == bytes.fromhex("1002060203")


def test_select_returns_fci_and_cac_alt_probe(card):
    fci = ok(card, b"\x00\xA4\x04\x00\x07" + pki_aid(0) + b"\x00")
    assert fci == b"\x6F\x0B\x84\x07" + pki_aid(0) + b"\xA5\x00"
    # cac_find_first_pki_applet reads 2 bytes of the TL buffer.
    assert len(ok(card, "80 52 00 00 02 01 02 02")) == 2


def test_get_properties_forms(card):
    assert select(card, pki_aid(1)) == 0x9000
    two = ok(card, "80 56 02 00 02 01 01 00")
    assert two == bytes.fromhex("01051002060203") * 2
    long = dict(stlv.iter_simpletlv(ok(card, "80 56 40 00 00")))
    assert long[0x3A] == ACA_AID and long[0x39] == b"\x00"
    assert tx(card, "80 56 00 00 00")[1] == 0x6A86          # GSC-IS 2.0 form not supported
    assert tx(card, "80 56 01 01 00")[1] == 0x6A86          # P2 must be 00
    assert tx(card, "80 56 03 00 00")[1] == 0x6A86
    assert tx(card, "80 56 02 00 01 77 00")[1] == 0x6A88     # tag not present
    assert tx(card, "80 56 02 00 00")[1] == 0x6984           # tag list missing
    assert tx(card, "80 56 01 00 01 01 00")[1] == 0x6984     # P1=01 takes no data


def test_read_buffer_errors(card):
    assert select(card, pki_aid(0)) == 0x9000
    tl = read_file(card, 1)
    assert tx(card, "80 52 00 00 01 01 00")[1] == 0x6984            # Lc must be 2
    assert tx(card, "80 52 00 00 02 03 02 00")[1] == 0x6984         # neither TL nor V
    past = len(tl) + 1
    assert tx(card, bytes((0x80, 0x52, past >> 8, past & 0xFF, 2, 1, 1, 0)))[1] == 0x6A86
    end = len(tl)
    assert tx(card, bytes((0x80, 0x52, end >> 8, end & 0xFF, 2, 1, 1, 0))) == (b"", 0x9000)
    assert tx(card, "80 58 00 00 01 00")[1] == 0x6985               # UPDATE BUFFER: read-only
    assert tx(card, "00 A4 02 00 02 01 05")[1] == 0x6A82            # unknown object
    assert tx(card, "00 A4 02 00 03 01 00 00")[1] == 0x6984         # object IDs are 2 bytes
    assert tx(card, "00 A4 08 00 02 3F 00")[1] == 0x6A81            # no file system
    assert tx(card, "80 CA 00 00 00")[1] == 0x6D00


def test_unknown_and_absent_applets(card):
    assert select(card, bytes.fromhex("A000000079010A")) == 0x6A82
    assert select(card, bytes.fromhex("A0000000791000")) == 0x6A82   # OpenSC's ACA guess is elsewhere
    assert select(card, bytes.fromhex("D2760001240102")) == 0x6A82
    # Nothing selected after reset: card-wide commands work, applet commands do not.
    card.reset()
    assert tx(card, "80 52 00 00 02 01 02 00")[1] == 0x6D00
    assert tx(card, "00 A4 02 00 02 01 00")[1] == 0x6A82


# -- ACA -----------------------------------------------------------------------

def test_get_acr_service_table_lists_every_applet(card):
    assert select(card, ACA_AID) == 0x9000
    items = list(stlv.iter_simpletlv(ok(card, "80 4C 21 00 00")))
    assert items[0] == (0x01, bytes.fromhex("1002060202"))
    assert items[1] == (0x94, bytes((15,)))
    aids = []
    for tag, value in items[2:]:
        assert tag == 0x93 and value[1:3] == b"\x92\x07" and len(value) == 10
        aids.append(value[3:])
    assert aids[:3] == [pki_aid(i) for i in range(3)] and CCC_AID in aids
    for aid in aids:                                                   # all of them exist
        assert select(card, aid) == 0x9000


def test_get_acr_tables_and_errors(card):
    assert select(card, ACA_AID) == 0x9000
    acr = list(stlv.iter_simpletlv(ok(card, "80 4C 00 00 00")))
    assert acr[1] == (0xA1, b"\x0B") and len(acr) == 13
    assert (0xA0, bytes.fromhex("0606011E00")) in acr                 # ACRID 06: PIN, AMP 1E key 00
    assert ok(card, "80 4C 01 00 01 06 00")[7:] == bytes.fromhex("A0050606011E00")
    applets = list(stlv.iter_simpletlv(ok(card, "80 4C 10 00 00")))
    assert applets[1] == (0x81, bytes((3 + 13,)))
    one = list(stlv.iter_simpletlv(ok(card, b"\x80\x4C\x11\x00\x07" + pki_aid(2) + b"\x00")))
    assert one[1][0] == 0x80 and one[1][1][:2] == b"\x63\x02"
    obj = list(stlv.iter_simpletlv(ok(card, "80 4C 12 00 02 01 01 00")))
    assert obj[1] == (0x82, bytes.fromhex("0101 580004 520000 420006".replace(" ", "")))
    amp = list(stlv.iter_simpletlv(ok(card, "80 4C 20 00 00")))
    assert amp[1] == (0x91, b"\x03") and len(amp) == 5
    assert len(ok(card, "80 4C 40 00 00")) > 0
    assert tx(card, "80 4C 01 00 01 55 00")[1] == 0x6A88
    assert tx(card, "80 4C 01 00 00")[1] == 0x6984
    assert tx(card, "80 4C 11 00 02 01 02 00")[1] == 0x6984
    assert tx(card, b"\x80\x4C\x11\x00\x07" + pki_aid(7) + b"\x00")[1] == 0x6A88
    assert tx(card, "80 4C 30 00 00")[1] == 0x6A86
    assert tx(card, "80 4C 00 01 00")[1] == 0x6A86
    # GET ACR only in the ACA.
    assert select(card, CCC_AID) == 0x9000
    assert tx(card, "80 4C 00 00 00")[1] == 0x6D00


# -- PIN -----------------------------------------------------------------------

def test_pin_verify_countdown_and_lock(tmp_path, cert_files):
    card = CacCard.from_sources(tmp_path / "s", certs=cert_files, pin="1234")
    card.reset()
    assert select(card, pki_aid(0)) == 0x9000
    assert tx(card, "00 20 00 00")[1] == 0x63C3                     # empty VERIFY: tries left
    assert verify_pin(card, b"9999") == 0x63C2
    assert verify_pin(card, b"12345") == 0x63C1
    # The counter is durable: a restart with the same configuration keeps it.
    card = CacCard.from_sources(tmp_path / "s", certs=cert_files, pin="1234")
    card.reset()
    assert tx(card, "00 20 00 00")[1] == 0x63C1
    assert verify_pin(card, b"0000") == 0x63C0
    assert verify_pin(card, b"1234") == 0x6983                      # blocked, even the right PIN
    assert tx(card, "00 20 00 00")[1] == 0x6983
    assert select(card, pki_aid(0)) == 0x9000
    assert sign_block(card, bytes(256))[1] == 0x6982
    # A new PIN in the configuration is the administrator's reset.
    card = CacCard.from_sources(tmp_path / "s", certs=cert_files, pin="4321")
    card.reset()
    assert verify_pin(card, b"4321") == 0x9000


def test_pin_verified_state(card):
    assert verify_pin(card, b"12345678") == 0x9000                  # the default PIN
    assert tx(card, "00 20 00 00")[1] == 0x9000
    assert select(card, pki_aid(2)) == 0x9000                       # selecting keeps the login
    assert tx(card, "00 20 00 00")[1] == 0x9000
    assert tx(card, "00 20 00 00 08 31 32 33 34 35 36 37 38".replace(" ", ""))[1] == 0x9000  # unpadded
    assert verify_pin(card, b"1234567") == 0x63C2                   # a wrong try logs out
    assert tx(card, "00 20 00 00")[1] == 0x63C2
    assert verify_pin(card, b"12345678") == 0x9000                  # and a right one resets the counter
    card.reset()
    assert tx(card, "00 20 00 00")[1] == 0x63C3
    assert tx(card, "00 20 00 01 08 3132333435363738")[1] == 0x6A88  # one PIN, reference 00
    assert tx(card, "00 20 01 00 08 3132333435363738")[1] == 0x6A86
    assert tx(card, "00 20 00 00 09 313233343536373839")[1] == 0x6700


def test_bad_pins_are_refused_at_configuration(tmp_path, cert_files):
    for bad in ("123", "123456789"):
        with pytest.raises(CacMaterialError, match="4 to 8"):
            CacCard.from_sources(tmp_path / "s", certs=cert_files, pin=bad)


# -- SIGN/DECRYPT --------------------------------------------------------------

@pytest.mark.parametrize("index", [0, 1, 2])
def test_sign_raw_block_in_240_byte_chunks(card, keys, index):
    assert select(card, pki_aid(index)) == 0x9000
    assert verify_pin(card, b"12345678") == 0x9000
    message = b"ccidgadget CAC signature test"
    signature, sw = sign_block(card, pkcs1_sign_block(message, 256))
    assert sw == 0x9000 and len(signature) == 256
    keys[index].public_key().verify(signature, message, padding.PKCS1v15(), hashes.SHA256())


def test_decrypt_round_trip(card, keys):
    assert verify_pin(card, b"12345678") == 0x9000
    assert select(card, pki_aid(2)) == 0x9000
    secret = os.urandom(32)
    ciphertext = keys[2].public_key().encrypt(secret, padding.PKCS1v15())
    block, sw = sign_block(card, ciphertext)
    assert sw == 0x9000
    # The card returns the raw block: 00 02 PS 00 M; the host removes the padding.
    assert block[:2] == b"\x00\x02" and block[-33] == 0 and block[-32:] == secret


def test_sign_errors(card):
    assert select(card, pki_aid(0)) == 0x9000
    assert sign_block(card, bytes(256))[1] == 0x6982                 # PIN first
    assert verify_pin(card, b"12345678") == 0x9000
    assert sign_block(card, b"\x00\x01" + b"\xFF" * 100)[1] == 0x6984  # not one modulus-length block
    assert sign_block(card, b"\xFF" * 256)[1] == 0x6A80                # not below the modulus
    assert tx(card, "80 42 01 00 01 00 00")[1] == 0x6A86
    assert tx(card, "80 42 00 01 01 00 00")[1] == 0x6A86
    # A P1=80 piece is forgotten on reselection and on reset.
    assert tx(card, bytes((0x80, 0x42, 0x80, 0x00, CHUNK)) + bytes(CHUNK))[1] == 0x9000
    assert select(card, pki_aid(0)) == 0x9000
    assert sign_block(card, pkcs1_sign_block(b"x", 256))[1] == 0x9000
    # Too much data is refused before any RSA.
    for _ in range(4):
        tx(card, bytes((0x80, 0x42, 0x80, 0x00, CHUNK)) + bytes(CHUNK))
    assert tx(card, bytes((0x80, 0x42, 0x80, 0x00, CHUNK)) + bytes(CHUNK))[1] == 0x6700
    # SIGN/DECRYPT exists only in PKI applets.
    assert select(card, CCC_AID) == 0x9000
    assert tx(card, "80 42 00 00 01 00 00")[1] == 0x6D00


def test_get_challenge(card):
    a, sw = tx(card, "00 84 00 00 08")
    assert sw == 0x9000 and len(a) == 8
    assert tx(card, "00 84 01 00 08")[1] == 0x6A86


def test_state_survives_and_rebuilds(tmp_path, cert_files):
    first = CacCard.from_sources(tmp_path / "s", certs=cert_files)
    again = CacCard.from_state(tmp_path / "s")
    assert again.card_id == first.card_id
    assert [c.cert_der for c in again.credentials] == [c.cert_der for c in first.credentials]
    assert oct((tmp_path / "s").stat().st_mode & 0o777) == "0o700"
    info = first.describe()
    assert [c["label"] for c in info["certificates"]] == list(CAC_LABELS)
    assert "12345678" not in str(info)


# -- inputs ----------------------------------------------------------------------

def test_needs_exactly_three_certificates(cert_files):
    with pytest.raises(CacMaterialError, match="exactly 3 certificates.*got 2"):
        load_cac_material(cert_files[:2])
    with pytest.raises(CacMaterialError, match="got 4"):
        load_cac_material(cert_files + cert_files[:1])


def test_key_that_does_not_match(tmp_path, keys, cert_files):
    other = tmp_path / "mismatch.pem"
    other.write_bytes(pem_of(keys[0], make_cert(keys[1], "Wrong", 9)))
    with pytest.raises(CacMaterialError, match="matches the private key|does not match"):
        load_cac_material([str(other)] + cert_files[1:])


def test_certificate_without_key(tmp_path, keys, cert_files):
    only = tmp_path / "cert-only.pem"
    only.write_bytes(make_cert(keys[0], "No Key", 9).public_bytes(serialization.Encoding.PEM))
    with pytest.raises(CacMaterialError, match="no private key"):
        load_cac_material(cert_files[:2] + [str(only)])


def test_ec_key_is_refused(tmp_path, cert_files):
    key = ec.generate_private_key(ec.SECP256R1())
    p = tmp_path / "ec.pem"
    p.write_bytes(pem_of(key, make_cert(key, "EC", 5)))
    with pytest.raises(CacMaterialError, match="RSA keys only"):
        load_cac_material(cert_files[:2] + [str(p)])


def test_pkcs12_and_der_inputs(tmp_path, keys, cert_files):
    p12 = tmp_path / "id.p12"
    cert = make_cert(keys[0], "John Doe", 1)
    p12.write_bytes(pkcs12.serialize_key_and_certificates(
        b"id", keys[0], cert, None, serialization.BestAvailableEncryption(b"p12pass")))
    with pytest.raises(CacMaterialError, match="password"):
        load_cac_material([str(p12)] + cert_files[1:])
    creds = load_cac_material([str(p12)] + cert_files[1:], password="p12pass")
    assert creds[0].certificate == cert
    der = tmp_path / "cert.der"
    der.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    with pytest.raises(CacMaterialError, match="no private key"):
        load_cac_material([str(der)] + cert_files[1:])
    with pytest.raises(CacMaterialError, match="cannot read"):
        load_cac_material([str(tmp_path / "missing.pem")] + cert_files[1:])
