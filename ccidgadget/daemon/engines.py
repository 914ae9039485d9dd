"""From a slot specification to a card engine.

The one place that knows every engine's constructor; the reader and the
service only ever see `Card`.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..cards.base import Card

log = logging.getLogger(__name__)

ENGINES = ("emulated", "passthru", "vpcd", "pcsc")
EMULATED_TYPES = ("piv", "cac", "iso", "openpgp")
DEFAULT_EMULATED_TYPE = "piv"
DEFAULT_LISTEN = {"passthru": ("127.0.0.1", 2001), "vpcd": ("127.0.0.1", 35963)}


class EngineError(Exception):
    """A slot cannot be built as specified (message says why and what is allowed)."""


@dataclass
class SlotSpec:
    """One slot as the CLI or the configuration file describes it."""

    engine: str = "emulated"
    type: str = DEFAULT_EMULATED_TYPE       # emulated card type
    name: str | None = None                  # state directory name of an emulated card
    listen: str | None = None                # passthru / vpcd: ADDR:PORT
    allow: list[str] = field(default_factory=list)   # client addresses or networks
    stay_attached: bool = False              # passthru: keep the reader on the bus without a client
    reader: str | None = None                # pcsc: reader name regex
    exclusive: bool = True                   # pcsc: exclusive access to the real card
    certs: list[str] = field(default_factory=list)   # cac: 3 nicknames (with db) or 3 files
    db: str | None = None                    # cac: sql:DIR NSS database
    pin_file: str | None = None              # cac: file holding the PIN (the NSS password, as under QEMU)
    db_password_file: str | None = None      # cac: file holding the NSS database password, if not the PIN
    inserted: bool = True                    # emulated: card in the slot at start

    def validate(self) -> None:
        if self.engine not in ENGINES:
            raise EngineError(f"unknown engine {self.engine!r}; allowed: {', '.join(ENGINES)}")
        if self.engine == "emulated" and self.type not in EMULATED_TYPES:
            raise EngineError(f"unknown emulated card type {self.type!r}; allowed: {', '.join(EMULATED_TYPES)}")
        if self.engine == "emulated" and self.type == "cac" and len(self.certs) != 3:
            raise EngineError(f"a CAC card needs exactly three --cert (got {len(self.certs)})")
        if self.engine == "pcsc" and not self.reader:
            raise EngineError("a pcsc slot needs --reader REGEX naming the PC/SC reader to relay")
        if self.listen is not None:
            parse_listen(self.listen)
        for item in self.allow:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise EngineError(f"--allow {item!r} is not an IP address or network") from None


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise EngineError(f"listen address {text!r} must be ADDR:PORT (for example 127.0.0.1:2001)")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise EngineError(f"listen address {text!r}: {host!r} is not an IP address") from None
    # isascii: "²" is a digit to str.isdigit() but not to int() (found while fuzzing the config loader).
    if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise EngineError(f"listen address {text!r}: port must be 1..65535")
    return host, int(port)


def _read_secret(path: str | None, what: str) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).read_text().rstrip("\r\n")
    except OSError as e:
        raise EngineError(f"{what} {path}: {e.strerror}") from None


def build_card(spec: SlotSpec, slot: int, state_dir: Path, *, shared_gadget: bool = False) -> Card:
    """Construct the engine for one slot.

    `shared_gadget`: other slots or functions live on the same USB device, so a
    VSCard reader cannot come and go with its client; it stays attached with
    an empty slot instead (QEMU's detach-on-ReaderRemove needs a gadget of its own).
    """
    spec.validate()
    if spec.engine == "emulated":
        card_dir = Path(state_dir) / "cards" / (spec.name or f"slot{slot}-{spec.type}")
        if spec.type == "iso":
            from ..cards.iso import IsoCard
            return IsoCard(inserted=spec.inserted)
        if spec.type == "piv":
            from ..cards.piv import PivCard
            return PivCard.from_directory(card_dir, inserted=spec.inserted)
        if spec.type == "openpgp":
            from ..cards.openpgp import OpenPgpCard
            return OpenPgpCard.from_directory(card_dir, inserted=spec.inserted)
        if spec.type == "cac":
            from ..cards.cac import CacCard
            # Secrets come from files (0600), never from the command line where `ps` shows them.
            return CacCard.from_sources(card_dir, certs=spec.certs, db=spec.db, inserted=spec.inserted,
                                        pin=_read_secret(spec.pin_file, "pin_file"),
                                        db_password=_read_secret(spec.db_password_file, "db_password_file"))
    listen = parse_listen(spec.listen) if spec.listen else DEFAULT_LISTEN.get(spec.engine)
    if spec.engine == "passthru":
        from ..passthrough.vscard_server import VSCardServerCard
        return VSCardServerCard(listen=listen, allow=spec.allow or None,
                                stay_attached=spec.stay_attached or shared_gadget)
    if spec.engine == "vpcd":
        from ..passthrough.vpcd_server import VpcdServerCard
        return VpcdServerCard(listen=listen, allow=spec.allow or None)
    if spec.engine == "pcsc":
        from ..passthrough.pcsc import PcscCard
        return PcscCard(spec.reader, exclusive=spec.exclusive)
    raise EngineError(f"unknown engine {spec.engine!r}")
