"""The CAC access control applet (ACA): GET ACR (GSC-IS 2.1 §5.3.3.5).

The tables are those libcacard's ACA serves (src/cac-aca.c), in the SimpleTLV
form: every answer starts with the applet information (01 05 10 02 06 02 02),
then one of

    P1=00  ACR table                 A1 count, A0 {ACRID ACRType n (AMP-ID keyRef)*}
    P1=01  one ACR by ACRID (1 data byte)
    P1=10  applet/object ACR table   81 count, 80 {appletID nObjects (82 {COID (INS config [P1] [P2] [D1] ACRID)*})*}
    P1=11  one applet's ACRs by AID (7 data bytes)
    P1=12  one object's ACRs by COID (2 data bytes)
    P1=20  access method providers   91 count, 90 {AMP-ID 92 07 AID}
    P1=21  service applet table      94 count, 93 {appletID 92 07 AID}
    P1=40/41  ACR table, libcacard's compressed "extended" form

OpenSC reads the service table (P1=21) when a card has no CCC.  The other
extended forms (P1=50..52/60/61) are undocumented; we answer 6A86.
Difference from libcacard: the CCC's applet ID is 4F in both the service and
the applet ACR table (libcacard has F4 in the latter), and the AMP table lists
all three providers (libcacard's loop skips the first).
"""

from __future__ import annotations

import enum

from ..iso7816 import SW, ApduError, CommandAPDU
from . import simpletlv as stlv
from .applets import ACA_AID, ACA_APPLET_INFO, ACF_AID, CCC_AID, GSC_RID, INS, CacContainer, PROP, pki_aid


class ACR(enum.IntEnum):
    """ACRType (GSC-IS 2.1 table 3-2)."""

    ALWAYS = 0x00
    NEVER = 0x01
    XAUTH = 0x02
    XAUTH_OR_PIN = 0x03
    SECURE_CHANNEL_GP = 0x04
    ACR_PIN_ALWAYS = 0x05
    PIN = 0x06
    XAUTH_THEN_PIN = 0x07
    UPDATE_ONCE = 0x08
    PIN_THEN_XAUTH = 0x09
    SECURE_CHANNEL_ISO = 0x0B
    XAUTH_AND_PIN = 0x0C


class TAG(enum.IntEnum):
    """GET ACR answer tags (libcacard cac.h, GSC-IS 2.1 tables 5-15..5-21)."""

    ACR_NUM_ENTRIES = 0xA1
    ACR_ENTRY = 0xA0
    NUM_APPLETS = 0x81
    APPLET_ACR = 0x80
    OBJECT_ACR = 0x82
    AMP_NUM_ENTRIES = 0x91
    AMP_ENTRY = 0x90
    AID = 0x92
    SERVICE_NUM_ENTRIES = 0x94
    SERVICE_ENTRY = 0x93


# Access method providers: 1F secure channel, 1E PIN, 1D external authentication; all served by the ACA.
AMP_SECURE_CHANNEL, AMP_PIN, AMP_XAUTH = 0x1F, 0x1E, 0x1D
AMP_TABLE = [(AMP_SECURE_CHANNEL, ACA_AID), (AMP_PIN, ACA_AID), (AMP_XAUTH, ACA_AID)]

# (ACRID, ACRType, applet ID used by the compressed form, [(AMP ID, key reference)])
ACR_TABLE = [
    (0x00, ACR.ALWAYS, 0x00, []),
    (0x01, ACR.NEVER, 0x00, []),
    (0x02, ACR.ALWAYS, 0x1F, []),
    (0x06, ACR.PIN, 0x00, [(AMP_PIN, 0x00)]),
    (0x04, ACR.SECURE_CHANNEL_GP, 0x1F, [(AMP_SECURE_CHANNEL, 0x21)]),
    (0x08, ACR.XAUTH_OR_PIN, 0x00, [(AMP_XAUTH, 0x01), (AMP_PIN, 0x01)]),
    (0x09, ACR.XAUTH, 0x00, [(AMP_XAUTH, 0x01)]),
    (0x0A, ACR.XAUTH_OR_PIN, 0x00, [(AMP_XAUTH, 0x03), (AMP_PIN, 0x01)]),
    (0x0B, ACR.XAUTH, 0x00, [(AMP_XAUTH, 0x00)]),
    (0x10, ACR.ALWAYS, 0x1E, []),
    (0x11, ACR.ALWAYS, 0x1D, []),
]

# Service applet IDs: PKI applets 61.., then the fixed applets.
PKI_APPLET_ID = 0x61
STATIC_SERVICES = [
    (0x40, ACF_AID), (0x4F, CCC_AID), (0x4B, GSC_RID + b"\x02\xFB"), (0x41, GSC_RID + b"\x02\x00"),
    (0x42, GSC_RID + b"\x02\x01"), (0x4E, GSC_RID + b"\x02\xFE"), (0x4D, GSC_RID + b"\x02\xFD"),
    (0x50, GSC_RID + b"\x02\xF2"), (0x51, GSC_RID + b"\x02\xF0"), (0x52, GSC_RID + b"\x02\xF1"),
    (0x44, GSC_RID + b"\x12\x01"), (0x45, GSC_RID + b"\x12\x02"),
]

# INS configuration bits: which of P1, P2, first data byte qualify the rule.
CFG_NONE, CFG_P1, CFG_P2, CFG_DATA1 = 0x00, 0x01, 0x02, 0x04
INS_EXTERNAL_AUTHENTICATE = 0x82
INS_READ_BINARY = 0xB0

# Rules every fixed container shares for the card-wide object FFFF.
_CARD_WIDE = (b"\xFF\xFF", [(INS_EXTERNAL_AUTHENTICATE, CFG_P1, (0x00,), 0x11),
                            (INS.GET_CHALLENGE, CFG_NONE, (), 0x11),
                            (INS.VERIFY, CFG_NONE, (), 0x10)])
_READ_BY_PIN = [(INS.READ_BUFFER, CFG_DATA1, (0x01,), 0x00), (INS.READ_BUFFER, CFG_NONE, (), 0x06)]


def _pki_rules(index: int):
    return [(bytes((0x01, index)), [(INS.UPDATE_BUFFER, CFG_NONE, (), 0x04),
                                    (INS.READ_BUFFER, CFG_NONE, (), 0x00),
                                    (INS.SIGN_DECRYPT, CFG_NONE, (), 0x06)]),
            (b"\xFF\xFF", [(INS.VERIFY, CFG_NONE, (), 0x10)])]


# applet ID -> [(COID, [(INS, config, qualifier bytes, ACRID)])]
STATIC_APPLET_ACRS = [
    (0x1F, [(b"\xFF\xFF", [(INS.VERIFY, CFG_NONE, (), 0x00)])]),
    (0x4F, [(b"\xDB\x00", [(INS.UPDATE_BUFFER, CFG_NONE, (), 0x04), (INS.READ_BUFFER, CFG_NONE, (), 0x00)]),
            _CARD_WIDE]),
    (0x4B, [(b"\x02\xFB", [(INS.UPDATE_BUFFER, CFG_NONE, (), 0x06), (INS.READ_BUFFER, CFG_NONE, (), 0x00)]),
            _CARD_WIDE]),
    (0x41, [(b"\x02\x00", [(INS.UPDATE_BUFFER, CFG_NONE, (), 0x09)] + _READ_BY_PIN[:1]
             + [(INS.READ_BUFFER, CFG_NONE, (), 0x08)]), _CARD_WIDE]),
    (0x42, [(b"\x02\x01", [(INS.UPDATE_BUFFER, CFG_NONE, (), 0x0B)] + _READ_BY_PIN[:1]
             + [(INS.READ_BUFFER, CFG_NONE, (), 0x0A)]), _CARD_WIDE]),
    (0x40, [(b"\x30\x00", [(INS.UPDATE_BUFFER, CFG_NONE, (), 0x04), (INS.READ_BUFFER, CFG_NONE, (), 0x00),
                           (INS_READ_BINARY, CFG_NONE, (), 0x00)]),
            (b"\x60\x10", [(INS.UPDATE_BUFFER, CFG_NONE, (), 0x04)] + _READ_BY_PIN),
            (b"\x60\x30", [(INS.UPDATE_BUFFER, CFG_NONE, (), 0x04)] + _READ_BY_PIN),
            (b"\x90\x00", [(INS.UPDATE_BUFFER, CFG_NONE, (), 0x04), (INS.READ_BUFFER, CFG_NONE, (), 0x00)]),
            _CARD_WIDE]),
    (0x4E, [(b"\x02\xFE", [(INS.UPDATE_BUFFER, CFG_NONE, (), 0x04), (INS.READ_BUFFER, CFG_NONE, (), 0x00)]),
            _CARD_WIDE]),
    (0x4D, [(b"\x02\xFD", [(INS.UPDATE_BUFFER, CFG_NONE, (), 0x06)] + _READ_BY_PIN), _CARD_WIDE]),
    (0x50, [(b"\xFF\xFF", [(INS.UPDATE_BUFFER, CFG_NONE, (), 0x04), (INS.READ_BUFFER, CFG_NONE, (), 0x00)]
             + _CARD_WIDE[1])]),
    (0x51, [(b"\xFF\xFF", [(INS.UPDATE_BUFFER, CFG_NONE, (), 0x04), (INS.READ_BUFFER, CFG_NONE, (), 0x00)]
             + _CARD_WIDE[1])]),
    (0x52, [(b"\xFF\xFF", [(INS.UPDATE_BUFFER, CFG_NONE, (), 0x04), (INS.READ_BUFFER, CFG_NONE, (), 0x00)]
             + _CARD_WIDE[1])]),
    (0x44, [(b"\x12\x01", [(INS.UPDATE_BUFFER, CFG_NONE, (), 0x06)] + _READ_BY_PIN), _CARD_WIDE]),
    (0x45, [(b"\x12\x02", [(INS.UPDATE_BUFFER, CFG_NONE, (), 0x06)] + _READ_BY_PIN), _CARD_WIDE]),
]


def _encode_object(coid: bytes, rules) -> bytes:
    out = bytearray(coid)
    for ins, config, qualifiers, acrid in rules:
        out += bytes((ins, config)) + bytes(qualifiers) + bytes((acrid,))
    return bytes(out)


def _encode_applet(applet_id: int, objects) -> bytes:
    body = bytearray((applet_id, len(objects)))
    for coid, rules in objects:
        body += stlv.tlv(TAG.OBJECT_ACR, _encode_object(coid, rules))
    return bytes(body)


def _acr_entry(acrid, acrtype, _applet, methods) -> bytes:
    return bytes((acrid, acrtype, len(methods))) + b"".join(bytes(m) for m in methods)


class AcaApplet(CacContainer):
    """Access control applet; GET PROPERTIES gives the applet information, GET ACR the tables."""

    def __init__(self, card, cert_count: int) -> None:
        super().__init__(card, ACA_AID, coids=[b"\x03\x00"],
                         properties=[(PROP.APPLET_INFORMATION, ACA_APPLET_INFO)], name="CAC access control applet")
        self.cert_count = cert_count
        self.services = [(PKI_APPLET_ID + i, pki_aid(i)) for i in range(cert_count)] + STATIC_SERVICES
        self.applet_acrs = [(PKI_APPLET_ID + i, _pki_rules(i)) for i in range(cert_count)] + STATIC_APPLET_ACRS

    def process(self, cmd: CommandAPDU):
        if cmd.ins == INS.GET_ACR:
            return self.get_acr(cmd)
        if cmd.ins in (INS.READ_BUFFER, INS.UPDATE_BUFFER):
            # The ACA holds no buffers (libcacard answers 6D00).
            raise ApduError(SW.INS_NOT_SUPPORTED)
        return super().process(cmd)

    def get_acr(self, cmd: CommandAPDU) -> bytes:
        if cmd.p2 != 0x00:
            raise ApduError(SW.INCORRECT_P1P2)
        wants = {0x00: 0, 0x40: 0, 0x41: 0, 0x01: 1, 0x10: 0, 0x11: 7, 0x12: 2, 0x20: 0, 0x21: 0}
        if cmd.p1 not in wants:
            raise ApduError(SW.INCORRECT_P1P2)
        if len(cmd.data) != wants[cmd.p1]:
            raise ApduError(SW.REFERENCE_DATA_NOT_USABLE)
        if cmd.p1 in (0x40, 0x41):
            return self._acr_table_compressed()
        head = stlv.tlv(PROP.APPLET_INFORMATION, ACA_APPLET_INFO)
        if cmd.p1 == 0x00:
            return head + stlv.tlv(TAG.ACR_NUM_ENTRIES, bytes((len(ACR_TABLE),))) + b"".join(
                stlv.tlv(TAG.ACR_ENTRY, _acr_entry(*e)) for e in ACR_TABLE)
        if cmd.p1 == 0x01:
            entry = next((e for e in ACR_TABLE if e[0] == cmd.data[0]), None)
            if entry is None:
                raise ApduError(SW.REFERENCE_NOT_FOUND)
            return head + stlv.tlv(TAG.ACR_ENTRY, _acr_entry(*entry))
        if cmd.p1 == 0x10:
            return head + stlv.tlv(TAG.NUM_APPLETS, bytes((len(self.applet_acrs),))) + b"".join(
                stlv.tlv(TAG.APPLET_ACR, _encode_applet(a, objs)) for a, objs in self.applet_acrs)
        if cmd.p1 == 0x11:
            applet_id = next((i for i, aid in self.services if aid == cmd.data), None)
            objs = dict(self.applet_acrs).get(applet_id)
            if objs is None:
                raise ApduError(SW.REFERENCE_NOT_FOUND)
            return head + stlv.tlv(TAG.APPLET_ACR, _encode_applet(applet_id, objs))
        if cmd.p1 == 0x12:
            for _, objs in self.applet_acrs:
                for coid, rules in objs:
                    if coid == cmd.data:
                        return head + stlv.tlv(TAG.OBJECT_ACR, _encode_object(coid, rules))
            raise ApduError(SW.REFERENCE_NOT_FOUND)
        if cmd.p1 == 0x20:
            return head + stlv.tlv(TAG.AMP_NUM_ENTRIES, bytes((len(AMP_TABLE),))) + b"".join(
                stlv.tlv(TAG.AMP_ENTRY, bytes((amp,)) + stlv.tlv(TAG.AID, aid)) for amp, aid in AMP_TABLE)
        # 0x21: service applet table
        return head + stlv.tlv(TAG.SERVICE_NUM_ENTRIES, bytes((len(self.services),))) + b"".join(
            stlv.tlv(TAG.SERVICE_ENTRY, bytes((sid,)) + stlv.tlv(TAG.AID, aid)) for sid, aid in self.services)

    @staticmethod
    def _acr_table_compressed() -> bytes:
        # libcacard cac-aca.c `cac_aca_get_acr_response_extended`: per entry a length byte
        # (06, or 08 with two methods), ACRID, ACRType, applet ID, the methods (or 00 00), 00.
        out = bytearray()
        for acrid, acrtype, applet, methods in ACR_TABLE:
            out.append(0x08 if len(methods) == 2 else 0x06)
            out += bytes((acrid, acrtype, applet))
            out += b"".join(bytes(m) for m in methods) if methods else b"\x00\x00"
            out.append(0x00)
        return bytes(out)
