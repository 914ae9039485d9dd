# SPDX-License-Identifier: GPL-3.0-or-later
"""Sans-IO CCID protocol core (USB CCID rev 1.1, extended APDU level).

Bytes from the USB endpoints go into a `Reader`; `Reader.next_events()` says
what to write to bulk-IN and what to ask the card engines.  No I/O, threads or
clocks live here (compare h11's ``Connection``).
"""

from . import constants, messages
from .config import (
    DEFAULT_MAX_MESSAGE_LENGTH,
    MAX_ATR_LENGTH,
    MAX_COMMAND_APDU_LENGTH,
    MAX_PENDING_HARDWARE_ERRORS,
    MAX_RESPONSE_APDU_LENGTH,
    TIME_EXTENSION_INTERVAL,
    ReaderConfig,
)
from .constants import ClassRequest, CommandStatus, ICCStatus, MessageType, SlotError
from .descriptor import ClassDescriptor
from .events import BulkIn, Cancel, Event, InterruptPending, PowerOff, PowerOn, Secure, Transmit
from .reader import Reader, ReaderCounters, SlotState

__all__ = [
    "BulkIn", "Cancel", "ClassDescriptor", "ClassRequest", "CommandStatus", "DEFAULT_MAX_MESSAGE_LENGTH",
    "Event", "ICCStatus", "InterruptPending", "MAX_ATR_LENGTH", "MAX_COMMAND_APDU_LENGTH",
    "MAX_PENDING_HARDWARE_ERRORS", "MAX_RESPONSE_APDU_LENGTH", "MessageType", "PowerOff", "PowerOn",
    "Reader", "ReaderConfig", "ReaderCounters", "Secure", "SlotError", "SlotState", "TIME_EXTENSION_INTERVAL",
    "Transmit", "constants", "messages",
]
