"""An emulated card made of applets, with the ISO 7816-4 transport rules done once.

`AppletCard` owns what every emulated card needs and no applet should redo:
- command chaining (CLA bit 0x10, ISO 7816-4 §5.1.1.1): chained parts of one
  command are gathered, acknowledged with 9000, and the applet sees one
  command;
- response chaining (§5.3.4 / §7.6.1): a response longer than Le (or 256 in a
  short APDU) is returned in pieces with 61xx and GET RESPONSE;
- SELECT by AID (§11.2.2), with right-truncated AIDs as PIV clients send them;
- logical channels other than the basic one are refused (6881);
- one place where an `ApduError` becomes a status word, and where a bug
  in an applet becomes 6F00 instead of a dead slot.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from .base import EmulatedCard
from .iso7816 import SW, ApduError, CommandAPDU, SHORT_LE_MAX, response
from .storage import CardStore, IntegrityError, StorageError

if TYPE_CHECKING:     # the ISO card has no vault: importing it would load cryptography at its start
    from .vault import VaultSession

log = logging.getLogger(__name__)

INS_SELECT = 0xA4
INS_GET_RESPONSE = 0xC0

#: Upper bound on one command gathered through CLA chaining. Larger than any
#: PIV/CAC object (PIV certificates are at most a few KiB, SP 800-73-4 App. A).
MAX_CHAINED_COMMAND = 65536


class Applet:
    """One application on the card, selected by AID."""

    aid: bytes = b""
    name: str = "applet"

    def select(self, cmd: CommandAPDU) -> bytes:
        """Called when SELECT picks this applet; returns the FCI / APT (no SW), or (FCI, warning SW)."""
        return b""

    def deselect(self) -> None:
        """Another applet was selected or the card was reset."""

    def process(self, cmd: CommandAPDU) -> bytes:
        """Handle one (chaining-reassembled) command; return response data (no SW).

        Raise ApduError for failures.  A return of `(data, sw)` is allowed
        for warnings that carry data (6282 and the like).
        """
        raise ApduError(SW.INS_NOT_SUPPORTED)

    @staticmethod
    def handler_for(cmd: CommandAPDU, ins_enum, handlers: dict):
        """(INS, handler) for an interindustry-class command (CLA 00) that `handlers` knows;
        6E00 for another class, 6D00 for an unknown instruction."""
        if cmd.cla != 0x00:
            raise ApduError(SW.CLA_NOT_SUPPORTED)
        try:
            ins = ins_enum(cmd.ins)
        except ValueError:
            raise ApduError(SW.INS_NOT_SUPPORTED) from None
        handler = handlers.get(ins)
        if handler is None:
            raise ApduError(SW.INS_NOT_SUPPORTED)
        return ins, handler


class StatefulCardSide(Protocol):
    """What a `StatefulApplet` may ask of its card: a card with a `CardStore` and keys at rest
    (`VaultCardMixin`).  Applets with more needs extend it (piv/applet.py `PivCardSide`)."""

    store: CardStore
    """Where the state is saved (`StatefulApplet.commit`, `persist_current`)."""

    state: Any
    """The current state; `commit` replaces it once the new one is saved."""

    session: VaultSession | None
    """The open data key while a PIN is verified, None while locked; what the state's open calls take."""

    def unlock(self, dek: bytes) -> None:
        """Keep the data key a PIN check opened (`unlock_card`)."""

    def lock(self) -> None:
        """The PIN status is lost: drop the data key and the opened private keys."""

    def data_key(self) -> bytes:
        """The open data key; PermissionError while locked (6982 through `open_sealed`)."""


class StatefulApplet(Applet):
    """An applet whose card keeps its state in a `CardStore` (`card.store`, `card.state`).

    `commit` saves a changed copy of the state before the answer leaves and only then makes it
    current; `check_reference` compares a PIN/PUK/PW with its tearing-safe retry counter.  A
    failed save is 6581 (memory failure) with the card left exactly as it was.
    """

    card: StatefulCardSide

    def commit(self, new_state) -> None:
        try:
            self.card.store.save(new_state.to_dict())
        except StorageError as e:
            log.error("%s card state not saved (%s); command refused, card state unchanged", self.name, e)
            raise ApduError(SW.MEMORY_FAILURE) from None
        self.card.state = new_state
        self.committed()

    def committed(self) -> None:
        """Called once a new state is current (PIV: a key sealed while locked leaves memory)."""

    def persist_current(self) -> None:
        self.card.store.save(self.card.state.to_dict())

    def open_sealed(self, fn):
        """Open something sealed at rest (cards/vault.py): 6982 while the card is locked, 6581 (and the
        reason in the log) if it fails its integrity check."""
        try:
            return fn()
        except PermissionError:
            raise ApduError(SW.SECURITY_STATUS_NOT_SATISFIED) from None
        except StorageError as e:
            log.error("%s card: %s", self.name, e)
            raise ApduError(SW.MEMORY_FAILURE) from None

    def unlock_card(self, dek: bytes) -> None:
        """Keep the data key a PIN check opened; 6581 if the card sealing key does not open (tampered)."""
        try:
            self.card.unlock(dek)
        except StorageError as e:
            log.error("%s card: %s; PIN not accepted", self.name, e)
            raise ApduError(SW.MEMORY_FAILURE) from None

    def check_reference(self, slot, value: bytes, what: str) -> bytes | None:
        """`PinSlot.verify` with the current state as what its counter is saved in; the data key it opens.

        A state that fails its integrity check (the verifier matches but the wrap does not open) and a
        failed save are both 6581, with nothing checked or changed."""
        try:
            return slot.verify(value, self.persist_current, what)
        except IntegrityError as e:
            log.error("%s card: %s; %s refused", self.name, e, what)
            raise ApduError(SW.MEMORY_FAILURE) from None
        except StorageError as e:
            log.error("%s card state not saved (%s); %s not checked", self.name, e, what)
            raise ApduError(SW.MEMORY_FAILURE) from None


class VaultCardMixin:
    """A card whose data key is open (`session`, a vault.VaultSession) only while its PIN status lasts.

    `state.vault` is the card's vault; `state.keys` entries have `forget()`, which drops an opened
    PIN-protected private key when the card locks.
    """

    session = None

    def unlock(self, dek: bytes) -> None:
        """A PIN was verified: keep the data key (one per card: an open session stays as it is)."""
        if self.session is None:
            self.session = self.state.vault.open_session(dek)

    def lock(self) -> None:
        """The PIN status is lost: the data key and the opened private keys leave memory."""
        session, self.session = self.session, None
        if session is not None:
            session.close()
        state = getattr(self, "state", None)
        if state is not None:
            for entry in state.keys.values():
                entry.forget()

    def data_key(self) -> bytes:
        if self.session is None:
            raise PermissionError("the card is locked")
        return self.session.data_key()


class AppletCard(EmulatedCard):
    """An emulated card hosting applets; subclasses give the ATR and the applets."""

    def __init__(self, applets: list[Applet], *, inserted: bool = True) -> None:
        super().__init__(inserted=inserted)
        self.applets = list(applets)
        self.selected: Applet | None = None
        self._chain: CommandAPDU | None = None     # command chaining in progress
        self._pending: bytes = b""                  # response bytes not yet fetched

    # -- hooks --------------------------------------------------------------
    def default_applet(self) -> Applet | None:
        """Applet selected implicitly after reset (ISO 7816-4 §11.2.2, 'default selection')."""
        return None

    def process_unselected(self, cmd: CommandAPDU) -> bytes:
        """Commands sent while no applet is selected (file system, GET CHALLENGE...)."""
        raise ApduError(SW.CONDITIONS_NOT_SATISFIED if cmd.ins != INS_SELECT else SW.FILE_NOT_FOUND)

    def select_other(self, cmd: CommandAPDU) -> bytes:
        """SELECT forms other than by AID (file id, path); default 'not supported'."""
        raise ApduError(SW.FUNCTION_NOT_SUPPORTED)

    # -- EmulatedCard -------------------------------------------------------
    def reset(self) -> None:
        if self.selected is not None:
            self.selected.deselect()
        self.selected = self.default_applet()
        self._chain = None
        self._pending = b""

    def process_apdu(self, apdu: bytes) -> bytes:
        try:
            cmd = CommandAPDU.parse(apdu)
            return self._process(cmd)
        except ApduError as e:
            self._chain = None
            return response(sw=e.sw)
        except Exception:  # an applet bug must not kill the slot; keep the card usable
            log.exception("emulated card failed on INS %02X", apdu[1] if len(apdu) > 1 else -1)
            self._chain = None
            self._pending = b""
            return response(sw=SW.NO_PRECISE_DIAGNOSIS)

    # -- transport rules ----------------------------------------------------
    def _process(self, cmd: CommandAPDU) -> bytes:
        if cmd.cla == 0xFF:
            raise ApduError(SW.CLA_NOT_SUPPORTED)
        if cmd.cla & 0x03 or (cmd.cla & 0x40):
            raise ApduError(SW.LOGICAL_CHANNEL_NOT_SUPPORTED)
        if cmd.cla & 0x0C:
            raise ApduError(SW.SECURE_MESSAGING_NOT_SUPPORTED)

        if cmd.ins == INS_GET_RESPONSE and self._chain is None:
            return self._get_response(cmd)
        self._pending = b""          # any other command abandons an unfetched response

        cmd = self._gather_chain(cmd)
        if cmd is None:
            return response()         # chained part acknowledged

        result = self._dispatch(cmd)
        sw = SW.OK
        if isinstance(result, tuple):
            result, sw = result
        return self._respond(bytes(result), cmd, sw)

    def _gather_chain(self, cmd: CommandAPDU) -> CommandAPDU | None:
        if self._chain is not None:
            head = self._chain
            if (cmd.ins, cmd.p1, cmd.p2) != (head.ins, head.p1, head.p2) or (cmd.cla & ~0x10) != (head.cla & ~0x10):
                self._chain = None
                raise ApduError(SW.LAST_COMMAND_EXPECTED)
            data = head.data + cmd.data
            if len(data) > MAX_CHAINED_COMMAND:
                self._chain = None
                raise ApduError(SW.WRONG_LENGTH, "chained command too long")
            merged = replace(head, data=data, le=cmd.le, cla=cmd.cla & ~0x10)
        elif cmd.cla & 0x10:
            merged = replace(cmd, cla=cmd.cla & ~0x10)
        else:
            merged = cmd                 # the usual case: nothing to merge, nothing to clear
        if cmd.chained:
            self._chain = merged
            return None
        self._chain = None
        return merged

    def _dispatch(self, cmd: CommandAPDU):
        if cmd.ins == INS_SELECT and cmd.p1 == 0x04:
            return self._select_aid(cmd)
        if cmd.ins == INS_SELECT:
            return self.select_other(cmd)
        if self.selected is None:
            return self.process_unselected(cmd)
        return self.selected.process(cmd)

    def _select_aid(self, cmd: CommandAPDU) -> bytes:
        # P2 low bits: 00 first/only occurrence; 02 next occurrence is not
        # supported by a card with unique AIDs.  P2 bits 3-4 select the answer
        # (FCI, FCP, FMD, none); applets give their FCI and 0C asks for nothing.
        if cmd.p2 & 0x03:
            raise ApduError(SW.FUNCTION_NOT_SUPPORTED)
        aid = cmd.data
        if not 5 <= len(aid) <= 16:
            raise ApduError(SW.WRONG_LENGTH if len(aid) > 16 else SW.FILE_NOT_FOUND)
        for applet in self.applets:
            if applet.aid.startswith(aid):
                fci = applet.select(cmd)
                sw = SW.OK
                if isinstance(fci, tuple):        # a warning such as 6285 (terminated application)
                    fci, sw = fci
                if self.selected is not None and self.selected is not applet:
                    self.selected.deselect()
                self.selected = applet
                data = b"" if (cmd.p2 & 0x0C) == 0x0C else fci
                return (data, sw) if sw != SW.OK else data
        # ISO 7816-4 §11.2.2 / SP 800-73-4 §3.1.1: on failure the current
        # application stays selected.
        raise ApduError(SW.FILE_NOT_FOUND)

    def _respond(self, data: bytes, cmd: CommandAPDU, sw: int) -> bytes:
        limit = cmd.le if cmd.le is not None else SHORT_LE_MAX
        if not cmd.extended:
            limit = min(limit, SHORT_LE_MAX)
        if len(data) <= limit:
            return response(data, sw)
        if sw != SW.OK:
            # Warnings cannot be chained; return what fits (rare: 6282 on a long read).
            return response(data[:limit], sw)
        self._pending = data[limit:]
        return response(data[:limit], self._remaining_sw())

    def _remaining_sw(self) -> int:
        n = len(self._pending)
        return SW.BYTES_REMAINING | (0 if n >= 256 else n)

    def _get_response(self, cmd: CommandAPDU) -> bytes:
        # GET RESPONSE (ISO 7816-4 §7.6.1): P1P2 must be 0000.
        if cmd.p1 or cmd.p2:
            raise ApduError(SW.INCORRECT_P1P2)
        if not self._pending:
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        le = cmd.le if cmd.le is not None else SHORT_LE_MAX
        chunk, self._pending = self._pending[:le], self._pending[le:]
        return response(chunk, self._remaining_sw() if self._pending else SW.OK)
