# SPDX-License-Identifier: GPL-3.0-or-later
"""Just enough ATR parsing (ISO/IEC 7816-3 §8) for the CCID reader.

The reader needs the ATR to validate what an engine hands it (TS, TCK, size) and
to fill the T=0 / T=1 parameter structures of RDR_to_PC_Parameters (CCID §6.1.7)
from TA1, TC1, TD1, TC2 and the first TA/TB/TC after a T=1 indication.
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass

from .config import MAX_ATR_LENGTH
from .constants import Protocol, SlotError

TS_DIRECT = 0x3B
TS_INVERSE = 0x3F

#: Defaults from ISO 7816-3 when an interface byte is absent.
DEFAULT_FI_DI = 0x11  # Fi 372, Di 1 (§8.3, TA1 absent)
DEFAULT_WI = 10  # T=0 waiting integer (§10.2, TC2 absent)
DEFAULT_BWI_CWI = 0x4D  # T=1 BWI 4, CWI 13 (§11.4.3)
DEFAULT_IFSC = 32  # T=1 (§11.4.2)


class AtrError(ValueError):
    """The ATR is unusable; `error` is the bError the host gets (CCID §6.2.6)."""

    def __init__(self, error: SlotError, why: str) -> None:
        super().__init__(why)
        self.error = error


@dataclass(frozen=True)
class Atr:
    raw: bytes
    inverse: bool
    fi_di: int
    guard_time: int  # TC1 (extra guard time N)
    protocols: frozenset[int]  # protocols named by TD1, TD2, ... (T=0 if no TD1)
    wi: int  # TC2
    bwi_cwi: int  # first TBi (i > 2) after T=1
    ifsc: int  # first TAi (i > 2) after T=1
    crc: bool  # first TCi (i > 2) after T=1 is 1

    @property
    def default_protocol(self) -> int:
        """The first offered protocol: TD1's T, or T=0 when TD1 is absent (§8.2.3)."""
        return min(self.protocols) if self.protocols else Protocol.T0

    def t0_parameters(self) -> bytes:
        """abProtocolDataStructure for T=0 (CCID §6.1.7, table 6.1-9): 5 bytes."""
        return bytes([self.fi_di, 0x02 if self.inverse else 0x00, self.guard_time, self.wi, 0x00])

    def t1_parameters(self) -> bytes:
        """abProtocolDataStructure for T=1 (CCID §6.1.7, table 6.1-10): 7 bytes."""
        tcck = 0x10 | (0x02 if self.inverse else 0) | (0x01 if self.crc else 0)
        return bytes([self.fi_di, tcck, self.guard_time, self.bwi_cwi, 0x00, self.ifsc, 0x00])

    def parameters(self, protocol: int) -> bytes:
        return self.t1_parameters() if protocol == Protocol.T1 else self.t0_parameters()


# An engine answers every IccPowerOn with the same ATR (a pcscd reconnect, a host reset, each
# fuzz input): the result of a parse is immutable, so the last few are kept.
@functools.lru_cache(maxsize=16)
def parse_atr(raw: bytes) -> Atr:
    """Parse `raw`; raise AtrError with the CCID error to report if it is unusable."""
    if not raw or raw[0] not in (TS_DIRECT, TS_INVERSE):
        raise AtrError(SlotError.BAD_ATR_TS, "TS is neither 3B nor 3F")
    if len(raw) > MAX_ATR_LENGTH:
        raise AtrError(SlotError.HW_ERROR, f"ATR longer than {MAX_ATR_LENGTH} bytes")
    if len(raw) < 2:
        raise AtrError(SlotError.HW_ERROR, "ATR has no T0")
    t0 = raw[1]
    historical = t0 & 0x0F
    y = t0 >> 4
    pos = 2
    i = 1  # index of the interface byte group (TAi TBi TCi TDi)
    fi_di, guard, wi = DEFAULT_FI_DI, 0, DEFAULT_WI
    bwi_cwi, ifsc, crc = DEFAULT_BWI_CWI, DEFAULT_IFSC, False
    seen_t1 = False
    t1_ta = t1_tb = t1_tc = False
    protocols: set[int] = set()
    while True:
        ta = tb = tc = td = None
        for bit in (0x1, 0x2, 0x4, 0x8):
            if y & bit:
                if pos >= len(raw):
                    raise AtrError(SlotError.HW_ERROR, "ATR truncated in interface bytes")
                value = raw[pos]
                pos += 1
                if bit == 0x1:
                    ta = value
                elif bit == 0x2:
                    tb = value
                elif bit == 0x4:
                    tc = value
                else:
                    td = value
        if i == 1:
            fi_di = DEFAULT_FI_DI if ta is None else ta
            guard = 0 if tc is None else tc
        elif i == 2:
            if tc is not None:
                wi = tc
        if i >= 3 and seen_t1:
            if ta is not None and not t1_ta:
                ifsc, t1_ta = ta, True
            if tb is not None and not t1_tb:
                bwi_cwi, t1_tb = tb, True
            if tc is not None and not t1_tc:
                crc, t1_tc = tc == 1, True
        if td is None:
            break
        protocol = td & 0x0F
        protocols.add(protocol)
        if protocol == Protocol.T1:
            seen_t1 = True
        y = td >> 4
        i += 1
    if pos + historical > len(raw):
        raise AtrError(SlotError.HW_ERROR, "ATR truncated in historical bytes")
    pos += historical
    # TCK is present unless only T=0 is indicated (§8.2.5).
    needs_tck = bool(protocols - {0})
    if needs_tck:
        if pos >= len(raw):
            raise AtrError(SlotError.BAD_ATR_TCK, "TCK missing")
        if functools.reduce(operator.xor, raw[1:pos + 1], 0) != 0:  # XOR of T0 .. TCK
            raise AtrError(SlotError.BAD_ATR_TCK, "TCK does not check")
        pos += 1
    # Bytes after the end are tolerated (a T=0-only card that sends a TCK anyway):
    # the host parses the ATR itself and a passthrough card must not be refused.
    if not 1 <= ifsc <= 0xFE:
        ifsc = DEFAULT_IFSC
    return Atr(bytes(raw), raw[0] == TS_INVERSE, fi_di, guard, frozenset(protocols or {0}),
               wi, bwi_cwi, ifsc, crc)
