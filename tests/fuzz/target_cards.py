# SPDX-License-Identifier: GPL-3.0-or-later
"""Fuzz targets `iso_card`, `piv_card`, `cac_card`, `openpgp_card`: each emulated card's `process_apdu`.

The input is a program of APDUs and card-level moves (reset, reopen from the
store, and helpers that do what random bytes cannot: authenticate with the
management key, VERIFY the right PIN, SELECT the application).  Checked:

- `process_apdu` answers every APDU with data + SW1 SW2, at most Le (or 256 in
  a short APDU) data bytes, and a status word from ISO 7816-4 §5.6 (61xx-6Fxx,
  9000);
- no applet exception: `AppletCard` turns one into 6F00 and logs "emulated
  card failed"; that log record is a finding, re-raised with its exception;
- the card state is never corrupted: after the run the store holds exactly
  the card's in-memory state, and a card reopened from the store answers
  SELECT with 9000.

Each input starts from the same fresh card (a copy of a card made once per
process), so a finding replays.  Key generation returns keys made once per
algorithm (generating RSA-4096 keys is not what is being fuzzed), and the PIN
hash cost is lowered as in the card tests.  The store is `MemoryStore`: the
same JSON document as on disk, without the file system and the indented
layout (the two made up most of a PIN verification's cost); warnings the cards
log on every construction are not formatted.
"""

from __future__ import annotations

import datetime
import json
import logging
from pathlib import Path

from ccidgadget.cards.storage import FORMAT_NAME, FORMAT_VERSION, CardStore, StorageError

from .harness import Finding, Input, LogCapture, Target, Writer, register

VALID_SW1 = set(range(0x61, 0x70)) | {0x90}
REOPEN = 13                                         # the op byte that reopens the card from its store
PIV_AID = bytes.fromhex("A000000308000010000100")
DEFAULT_MGMT = bytes.fromhex("010203040506070801020304050607080102030405060708")


#: The state document as JSON, in the order the card's to_dict builds it (deterministic, so an
#: unchanged state still gives the same bytes); sorting the keys was half of a save's encoding.
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode


class MemoryStore(CardStore):
    """A card store that keeps the state document (JSON, with the format header) in `raw`.

    Cards save and load through it exactly as through a `CardStore`, so "the
    store holds the card's state" and "a card reopened from the store works"
    still go through the JSON round trip.  Left out: the file system (atomic
    replace, fsync, permissions: no APDU reaches them) and the indented layout
    (``indent`` makes `json.dumps` fall back to its pure-Python encoder).
    """

    def __init__(self, name: str) -> None:
        super().__init__(Path("/nonexistent/ccidgadget-fuzz") / name)
        self.raw: bytes | None = None

    def exists(self) -> bool:
        return self.raw is not None

    def save(self, state: dict) -> None:
        document = {"format": FORMAT_NAME, "version": FORMAT_VERSION}
        document.update({k: v for k, v in state.items() if k not in ("format", "version")})
        try:
            self.raw = _ENCODE(document).encode("utf-8")
        except (TypeError, ValueError) as e:   # as CardStore.save: a bug in the card's serialiser
            raise StorageError(f"card state is not serialisable: {e}") from e

    def load(self) -> dict:
        if self.raw is None:
            raise StorageError(f"no card state in {self.directory}")
        return json.loads(self.raw)


def _cheap_cards() -> None:
    """Fast PIN hashes, cached key generation and key loading, for every card target (this process only)."""
    from ccidgadget.cards import keys, pin

    pin.SCRYPT_N = 2 ** 4
    # "uses the default management key", "default PIN": logged at every construction, never checked.
    logging.getLogger("ccidgadget.cards").setLevel(logging.ERROR)
    if getattr(keys.CardKey, "_fuzz_cached", False):
        return
    original = keys.CardKey.generate.__func__
    cache: dict = {}

    def generate(cls, algorithm):
        alg = keys.ALGORITHM(algorithm)
        if alg not in cache:
            cache[alg] = original(cls, alg)
        return cache[alg]

    keys.CardKey.generate = classmethod(generate)
    # Loading an RSA key from PEM checks it (about 9 ms); reopening a card from its store
    # loads every key again.  Same PEM text, same (immutable) key object.
    original_from_pem = keys.CardKey.from_pem.__func__
    loaded: dict = {}

    def from_pem(cls, data, password=None):
        cache_key = (bytes(data, "ascii") if isinstance(data, str) else bytes(data), password)
        if cache_key not in loaded:
            loaded[cache_key] = original_from_pem(cls, data, password)
        return loaded[cache_key]

    keys.CardKey.from_pem = classmethod(from_pem)
    # Opening a sealed key (after VERIFY, at every reopen for keys used without a PIN) loads its
    # DER: about 0.3 ms for RSA, one of the larger costs of a PIV or CAC input.  Same bytes, same key.
    from cryptography.hazmat.primitives import serialization

    original_from_der = serialization.load_der_private_key
    opened: dict = {}

    def load_der_private_key(data, password, *args, **kwargs):
        cache_key = (bytes(data), None if password is None else bytes(password))
        if cache_key not in opened:
            opened[cache_key] = original_from_der(data, password, *args, **kwargs)
        return opened[cache_key]

    serialization.load_der_private_key = load_der_private_key
    keys.CardKey._fuzz_cached = True


#: APDU -> the most data bytes its answer may carry (None: unparseable, SW only).  The special
#: moves send the same APDUs input after input; parsing is pure, so a bounded cache is exact.
_ANSWER_LIMIT: dict[bytes, int | None] = {}


def answer_limit(apdu: bytes) -> int | None:
    from ccidgadget.cards.iso7816 import ApduError, CommandAPDU

    try:
        cmd = CommandAPDU.parse(apdu)
    except ApduError:
        return None
    limit = cmd.le if cmd.le is not None else 256
    return limit if cmd.extended else min(limit, 256)


def check_response(apdu: bytes, resp: bytes) -> None:
    if not isinstance(resp, bytes) or len(resp) < 2:
        raise Finding(f"answer {resp!r} to {apdu.hex()} has no status word")
    if resp[-2] not in VALID_SW1:
        raise Finding(f"answer to {apdu.hex()} has SW {resp[-2:].hex()}")
    try:
        limit = _ANSWER_LIMIT[apdu]
    except KeyError:
        limit = answer_limit(apdu)
        if len(_ANSWER_LIMIT) >= 4096:
            _ANSWER_LIMIT.clear()
        _ANSWER_LIMIT[apdu] = limit
    if limit is None:
        if len(resp) != 2:
            raise Finding(f"unparseable APDU {apdu.hex()} answered with data")
        return
    if len(resp) - 2 > limit:
        raise Finding(f"{len(resp) - 2} data bytes where Le allows {limit}: {apdu.hex()}")


class CardDriver:
    """Runs the program of one input against a card; subclasses say how to build and check it."""

    capture: LogCapture

    def apdu(self, card, apdu: bytes) -> bytes:
        resp = card.process_apdu(apdu)
        self.capture.check(f"{type(card).__name__} on {apdu.hex()}")
        check_response(apdu, resp)
        return resp

    def program(self, card, data: bytes):
        """Op bytes: low nibble 0-9 an APDU (length byte, two with bit 7), 12 reset, 10-15 `special`.

        Reopening the card from its store (13) builds a whole card, by far the
        costliest move: it takes the byte 0D itself, and the other xD bytes reset.
        It runs once per input; a later 0D resets the card.  A second reopen finds
        nothing the first could not (each input starts from the same store, and the
        final check reopens whatever the program left there), while libFuzzer,
        which counts how often each branch ran, rewarded runs of 0D bytes: inputs
        with 40 and more reopens (30 to 60 ms each) made up much of a run's time.
        """
        inp = Input(data)
        steps = 0
        reopened = False
        while inp.more() and steps < 64:
            steps += 1
            op = inp.byte()
            kind = op & 0x0F
            if kind <= 9:
                n = inp.byte()
                if op & 0x80:
                    n = (n << 8) | inp.byte()
                self.apdu(card, inp.take(n))
            elif kind == 12 or (kind == REOPEN and (op != REOPEN or reopened)):
                card.reset()
            else:
                reopened = reopened or op == REOPEN
                card = self.special(card, kind, inp)
        return card

    def special(self, card, kind: int, inp: Input):
        return card


def apdu_op(apdu: bytes) -> bytes:
    w = Writer()
    if len(apdu) > 255:
        w.byte(0x80).u16(len(apdu))
    else:
        w.byte(0x00).byte(len(apdu))
    return w.raw(apdu).bytes()


def hexop(text: str) -> bytes:
    return apdu_op(bytes.fromhex(text.replace(" ", "")))


def cmdop(head: str, data: bytes, le: bool = False) -> bytes:
    """CLA INS P1 P2 (hex) + Lc + data (+ Le 00), short form."""
    return apdu_op(bytes.fromhex(head) + bytes([len(data)]) + data + (b"\x00" if le else b""))


# -- ISO ---------------------------------------------------------------------------------
class IsoDriver(CardDriver):
    """The ISO card is built once (its 4 KiB EF is made byte by byte); each input gets it back pristine.

    Its only persistent state is the content of its EFs: every EF is restored
    from a snapshot, and `reset()` clears what a power cycle clears (selection,
    chaining, pending response), with the current EF of both file systems.
    """

    def __init__(self) -> None:
        from ccidgadget.cards.iso import IsoCard

        self.capture = LogCapture("ccidgadget.cards.applet", "emulated card failed")
        self.card = IsoCard(serial="F0E1D2C3B4A59687")
        self.file_systems = (self.card.mf, self.card.applet.files)
        self.pristine = [{fid: bytes(content) for fid, content in fs.files.items()} for fs in self.file_systems]

    def __call__(self, data: bytes) -> None:
        card = self.card
        for fs, pristine in zip(self.file_systems, self.pristine):
            if fs.files.keys() != pristine.keys():
                raise Finding(f"the ISO card's files changed: {sorted(fs.files)}")
            for fid, content in fs.files.items():
                if content != pristine[fid]:
                    content[:] = pristine[fid]
            fs.current = None
        card.reset()
        self.program(card, data)

    def special(self, card, kind, inp):
        if kind == 14:
            self.apdu(card, bytes.fromhex("00A404000B F0636369646761646765 74".replace(" ", "")))
        return card


def iso_seeds() -> dict[str, bytes]:
    select = hexop("00A404000BF063636964676164676574")
    return {
        "select-read": select + hexop("00A4000C020101") + hexop("00B0000000"),
        "read-large-extended": select + hexop("00A4000C020102") + hexop("00B00000000000"),
        "read-chained": select + hexop("00A4000C020102") + hexop("00B0000000") + hexop("00C0000000"),
        "update-scratch": select + hexop("00A4000C020103") + hexop("00D6000004DEADBEEF")
        + hexop("00B0000004"),
        "update-extended": select + hexop("00A4000C020103") + apdu_op(b"\x00\xD6\x00\x10\x00\x01\x00" + b"A" * 256),
        "sfi": select + hexop("00B0810000") + hexop("00D6830004 01020304"),
        "mf": hexop("00A40000023F00") + hexop("00A40000022F00") + hexop("00B0000000") + hexop("00CA005A00"),
        "challenge": hexop("0084000008") + hexop("00CA005A00"),
        "command-chaining": select + hexop("10D6000004 01020304") + hexop("00D6000004 05060708"),
        "reset": select + bytes([12]) + hexop("00B0000000"),
        "bad": hexop("FFA4040000") + hexop("01A4040000") + hexop("0CA4040000") + hexop("00A4") + hexop("00B00000000001"),
    }


# -- PIV ---------------------------------------------------------------------------------
class PivDriver(CardDriver):
    def __init__(self) -> None:
        from cryptography.hazmat.primitives.serialization import Encoding

        from ccidgadget.cards.keys import ALGORITHM, CardKey
        from ccidgadget.cards.piv import PivCard
        from ccidgadget.cards.piv import objects
        from ccidgadget.cards.piv.constants import ORIGIN, PIN_POLICY, SLOT, TOUCH_POLICY, certificate_object_for
        from ccidgadget.cards.piv.state import SlotKey

        _cheap_cards()
        self.capture = LogCapture("ccidgadget.cards.applet", "emulated card failed")
        self.store = MemoryStore("piv")
        card = PivCard.create(self.store, serial=12345678)
        # Keys in the four main slots (one per algorithm family) and a certificate, so that
        # signing, decryption and key agreement are reachable without a valid GENERATE first.
        for slot, alg, policy in ((SLOT.AUTHENTICATION, ALGORITHM.RSA1024, PIN_POLICY.ONCE),
                                  (SLOT.SIGNATURE, ALGORITHM.ECCP256, PIN_POLICY.ALWAYS),
                                  (SLOT.KEY_MANAGEMENT, ALGORITHM.X25519, PIN_POLICY.NEVER),
                                  (SLOT.CARD_AUTH, ALGORITHM.ED25519, PIN_POLICY.NEVER)):
            card.state.keys[slot] = SlotKey(CardKey.generate(alg), policy, TOUCH_POLICY.NEVER, ORIGIN.GENERATED)
        cert = objects.self_signed_certificate(card.state.keys[SLOT.SIGNATURE].key,
                                               __import__("cryptography.x509", fromlist=["Name"]).Name([]), 30)
        card.state.objects[certificate_object_for(SLOT.SIGNATURE)] = objects.make_certificate_object(
            cert.public_bytes(Encoding.DER))
        self.store.save(card.state.to_dict())
        self.pristine = card.state
        self.pristine_dict = card.state.to_dict()
        self.pristine_raw = self.store.raw
        self.PivCard = PivCard
        self.ciphers: dict = {}

    def __call__(self, data: bytes) -> None:
        self.store.raw = self.pristine_raw
        card = self.PivCard(self.store, self.pristine.clone())
        card.reset()
        card = self.program(card, data)
        self.check_store(card)

    def check_store(self, card) -> None:
        if self.store.raw == self.pristine_raw and card.state.to_dict() == self.pristine_dict:
            return
        stored = {k: v for k, v in self.store.load().items() if k not in ("format", "version")}
        if stored != card.state.to_dict():
            raise Finding("the stored PIV state differs from the card's state in memory")
        again = self.PivCard.open(self.store)
        again.reset()
        resp = again.process_apdu(b"\x00\xA4\x04\x00\x09" + PIV_AID[:9] + b"\x00")
        self.capture.check("reopened PIV card")
        if resp[-2:] != b"\x90\x00":
            raise Finding(f"the PIV card reopened from its store answers SELECT with {resp[-2:].hex()}")

    def cipher(self, algorithm: int, key: bytes):
        """The host's cipher for a management key, made once per key (most inputs use the default one)."""
        from ccidgadget.cryptocompat import TripleDES
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        cipher = self.ciphers.get((algorithm, key))
        if cipher is None:
            if len(self.ciphers) > 64:
                self.ciphers.clear()
            cipher = Cipher(TripleDES(key) if algorithm == 0x03 else algorithms.AES(key), modes.ECB())
            self.ciphers[(algorithm, key)] = cipher
        return cipher

    def special(self, card, kind, inp):
        if kind == 10:
            self.authenticate(card)
        elif kind == 11:
            self.apdu(card, b"\x00\x20\x00\x80\x08" + b"123456\xff\xff")
        elif kind == 13:
            card = self.PivCard.open(self.store)
            card.reset()
        elif kind == 14:
            self.apdu(card, b"\x00\xA4\x04\x00\x09" + PIV_AID[:9] + b"\x00")
        return card

    def authenticate(self, card) -> None:
        """Mutual authentication with the card's current management key (SP 800-73-4 Part 2 §3.2.4)."""
        from ccidgadget.cards.tlv import tlv, unwrap

        mgmt = card.state.management
        cipher = self.cipher(int(mgmt.algorithm), mgmt.key)
        step1 = bytes((0x00, 0x87, int(mgmt.algorithm), 0x9B)) + bytes((4,)) + tlv(0x7C, tlv(0x80))
        resp = self.apdu(card, step1 + b"\x00")
        if resp[-2:] != b"\x90\x00":
            return
        witness = unwrap(unwrap(resp[:-2], 0x7C), 0x80)
        d = cipher.decryptor()
        plain = d.update(witness) + d.finalize()
        body = tlv(0x7C, tlv(0x80, plain) + tlv(0x81, bytes(len(witness))) + tlv(0x82))
        self.apdu(card, bytes((0x00, 0x87, int(mgmt.algorithm), 0x9B, len(body))) + body + b"\x00")


def piv_seeds() -> dict[str, bytes]:
    from ccidgadget.cards.tlv import tlv

    sel = bytes([14])
    auth = bytes([10])
    verify = bytes([11])

    def ga(alg: int, slot: int, data: bytes, tag: int = 0x81) -> bytes:
        body = tlv(0x7C, tlv(0x82) + tlv(tag, data))
        return apdu_op(bytes((0x00, 0x87, alg, slot, len(body))) + body + b"\x00") if len(body) < 256 else \
            apdu_op(bytes((0x00, 0x87, alg, slot, 0x00)) + len(body).to_bytes(2, "big") + body + b"\x00\x00")

    return {
        "select-discovery": sel + hexop("00CB3FFF 03 5C017E 00") + hexop("00CB3FFF 05 5C035FC102 00"),
        "version-serial-metadata": sel + hexop("00FD000000") + hexop("00F8000000") + hexop("00F7008000")
        + hexop("00F7009B00") + hexop("00F7009A00"),
        "verify-wrong-right": sel + hexop("0020008008 31313131 3131FFFF") + hexop("0020008000") + verify
        + hexop("0020008000") + hexop("0020FF8000"),
        "change-pin": sel + hexop("0024008010 313233343536FFFF 3635343332 31FFFF"),
        "change-puk-wrong": sel + hexop("0024008110 3132333435363738 3837363534333231"),
        "unblock": sel + hexop("002C008010 3132333435363738 3635343332 31FFFF"),
        "block-and-reset": sel + hexop("0020008008 3939393939 39FFFF") * 3 + hexop("002C008010 3939393939393939 39393939393939 39") * 3
        + hexop("00FB000000"),
        "mgmt-auth-put-get": sel + auth + cmdop("00DB3FFF", tlv(0x5C, b"\x5f\xc1\x05") + tlv(0x53, b"\x70\x01\x00"))
        + hexop("00CB3FFF 05 5C035FC105 00"),
        "mgmt-auth-external": sel + hexop("0087039B04 7C028100 00") + hexop("0087039B0C 7C0A 8208 0001020304050607 00"),
        "mgmt-auth-bad-step2": sel + hexop("0087039B04 7C028000 00") + hexop("0087039B0C 7C0A 8008 0001020304050607 00"),
        "generate-ec": sel + auth + apdu_op(bytes.fromhex("0047009A") + bytes([5]) + tlv(0xAC, tlv(0x80, b"\x11"))
                                            + b"\x00"),
        "generate-policies": sel + auth + apdu_op(bytes.fromhex("00470095") + bytes([11]) + tlv(
            0xAC, tlv(0x80, b"\xE0") + tlv(0xAA, b"\x02") + tlv(0xAB, b"\x01")) + b"\x00") + hexop("00F9 95 00 00"),
        "import-ed25519": sel + auth + apdu_op(bytes.fromhex("00FEE082") + bytes([34]) + tlv(0x07, bytes(range(32)))),
        "import-p256": sel + auth + apdu_op(bytes.fromhex("00FE1183") + bytes([34]) + tlv(0x06, b"\x01" * 32)),
        "import-rsa-bad": sel + auth + apdu_op(bytes.fromhex("00FE0784") + bytes([15]) + tlv(1, b"\x0b") + tlv(2, b"\x0d")
                                               + tlv(3, b"\x01") + tlv(4, b"\x01") + tlv(5, b"\x01")),
        "set-mgmt-key-aes": sel + auth + apdu_op(bytes.fromhex("00FFFFFF") + bytes([35]) + b"\x0C"
                                                 + tlv(0x9B, bytes(range(32)))) + auth + hexop("00F7009B00"),
        "sign-rsa": sel + verify + ga(0x06, 0x9A, b"\x00\x01" + b"\xff" * 90 + b"\x00" + b"\x11" * 35),
        "sign-ec-always": sel + verify + ga(0x11, 0x9C, b"\x42" * 32) + ga(0x11, 0x9C, b"\x42" * 32),
        "ecdh-x25519": sel + ga(0xE1, 0x9D, bytes(range(1, 33)), tag=0x85),
        "sign-ed25519": sel + ga(0xE0, 0x9E, b"message"),
        "attest-move": sel + auth + hexop("00F99A0000") + hexop("00F99C0000") + hexop("00F6 82 9A 00")
        + hexop("00F6 FF 82 00"),
        "set-pin-retries": sel + auth + verify + hexop("00FA0505"),
        "reopen": sel + verify + hexop("0020008008 3131313131 31FFFF") + bytes([13]) + hexop("0020008000"),
        "chained-put": sel + auth + cmdop("10DB3FFF", tlv(0x5C, b"\x5f\xc1\x0a") + bytes.fromhex("5382012C")
                                          + b"\x00" * 193)
        + cmdop("00DB3FFF", b"\x01" * 107) + hexop("00CB3FFF 05 5C035FC10A 00"),
        "get-cert-chained": sel + hexop("00CB3FFF 05 5C035FC10A 00") + hexop("00C0000000"),
    }


# -- CAC ---------------------------------------------------------------------------------
class CacDriver(CardDriver):
    def __init__(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        from ccidgadget.cards.cac import CacCard
        from ccidgadget.cards.cac.material import CacCredential
        from ccidgadget.cards.keys import CardKey
        from ccidgadget.cards.pin import PinSlot

        _cheap_cards()
        self.capture = LogCapture("ccidgadget.cards.applet", "emulated card failed")
        now = datetime.datetime.now(datetime.timezone.utc)
        creds = []
        for i in range(3):
            key = rsa.generate_private_key(65537, 1024)
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"fuzz {i}")])
            cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                    .serial_number(i + 1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=9))
                    .sign(key, hashes.SHA256()))
            creds.append(CacCredential(cert, CardKey(key), f"fuzz{i}"))
        self.creds = creds
        self.pin = PinSlot.new(b"12345678", max_tries=3)
        self.card_id = bytes(range(1, 15))            # CARD_ID_LEN
        self.store = MemoryStore("cac")
        self.CacCard = CacCard
        # Built once (its applets take a millisecond): its only persistent state is the PIN
        # slot, given back fresh to each input; `reset()` clears the rest (VERIFY status,
        # selection, chaining, SIGN buffers) as a power cycle does.
        self.card = CacCard(self.creds, self.pin.copy(), card_id=self.card_id, store=self.store)
        self.pin = self.card.pin.copy()               # the PIN slot that wraps this card's data key
        self.card.save()
        self.pristine_raw = self.store.raw

    def __call__(self, data: bytes) -> None:
        self.store.raw = self.pristine_raw
        card = self.card
        card.pin = self.pin.copy()
        card.reset()
        card = self.program(card, data)
        if self.store.raw != self.pristine_raw:
            stored = {k: v for k, v in self.store.load().items() if k not in ("format", "version")}
            if stored != card.to_state():
                raise Finding("the stored CAC state differs from the card's state in memory")
            again = self.CacCard.from_state(self.store)
            again.reset()
            resp = again.process_apdu(b"\x00\xA4\x04\x00\x07" + self.pki_aid(0))
            self.capture.check("reopened CAC card")
            if resp[-2:] not in (b"\x90\x00",) and resp[-2] != 0x61:
                raise Finding(f"the CAC card reopened from its store answers SELECT with {resp[-2:].hex()}")

    @staticmethod
    def pki_aid(i: int) -> bytes:
        from ccidgadget.cards.cac.applets import pki_aid
        return pki_aid(i)

    def special(self, card, kind, inp):
        if kind == 11:
            self.apdu(card, b"\x00\x20\x00\x00\x08" + b"12345678")
        elif kind == 13:
            card = self.CacCard.from_state(self.store)
            card.reset()
        elif kind == 14:
            self.apdu(card, b"\x00\xA4\x04\x00\x07" + self.pki_aid(inp.byte() % 3))
        return card


def cac_seeds() -> dict[str, bytes]:
    pki0 = bytes([14, 0])
    verify = bytes([11])
    from ccidgadget.cards.cac.applets import ACA_AID, CCC_AID, pki_aid
    sel = lambda aid: apdu_op(b"\x00\xA4\x04\x00" + bytes([len(aid)]) + aid)  # noqa: E731
    return {
        "ccc-properties": sel(CCC_AID) + hexop("8056010000") + hexop("8056000000") + hexop("0052000002 0102")
        + hexop("0052000002 0202"),
        "pki-read": pki0 + hexop("8056010000") + hexop("0052000002 01F0") + hexop("0052000002 02F0")
        + hexop("00C0000000"),
        "pki-object": pki0 + hexop("00A4020002 0100") + hexop("0052000002 0110"),
        "aca": sel(ACA_AID) + hexop("804C000000") + hexop("804C100000") + hexop("804C200000") + hexop("804C210000"),
        "verify-sign": pki0 + verify + hexop("8042000080" + "00" * 128) + hexop("00C0000000"),
        "verify-sign-chained": bytes([14, 1]) + verify + hexop("8042800080" + "01" * 128)
        + hexop("8042000000"),
        "verify-wrong": hexop("0020000008 3131313131313131") + hexop("0020000000") + hexop("0020000004 31323334")
        + verify + hexop("0020000000"),
        "block": hexop("0020000008 3939393939393939") * 3 + verify + bytes([13]) + hexop("0020000000"),
        "challenge": hexop("0084000008") + sel(pki_aid(2)) + hexop("0084000000"),
        "reset": pki0 + verify + bytes([12]) + hexop("8042000080" + "02" * 128),
    }


# -- OpenPGP -------------------------------------------------------------------------------
OPENPGP_AID = bytes.fromhex("D27600012401")


class OpenPgpDriver(CardDriver):
    """The OpenPGP card with a key of each family in the three slots, so that signing,
    decryption (RSA and ECDH) and authentication are reachable without a valid GENERATE first.
    Specials: 10 VERIFY PW3, 11 VERIFY PW1 (81 and 82), 13 reopen from the store, 14 SELECT."""

    def __init__(self) -> None:
        from ccidgadget.cards.keys import ALGORITHM, CardKey
        from ccidgadget.cards.openpgp import KEY, OpenPgpCard
        from ccidgadget.cards.openpgp.attributes import KeyAttributes
        from ccidgadget.cards.openpgp.constants import KEY_STATUS
        from ccidgadget.cards.openpgp.state import KeyEntry
        from ccidgadget.cards.presence import UserPresence
        class Button(UserPresence):          # a source that says yes and no in turn
            def __init__(self):
                self.n = 0

            @property
            def available(self):
                return True

            def confirm(self, what):
                self.n += 1
                return bool(self.n % 2)

        _cheap_cards()
        self.capture = LogCapture("ccidgadget.cards.applet", "emulated card failed")
        self.store = MemoryStore("openpgp")
        self.Button = Button
        card = OpenPgpCard.create(self.store, serial=0x01020304)
        for key, alg in ((KEY.SIG, ALGORITHM.ED25519), (KEY.DEC, ALGORITHM.X25519), (KEY.AUT, ALGORITHM.ECCP256)):
            card.state.attributes[key] = KeyAttributes.for_algorithm(key, alg)
            card.state.keys[key] = KeyEntry(CardKey.generate(alg), KEY_STATUS.GENERATED)
        self.store.save(card.state.to_dict())
        self.pristine = card.state
        self.pristine_bytes = self.store.raw
        self.OpenPgpCard = OpenPgpCard

    def __call__(self, data: bytes) -> None:
        self.store.raw = self.pristine_bytes
        card = self.OpenPgpCard(self.store, self.pristine.clone(), presence=self.Button())
        card.reset()
        card = self.program(card, data)
        raw = self.store.raw
        if raw == self.pristine_bytes and card.state.to_dict() == self.pristine.to_dict():
            return
        stored = {k: v for k, v in self.store.load().items() if k not in ("format", "version")}
        if stored != card.state.to_dict():
            raise Finding("the stored OpenPGP state differs from the card's state in memory")
        again = self.OpenPgpCard.open(self.store)
        again.reset()
        resp = again.process_apdu(b"\x00\xA4\x04\x00\x06" + OPENPGP_AID)
        self.capture.check("reopened OpenPGP card")
        if resp[-2:] not in (b"\x90\x00", b"\x62\x85"):
            raise Finding(f"the OpenPGP card reopened from its store answers SELECT with {resp[-2:].hex()}")

    def special(self, card, kind, inp):
        if kind == 10:
            self.apdu(card, b"\x00\x20\x00\x83\x08" + b"12345678")
        elif kind == 11:
            self.apdu(card, b"\x00\x20\x00\x81\x06" + b"123456")
            self.apdu(card, b"\x00\x20\x00\x82\x06" + b"123456")
        elif kind == 13:
            card = self.OpenPgpCard.open(self.store, presence=self.Button())
            card.reset()
        elif kind == 14:
            self.apdu(card, b"\x00\xA4\x04\x00\x06" + OPENPGP_AID)
        return card


def openpgp_seeds() -> dict[str, bytes]:
    from ccidgadget.cards.tlv import tlv

    pw3, pw1, sel = bytes([10]), bytes([11]), bytes([14])

    def ext(head: str, data: bytes) -> bytes:
        return apdu_op(bytes.fromhex(head) + b"\x00" + len(data).to_bytes(2, "big") + data + b"\x00\x00")

    point = tlv(0xA6, tlv(0x7F49, tlv(0x86, bytes(range(1, 33)))))
    kdf = (bytes.fromhex("810103820108830403000000") + tlv(0x84, bytes(8)) + tlv(0x87, bytes(32))
           + tlv(0x88, bytes(range(32))))
    return {
        "status-dos": sel + hexop("00CA004F00") + hexop("00CA5F5200") + hexop("00CA006E00") + hexop("00CA006500")
        + hexop("00CA007A00") + hexop("00CA00C400") + hexop("00CA7F7400") + hexop("00CA00FA00") + hexop("00CA00F900"),
        "verify-wrong-right": sel + hexop("0020008106 393939393939") + hexop("00200081") + pw1 + hexop("00200081")
        + hexop("0020FF81"),
        "sign-ed25519": sel + pw1 + hexop("002A9E9A 05 68656C6C6F 00"),
        "sign-700-extended": sel + pw1 + ext("00880000", bytes(700)),
        "sign-700-chained": sel + pw1 + cmdop("10880000", bytes(254)) + cmdop("10880000", bytes(254))
        + cmdop("00880000", bytes(192), le=True),
        "ecdh-x25519": sel + pw1 + cmdop("002A8086", point, le=True),
        "mse-swap": sel + pw1 + hexop("002241A4 03 830102") + hexop("0088000004 41424344 00")
        + hexop("002241B8 03 830103") + cmdop("002A8086", point, le=True),
        "attributes-generate": sel + pw3 + hexop("00DA00C1 0A 162B06010401DA470F01") + hexop("0047800002B60000")
        + hexop("00DA00C2 09 122A8648CE3D030107") + hexop("0047800002B80000") + hexop("0047810002A40000"),
        "import-ed25519": sel + pw3 + ext("00DB3FFF", tlv(0x4D, bytes.fromhex("B600") + tlv(0x7F48, b"\x92\x20")
                                                       + tlv(0x5F48, bytes(range(32))))),
        "put-dos": sel + pw3 + cmdop("00DA005B", b"Doe<<Jo") + cmdop("00DA00C7", bytes(20)) + hexop("00DA00CE04 01020304")
        + hexop("00DA00C40100") + cmdop("00DA00D3", b"12345678") + pw1 + cmdop("00DA0101", b"x" * 20)
        + hexop("00CA010300"),
        "kdf": sel + pw3 + cmdop("00DA00F9", kdf) + apdu_op(b"\x00\x20\x00\x83\x20" + bytes(range(32))),
        "uif": sel + pw3 + hexop("00DA00D6020120") + pw1 + hexop("002A9E9A0161 00") + hexop("002A9E9A0161 00"),
        "certificate-select-data": sel + pw3 + hexop("00A5010406 60045C027F21") + ext("00DA7F21", b"C" * 600)
        + hexop("00A5000406 60045C027F21") + hexop("00CC7F2100") + hexop("00CA7F2100") + hexop("00C0000000"),
        "passwd-reset-code": sel + hexop("002400810C 313233343536 363534333231") + pw3
        + cmdop("00DA00D3", b"rc-12345") + hexop("002C00810E 72632D3132333435 313131313131")
        + hexop("002C028106 323232323232"),
        "terminate-activate": sel + pw3 + hexop("00E60000") + sel + hexop("00CA004F00") + hexop("00440000") + sel
        + bytes([13]) + hexop("00CA00C400"),
        "challenge": hexop("0084000010") + apdu_op(bytes.fromhex("00840000000400")),
        "reopen": sel + pw3 + hexop("0020008308 3939393939393939") + bytes([13]) + hexop("00200083"),
    }


register(Target("iso_card", IsoDriver, iso_seeds, max_len=8192, bounded_runs=2000))
register(Target("openpgp_card", OpenPgpDriver, openpgp_seeds, max_len=8192, bounded_runs=1000))
register(Target("piv_card", PivDriver, piv_seeds, max_len=8192, bounded_runs=1000))
register(Target("cac_card", CacDriver, cac_seeds, max_len=4096, bounded_runs=600))
