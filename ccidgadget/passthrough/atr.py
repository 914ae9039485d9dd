"""A structural check of an Answer-to-Reset received from across the network.

The network engines receive an ATR from a program we do not control; before the
host sees it in an RDR_to_PC_DataBlock it must at least be shaped like an ATR
(ISO/IEC 7816-3 §8.2), or libccid and pcscd will misparse it.
"""

from __future__ import annotations

#: ISO/IEC 7816-3 §8.2.1: "the answer to reset consists of at most 32 characters"
#: after TS, so 33 bytes in all.  QEMU's ccid-card-passthru accepts up to 40
#: (MAX_ATR_SIZE) and vscclient's buffer is 40 too; no real card needs them.
MAX_ATR_LENGTH = 33


def _structure(atr: bytes) -> tuple[int, int, set[int]] | str:
    """(offset of the historical bytes, their number K, protocols the TDi indicate), or what is wrong.

    ISO/IEC 7816-3 §8.2.2/§8.2.3: T0 and each TDi announce the interface
    bytes that follow (TAi, TBi, TCi, TDi by bits 5-8) and TDi's low nibble a
    protocol; T0's low nibble is K.
    """
    if len(atr) < 2:
        return f"ATR of {len(atr)} bytes is too short"
    historical = atr[1] & 0x0F
    y = atr[1] >> 4
    pos = 2
    protocols: set[int] = set()
    while True:
        for bit in (0x1, 0x2, 0x4):               # TAi, TBi, TCi
            if y & bit:
                pos += 1
        if not y & 0x8:                            # no TDi: interface bytes end
            break
        if pos >= len(atr):
            return "ATR ends inside its interface bytes"
        td = atr[pos]
        pos += 1
        protocols.add(td & 0x0F)
        y = td >> 4
    return pos, historical, protocols


def atr_problem(atr: bytes) -> str | None:
    """Return why `atr` is not an ATR, or None when it is well formed.

    Checks TS (§8.1: 3B direct, 3F inverse convention), the chain of
    interface bytes announced by T0 and each TDi (§8.2.2/§8.2.3), the K
    historical bytes, and TCK (§8.2.5: present unless only T=0 is indicated).
    Like QEMU's ccid-card-passthru (`check_atr`) it lets through trailing
    bytes and does not verify the TCK value: real cards get both wrong and
    hosts cope.
    """
    if len(atr) > MAX_ATR_LENGTH:
        return f"ATR of {len(atr)} bytes exceeds {MAX_ATR_LENGTH}"
    if len(atr) >= 1 and atr[0] not in (0x3B, 0x3F):
        return f"TS {atr[0]:02X} is neither 3B nor 3F"
    parsed = _structure(atr)
    if isinstance(parsed, str):
        return parsed
    pos, historical, protocols = parsed
    needs_tck = bool(protocols - {0})
    expected = pos + historical + (1 if needs_tck else 0)
    if len(atr) < expected:
        return f"ATR of {len(atr)} bytes is shorter than the {expected} its T0/TDi announce"
    return None


def offered_protocols(atr: bytes) -> set[int]:
    """The protocols a well-formed ATR offers (§8.2.3: T=0 when no TD1 indicates one)."""
    parsed = _structure(atr)
    if isinstance(parsed, str):
        raise ValueError(parsed)
    return parsed[2] or {0}


def historical_bytes(atr: bytes) -> bytes:
    """T1..TK of a well-formed ATR (§8.2.4): what identifies the card to middleware."""
    parsed = _structure(atr)
    if isinstance(parsed, str):
        raise ValueError(parsed)
    pos, k, _ = parsed
    return bytes(atr[pos:pos + k])
