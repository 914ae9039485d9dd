"""ISO/IEC 7816-4 pieces shared by every emulated card.

Status words, the command-APDU parser (short and extended cases, §5.1), the
typed error that carries a status word, and ATR construction (ISO 7816-3 §8).
Status words are chosen in exactly one place per failure: an applet raises
`ApduError(SW.X)` and the card framework turns it into the response.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class SW(enum.IntEnum):
    """Status words (ISO 7816-4 §5.6, tables 5-6)."""

    OK = 0x9000
    BYTES_REMAINING = 0x6100            # low byte = bytes still available (61xx)
    WARNING_NO_INFO = 0x6200
    END_OF_FILE = 0x6282                # fewer bytes than Le before end of file
    VERIFY_FAILED = 0x63C0              # low nibble = tries left (63Cx)
    MEMORY_FAILURE = 0x6581
    WRONG_LENGTH = 0x6700
    LOGICAL_CHANNEL_NOT_SUPPORTED = 0x6881
    SECURE_MESSAGING_NOT_SUPPORTED = 0x6882
    LAST_COMMAND_EXPECTED = 0x6883
    CHAINING_NOT_SUPPORTED = 0x6884
    SECURITY_STATUS_NOT_SATISFIED = 0x6982
    AUTH_METHOD_BLOCKED = 0x6983
    REFERENCE_DATA_NOT_USABLE = 0x6984
    CONDITIONS_NOT_SATISFIED = 0x6985
    COMMAND_NOT_ALLOWED = 0x6986
    WRONG_DATA = 0x6A80
    FUNCTION_NOT_SUPPORTED = 0x6A81
    FILE_NOT_FOUND = 0x6A82
    RECORD_NOT_FOUND = 0x6A83
    NOT_ENOUGH_MEMORY = 0x6A84
    INCORRECT_P1P2 = 0x6A86
    LC_INCONSISTENT_WITH_P1P2 = 0x6A87
    REFERENCE_NOT_FOUND = 0x6A88
    WRONG_P1P2 = 0x6B00
    WRONG_LE = 0x6C00                   # low byte = exact length available (6Cxx)
    INS_NOT_SUPPORTED = 0x6D00
    CLA_NOT_SUPPORTED = 0x6E00
    NO_PRECISE_DIAGNOSIS = 0x6F00


class ApduError(Exception):
    """Raised by card code: the command fails with this status word."""

    def __init__(self, sw: int, message: str = "") -> None:
        super().__init__(message or f"SW {sw:04X}")
        self.sw = int(sw)


def verify_failed(tries_left: int) -> ApduError:
    """63Cx: wrong reference data, x tries left (ISO 7816-4 §5.6, 63CX)."""
    return ApduError(SW.VERIFY_FAILED | min(max(tries_left, 0), 15))


def sw_bytes(sw: int) -> bytes:
    return bytes(((sw >> 8) & 0xFF, sw & 0xFF))


def response(data: bytes = b"", sw: int = SW.OK) -> bytes:
    return bytes(data) + sw_bytes(sw)


#: Largest command body an extended APDU can carry (Lc is 16 bits, §5.1).
MAX_EXTENDED_LC = 65535
#: Le for "as many as possible": 256 in a short, 65536 in an extended APDU.
SHORT_LE_MAX = 256
EXTENDED_LE_MAX = 65536


@dataclass(frozen=True)
class CommandAPDU:
    """A parsed command APDU (ISO 7816-4 §5.1, cases 1, 2S/2E, 3S/3E, 4S/4E).

    `le` is None when absent (no response data expected), else the maximum
    number of bytes the host accepts (256 / 65536 when encoded as zero).
    """

    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes = b""
    le: int | None = None
    extended: bool = False

    @property
    def chained(self) -> bool:
        """CLA bit 5 (0x10): more command data follows (§5.1.1.1)."""
        return bool(self.cla & 0x10) and self.cla != 0xFF

    @property
    def p1p2(self) -> int:
        return (self.p1 << 8) | self.p2

    @classmethod
    def parse(cls, apdu: bytes) -> "CommandAPDU":
        """Parse raw bytes; raise ApduError(WRONG_LENGTH) on any framing error."""
        n = len(apdu)
        if n < 4:
            raise ApduError(SW.WRONG_LENGTH, "APDU shorter than its header")
        cla, ins, p1, p2 = apdu[0], apdu[1], apdu[2], apdu[3]
        body = apdu[4:]
        if not body:                                            # case 1
            return cls(cla, ins, p1, p2)
        if len(body) == 1:                                      # case 2S
            return cls(cla, ins, p1, p2, le=body[0] or SHORT_LE_MAX)
        if body[0] != 0:                                        # case 3S / 4S
            lc = body[0]
            if len(body) == 1 + lc:
                return cls(cla, ins, p1, p2, data=bytes(body[1:]))
            if len(body) == 2 + lc:
                return cls(cla, ins, p1, p2, data=bytes(body[1:1 + lc]), le=body[-1] or SHORT_LE_MAX)
            raise ApduError(SW.WRONG_LENGTH, "short Lc does not match the body")
        # Extended length: first body byte 00, then 2 bytes.
        if len(body) == 3:                                      # case 2E
            le = (body[1] << 8) | body[2]
            return cls(cla, ins, p1, p2, le=le or EXTENDED_LE_MAX, extended=True)
        if len(body) < 3:
            raise ApduError(SW.WRONG_LENGTH, "truncated extended length")
        lc = (body[1] << 8) | body[2]
        if lc == 0:
            raise ApduError(SW.WRONG_LENGTH, "extended Lc of zero")
        if len(body) == 3 + lc:                                 # case 3E
            return cls(cla, ins, p1, p2, data=bytes(body[3:]), extended=True)
        if len(body) == 5 + lc:                                 # case 4E
            le = (body[-2] << 8) | body[-1]
            return cls(cla, ins, p1, p2, data=bytes(body[3:3 + lc]), le=le or EXTENDED_LE_MAX,
                       extended=True)
        raise ApduError(SW.WRONG_LENGTH, "extended Lc does not match the body")

    def to_bytes(self) -> bytes:
        """Encode (used by tests and by clients we write)."""
        head = bytes((self.cla, self.ins, self.p1, self.p2))
        ext = self.extended or len(self.data) > 255 or (self.le or 0) > 256
        out = bytearray(head)
        if self.data:
            n = len(self.data)
            out += (b"\x00" + n.to_bytes(2, "big")) if ext else bytes((n,))
            out += self.data
        if self.le is not None:
            if ext:
                le = 0 if self.le >= EXTENDED_LE_MAX else self.le
                out += (b"" if self.data else b"\x00") + le.to_bytes(2, "big")
            else:
                out.append(0 if self.le >= SHORT_LE_MAX else self.le)
        return bytes(out)


def make_atr(historical: bytes, *, t1: bool = True, t0: bool = False, ifsc: int = 0xFE,
             bwi: int = 4, cwi: int = 5) -> bytes:
    """Build an ATR (ISO 7816-3 §8.2) for a card that speaks T=1 (and maybe T=0).

    TD1 announces the first protocol, TD2 T=1 with TA3 (IFSC) and TB3
    (BWI/CWI), then the historical bytes and TCK (required when any protocol
    other than T=0 is indicated, §8.2.5).  BWI sets the host's block-waiting
    timeout: libccid derives its read timeout from it, and the reader sends
    time extensions well inside it.
    """
    if len(historical) > 15:
        raise ValueError("at most 15 historical bytes")
    if not (t0 or t1):
        raise ValueError("a card speaks T=0 or T=1")
    body = bytearray()
    if t1:
        first = 0x00 if t0 else 0x01
        body.append(0x80 | len(historical))          # T0: TD1 present, K
        body.append(0x80 | first)                    # TD1: TD2 present, T=first
        body.append(0x31)                            # TD2: TA3, TB3 present, T=1
        body.append(ifsc & 0xFF)                     # TA3: IFSC
        body.append(((bwi & 0x0F) << 4) | (cwi & 0x0F))  # TB3: BWI, CWI
    else:
        body.append(len(historical))                 # T0 only: no interface bytes
    body += historical
    atr = b"\x3B" + bytes(body)
    if t1:
        tck = 0
        for b in body:
            tck ^= b
        atr += bytes((tck,))
    return atr
