"""The applets of a CAC (GSC-IS 2.1 "CACv2") card, laid out as libcacard lays them out.

Applets (libcacard src/cac.c `cac_card_init`):

    A0 00 00 00 79 01 0i     PKI applet i (certificate + RSA key), object 01 0i
    A0 00 00 00 79 03 00     ACA, access control applet (GET ACR)
    A0 00 00 01 16 DB 00     CCC, card capability container (CardURLs)
    A0 00 00 00 79 02 F0/F1/F2          empty applets without objects
    A0 00 00 00 79 02 FB/FE/FD, 12 01/02 empty containers, one object each
    A0 00 00 00 79 02 00/01  Person Instance / Personnel (empty without a real card)
    A0 00 00 01 16 30 00     ACF, objects 3000/6010/6030/9000, empty

Commands (GSC-IS 2.1 §5.3.3 / NIST IR 6887; all accept CLA 00 and 80):

    SELECT  00 A4 04 00 AID     applet, FCI 6F{84 AID, A5 00}
    SELECT  00 A4 02 00 COID    object inside the applet (no data)
    GET PROPERTIES  80 56 P1 00 P1=01 all, 02 tag list, 40 long form
    READ BUFFER     80 52 off_hi off_lo 02 {01 TL | 02 V} len
    GET ACR         80 4C P1 00 (ACA only)
    SIGN/DECRYPT    80 42 {80 more | 00 last} 00 data   (PKI only)

VERIFY, GET CHALLENGE and GET RESPONSE are card-wide (see card.py).
"""

from __future__ import annotations

import enum
from typing import Protocol

from ..applet import Applet
from ..iso7816 import SW, ApduError, CommandAPDU
from ..tlv import tlv as ber_tlv
from . import simpletlv as stlv


class CardSide(Protocol):
    """What a CAC applet may ask of its card (card.py implements it): nothing more, so applets never reach
    into the card's state or vault, and this module does not depend on card.py."""

    def card_command(self, cmd: CommandAPDU) -> bytes:
        """The commands every applet accepts (VERIFY, GET CHALLENGE), answered card-wide."""

    def require_pin(self) -> None:
        """Return if the PIN has been verified in this card session, else raise ApduError 6982."""

    def private_key(self, index: int):
        """The private key of PKI applet `index` (keys.CardKey), opened from the vault: 6982 while locked."""


GSC_RID = bytes.fromhex("A000000079")          # DoD CAC registered application provider
NIST_RID = bytes.fromhex("A000000116")         # GSC-IS / NIST RID of the CCC and ACF


def pki_aid(index: int) -> bytes:
    return GSC_RID + bytes((0x01, index))


ACA_AID = GSC_RID + b"\x03\x00"
CCC_AID = NIST_RID + b"\xDB\x00"
ACF_AID = NIST_RID + b"\x30\x00"


class INS(enum.IntEnum):
    """CAC instructions (GSC-IS 2.1 §5.3.3 tables 5-4 ff.)."""

    SELECT = 0xA4
    VERIFY = 0x20
    GET_CHALLENGE = 0x84
    GET_RESPONSE = 0xC0
    SIGN_DECRYPT = 0x42
    GET_ACR = 0x4C
    READ_BUFFER = 0x52
    GET_PROPERTIES = 0x56
    UPDATE_BUFFER = 0x58


class BUFFER(enum.IntEnum):
    """READ BUFFER first data byte: which of the two files (GSC-IS §8.4)."""

    TL = 0x01
    V = 0x02


class PROP(enum.IntEnum):
    """GET PROPERTIES tags (GSC-IS 2.1 table 5-9; 26/39/3A as libcacard sends them)."""

    APPLET_INFORMATION = 0x01
    NUMBER_OF_OBJECTS = 0x40
    OBJECT_ID = 0x41
    BUFFER_PROPERTIES = 0x42
    PKI_PROPERTIES = 0x43
    TV_OBJECT = 0x50
    PKI_OBJECT = 0x51


class PKI_TAG(enum.IntEnum):
    """Tags in a PKI object's buffers (card-cac.c, cac.h)."""

    CERTIFICATE = 0x70
    CERTINFO = 0x71
    MSCUID = 0x72
    ERROR_DETECTION_CODE = 0xFE


#: Applet family 10, version 02 06 02 03 (02 06 02 02 for the ACA), as libcacard reports.
APPLET_INFO = bytes.fromhex("1002060203")
ACA_APPLET_INFO = bytes.fromhex("1002060202")
#: GSC-IS algorithm identifier of RSA with a CRT key (table 5-6).
ALG_RSA = 0x06
#: SIGN/DECRYPT P1 values (card-cac.c CAC_P1_STEP / CAC_P1_FINAL).
P1_MORE = 0x80
P1_FINAL = 0x00
#: 6900, "command not allowed, no information" (ISO 7816-4 table 6), libcacard's answer to writes.
SW_COMMAND_NOT_ALLOWED_NO_INFO = 0x6900
#: Longest SIGN/DECRYPT input we gather: an RSA-3072 block is 384 bytes.
MAX_SIGN_BUFFER = 1024


def _fci(aid: bytes) -> bytes:
    # libcacard's select answer: FCI template with the DF name and an empty
    # proprietary template (card_7816.c), ISO 7816-4 §5.3.3.
    return ber_tlv(0x6F, ber_tlv(0x84, aid) + ber_tlv(0xA5, b""))


class CacContainer(Applet):
    """A GSC-IS container: properties, two buffer files, objects addressed by COID."""

    name = "CAC container"

    def __init__(self, card: CardSide, aid: bytes, *, coids: list[bytes] = (),
                 properties: list[tuple[int, bytes]], long_properties: list[tuple[int, bytes]] | None = None,
                 tl: bytes = b"\x00\x00", v: bytes = b"\x00\x00", name: str | None = None) -> None:
        self.card = card
        self.aid = aid
        self.coids = [bytes(c) for c in coids]
        self.properties = properties
        self.long_properties = long_properties if long_properties is not None else properties
        self.tl = tl
        self.v = v
        if name:
            self.name = name

    # -- Applet -------------------------------------------------------------
    def select(self, cmd: CommandAPDU) -> bytes:
        return _fci(self.aid)

    def process(self, cmd: CommandAPDU):
        if cmd.ins == INS.GET_PROPERTIES:
            return self.get_properties(cmd)
        if cmd.ins == INS.READ_BUFFER:
            return self.read_buffer(cmd)
        if cmd.ins == INS.UPDATE_BUFFER:
            # Read-only card (libcacard: 6900 in containers, 6985 in PKI applets).
            raise ApduError(SW_COMMAND_NOT_ALLOWED_NO_INFO)
        return self.card.card_command(cmd)

    # -- SELECT P1=02 -------------------------------------------------------
    def select_object(self, cmd: CommandAPDU) -> bytes:
        """SELECT by card object ID (GSC-IS 5.3.3.2 with P1=02; libcacard cac.c)."""
        if len(cmd.data) != 2:
            raise ApduError(SW.REFERENCE_DATA_NOT_USABLE, "object ID is two bytes")
        if cmd.data not in self.coids:
            raise ApduError(SW.FILE_NOT_FOUND)
        return b""

    # -- GET PROPERTIES (GSC-IS 2.1 §5.3.3.4) -------------------------------
    def get_properties(self, cmd: CommandAPDU) -> bytes:
        if cmd.p2 != 0x00:
            raise ApduError(SW.INCORRECT_P1P2)
        if cmd.p1 == 0x01:                      # all properties
            if cmd.data:
                raise ApduError(SW.REFERENCE_DATA_NOT_USABLE)
            return _encode(self.properties)
        if cmd.p1 == 0x02:                      # the tags listed in the data field
            if not cmd.data:
                raise ApduError(SW.REFERENCE_DATA_NOT_USABLE)
            out = []
            for tag in cmd.data:
                match = next((item for item in self.properties if item[0] == tag), None)
                if match is None:
                    raise ApduError(SW.REFERENCE_NOT_FOUND)
                out.append(match)
            return _encode(out)
        if cmd.p1 == 0x40:                      # undocumented long form (libcacard)
            return _encode(self.long_properties)
        # P1=00 (GSC-IS 2.0 form) and anything else: 6A86 as the spec says.
        raise ApduError(SW.INCORRECT_P1P2)

    # -- READ BUFFER (GSC-IS 2.1 §5.3.3.x / §8.4) ---------------------------
    def read_buffer(self, cmd: CommandAPDU) -> bytes:
        if len(cmd.data) != 2:
            raise ApduError(SW.REFERENCE_DATA_NOT_USABLE, "READ BUFFER takes 2 data bytes")
        which, size = cmd.data[0], cmd.data[1]
        if which == BUFFER.TL:
            content = self.tl
        elif which == BUFFER.V:
            content = self.v
        else:
            raise ApduError(SW.REFERENCE_DATA_NOT_USABLE, "unknown buffer type")
        offset = cmd.p1p2
        if offset > len(content):
            raise ApduError(SW.INCORRECT_P1P2, "offset past the end of the buffer")
        return content[offset:offset + size]


def _encode(items: list[tuple[int, bytes]]) -> bytes:
    return b"".join(stlv.tlv(tag, value) for tag, value in items)


def _tv_object(coid: bytes, buffer_properties: bytes) -> bytes:
    return (stlv.tlv(PROP.OBJECT_ID, coid) + stlv.tlv(PROP.BUFFER_PROPERTIES, buffer_properties)
            + stlv.tlv(0x26, b"\x01"))


def _buffer_properties(simpletlv: bool, tl_len: int, v_len: int) -> bytes:
    # Type of tag supported (00 = SimpleTLV), T-buffer and V-buffer sizes LE16.
    return bytes((0x00 if simpletlv else 0x01,)) + tl_len.to_bytes(2, "little") + v_len.to_bytes(2, "little")


def empty_applet(card, aid: bytes, coids: list[bytes], *, simpletlv: bool = False, name: str = "") -> CacContainer:
    """libcacard's empty containers: one TV object per COID with nominal 0x60-byte buffers."""
    props = [(PROP.APPLET_INFORMATION, APPLET_INFO), (PROP.NUMBER_OF_OBJECTS, bytes((len(coids),)))]
    props += [(PROP.TV_OBJECT, _tv_object(c, _buffer_properties(simpletlv, 0x60, 0x60))) for c in coids]
    return CacContainer(card, aid, coids=coids, properties=props, name=name or None)


class PkiApplet(CacContainer):
    """One certificate and its RSA key (libcacard `cac_new_pki_applet_private`)."""

    def __init__(self, card: CardSide, index: int, cert_der: bytes, key) -> None:
        # `key` may be public only (keys.LockedCardKey): the private half comes from card.private_key().
        self.index = index
        self.key_bytes = key.key_size // 8
        coid = bytes((0x01, index))
        # CertInfo 00 = not compressed; MSCUID and the error detection code empty.
        tl, v = stlv.buffer_files([(PKI_TAG.CERTINFO, b"\x00"), (PKI_TAG.CERTIFICATE, cert_der),
                                   (PKI_TAG.MSCUID, b""), (PKI_TAG.ERROR_DETECTION_CODE, b"")])
        pki_object = (stlv.tlv(PROP.OBJECT_ID, coid)
                      + stlv.tlv(PROP.BUFFER_PROPERTIES, _buffer_properties(True, len(tl), len(v)))
                      # algorithm, key length in 8-byte units, private and public key initialised
                      + stlv.tlv(PROP.PKI_PROPERTIES, bytes((ALG_RSA, key.key_size // 64, 0x01, 0x01)))
                      + stlv.tlv(0x26, b"\x01"))
        short = [(PROP.APPLET_INFORMATION, APPLET_INFO), (PROP.NUMBER_OF_OBJECTS, b"\x01"),
                 (PROP.PKI_OBJECT, pki_object)]
        long = short + [(0x39, b"\x00"), (0x3A, ACA_AID)]
        super().__init__(card, pki_aid(index), coids=[coid], properties=short, long_properties=long,
                         tl=tl, v=v, name=f"CAC PKI applet {index}")
        self._sign_buffer = bytearray()

    def select(self, cmd: CommandAPDU) -> bytes:
        self._sign_buffer.clear()          # a (re)selection abandons a partial SIGN/DECRYPT
        return super().select(cmd)

    def deselect(self) -> None:
        self._sign_buffer.clear()

    def process(self, cmd: CommandAPDU):
        if cmd.ins == INS.SIGN_DECRYPT:
            return self.sign_decrypt(cmd)
        if cmd.ins == INS.UPDATE_BUFFER:
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        return super().process(cmd)

    def sign_decrypt(self, cmd: CommandAPDU) -> bytes:
        """SIGN/DECRYPT: raw RSA on a modulus-length block sent in pieces (P1=80 ... P1=00)."""
        if cmd.p2 != 0x00 or cmd.p1 not in (P1_MORE, P1_FINAL):
            self._sign_buffer.clear()
            raise ApduError(SW.INCORRECT_P1P2)
        if len(self._sign_buffer) + len(cmd.data) > MAX_SIGN_BUFFER:
            self._sign_buffer.clear()
            raise ApduError(SW.WRONG_LENGTH, "SIGN/DECRYPT input too long")
        self._sign_buffer += cmd.data
        if cmd.p1 == P1_MORE:
            return b""
        block = bytes(self._sign_buffer)
        self._sign_buffer.clear()
        self.card.require_pin()
        if len(block) != self.key_bytes:
            # libcacard: input must be exactly the modulus length (6984).
            raise ApduError(SW.REFERENCE_DATA_NOT_USABLE, "input is not one modulus-length block")
        key = self.card.private_key(self.index)     # opened with the data key the PIN unlocked
        try:
            return key.sign_raw_rsa(block)
        except ValueError:
            raise ApduError(SW.WRONG_DATA, "input is not smaller than the modulus") from None


# -- CCC ------------------------------------------------------------------------

class CARD_APP_TYPE(enum.IntEnum):
    """CardURL cardApplicationType (GSC-IS 2.1 §7.3)."""

    GENERIC = 0x01
    SKI = 0x02
    PKI = 0x04


def card_url(rid: bytes, app_type: int, object_id: bytes, application_id: bytes) -> bytes:
    """A CardURL: RID, type, object ID, application ID, then access profile etc. (empty on VM cards)."""
    return rid + bytes((app_type,)) + object_id + application_id + bytes(6)


#: The generic CardURLs libcacard's CCC lists before the PKI ones (cac.c `cardurl`).
COMMON_CARD_URLS = [
    card_url(GSC_RID, CARD_APP_TYPE.GENERIC, b"\x02\xFB", b"\x02\xFB"),
    card_url(GSC_RID, CARD_APP_TYPE.GENERIC, b"\x02\xFE", b"\x02\xFE"),     # PKI Certificate
    card_url(GSC_RID, CARD_APP_TYPE.GENERIC, b"\x02\xFD", b"\x02\xFD"),     # PKI Credential
    card_url(GSC_RID, CARD_APP_TYPE.GENERIC, b"\x02\x00", b"\x02\x00"),     # Person Instance
    card_url(GSC_RID, CARD_APP_TYPE.GENERIC, b"\x02\x01", b"\x02\x01"),     # Personnel
    card_url(NIST_RID, CARD_APP_TYPE.GENERIC, b"\x30\x00", b"\x30\x00"),    # Access Control File
    card_url(NIST_RID, CARD_APP_TYPE.GENERIC, b"\x60\x10", b"\x30\x00"),
    card_url(NIST_RID, CARD_APP_TYPE.GENERIC, b"\x60\x30", b"\x30\x00"),
    card_url(NIST_RID, CARD_APP_TYPE.GENERIC, b"\x90\x00", b"\x30\x00"),
    card_url(GSC_RID, CARD_APP_TYPE.GENERIC, b"\x12\x01", b"\x12\x01"),
    card_url(GSC_RID, CARD_APP_TYPE.GENERIC, b"\x12\x02", b"\x12\x02"),
]


class CCC_TAG(enum.IntEnum):
    """Card Capability Container tags (GSC-IS 2.1 table 6-1 / card-cac.c)."""

    CARD_IDENTIFIER = 0xF0
    CAPABILITY_CONTAINER_VERSION = 0xF1
    CAPABILITY_GRAMMAR_VERSION = 0xF2
    APPLICATION_CARDURL = 0xF3
    PKCS15 = 0xF4
    REGISTERED_DATA_MODEL_NUMBER = 0xF5
    ACCESS_CONTROL_RULE_TABLE = 0xF6
    CARD_APDUS = 0xF7
    REDIRECTION_TAG = 0xFA
    CAPABILITY_TUPLES = 0xFB
    STATUS_TUPLES = 0xFC
    NEXT_CCC = 0xFD
    ERROR_DETECTION_CODE = 0xFE


#: Card identifier head: GSC RID, manufacturer 03, card type 02 (Java card); 14 bytes of card ID follow.
CUID_HEAD = GSC_RID + b"\x03\x02"
CARD_ID_LEN = 14


def ccc_applet(card, card_id: bytes, cert_count: int) -> CacContainer:
    """The CCC as libcacard builds it; OpenSC reads the CUID as the serial number."""
    if len(card_id) != CARD_ID_LEN:
        raise ValueError("card ID is 14 bytes")
    items = [(CCC_TAG.CARD_IDENTIFIER, CUID_HEAD + card_id),
             (CCC_TAG.CAPABILITY_CONTAINER_VERSION, b"\x21"),
             (CCC_TAG.CAPABILITY_GRAMMAR_VERSION, b"\x21")]
    items += [(CCC_TAG.APPLICATION_CARDURL, url) for url in COMMON_CARD_URLS]
    items += [(CCC_TAG.APPLICATION_CARDURL, card_url(GSC_RID, CARD_APP_TYPE.PKI, bytes((1, i)), bytes((1, i))))
              for i in range(cert_count)]
    items += [(CCC_TAG.PKCS15, b"\x00"),
              # Data model 10: the PIV data model (SP 800-73-4), as libcacard announces.
              (CCC_TAG.REGISTERED_DATA_MODEL_NUMBER, b"\x10"),
              (CCC_TAG.ACCESS_CONTROL_RULE_TABLE, b"\x07" + ACA_AID + bytes(9))]
    # The empty tags must stay last: OpenSC stops parsing once the values are used up,
    # and would reject an empty NEXT CCC (FD) CardURL otherwise.
    items += [(tag, b"") for tag in (CCC_TAG.CARD_APDUS, CCC_TAG.REDIRECTION_TAG, CCC_TAG.CAPABILITY_TUPLES,
                                     CCC_TAG.STATUS_TUPLES, CCC_TAG.NEXT_CCC, CCC_TAG.ERROR_DETECTION_CODE)]
    tl, v = stlv.buffer_files(items)
    tv = (stlv.tlv(PROP.OBJECT_ID, b"\xDB\x00") + stlv.tlv(PROP.BUFFER_PROPERTIES, _buffer_properties(True, len(tl), len(v)))
          + stlv.tlv(0x26, b"\x01"))
    short = [(PROP.APPLET_INFORMATION, APPLET_INFO), (PROP.NUMBER_OF_OBJECTS, b"\x01"), (PROP.TV_OBJECT, tv)]
    return CacContainer(card, CCC_AID, coids=[b"\xDB\x00"], properties=short,
                        long_properties=short + [(0x39, b"\x00"), (0x3A, ACA_AID)], tl=tl, v=v,
                        name="CAC card capability container")
