# SPDX-License-Identifier: GPL-3.0-or-later
"""Events the CCID core hands to its caller (`Reader.next_events()`).

Each event is a small immutable value.  The adapter owns the endpoints and the
card engines; the core only says what must happen next.
"""

from __future__ import annotations

from operator import itemgetter
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:                      # the PIN pad's module is loaded when a PIN pad is configured
    from .secure import PinRequest

_new = tuple.__new__


class _Event(tuple):
    """An immutable value: a tuple of its fields (a class with `__slots__ = ()` whose fields are
    read-only properties), equal only to an event of its own class.

    Not a frozen dataclass: two or three events are made per APDU, and a frozen dataclass's
    generated __init__ (one object.__setattr__ per field) was 0.64 us against 0.2 us here; a
    dataclass also compiles five or six functions at import, which a small board feels at start."""

    __slots__ = ()
    _fields: tuple[str, ...] = ()

    def __eq__(self, other: object) -> bool:
        return other.__class__ is self.__class__ and tuple.__eq__(self, other)  # type: ignore[arg-type]

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash((self.__class__.__name__, *self))

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in zip(self._fields, self))
        return f"{self.__class__.__name__}({fields})"

    def __getnewargs__(self) -> tuple:               # copy and pickle call __new__ with the fields
        return tuple(self)


def _fields(*names: str):
    """Class decorator: the event's fields, in their order (a read-only getter each, match patterns)."""
    def decorate(cls):
        cls._fields = cls.__match_args__ = names
        for i, name in enumerate(names):
            setattr(cls, name, property(itemgetter(i)))
        return cls
    return decorate


@_fields("data")
class BulkIn(_Event):
    """One complete RDR_to_PC message to write to bulk-IN.

    The adapter adds a zero-length packet itself when ``len(data)`` is a multiple
    of wMaxPacketSize (libccid reads into a 64 KiB buffer and would wait otherwise).
    """

    __slots__ = ()
    data: bytes

    def __new__(cls, data: bytes) -> "BulkIn":
        return _new(cls, (data,))


class InterruptPending(_Event):
    """Something waits in `Reader.pop_interrupt()`; emitted when the queue goes from empty to non-empty."""

    __slots__ = ()

    def __new__(cls) -> "InterruptPending":
        return _new(cls, ())


@_fields("slot", "token")
class PowerOn(_Event):
    """Cold-reset the card: ``atr = await card.power_on(); reader.card_answer(token, atr)``."""

    __slots__ = ()
    slot: int
    token: int

    def __new__(cls, slot: int, token: int) -> "PowerOn":
        return _new(cls, (slot, token))


@_fields("slot")
class PowerOff(_Event):
    """Deactivate the card.  The core has already answered the host; nothing comes back."""

    __slots__ = ()
    slot: int

    def __new__(cls, slot: int) -> "PowerOff":
        return _new(cls, (slot,))


@_fields("slot", "token", "apdu")
class Transmit(_Event):
    """Send one complete command APDU (XfrBlock chaining already undone): ``reader.card_answer(token, rapdu)``."""

    __slots__ = ()
    slot: int
    token: int
    apdu: bytes

    def __new__(cls, slot: int, token: int, apdu: bytes) -> "Transmit":
        return _new(cls, (slot, token, apdu))


@_fields("slot", "token", "request")
class Secure(_Event):
    """PC_to_RDR_Secure (§6.1.11): collect the PIN(s), send ``request.build_apdu(...)``, then
    ``reader.card_answer(token, rapdu)``, or ``reader.card_failed(token, PIN_CANCELLED / PIN_TIMEOUT)``."""

    __slots__ = ()
    slot: int
    token: int
    request: PinRequest

    def __new__(cls, slot: int, token: int, request: PinRequest) -> "Secure":
        return _new(cls, (slot, token, request))


@_fields("slot", "token")
class Cancel(_Event):
    """The request `token` was dropped (abort, removal, bus reset); a later answer to it is ignored."""

    __slots__ = ()
    slot: int
    token: int

    def __new__(cls, slot: int, token: int) -> "Cancel":
        return _new(cls, (slot, token))


Event = Union[BulkIn, InterruptPending, PowerOn, PowerOff, Transmit, Secure, Cancel]
