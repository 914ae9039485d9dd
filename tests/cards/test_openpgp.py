# SPDX-License-Identifier: GPL-3.0-or-later
"""The OpenPGP card APDU in / APDU out, with encodings written from the specification
(OpenPGP smart card application 3.4, §x.y below), not from the card's own encoders.

Command APDUs are hex literals where the spec gives them; variable data (keys, KDF-DO) is
assembled here with a five-line BER-TLV writer of the test's own.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils, x25519

import ccidgadget.cards.pin as pin_module
from ccidgadget.cards.openpgp import OpenPgpCard
from ccidgadget.cards.presence import UserPresence
from ccidgadget.cards.storage import CardStore


@pytest.fixture(autouse=True)
def fast_scrypt(monkeypatch):
    monkeypatch.setattr(pin_module, "SCRYPT_N", 2 ** 4)


class FakePresence(UserPresence):
    def __init__(self, available=True, answer=True):
        self._available = available
        self.answer = answer
        self.asked: list[str] = []

    @property
    def available(self) -> bool:
        return self._available

    def confirm(self, what: str) -> bool:
        self.asked.append(what)
        return self.answer


def _len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    if n < 0x100:
        return bytes([0x81, n])
    return bytes([0x82]) + n.to_bytes(2, "big")


def T(tag: int, value: bytes = b"") -> bytes:
    tag_bytes = tag.to_bytes((tag.bit_length() + 7) // 8 or 1, "big")
    return tag_bytes + _len(len(value)) + value


def apdu(cla, ins, p1, p2, data=b"", le=None, extended=False) -> bytes:
    out = bytes([cla, ins, p1, p2])
    if extended or len(data) > 255 or (le or 0) > 256:
        if data:
            out += b"\x00" + len(data).to_bytes(2, "big") + data
        if le is not None:
            out += (b"" if data else b"\x00") + (le % 65536).to_bytes(2, "big")
    else:
        if data:
            out += bytes([len(data)]) + data
        if le is not None:
            out += bytes([le % 256])
    return out


class Tx:
    def __init__(self, card):
        self.card = card

    def __call__(self, hexstr_or_bytes) -> tuple[bytes, int]:
        raw = bytes.fromhex(hexstr_or_bytes) if isinstance(hexstr_or_bytes, str) else hexstr_or_bytes
        r = self.card.process_apdu(raw)
        return r[:-2], int.from_bytes(r[-2:], "big")

    def ok(self, x) -> bytes:
        data, sw = self(x)
        assert sw == 0x9000, f"{x if isinstance(x, str) else x.hex()} -> {sw:04X}"
        return data

    def long(self, x) -> bytes:
        """Follow 61xx with GET RESPONSE (ISO 7816-4 §7.6.1)."""
        data, sw = self(x)
        out = data
        while sw >> 8 == 0x61:
            data, sw = self(f"00C00000{sw & 0xFF:02X}")
            out += data
        assert sw == 0x9000, f"{sw:04X}"
        return out


def new_card(tmp_path, presence=None, name="card"):
    kw = {"presence": presence} if presence is not None else {}
    card = OpenPgpCard.create(CardStore(tmp_path / name), serial=0x12345678, **kw)
    card.reset()
    return card


@pytest.fixture
def card(tmp_path):
    return new_card(tmp_path)


@pytest.fixture
def tx(card):
    t = Tx(card)
    t.ok("00A4040006D27600012401")
    return t


SELECT = "00A4040006D27600012401"
VERIFY_PW1_81 = "0020008106313233343536"            # "123456"
VERIFY_PW1_82 = "0020008206313233343536"
VERIFY_PW3 = "00200083083132333435363738"          # "12345678"
ED25519_ATTR = "162B06010401DA470F01"
CV25519_ATTR = "122B060104019755010501"
P256_ECDSA_ATTR = "132A8648CE3D030107"
P256_ECDH_ATTR = "122A8648CE3D030107"


# --------------------------------------------------------------------------- identity


def test_select_and_application_identifier(tx):
    fci = tx.ok(SELECT)
    assert fci == bytes.fromhex("6F12 8410 D2760001240103 04FF00 12345678 0000")
    # §4.2.1: RID+PIX, version 3.4, manufacturer FF00 (no registered one), serial, RFU
    assert tx.ok("00CA004F00") == bytes.fromhex("D276000124010304FF00123456780000")


def test_historical_bytes_announce_chaining_and_extended_length(card, tx):
    hist = tx.ok("00CA5F5200")
    assert hist[0] == 0x00                          # category indicator
    assert hist[-3:] == bytes.fromhex("059000")     # operational, 9000
    i = hist.index(0x73)                            # card capabilities, 3 bytes
    assert hist[i + 3] & 0xC0 == 0xC0               # command chaining + extended Lc/Le
    assert card.atr().endswith(hist + bytes([card.atr()[-1]]))   # the same bytes in the ATR


def test_extended_capabilities_pw_status_and_attributes(tx):
    c0 = tx.ok("00CA00C000")
    assert len(c0) == 10
    assert c0[0] == 0x7D            # GET CHALLENGE, key import, PW status, private DOs, attr change, KDF
    assert int.from_bytes(c0[2:4], "big") >= 255          # max challenge
    assert int.from_bytes(c0[4:6], "big") == 2048         # max cardholder certificate
    assert c0[9] == 0x01                                  # MSE supported
    assert tx.ok("00CA00C400") == bytes.fromhex("017F7F7F030003")
    for tag in ("C1", "C2", "C3"):
        assert tx.ok(f"00CA00{tag}00") == bytes.fromhex("010800002000")   # RSA 2048, e 32 bits, standard
    assert tx.ok("00CA00F900") == bytes.fromhex("810100")                 # no KDF


def test_application_related_data_holds_the_simple_dos(tx):
    ard = tx.ok("00CA006E00")
    assert ard.startswith(bytes.fromhex("4F10D276000124010304FF00123456780000"))
    assert bytes.fromhex("C00A7D") in ard
    assert bytes.fromhex("C407017F7F7F030003") in ard
    assert bytes.fromhex("DE06010002000300") in ard          # no keys yet (§4.4.3.13)
    assert bytes.fromhex("7F66080202FFFF0202FFFF") in ard
    assert tx.ok("00CA006500") == bytes.fromhex("5B005F2D005F3500")
    assert tx.ok("00CA007A00") == bytes.fromhex("9303000000")


def test_unknown_tag_and_class(tx):
    assert tx("00CA00AA00")[1] == 0x6A88
    assert tx("80CA004F00")[1] == 0x6E00
    assert tx("00EE000000")[1] == 0x6D00


# --------------------------------------------------------------------------- PINs


def test_verify_counts_down_blocks_and_survives_reopen(tmp_path):
    card = new_card(tmp_path)
    tx = Tx(card)
    tx.ok(SELECT)
    assert tx("00200081")[1] == 0x63C3                 # status: not verified, 3 tries
    assert tx("0020008106393939393939")[1] == 0x63C2
    tx.ok(VERIFY_PW1_81)
    assert tx("00200081")[1] == 0x9000                 # verified
    assert tx("00200082")[1] == 0x63C3                 # 82 is separate
    tx.ok("00CA00C400")
    for left in (2, 1, 0):
        assert tx("00200083083939393939393939")[1] == 0x63C0 | left
    assert tx(VERIFY_PW3)[1] == 0x6983
    assert tx.ok("00CA00C400")[-1] == 0
    again = OpenPgpCard.open(CardStore(tmp_path / "card"))
    again.reset()
    t2 = Tx(again)
    assert t2.ok("00CA00C400") == bytes.fromhex("017F7F7F030000")
    assert t2(VERIFY_PW3)[1] == 0x6983


def test_verify_decrements_durably_before_comparing(tmp_path, monkeypatch):
    card = new_card(tmp_path)
    tx = Tx(card)

    def torn(self, value):
        raise SystemExit("power cut during the comparison")
    monkeypatch.setattr(pin_module.PinSlot, "_keys", torn)      # the KDF: the comparison starts there
    with pytest.raises(SystemExit):
        card.applet.process(pin_module_cmd(VERIFY_PW1_81))
    stored = json.loads((tmp_path / "card" / "state.json").read_text())
    assert stored["pw1"]["tries_left"] == 2
    assert stat.S_IMODE(os.stat(tmp_path / "card" / "state.json").st_mode) == 0o600


def pin_module_cmd(hexstr):
    from ccidgadget.cards.iso7816 import CommandAPDU
    return CommandAPDU.parse(bytes.fromhex(hexstr))


def test_pin_lengths_change_reference_data_and_reset_code(tx):
    # CHANGE REFERENCE DATA (§7.2.3): old ‖ new; PW1 at least 6, PW3 at least 8 characters
    assert tx("002400810B" + b"12345612345".hex())[1] == 0x6A80          # new PW1 "12345" too short
    tx.ok("002400810C" + b"123456654321".hex())
    assert tx(VERIFY_PW1_81)[1] == 0x63C2
    tx.ok("0020008106" + b"654321".hex())
    assert tx("002400830F" + b"12345678abcdefg".hex())[1] == 0x6A80      # new PW3 7 characters
    tx.ok("0024008310" + b"12345678abcdefgh".hex())
    tx.ok("0020008308" + b"abcdefgh".hex())
    # resetting code D3 (§4.3.4), then RESET RETRY COUNTER with it (P1=00)
    assert tx("00DA00D307" + b"1234567".hex())[1] == 0x6A80              # at least 8
    tx.ok("00DA00D308" + b"rc-12345".hex())
    assert tx.ok("00CA00C400")[5] == 3
    for _ in range(3):
        tx("0020008106" + b"000000".hex())
    assert tx("00200081")[1] == 0x6983
    assert tx("002C00810E" + b"rc-12346".hex() + b"111111".hex())[1] == 0x63C2
    tx.ok("002C00810E" + b"rc-12345".hex() + b"111111".hex())
    tx.ok("0020008106" + b"111111".hex())
    # RESET RETRY COUNTER after PW3 (P1=02)
    tx.ok("002C028106" + b"222222".hex())
    tx.ok("0020008206" + b"222222".hex())
    # VERIFY P1=FF resets the status (§7.2.2)
    tx.ok("0020FF82")
    assert tx("00200082")[1] == 0x63C3


def test_signature_pin_single_use_when_c4_says_so(tx):
    tx.ok(VERIFY_PW3)
    tx.ok("00DA00C10A" + ED25519_ATTR)
    tx.ok("0047800002B600")
    tx.ok("00DA00C40100")                     # PW1 valid for one PSO:CDS (§4.4.3.4)
    tx.ok(VERIFY_PW1_81)
    tx.ok("002A9E9A05" + b"hello".hex())
    assert tx("002A9E9A05" + b"hello".hex())[1] == 0x6982
    tx.ok(VERIFY_PW1_81)
    tx.ok("002A9E9A05" + b"hello".hex())
    assert tx.ok("00CA009300") == b"\x00\x00\x02"


# --------------------------------------------------------------------------- keys


def _value(data: bytes, i: int) -> tuple[bytes, int]:
    """The value of the TLV whose length byte is at data[i] (short or 81/82 form), and where it ends."""
    n = data[i]
    if n == 0x81:
        n, i = data[i + 1], i + 1
    elif n == 0x82:
        n, i = int.from_bytes(data[i + 1:i + 3], "big"), i + 2
    return data[i + 1:i + 1 + n], i + 1 + n


def _point(pub: bytes) -> bytes:
    """7F49 { 86 point } -> point."""
    inner, _ = _value(pub, 2)
    assert inner[0] == 0x86
    return _value(inner, 1)[0]


def _generate(tx, crt: str) -> bytes:
    data = tx.long(f"0047800002{crt}0000")
    assert data[:2] == b"\x7f\x49"
    read_back = tx.long(f"0047810002{crt}0000")
    assert read_back == data
    return data


def test_ed25519_generation_and_700_byte_eddsa_both_ways(tx):
    tx.ok(VERIFY_PW3)
    assert tx("00DA00C20A" + ED25519_ATTR)[1] == 0x6A80        # EdDSA cannot decipher
    assert tx("00DA00C10B" + CV25519_ATTR)[1] == 0x6A80        # ECDH cannot sign
    tx.ok("00DA00C30A" + ED25519_ATTR)
    assert tx.ok("00CA00C300") == bytes.fromhex(ED25519_ATTR)
    pub = _generate(tx, "A4")
    assert pub[2] == 0x22 and pub[3:5] == b"\x86\x20"          # 7F49 { 86 <32 bytes> }
    key = ed25519.Ed25519PublicKey.from_public_bytes(pub[5:])
    tx.ok(VERIFY_PW1_82)
    # an ssh certificate body: EdDSA signs the whole message, extended Lc ...
    message = os.urandom(700)
    sig = tx.ok(b"\x00\x88\x00\x00\x00" + len(message).to_bytes(2, "big") + message + b"\x00\x00")
    key.verify(sig, message)
    # ... or command chaining in 254-byte parts, as GnuPG does without extended length
    parts = [message[i:i + 254] for i in range(0, len(message), 254)]
    for part in parts[:-1]:
        assert tx(bytes([0x10, 0x88, 0, 0, len(part)]) + part)[1] == 0x9000
    sig = tx.ok(bytes([0x00, 0x88, 0, 0, len(parts[-1])]) + parts[-1] + b"\x00")
    key.verify(sig, message)
    assert tx.ok("00CA00DE00") == bytes.fromhex("010002000301")   # AUT generated


def test_rsa_4096_generation_sign_with_response_chaining_and_decipher(tx):
    tx.ok(VERIFY_PW3)
    for tag in ("C1", "C2"):
        tx.ok(f"00DA00{tag}06" + "011000002000")                 # RSA 4096
    pub = _generate(tx, "B6")
    inner = pub[pub.index(b"\x81\x82\x02\x00"):]
    n = int.from_bytes(inner[4:4 + 512], "big")
    assert inner[4 + 512:] == bytes.fromhex("8203010001")
    public = rsa.RSAPublicNumbers(65537, n).public_key()
    tx.ok(VERIFY_PW1_81)
    digest = hashlib.sha256(b"signed by RSA-4096").digest()
    digest_info = bytes.fromhex("3031300d060960864801650304020105000420") + digest
    sig = tx.long("002A9E9A33" + digest_info.hex() + "00")        # short Le: 512 bytes in 61xx parts
    assert len(sig) == 512
    public.verify(sig, b"signed by RSA-4096", padding.PKCS1v15(), hashes.SHA256())
    # the decryption key, imported (standard format: e, p, q; §4.4.3.12)
    private = rsa.generate_private_key(65537, 4096)
    nums = private.private_numbers()
    _import(tx, "B8", [(0x91, (65537).to_bytes(4, "big")), (0x92, nums.p.to_bytes(256, "big")),
                       (0x93, nums.q.to_bytes(256, "big"))])
    ciphertext = private.public_key().encrypt(b"session key", padding.PKCS1v15())
    tx.ok(VERIFY_PW1_82)
    assert tx.ok(apdu(0x00, 0x2A, 0x80, 0x86, b"\x00" + ciphertext, le=512)) == b"session key"
    assert tx.ok("00CA00DE00") == bytes.fromhex("010102020300")


def _import(tx, crt: str, components: list[tuple[int, bytes]]):
    header = b"".join(bytes([tag]) + _len(len(v)) for tag, v in components)
    values = b"".join(v for _, v in components)
    body = bytes.fromhex(crt + "00") + T(0x7F48, header) + T(0x5F48, values)
    data, sw = tx(apdu(0x00, 0xDB, 0x3F, 0xFF, T(0x4D, body)))
    return sw


def test_import_rsa_2048_crt_with_modulus_and_sign(tx):
    tx.ok(VERIFY_PW3)
    tx.ok("00DA00C106010800002003")           # RSA 2048, CRT with modulus
    private = rsa.generate_private_key(65537, 2048)
    n = private.private_numbers()
    comps = [(0x91, (65537).to_bytes(4, "big")), (0x92, n.p.to_bytes(128, "big")),
             (0x93, n.q.to_bytes(128, "big")), (0x94, n.iqmp.to_bytes(128, "big")),
             (0x95, n.dmp1.to_bytes(128, "big")), (0x96, n.dmq1.to_bytes(128, "big")),
             (0x97, n.public_numbers.n.to_bytes(256, "big"))]
    bad = list(comps)
    bad[3] = (0x94, (n.iqmp + 1).to_bytes(128, "big"))
    assert _import(tx, "B6", bad) == 0x6A80
    assert _import(tx, "B6", comps[:3]) == 0x6A80             # the format asks for the CRT parts
    assert _import(tx, "B6", comps) == 0x9000
    tx.ok(VERIFY_PW1_81)
    info = bytes.fromhex("3031300d060960864801650304020105000420") + hashlib.sha256(b"x").digest()
    sig = tx.ok("002A9E9A33" + info.hex() + "00")
    private.public_key().verify(sig, b"x", padding.PKCS1v15(), hashes.SHA256())
    assert tx("002A9E9A" + "F0" + "00" * 0xF0)[1] == 0x6A80    # more than 40 % of the modulus


def test_import_25519_keys_as_gnupg_sends_them(tx):
    tx.ok(VERIFY_PW3)
    tx.ok("00DA00C10A" + ED25519_ATTR)
    tx.ok("00DA00C20B" + CV25519_ATTR)
    ed = ed25519.Ed25519PrivateKey.generate()
    seed = ed.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())
    assert _import(tx, "B6", [(0x92, seed)]) == 0x9000
    cv = x25519.X25519PrivateKey.generate()
    native = cv.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                              serialization.NoEncryption())
    # OpenPGP stores the Cv25519 secret as a big-endian MPI: the reverse of X25519's bytes
    assert _import(tx, "B8", [(0x92, native[::-1])]) == 0x9000
    tx.ok(VERIFY_PW1_81)
    ed.public_key().verify(tx.ok("002A9E9A03616263"), b"abc")
    peer = x25519.X25519PrivateKey.generate()
    peer_pub = peer.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    tx.ok(VERIFY_PW1_82)
    # §7.2.11: A6 { 7F49 { 86 <point> } }; GnuPG may keep the 40 prefix of a native point
    for point in (peer_pub, b"\x40" + peer_pub):
        cipher = T(0xA6, T(0x7F49, T(0x86, point)))
        assert tx.ok(apdu(0, 0x2A, 0x80, 0x86, cipher, le=256)) == peer.exchange(cv.public_key())


def test_p256_generate_ecdsa_r_s_and_ecdh(tx):
    tx.ok(VERIFY_PW3)
    tx.ok("00DA00C109" + P256_ECDSA_ATTR)
    tx.ok("00DA00C209" + P256_ECDH_ATTR)
    pub = _generate(tx, "B6")
    assert pub[3:5] == b"\x86\x41" and pub[5] == 0x04
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), pub[5:])
    tx.ok(VERIFY_PW1_81)
    digest = hashlib.sha256(b"ecdsa").digest()
    rs = tx.ok("002A9E9A20" + digest.hex() + "00")
    assert len(rs) == 64
    der = utils.encode_dss_signature(int.from_bytes(rs[:32], "big"), int.from_bytes(rs[32:], "big"))
    public.verify(der, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    dec_pub = _generate(tx, "B8")
    dec = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), dec_pub[5:])
    peer = ec.generate_private_key(ec.SECP256R1())
    point = peer.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    tx.ok(VERIFY_PW1_82)
    assert tx.ok(apdu(0, 0x2A, 0x80, 0x86, T(0xA6, T(0x7F49, T(0x86, point))), le=256)) == \
        peer.exchange(ec.ECDH(), dec)


@pytest.mark.parametrize("attr, curve, h", [
    ("132B81040023", ec.SECP521R1(), hashes.SHA512()),
    ("132B2403030208010107", ec.BrainpoolP256R1(), hashes.SHA256()),
    ("132B240303020801010B", ec.BrainpoolP384R1(), hashes.SHA384()),
    ("132B240303020801010D", ec.BrainpoolP512R1(), hashes.SHA512()),
    ("132B8104000A", ec.SECP256K1(), hashes.SHA256()),
    ("132B81040022", ec.SECP384R1(), hashes.SHA384()),
])
def test_every_curve_signs(tx, attr, curve, h):
    tx.ok(VERIFY_PW3)
    tx.ok(f"00DA00C1{len(attr) // 2:02X}{attr}")
    pub = _generate(tx, "B6")
    public = ec.EllipticCurvePublicKey.from_encoded_point(curve, _point(pub))
    tx.ok(VERIFY_PW1_81)
    digest = hashlib.new(h.name, b"m").digest()
    rs = tx.ok(apdu(0, 0x2A, 0x9E, 0x9A, digest, le=256))
    size = len(rs) // 2
    assert size == (curve.key_size + 7) // 8
    public.verify(utils.encode_dss_signature(int.from_bytes(rs[:size], "big"), int.from_bytes(rs[size:], "big")),
                  digest, ec.ECDSA(utils.Prehashed(h)))


def test_attribute_change_deletes_the_key(tx):
    tx.ok(VERIFY_PW3)
    tx.ok("00DA00C10A" + ED25519_ATTR)
    _generate(tx, "B6")
    tx.ok("00DA00C10A" + ED25519_ATTR)                  # unchanged: the key stays
    tx.ok("0047810002B60000")
    tx.ok("00DA00C109" + P256_ECDSA_ATTR)
    assert tx("0047810002B60000")[1] == 0x6A88
    assert tx("00DA00C106010400002000")[1] == 0x6A80     # RSA-1024 is not offered


def test_mse_lets_the_authentication_key_decipher(tx):
    tx.ok(VERIFY_PW3)
    tx.ok("00DA00C306" + "010800002000")
    _generate(tx, "A4")
    pub = tx.long("0047810002A40000")
    n = int.from_bytes(pub[pub.index(b"\x81\x82\x01\x00") + 4:][:256], "big")
    public = rsa.RSAPublicNumbers(65537, n).public_key()
    tx.ok(VERIFY_PW1_82)
    ct = public.encrypt(b"to the AUT key", padding.PKCS1v15())
    assert tx(apdu(0, 0x2A, 0x80, 0x86, b"\x00" + ct, le=256))[1] == 0x6A88    # no DEC key
    tx.ok("002241B803830103")                         # §7.2.18: PSO:DECIPHER uses key 3
    assert tx.ok(apdu(0, 0x2A, 0x80, 0x86, b"\x00" + ct, le=256)) == b"to the AUT key"
    assert tx("002241B803830101")[1] == 0x6A80


# --------------------------------------------------------------------------- KDF-DO


def _s2k(secret: bytes, salt: bytes, count: int) -> bytes:
    """Iterated and salted S2K with SHA-256 (RFC 4880 §3.7.1.3)."""
    data = salt + secret
    full, rest = divmod(max(count, len(data)), len(data))
    return hashlib.sha256(data * full + data[:rest]).digest()


def test_kdf_do_as_gpg_kdf_setup_writes_it(tx):
    salt = bytes(range(8))
    count = 0x02000000
    h1, h3 = _s2k(b"123456", salt, count), _s2k(b"12345678", salt, count)
    kdf = (bytes.fromhex("810103 820108 8304") + count.to_bytes(4, "big")
           + T(0x84, salt) + T(0x87, h1) + T(0x88, h3))
    assert len(kdf) == 90                                # GnuPG's KDF_DATA_LENGTH_MIN (one salt)
    assert tx(b"\x00\xda\x00\xf9" + bytes([len(kdf)]) + kdf)[1] == 0x6982     # needs PW3
    tx.ok(VERIFY_PW3)
    tx.ok("00DA00D308" + b"rc-12345".hex())
    tx.ok(b"\x00\xda\x00\xf9" + bytes([len(kdf)]) + kdf)
    assert tx.ok("00CA00F900") == kdf                     # byte for byte: GnuPG reads salts by offset
    assert tx.ok("00CA00C400")[4:] == b"\x03\x00\x03"     # resetting code deleted
    # PWs are the initial hashes now; the plain PIN is a wrong one
    assert tx(VERIFY_PW1_81)[1] == 0x63C2
    tx.ok(b"\x00\x20\x00\x81\x20" + h1)
    tx.ok(b"\x00\x20\x00\x83\x20" + h3)
    # a new PW under KDF must be a hash as long as the hash
    assert tx(b"\x00\x24\x00\x81" + bytes([32 + 6]) + h1 + b"654321")[1] == 0x6A80
    new = _s2k(b"654321", salt, count)
    tx.ok(b"\x00\x24\x00\x81\x40" + h1 + new)
    tx.ok(b"\x00\x20\x00\x82\x20" + new)
    # KDF off again: the PINs are the plain defaults
    tx.ok(b"\x00\x20\x00\x83\x20" + h3)
    tx.ok("00DA00F903810100")
    tx.ok(VERIFY_PW3)
    assert tx("00DA00F903810102")[1] == 0x6A80           # unknown KDF


# --------------------------------------------------------------------------- UIF and the button


def test_uif_without_a_presence_source_says_no_button(tx):
    assert tx.ok("00CA7F7400") == bytes.fromhex("810100")      # no button (§4.1.3.2)
    assert tx.ok("00CA00D600") == bytes.fromhex("0020")
    tx.ok(VERIFY_PW3)
    assert tx("00DA00D6020120")[1] == 0x6985                    # UIF on cannot be honoured
    tx.ok("00DA00D6020020")


@pytest.mark.parametrize("answer", [True, False])
def test_uif_asks_the_presence_source(tmp_path, answer):
    presence = FakePresence(available=True, answer=answer)
    card = new_card(tmp_path, presence)
    tx = Tx(card)
    tx.ok(SELECT)
    assert tx.ok("00CA7F7400") == bytes.fromhex("810120")
    tx.ok(VERIFY_PW3)
    for tag in ("C1", "C3"):
        tx.ok(f"00DA00{tag}0A" + ED25519_ATTR)
    tx.ok("00DA00C20B" + CV25519_ATTR)
    for crt in ("B6", "B8", "A4"):
        _generate(tx, crt)
    assert tx("00DA00D6020320")[1] == 0x6A80
    for tag in ("D6", "D7", "D8"):
        tx.ok(f"00DA00{tag}020120")
    assert tx.ok("00CA00D700") == bytes.fromhex("0120")
    tx.ok(VERIFY_PW1_81)
    tx.ok(VERIFY_PW1_82)
    peer = x25519.X25519PrivateKey.generate().public_key().public_bytes(serialization.Encoding.Raw,
                                                                       serialization.PublicFormat.Raw)
    ops = [("002A9E9A03616263", "OpenPGP sign"), ("0088000003616263", "OpenPGP authenticate"),
           (apdu(0, 0x2A, 0x80, 0x86, T(0xA6, T(0x7F49, T(0x86, peer))), le=256), "OpenPGP decipher")]
    for command, what in ops:
        data, sw = tx(command)
        assert sw == (0x9000 if answer else 0x6982)
        assert presence.asked[-1] == what
    assert tx.ok("00CA009300") == (b"\x00\x00\x01" if answer else b"\x00\x00\x00")
    # permanently enabled (02) cannot be switched off without a factory reset
    tx.ok("00DA00D6020220")
    assert tx("00DA00D6020020")[1] == 0x6985


# --------------------------------------------------------------------------- other DOs and commands


def test_private_dos_and_their_access_rules(tx):
    assert tx("00DA01010568656C6C6F")[1] == 0x6982          # 0101: write needs PW1 (82)
    tx.ok(VERIFY_PW1_82)
    tx.ok("00DA01010568656C6C6F")
    tx.ok("00DA01030473656372")
    assert tx("00DA01020101")[1] == 0x6982                  # 0102: write needs PW3
    assert tx.ok("00CA010100") == b"hello"
    assert tx.ok("00CA010300") == b"secr"                   # 0103: read needs PW1 (82)
    assert tx("00CA010400")[1] == 0x6982                    # 0104: read needs PW3
    tx.ok(VERIFY_PW3)
    tx.ok("00DA01040101")
    assert tx.ok("00CA010400") == b"\x01"
    assert tx(apdu(0, 0xDA, 0x01, 0x02, b"x" * 256))[1] == 0x6700     # longer than the special DO limit


def test_cardholder_certificates_with_select_data(tx):
    tx.ok(VERIFY_PW3)
    certs = {occurrence: os.urandom(1500 + occurrence) for occurrence in range(3)}
    for occurrence, cert in certs.items():
        tx.ok(f"00A5{occurrence:02X}0406 60045C027F21")
        tx.ok(apdu(0, 0xDA, 0x7F, 0x21, cert))                # extended Lc
    assert tx.long("00CA7F2100") == certs[2]                   # the last selected (SIG)
    tx.ok("00A5000406 60045C027F21")
    assert tx.long("00CA7F2100") == certs[0]                   # AUT, the first occurrence
    assert tx.long("00CC7F2100") == certs[1]                   # GET NEXT DATA: DEC
    assert tx.long("00CC7F2100") == certs[2]
    assert tx("00CC7F2100")[1] == 0x6A88
    tx.ok("00A50104045C027F21")                                # without the 60 wrapper, as old GnuPG
    assert tx.ok(apdu(0, 0xCA, 0x7F, 0x21, le=65536)) == certs[1]
    assert tx(apdu(0, 0xDA, 0x7F, 0x21, b"x" * 2049))[1] == 0x6700
    assert tx("00A50304045C027F21")[1] == 0x6A86


def test_cardholder_data_fingerprints_and_times(tx):
    tx.ok(VERIFY_PW3)
    tx.ok("00DA005B08" + b"Doe<<Jo ".hex())
    tx.ok("00DA5F2D04" + b"ende".hex())
    tx.ok("00DA5F350132")
    tx.ok("00DA5F5011" + b"https://k.example".hex())
    fpr = bytes(range(20))
    tx.ok("00DA00C814" + fpr.hex())
    tx.ok("00DA00CF04" + "5F000000")
    tx.ok("00DA00CB14" + fpr.hex())
    assert tx.ok("00CA00C500") == bytes(20) + fpr + bytes(20)
    assert tx.ok("00CA00C600") == bytes(20) + fpr + bytes(20)
    assert tx.ok("00CA00CD00") == bytes(4) + bytes.fromhex("5F000000") + bytes(4)
    assert tx.ok("00CA5F5000") == b"https://k.example"
    assert tx.ok("00CA006500") == T(0x5B, b"Doe<<Jo ") + T(0x5F2D, b"ende") + T(0x5F35, b"2")
    assert tx("00DA00C813" + fpr[:19].hex())[1] == 0x6700
    assert tx("00DA005B28" + "41" * 40)[1] == 0x6700


def test_get_challenge(tx):
    a, b = tx.ok("0084000010"), tx.ok("0084000010")
    assert len(a) == 16 and a != b
    assert len(tx.ok(apdu(0, 0x84, 0, 0, le=1024))) == 1024
    assert tx(apdu(0, 0x84, 0, 0, le=1025))[1] == 0x6700


def test_terminate_and_activate_is_a_factory_reset(tmp_path):
    card = new_card(tmp_path)
    tx = Tx(card)
    tx.ok(SELECT)
    assert tx("00E60000")[1] == 0x6985                     # needs PW3 verified or blocked
    tx.ok(VERIFY_PW3)
    tx.ok("00DA00C10A" + ED25519_ATTR)
    _generate(tx, "B6")
    tx.ok(VERIFY_PW3)
    tx.ok("00E60000")
    data, sw = tx(SELECT)
    assert sw == 0x6285                                      # selected file in termination state
    assert tx("00CA004F00")[1] == 0x6985
    assert card.atr().endswith(bytes.fromhex("039000") + card.atr()[-1:])
    tx.ok("00440000")
    tx.ok(SELECT)
    assert tx.ok("00CA00C100") == bytes.fromhex("010800002000")
    assert tx("0047810002B60000")[1] == 0x6A88
    assert tx.ok("00CA004F00")[10:14] == bytes.fromhex("12345678")     # same serial
    tx.ok(VERIFY_PW3)


def test_gnupg_factory_reset_sequence(tx):
    # g10/card-util.c factory_reset: 4 wrong 32-byte PW1 and PW3, TERMINATE, ACTIVATE
    for ref in ("81", "83"):
        for _ in range(4):
            tx("002000" + ref + "20" + "40" * 32)
    assert tx.ok("00CA00C400")[4:] == b"\x00\x00\x00"
    tx.ok("00E60000")
    tx.ok("00440000")
    tx.ok(SELECT)
    assert tx.ok("00CA00C400") == bytes.fromhex("017F7F7F030003")


def test_state_file_and_reopen_keep_keys(tmp_path):
    card = new_card(tmp_path)
    tx = Tx(card)
    tx.ok(SELECT)
    tx.ok(VERIFY_PW3)
    tx.ok("00DA00C10A" + ED25519_ATTR)
    pub = _generate(tx, "B6")
    d = tmp_path / "card"
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    doc = json.loads((d / "state.json").read_text())
    assert doc["format"] == "ccidgadget-card" and doc["type"] == "openpgp"
    assert "123456" not in (d / "state.json").read_text()
    again = OpenPgpCard.open(CardStore(d))
    again.reset()
    assert Tx(again).long("0047810002B60000") == pub
