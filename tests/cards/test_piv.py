"""The PIV applet driven with APDUs (bytes in, bytes out), results checked with cryptography."""

import datetime
import gzip
import os

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils, x25519
from cryptography.x509.oid import NameOID

from ccidgadget.cards import pin, storage
from ccidgadget.cards.keys import RSA_BITS
from ccidgadget.cards.piv import PivCard
from ccidgadget.cards.piv.applet import ATR_HISTORICAL
from ccidgadget.cards.storage import CardStore, StorageError
from ccidgadget.cards.tlv import parse_dict, tlv, unwrap
from ccidgadget.cryptocompat import verify_directly_issued_by

from test_piv_support import DEFAULT_MGMT, PivClient, mgmt_cipher, pin_block

SHA256_PREFIX = bytes.fromhex("3031300d060960864801650304020105000420")


@pytest.fixture(autouse=True)
def cheap_kdf(monkeypatch):
    monkeypatch.setattr(pin, "SCRYPT_N", 2 ** 4)


@pytest.fixture
def card(tmp_path):
    c = PivCard.from_directory(tmp_path / "piv")
    c.reset()
    return c


@pytest.fixture
def host(card):
    h = PivClient(card)
    assert h.select()[1] == 0x9000
    return h


def reopen(card) -> PivClient:
    again = PivCard.open(card.store)
    again.reset()
    h = PivClient(again)
    h.select()
    return h


def sha256(data: bytes) -> bytes:
    h = hashes.Hash(hashes.SHA256())
    h.update(data)
    return h.finalize()


def pkcs1_sign_block(digest: bytes, size: int) -> bytes:
    info = SHA256_PREFIX + digest
    return b"\x00\x01" + b"\xff" * (size - 3 - len(info)) + b"\x00" + info


def rsa_public(template: bytes) -> rsa.RSAPublicKey:
    d = parse_dict(template)
    return rsa.RSAPublicNumbers(int.from_bytes(d[0x82], "big"), int.from_bytes(d[0x81], "big")).public_key()


# -- SELECT, ATR, identification ---------------------------------------------------

def test_atr_and_select(card):
    atr = card.atr()
    assert ATR_HISTORICAL in atr and atr[0] == 0x3B
    h = PivClient(card)
    apt, sw = h.select()
    assert sw == 0x9000
    t = parse_dict(unwrap(apt, 0x61))
    assert t[0x4F] == bytes.fromhex("000010000100")
    assert unwrap(t[0x79], 0x4F) == bytes.fromhex("A000000308")
    algs = [v[0] for tag, v in __import__("ccidgadget.cards.tlv", fromlist=["x"]).parse_tlv(t[0xAC]) if tag == 0x80]
    assert {0x07, 0x11, 0x14, 0x16, 0xE0, 0xE1, 0x03, 0x0C} <= set(algs)
    # full AID and no-FCI select
    assert h.send(0xA4, 0x04, 0x0C, bytes.fromhex("A000000308000010000100"))[1] == 0x9000
    # other applets are not here (OpenSC probes many)
    assert h.send(0xA4, 0x04, 0x00, bytes.fromhex("A000000397425446590201"))[1] == 0x6A82


def test_version_serial_and_unknown(host, card):
    assert host.ok(0xFD, 0, 0) == bytes([5, 7, 1])
    assert int.from_bytes(host.ok(0xF8, 0, 0), "big") == card.state.serial
    assert host.send(0x12, 0, 0)[1] == 0x6D00
    assert host.raw(bytes.fromhex("80FD0000"))[1] == 0x6E00


# -- GET DATA ---------------------------------------------------------------------

def test_default_objects(host):
    chuid, sw = host.get_object(0x5FC102)
    assert sw == 0x9000
    d = parse_dict(unwrap(chuid, 0x53))
    assert len(d[0x30]) == 25 and len(d[0x34]) == 16 and len(d[0x35]) == 8
    ccc = parse_dict(unwrap(host.get_object(0x5FC107)[0], 0x53))
    assert ccc[0xF0][:7] == bytes.fromhex("a000000116ff02") and not ccc[0xF3]
    disc, sw = host.get_object(0x7E)
    assert disc == bytes.fromhex("7e124f0ba0000003080000100001005f2f024000")
    hist = parse_dict(unwrap(host.get_object(0x5FC10C)[0], 0x53))
    assert hist[0xC1] == b"\x00"
    assert host.get_object(0x5FC105)[1] == 0x6A82          # no certificate yet
    assert host.get_object(0x5FC109)[1] == 0x6982          # printed information: PIN first


def test_get_data_errors(host):
    assert host.send(0xCB, 0x3F, 0xFE, tlv(0x5C, b"\x7e"))[1] == 0x6A86
    assert host.send(0xCB, 0x3F, 0xFF, bytes.fromhex("5C035FC1"))[1] == 0x6A80      # truncated TLV
    assert host.send(0xCB, 0x3F, 0xFF, tlv(0x5D, b"\x7e"))[1] == 0x6A80
    assert host.send(0xCB, 0x3F, 0xFF, tlv(0x5C, b"\x5f\xc1\x02\x03"))[1] == 0x6A80   # 4-byte tag
    assert host.get_object(0x5FC1FF)[1] == 0x6A82


# -- VERIFY / CHANGE REFERENCE DATA / RESET RETRY COUNTER ---------------------------

def test_verify_lockout_and_unblock(host, card):
    assert host.send(0x20, 0, 0x80)[1] == 0x63C3
    assert host.verify("000000") == 0x63C2
    assert host.verify("000000") == 0x63C1
    assert host.send(0x20, 0, 0x80)[1] == 0x63C1
    # a badly padded or empty block is a wrong PIN, as on a YubiKey (yubikit's reset blocks the PIN
    # and the PUK with empty blocks)
    assert host.send(0x20, 0, 0x80, b"\xff" * 8)[1] == 0x63C0
    assert host.verify("123456") == 0x6983
    assert host.send(0x20, 0, 0x80)[1] == 0x6983
    # unblock with the PUK (wrong PUK first)
    assert host.send(0x2C, 0, 0x80, pin_block("87654321") + pin_block("654321"))[1] == 0x63C2
    assert host.send(0x2C, 0, 0x80, pin_block("12345678") + pin_block("654321"))[1] == 0x9000
    assert host.verify("654321") == 0x9000
    assert host.send(0x20, 0, 0x80)[1] == 0x9000
    # deauthenticate (Yubico P1=FF)
    assert host.send(0x20, 0xFF, 0x80)[1] == 0x9000
    assert host.send(0x20, 0, 0x80)[1] == 0x63C3
    # a reset forgets the verification
    host.verify("654321")
    card.reset()
    host.select()
    assert host.send(0x20, 0, 0x80)[1] == 0x63C3
    # persisted
    assert reopen(card).verify("654321") == 0x9000


def test_verify_bad_references(host):
    assert host.send(0x20, 0, 0x00, pin_block("123456"))[1] == 0x6A88
    assert host.send(0x20, 0, 0x96)[1] == 0x6A88
    assert host.send(0x20, 1, 0x80, pin_block("123456"))[1] == 0x6A86
    assert host.send(0x20, 0, 0x80, b"123456")[1] == 0x6A80


def test_puk_verify_and_block(host):
    assert host.send(0x20, 0, 0x81)[1] == 0x63C3
    assert host.send(0x20, 0, 0x81, pin_block("12345678"))[1] == 0x9000
    assert host.send(0x20, 0, 0x81, b"12345\xff\xff\xff")[1] == 0x63C2        # malformed: a wrong PUK
    assert host.send(0x20, 0, 0x81, pin_block("12345678"))[1] == 0x9000
    # RESET RETRY COUNTER with an empty PUK and an empty new PIN (yubikit's reset): the PUK is checked
    # first, and counted; a right PUK with a malformed new PIN changes nothing
    assert host.send(0x2C, 0, 0x80, b"\xff" * 16)[1] == 0x63C2
    assert host.send(0x2C, 0, 0x80, pin_block("12345678") + pin_block("12"))[1] == 0x6A80
    assert host.verify("123456") == 0x9000
    for left in (2, 1, 0):
        assert host.send(0x24, 0, 0x81, pin_block("00000000") + pin_block("11111111"))[1] == 0x63C0 | left
    assert host.send(0x2C, 0, 0x80, pin_block("12345678") + pin_block("111111"))[1] == 0x6983


def test_change_pin_and_puk(host, card):
    assert host.send(0x24, 0, 0x80, pin_block("123456") + pin_block("12"))[1] == 0x6A80
    assert host.send(0x20, 0, 0x80)[1] == 0x63C3                     # bad new PIN: no try used
    assert host.send(0x24, 0, 0x80, pin_block("111111") + pin_block("87654321"))[1] == 0x63C2
    assert host.send(0x24, 0, 0x80, pin_block("123456") + pin_block("87654321"))[1] == 0x9000
    assert host.send(0x24, 0, 0x81, pin_block("12345678") + pin_block("abcdefgh"))[1] == 0x9000
    assert host.send(0x24, 0, 0x80, b"\x00" * 15)[1] == 0x6A80
    h = reopen(card)
    assert h.verify("87654321") == 0x9000
    assert h.send(0x2C, 0, 0x80, pin_block("abcdefgh") + pin_block("222222"))[1] == 0x9000


# -- management key ----------------------------------------------------------------

@pytest.mark.parametrize("alg, key", [(0x03, DEFAULT_MGMT), (0x08, os.urandom(16)), (0x0A, os.urandom(24)),
                                      (0x0C, os.urandom(32))])
def test_mutual_authentication_each_algorithm(tmp_path, alg, key):
    card = PivCard.create(CardStore(tmp_path / "c"), mgmt_key=key, mgmt_alg=alg)
    card.reset()
    h = PivClient(card)
    h.select()
    out, sw = h.send(0x87, alg, 0x9B, tlv(0x7C, tlv(0x80)))
    assert sw == 0x9000 and len(unwrap(unwrap(out, 0x7C), 0x80)) == (8 if alg == 0x03 else 16)
    assert h.authenticate(key, alg) == 0x9000
    assert card.applet.mgmt_authenticated
    wrong = bytes(len(key))
    assert h.authenticate(wrong, alg) == 0x6982
    assert not card.applet.mgmt_authenticated
    # yubico-piv-tool's form of step 2 has no empty 82 tag
    witness = unwrap(unwrap(h.send(0x87, alg, 0x9B, tlv(0x7C, tlv(0x80)))[0], 0x7C), 0x80)
    d = mgmt_cipher(alg, key).decryptor()
    out, sw = h.send(0x87, alg, 0x9B, tlv(0x7C, tlv(0x80, d.update(witness) + d.finalize())
                                           + tlv(0x81, bytes(len(witness)))))
    assert sw == 0x9000 and card.applet.mgmt_authenticated
    other = 0x08 if alg != 0x08 else 0x0C
    assert h.send(0x87, other, 0x9B, tlv(0x7C, tlv(0x80)))[1] == 0x6A86


def test_external_authentication_and_challenge(host, card):
    out, sw = host.send(0x87, 0x03, 0x9B, tlv(0x7C, tlv(0x81)))
    challenge = unwrap(unwrap(out, 0x7C), 0x81)
    assert len(challenge) == 8
    e = mgmt_cipher(0x03, DEFAULT_MGMT).encryptor()
    assert host.send(0x87, 0x03, 0x9B, tlv(0x7C, tlv(0x82, e.update(challenge) + e.finalize())))[1] == 0x9000
    assert card.applet.mgmt_authenticated
    # OpenSC's GET CHALLENGE (P1=00)
    out, sw = host.send(0x87, 0x00, 0x9B, tlv(0x7C, tlv(0x81)))
    assert sw == 0x9000 and len(unwrap(unwrap(out, 0x7C), 0x81)) == 8
    # a wrong response fails and clears the authentication; without a pending challenge: 6985
    assert host.send(0x87, 0x03, 0x9B, tlv(0x7C, tlv(0x82, bytes(8))))[1] == 0x6982
    assert not card.applet.mgmt_authenticated
    assert host.send(0x87, 0x03, 0x9B, tlv(0x7C, tlv(0x82, bytes(8))))[1] == 0x6985
    host.send(0x87, 0x03, 0x9B, tlv(0x7C, tlv(0x81)))
    host.send(0xCB, 0x3F, 0xFF, tlv(0x5C, b"\x7e"))
    assert host.send(0x87, 0x03, 0x9B, tlv(0x7C, tlv(0x82, bytes(8))))[1] == 0x6985
    # malformed templates
    assert host.send(0x87, 0x03, 0x9B, bytes.fromhex("7C0380"))[1] == 0x6A80
    assert host.send(0x87, 0x03, 0x9B, tlv(0x7C, tlv(0x80, bytes(7)) + tlv(0x81, bytes(8)) + tlv(0x82)))[1] == 0x6A80


def test_default_mgmt_key_warning(tmp_path, caplog):
    card = PivCard.from_directory(tmp_path / "c")
    assert "DEFAULT management key" in caplog.text
    caplog.clear()
    card.reset()
    h = PivClient(card)
    h.select()
    h.authenticate()
    assert "DEFAULT management key" in caplog.text


def test_set_management_key(host, card):
    new = os.urandom(32)
    data = b"\x0c" + tlv(0x9B, new)
    assert host.send(0xFF, 0xFF, 0xFF, data)[1] == 0x6982
    assert host.authenticate() == 0x9000
    assert host.send(0xFF, 0xFF, 0xFF, b"\x0c" + tlv(0x9B, new[:16]))[1] == 0x6A80
    assert host.send(0xFF, 0xFF, 0xFF, b"\x05" + tlv(0x9B, new))[1] == 0x6A80
    assert host.send(0xFF, 0xFF, 0xFF, data)[1] == 0x9000
    meta = parse_dict(host.ok(0xF7, 0, 0x9B))
    assert meta[0x01] == b"\x0c" and meta[0x05] == b"\x00"
    h = reopen(card)
    assert h.authenticate(DEFAULT_MGMT, 0x03) == 0x6A86
    assert h.authenticate(new, 0x0C) == 0x9000


# -- PUT DATA, chaining ---------------------------------------------------------------

def _big_certificate(size: int = 3072) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "big")])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1)))
    pad = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x00" * 10)
    der = builder.add_extension(pad, False).sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    filler = size - len(der) + 20
    pad = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x00" * filler)
    der = builder.add_extension(pad, False).sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    assert size <= len(der) < size + 32
    return der


def test_put_data_chained_certificate_and_chained_get(host, card):
    der = _big_certificate()
    content = tlv(0x70, der) + tlv(0x71, b"\x00") + tlv(0xFE)
    assert host.put_object(0x5FC105, content) == 0x6982
    host.authenticate()
    before = host.apdus
    assert host.put_object(0x5FC105, content) == 0x9000
    assert host.apdus - before >= 13                        # ~3.1 KiB in 255-byte chained pieces
    before = host.apdus
    out, sw = host.get_object(0x5FC105)
    assert sw == 0x9000 and host.apdus - before >= 13       # 61xx / GET RESPONSE
    assert parse_dict(unwrap(out, 0x53))[0x70] == der
    assert reopen(card).get_object(0x5FC105)[0] == out
    # delete
    assert host.put_object(0x5FC105, b"") == 0x9000
    assert host.get_object(0x5FC105)[1] == 0x6A82


def test_extended_apdu_get(host, card):
    host.authenticate()
    host.put_object(0x5FC10A, b"\x70\x82\x0b\xb8" + bytes(3000))
    r = card.process_apdu(bytes.fromhex("00CB3FFF000005" "5C035FC10A" "0000"))
    assert r[-2:] == b"\x90\x00" and len(r) == 2 + 4 + 4 + 3000


def test_put_data_errors(host, card):
    host.authenticate()
    assert host.put_object(0x5FC1FF, b"x") == 0x6A80            # not a PIV object
    assert host.put_object(0x7E, b"x") == 0x6A80                # discovery is fixed
    assert host.send(0xDB, 0x3F, 0xFF, tlv(0x53, b"x") + tlv(0x5C, b"\x5f\xc1\x02"))[1] == 0x6A80
    assert host.send(0xDB, 0x3F, 0xFF, bytes.fromhex("5C035FC102538203"))[1] == 0x6A80
    assert host.send(0xDB, 0x3F, 0xFE, tlv(0x5C, b"\x5f\xc1\x02") + tlv(0x53, b"x"))[1] == 0x6A86
    assert host.put_object(0x5FC102, bytes(16385)) == 0x6A84
    before = dict(card.state.objects)
    assert card.state.objects == before
    # Yubico objects are writable
    assert host.put_object(0x5FFF00, b"\x80\x01\x00") == 0x9000


def test_key_history_tracks_retired_certificates(host):
    host.authenticate()
    host.put_object(0x5FC10F, tlv(0x70, b"cert") + tlv(0x71, b"\x00"))     # slot 84 = retired 3
    hist = parse_dict(unwrap(host.get_object(0x5FC10C)[0], 0x53))
    assert hist[0xC1] == b"\x03"


def test_printed_information_needs_pin(host):
    host.authenticate()
    assert host.put_object(0x5FC109, b"\x01\x02") == 0x9000
    assert host.get_object(0x5FC109)[1] == 0x6982
    host.verify()
    assert host.get_object(0x5FC109) == (tlv(0x53, b"\x01\x02"), 0x9000)


# -- keys: GENERATE and GENERAL AUTHENTICATE -------------------------------------------

def test_generate_needs_mgmt_and_valid_input(host, card):
    assert host.send(0x47, 0, 0x9A, tlv(0xAC, tlv(0x80, b"\x11")))[1] == 0x6982
    host.authenticate()
    assert host.send(0x47, 0, 0x9A, tlv(0xAC, tlv(0x80, b"\x99")))[1] == 0x6A80
    assert host.send(0x47, 0, 0x9A, tlv(0xAC, tlv(0x80, b"\x11") + tlv(0x99, b"\x00")))[1] == 0x6A80
    assert host.send(0x47, 0, 0x9A, tlv(0xAC, tlv(0x80, b"\x11") + tlv(0xAA, b"\x09")))[1] == 0x6A80
    assert host.send(0x47, 0, 0x9A, tlv(0xAB, tlv(0x80, b"\x11")))[1] == 0x6A80
    assert host.send(0x47, 0, 0x9B, tlv(0xAC, tlv(0x80, b"\x11")))[1] == 0x6A86
    assert host.send(0x47, 0, 0xF9, tlv(0xAC, tlv(0x80, b"\x11")))[1] == 0x6A86
    assert host.send(0x47, 1, 0x9A, tlv(0xAC, tlv(0x80, b"\x11")))[1] == 0x6A86
    assert 0x9A not in card.state.keys


@pytest.fixture(scope="module")
def rsa2048_key():
    return rsa.generate_private_key(65537, 2048)


def _import_rsa(host, slot, key, pin_policy=None):
    n = key.private_numbers()
    ln = key.key_size // 16
    data = b"".join(tlv(i, v.to_bytes(ln, "big")) for i, v in
                    ((1, n.p), (2, n.q), (3, n.dmp1), (4, n.dmq1), (5, n.iqmp)))
    if pin_policy is not None:
        data += tlv(0xAA, bytes([pin_policy]))
    alg = {1024: 0x06, 2048: 0x07, 3072: 0x05, 4096: 0x16}[key.key_size]
    return host.send(0xFE, alg, slot, data)[1]


def test_rsa2048_generate_sign_decrypt(host, card):
    host.authenticate()
    pub = rsa_public(host.generate(0x9A, 0x07))
    d = sha256(b"hello")
    assert host.general_authenticate(0x07, 0x9A, pkcs1_sign_block(d, 256))[1] == 0x6982
    host.verify()
    sig, sw = host.general_authenticate(0x07, 0x9A, pkcs1_sign_block(d, 256))
    assert sw == 0x9000
    pub.verify(sig, d, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
    ct = pub.encrypt(b"secret", padding.PKCS1v15())
    block, sw = host.general_authenticate(0x07, 0x9A, ct)
    assert block.endswith(b"\x00secret") and block[:2] == b"\x00\x02"
    # wrong algorithm, wrong length, value >= n
    assert host.general_authenticate(0x06, 0x9A, ct[:128])[1] == 0x6A86
    assert host.general_authenticate(0x07, 0x9A, ct[:-1])[1] == 0x6A80
    assert host.general_authenticate(0x07, 0x9A, b"\xff" * 256)[1] == 0x6A80
    assert host.general_authenticate(0x07, 0x9A, ct, tag=0x85)[1] == 0x6A80
    # metadata
    meta = parse_dict(host.ok(0xF7, 0, 0x9A))
    assert meta[0x01] == b"\x07" and meta[0x02] == b"\x02\x01" and meta[0x03] == b"\x01"
    assert rsa_public(meta[0x04]).public_numbers() == pub.public_numbers()


@pytest.mark.parametrize("size", [1024, 3072])
def test_rsa_import_other_sizes(host, size):
    key = rsa.generate_private_key(65537, size)
    host.authenticate()
    assert _import_rsa(host, 0x9D, key) == 0x9000
    host.verify()
    d = sha256(b"x")
    sig, sw = host.general_authenticate({1024: 0x06, 3072: 0x05}[size], 0x9D, pkcs1_sign_block(d, size // 8))
    key.public_key().verify(sig, d, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))


def test_rsa4096_generate_sign(host):
    # The suite's only RSA-4096 generation (0.2-3 s).
    host.authenticate()
    pub = rsa_public(host.generate(0x9E, 0x16))
    d = sha256(b"x")
    sig, sw = host.general_authenticate(0x16, 0x9E, pkcs1_sign_block(d, 512))
    pub.verify(sig, d, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))


@pytest.mark.parametrize("alg, curve, hashalg", [(0x11, ec.SECP256R1, hashes.SHA256),
                                                 (0x14, ec.SECP384R1, hashes.SHA384)])
def test_ecc_generate_sign_ecdh(host, alg, curve, hashalg):
    host.authenticate()
    point = unwrap(host.generate(0x9D, alg), 0x86)
    pub = ec.EllipticCurvePublicKey.from_encoded_point(curve(), point)
    host.verify()
    h = hashes.Hash(hashalg())
    h.update(b"msg")
    digest = h.finalize()
    sig, sw = host.general_authenticate(alg, 0x9D, digest)
    assert sw == 0x9000
    pub.verify(sig, digest, ec.ECDSA(utils.Prehashed(hashalg())))
    peer = ec.generate_private_key(curve())
    peer_pt = peer.public_key().public_bytes(serialization.Encoding.X962,
                                             serialization.PublicFormat.UncompressedPoint)
    shared, sw = host.general_authenticate(alg, 0x9D, peer_pt, tag=0x85)
    assert shared == peer.exchange(ec.ECDH(), pub)
    assert host.general_authenticate(alg, 0x9D, peer_pt[:-1], tag=0x85)[1] == 0x6A80
    assert host.general_authenticate(alg, 0x9D, b"\x04" + b"\x01" * (len(peer_pt) - 1), tag=0x85)[1] == 0x6A80
    assert host.general_authenticate(alg, 0x9D, b"", tag=0x81)[1] == 0x6A80


def test_25519(host):
    host.authenticate()
    ed_pub = ed25519.Ed25519PublicKey.from_public_bytes(unwrap(host.generate(0x9A, 0xE0), 0x86))
    x_pub = x25519.X25519PublicKey.from_public_bytes(unwrap(host.generate(0x9D, 0xE1), 0x86))
    host.verify()
    sig, sw = host.general_authenticate(0xE0, 0x9A, b"a message")
    ed_pub.verify(sig, b"a message")
    peer = x25519.X25519PrivateKey.generate()
    peer_raw = peer.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    shared, sw = host.general_authenticate(0xE1, 0x9D, peer_raw, tag=0x85)
    assert shared == peer.exchange(x_pub)
    assert host.general_authenticate(0xE1, 0x9D, peer_raw, tag=0x81)[1] == 0x6A80
    assert host.general_authenticate(0xE0, 0x9A, peer_raw, tag=0x85)[1] == 0x6A80


def test_pin_policies(host, card):
    host.authenticate()
    host.generate(0x9C, 0x11)                # default ALWAYS
    host.generate(0x9E, 0x11)                # default NEVER
    host.generate(0x9A, 0x11)                # default ONCE
    host.generate(0x82, 0x11, pin_policy=0x03, touch=0x02)
    d = sha256(b"m")
    assert host.general_authenticate(0x11, 0x9E, d)[1] == 0x9000          # no PIN needed
    assert host.general_authenticate(0x11, 0x9A, d)[1] == 0x6982
    assert host.general_authenticate(0x11, 0x9C, d)[1] == 0x6982
    host.verify()
    assert host.general_authenticate(0x11, 0x9A, d)[1] == 0x9000
    assert host.general_authenticate(0x11, 0x9A, d)[1] == 0x9000          # once is enough
    assert host.general_authenticate(0x11, 0x9C, d)[1] == 0x9000
    assert host.general_authenticate(0x11, 0x9C, d)[1] == 0x6982          # fresh VERIFY every time
    host.verify()
    assert host.general_authenticate(0x11, 0x9C, b"")[1] == 0x6A80        # bad input keeps the grant
    assert host.general_authenticate(0x11, 0x9C, d)[1] == 0x9000
    host.verify()
    assert host.general_authenticate(0x11, 0x82, d)[1] == 0x6982          # touch ALWAYS, no button here
    meta = parse_dict(host.ok(0xF7, 0, 0x82))
    assert meta[0x02] == b"\x03\x02"
    meta = parse_dict(host.ok(0xF7, 0, 0x9E))
    assert meta[0x02] == b"\x01\x01"
    # no key, bad slot, attestation key not usable for GA
    assert host.general_authenticate(0x11, 0x9D, d)[1] == 0x6A86
    assert host.general_authenticate(0x11, 0x77, d)[1] == 0x6A86
    assert host.general_authenticate(0x11, 0xF9, d)[1] == 0x6A86
    assert host.send(0x87, 0x11, 0x9A, tlv(0x7C, tlv(0x81, d)))[1] == 0x6A80     # no 82 00
    assert host.send(0x87, 0x11, 0x9A, b"\x7c\x05\x82\x00\x81")[1] == 0x6A80


# -- IMPORT --------------------------------------------------------------------------------

def test_import_ec_and_errors(host, card, rsa2048_key):
    key = ec.generate_private_key(ec.SECP256R1())
    d = key.private_numbers().private_value.to_bytes(32, "big")
    assert host.send(0xFE, 0x11, 0x9A, tlv(0x06, d))[1] == 0x6982
    host.authenticate()
    assert host.send(0xFE, 0x11, 0x9A, tlv(0x06, d[:31]))[1] == 0x6A80
    assert host.send(0xFE, 0x14, 0x9A, tlv(0x06, d))[1] == 0x6A80
    assert host.send(0xFE, 0x11, 0x9A, tlv(0x06, bytes(32)))[1] == 0x6A80
    assert host.send(0xFE, 0x11, 0x9A, tlv(0x06, d) + tlv(0x01, b"\x01"))[1] == 0x6A80
    assert host.send(0xFE, 0x42, 0x9A, tlv(0x06, d))[1] == 0x6A86
    assert host.send(0xFE, 0x11, 0x9B, tlv(0x06, d))[1] == 0x6A86
    assert 0x9A not in card.state.keys
    assert host.send(0xFE, 0x11, 0x9A, tlv(0x06, d) + tlv(0xAA, b"\x01"))[1] == 0x9000
    digest = sha256(b"m")
    sig, sw = host.general_authenticate(0x11, 0x9A, digest)        # PIN policy NEVER
    key.public_key().verify(sig, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    assert parse_dict(host.ok(0xF7, 0, 0x9A))[0x03] == b"\x02"
    # RSA: inconsistent CRT values are refused
    n = rsa2048_key.private_numbers()
    bad = b"".join(tlv(i, v.to_bytes(128, "big")) for i, v in
                   ((1, n.p), (2, n.q), (3, n.dmp1 ^ 1), (4, n.dmq1), (5, n.iqmp)))
    assert host.send(0xFE, 0x07, 0x9D, bad)[1] == 0x6A80
    assert host.send(0xFE, 0x06, 0x9D, bad.replace(bytes([0x03, 0x81, 0x80]), bytes([0x03, 0x81, 0x80])))[1] \
        == 0x6A80
    assert _import_rsa(host, 0x9D, rsa2048_key) == 0x9000
    assert _import_rsa(host, 0x9D, rsa2048_key) == 0x9000                  # overwrite is fine
    ed = ed25519.Ed25519PrivateKey.generate()
    raw = ed.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                           serialization.NoEncryption())
    assert host.send(0xFE, 0xE0, 0x9E, tlv(0x07, raw))[1] == 0x9000
    sig, sw = host.general_authenticate(0xE0, 0x9E, b"m")
    ed.public_key().verify(sig, b"m")
    # attestation of an imported key is refused
    assert host.send(0xF9, 0x9E, 0x00)[1] == 0x6A80


# -- ATTEST, METADATA, MOVE, RETRIES, RESET --------------------------------------------------

def test_attestation_chains_to_board_ca(host, card):
    host.authenticate()
    point = unwrap(host.generate(0x9A, 0x11, pin_policy=0x02, touch=0x01), 0x86)
    der = host.ok(0xF9, 0x9A, 0x00)
    cert = x509.load_der_x509_certificate(der)
    ca_obj = unwrap(host.get_object(0x5FFF01)[0], 0x53)
    ca = x509.load_der_x509_certificate(parse_dict(ca_obj)[0x70])
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "ccidgadget attestation"
    assert cert.issuer == ca.subject
    verify_directly_issued_by(cert, ca)
    verify_directly_issued_by(ca, ca)
    assert cert.public_key().public_bytes(serialization.Encoding.X962,
                                          serialization.PublicFormat.UncompressedPoint) == point
    ext = {e.oid.dotted_string: e.value.value for e in cert.extensions}
    assert ext["1.3.6.1.4.1.41482.3.3"] == bytes([5, 7, 1])
    assert ext["1.3.6.1.4.1.41482.3.8"] == b"\x02\x01"
    assert ext["1.3.6.1.4.1.41482.3.7"] == tlv(0x02, card.state.serial.to_bytes(4, "big"))
    assert host.send(0xF9, 0x9C, 0x00)[1] == 0x6A88            # empty slot
    assert host.send(0xF9, 0xF9, 0x00)[1] == 0x6A86
    meta = parse_dict(host.ok(0xF7, 0, 0xF9))
    assert meta[0x03] == b"\x01"


def test_metadata(host):
    m = parse_dict(host.ok(0xF7, 0, 0x80))
    assert m[0x05] == b"\x01" and m[0x06] == b"\x03\x03"
    host.verify("000000")
    m = parse_dict(host.ok(0xF7, 0, 0x80))
    assert m[0x06] == b"\x03\x02"
    m = parse_dict(host.ok(0xF7, 0, 0x81))
    assert m[0x05] == b"\x01" and m[0x06] == b"\x03\x03"
    m = parse_dict(host.ok(0xF7, 0, 0x9B))
    assert m[0x01] == b"\x03" and m[0x05] == b"\x01"
    assert host.send(0xF7, 0, 0x9A)[1] == 0x6A88
    assert host.send(0xF7, 0, 0x96)[1] == 0x6A88                # no biometrics (ykman probes this)
    assert host.send(0xF7, 1, 0x80)[1] == 0x6A86
    host.send(0x24, 0, 0x80, pin_block("123456") + pin_block("999999"))
    assert parse_dict(host.ok(0xF7, 0, 0x80))[0x05] == b"\x00"


def test_move_and_delete_key(host, card):
    assert host.send(0xF6, 0x82, 0x9A)[1] == 0x6982
    host.authenticate()
    assert host.send(0xF6, 0x82, 0x9A)[1] == 0x6A88
    point = host.generate(0x9A, 0x11)
    assert host.send(0xF6, 0x9A, 0x9A)[1] == 0x6A86
    assert host.send(0xF6, 0xF9, 0x9A)[1] == 0x6A86
    assert host.send(0xF6, 0x82, 0x9A)[1] == 0x9000
    assert host.send(0xF7, 0, 0x9A)[1] == 0x6A88
    assert parse_dict(host.ok(0xF7, 0, 0x82))[0x04] == point
    assert host.send(0xF6, 0xFF, 0x82)[1] == 0x9000
    assert 0x82 not in reopen(card).card.state.keys


def test_set_pin_retries(host, card):
    assert host.send(0xFA, 5, 6)[1] == 0x6982
    host.authenticate()
    assert host.send(0xFA, 5, 6)[1] == 0x6982                   # PIN needed too
    host.send(0x24, 0, 0x80, pin_block("123456") + pin_block("999999"))
    assert host.verify("999999") == 0x9000
    assert host.send(0xFA, 0, 6)[1] == 0x6A86
    assert host.send(0xFA, 5, 6)[1] == 0x9000
    assert parse_dict(host.ok(0xF7, 0, 0x80))[0x06] == b"\x05\x05"
    assert parse_dict(host.ok(0xF7, 0, 0x81))[0x06] == b"\x06\x06"
    assert host.verify("123456") == 0x9000                      # back to the default PIN


def test_reset_only_when_blocked(host, card):
    host.authenticate()
    host.generate(0x9A, 0x11)
    host.put_object(0x5FC105, tlv(0x70, b"c"))
    chuid = card.state.objects[0x5FC102]
    serial, att = card.state.serial, card.state.objects[0x5FFF01]
    assert host.send(0xFB, 0, 0)[1] == 0x6985
    for _ in range(3):
        host.verify("000000")
    assert host.send(0xFB, 0, 0)[1] == 0x6985
    for _ in range(3):
        host.send(0x2C, 0, 0x80, pin_block("00000000") + pin_block("000000"))
    assert host.send(0xFB, 1, 0)[1] == 0x6A86
    assert host.send(0xFB, 0, 0)[1] == 0x9000
    s = card.state
    assert 0x9A not in s.keys and 0x5FC105 not in s.objects and 0xF9 in s.keys
    assert s.serial == serial and s.objects[0x5FFF01] == att and s.objects[0x5FC102] != chuid
    assert not card.applet.mgmt_authenticated
    assert host.verify("123456") == 0x9000 and host.authenticate() == 0x9000


# -- persistence and storage failures -----------------------------------------------------

def test_state_survives_reopen(host, card):
    host.authenticate()
    point = host.generate(0x9E, 0x11)
    h = reopen(card)
    assert parse_dict(h.ok(0xF7, 0, 0x9E))[0x04] == point
    sig, sw = h.general_authenticate(0x11, 0x9E, sha256(b"x"))
    assert sw == 0x9000


def test_storage_error_answers_6581_state_unchanged(host, card, monkeypatch):
    host.authenticate()
    host.generate(0x9A, 0x11)
    snapshot = card.state.to_dict()

    def fail(state):
        raise StorageError("simulated ENOSPC")
    monkeypatch.setattr(card.store, "save", fail)
    assert host.put_object(0x5FC105, tlv(0x70, b"cert")) == 0x6581
    assert host.send(0x47, 0, 0x9A, tlv(0xAC, tlv(0x80, b"\x11")))[1] == 0x6581
    assert host.send(0xFF, 0xFF, 0xFF, b"\x03" + tlv(0x9B, bytes(range(24))))[1] == 0x6581
    assert host.verify("000000") == 0x6581                    # counter not spent when it cannot be saved
    assert host.verify("123456") == 0x6581
    assert card.state.pin.tries_left == 3
    assert host.send(0x24, 0, 0x81, pin_block("12345678") + pin_block("87654321"))[1] == 0x6581
    assert card.state.to_dict() == snapshot
    monkeypatch.undo()
    assert card.store.load()["objects"] == snapshot["objects"]


def test_crash_between_write_and_rename_keeps_old_state(host, card, monkeypatch):
    host.authenticate()
    before = card.store.load()

    def crash(src, dst):
        raise OSError(5, "power cut")
    monkeypatch.setattr(storage.os, "replace", crash)
    assert host.put_object(0x5FC105, tlv(0x70, b"cert")) == 0x6581
    monkeypatch.undo()
    assert card.store.load() == before
    assert reopen(card).get_object(0x5FC105)[1] == 0x6A82


def test_create_and_from_directory(tmp_path):
    store = CardStore(tmp_path / "x")
    card = PivCard.create(store, pin="654321", puk="87654321", mgmt_key=bytes(range(16)), mgmt_alg=0x08,
                          serial=12345678)
    with pytest.raises(FileExistsError):
        PivCard.create(store)
    with pytest.raises(ValueError):
        PivCard.create(CardStore(tmp_path / "y"), pin="12")
    with pytest.raises(ValueError):
        PivCard.create(CardStore(tmp_path / "z"), mgmt_key=bytes(16), mgmt_alg=0x03)
    again = PivCard.from_directory(tmp_path / "x")
    assert again.state.serial == 12345678
    again.reset()
    h = PivClient(again)
    h.select()
    assert h.verify("654321") == 0x9000 and h.authenticate(bytes(range(16)), 0x08) == 0x9000
    text = store.path.read_text()
    assert "654321" not in text and "87654321" not in text
    assert again.describe()["serial"] == 12345678


def test_wrong_state_type_refused(tmp_path):
    store = CardStore(tmp_path / "c")
    store.save({"type": "cac"})
    with pytest.raises(StorageError, match="not a PIV"):
        PivCard.open(store)


def test_gzip_certificate_object_roundtrip():
    from ccidgadget.cards.piv import objects
    cert = x509.load_der_x509_certificate(_big_certificate(600))
    obj = objects.make_certificate_object(cert.public_bytes(serialization.Encoding.DER), compressed=True)
    assert parse_dict(obj)[0x71] == b"\x01" and gzip.decompress(parse_dict(obj)[0x70])
    assert objects.parse_certificate_object(obj) == cert
    assert objects.parse_certificate_object(b"junk") is None
