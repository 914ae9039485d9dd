# SPDX-License-Identifier: GPL-3.0-or-later
"""What a ccidgadget is asked to be: its slots, engines and card types, the reader-wide options, their
defaults and names, and the one validator that the configuration file and the command line both go through.

- `Engine` names the four slot engines exactly as the configuration (`engine = "passthru"`), the command line
  (`--card passthru`), `ccidgadget status`, the journal's ENGINE= field and every card's `engine` attribute
  spell them.
- `ENGINES` and `CARD_TYPES` are the registry: for each engine and each emulated card type, the slot keys it
  takes, what it is, and the function that builds it (`ccidgadget/engines.py` calls it).  Builders are named
  as ``"module:function"`` and imported only when a slot uses them, so a daemon with one ISO card never loads
  the PIV card's cryptography (start-up time and memory on a Pi Zero).  A new card type is one `CardType`
  entry and one builder; the daemon, ``vpcd-card`` and every other front end then offer it.
- `SlotSpec` is one slot; `DaemonOptions` the whole daemon (defaults here and nowhere else).
- `slot_problems()` and `option_problems()` are the validator: semantic rules only (allowed values, ranges,
  keys an engine does not use, rules between keys).  The TOML loader (daemon/config.py) checks value types
  first; argparse does for the command line.  Each problem is a `Problem(key, message)` keyed by the
  configuration key; the loader prefixes ``FILE: slot[0].`` and the command line ``command line: slot 0``.
"""

from __future__ import annotations

import enum
import grp
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

from .ccid.config import DEFAULT_MAX_MESSAGE_LENGTH, MAX_MAX_MESSAGE_LENGTH, MIN_MAX_MESSAGE_LENGTH
from .ccid.constants import MAX_SLOTS
from .presence.config import BoardConfig
from .usb.gadget import DEFAULT_PRESET, KERNEL_FUNCTIONS, PRESETS, ExtraFunction, Identity

# -- names and defaults ---------------------------------------------------------------
DEFAULT_CONFIG_PATH = Path("/etc/ccidgadget/ccidgadget.toml")
DEFAULT_STATE_DIR = Path("/var/lib/ccidgadget")
DEFAULT_RUNTIME_DIR = Path("/run/ccidgadget")
CONTROL_SOCKET_NAME = "control.sock"
DEFAULT_GADGET_NAME = "ccidgadget"
DEFAULT_MANUFACTURER = "ccidgadget"
DEFAULT_PRODUCT = "ccidgadget CCID reader"
LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_LOG_LEVEL = "info"
#: USB string descriptors hold at most 126 UTF-16 code units (bLength is one byte, USB 2.0 §9.6.7).
MAX_USB_STRING = 126

GADGET_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
FUNCTION_NAME_RE = re.compile(r"^[A-Za-z0-9_]{1,32}$")
CARD_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


#: Configuration keys by table, in the order etc/ccidgadget.toml.example documents them.
GADGET_KEYS = ("identity", "vid", "pid", "manufacturer", "product", "serial", "udc", "name", "max_message_length")
DAEMON_KEYS = ("state_dir", "runtime_dir", "log_level", "control_group")
FUNCTION_KEYS = ("kind", "name", "attributes")

#: Command-line option -> configuration key.  Slot options map to [[slot]] keys
#: (`--removed` is `inserted = false`, `--shared` is `exclusive = false`).
CLI_KEYS: dict[str, str] = {
    "--card": "slot.engine", "--type": "slot.type", "--name": "slot.name", "--removed": "slot.inserted",
    "--cert": "slot.certs", "--db": "slot.db", "--pin-file": "slot.pin_file",
    "--db-password-file": "slot.db_password_file", "--listen": "slot.listen", "--allow": "slot.allow",
    "--stay-attached": "slot.stay_attached", "--reader": "slot.reader", "--shared": "slot.exclusive",
    "--udc": "gadget.udc", "--identity": "gadget.identity", "--vid": "gadget.vid", "--pid": "gadget.pid",
    "--manufacturer": "gadget.manufacturer", "--product": "gadget.product", "--serial": "gadget.serial",
    "--gadget-name": "gadget.name", "--max-message-length": "gadget.max_message_length",
    "--state-dir": "daemon.state_dir", "--runtime-dir": "daemon.runtime_dir", "--log-level": "daemon.log_level",
    "--control-group": "daemon.control_group",
}
#: Configuration key -> command-line option, for messages about the command line.
OPTION_OF_KEY = {key: option for option, key in CLI_KEYS.items()} | {"slot": "--card"}


class Engine(str, enum.Enum):
    """A slot's card engine."""

    EMULATED = "emulated"       # a card computed on this board
    PASSTHRU = "passthru"       # a VSCard client (QEMU's vscclient) brings the card
    VPCD = "vpcd"               # a vsmartcard vpcd client (vicc, `ccidgadget vpcd-card`) brings it
    PCSC = "pcsc"               # a real card in a PC/SC reader on this board

    def __str__(self) -> str:
        return self.value


class Problem(NamedTuple):
    """One thing wrong with a configuration: its key (``"certs"``, ``"gadget.vid"``) and what is wrong."""

    key: str
    message: str


# -- the registry -------------------------------------------------------------------------
@dataclass(frozen=True)
class EngineInfo:
    engine: Engine
    summary: str
    #: [[slot]] keys this engine takes besides "engine" (for emulated: those every card type takes)
    keys: tuple[str, ...]
    #: "module:function" building its Card from (SlotSpec, CardContext); None: the card type's builder
    builder: str | None
    #: Why `ccidgadget insert/remove` cannot change its card (None: it can)
    presence_owner: str | None = None
    default_listen: tuple[str, int] | None = None


@dataclass(frozen=True)
class CardType:
    """One emulated card type (`--card emulated --type NAME`)."""

    name: str
    summary: str
    builder: str
    #: [[slot]] keys only this type takes
    keys: tuple[str, ...] = ()
    #: rules between this type's keys
    rules: Callable[["SlotSpec"], Iterable[Problem]] | None = None


def _cac_rules(spec: "SlotSpec") -> Iterable[Problem]:
    if len(spec.certs) != 3:
        yield Problem("certs", f"a CAC card needs exactly 3 certificates (the PKI applets ID, signature, "
                               f"encryption); got {len(spec.certs)}")


ENGINES: dict[Engine, EngineInfo] = {info.engine: info for info in (
    EngineInfo(Engine.EMULATED, "a card computed on this board", ("type", "name", "inserted"), None),
    EngineInfo(Engine.PASSTHRU, "a card relayed by a VSCard client (QEMU's vscclient)",
               ("listen", "allow", "stay_attached"), "ccidgadget.passthrough.vscard_server:build_card",
               presence_owner="its card is present while a VSCard client (QEMU's vscclient) is connected with a "
                              "card; remove it on the client side",
               default_listen=("127.0.0.1", 2001)),
    EngineInfo(Engine.VPCD, "a card from a vsmartcard vpcd client (vicc)", ("listen", "allow"),
               "ccidgadget.passthrough.vpcd_server:build_card",
               presence_owner="its card is present while a vpcd client (vicc, or 'ccidgadget vpcd-card') is "
                              "connected; stop the client to remove it",
               default_listen=("127.0.0.1", 35963)),
    EngineInfo(Engine.PCSC, "a real card in a PC/SC reader on this board", ("reader", "exclusive"),
               "ccidgadget.passthrough.pcsc:build_card",
               presence_owner="it relays a real card: pull the card out of the PC/SC reader"),
)}

CARD_TYPES: dict[str, CardType] = {t.name: t for t in (
    CardType("piv", "PIV (NIST SP 800-73-4) with the Yubico extensions", "ccidgadget.cards.piv:build_card"),
    CardType("cac", "CAC with three certificates, as QEMU's ccid-card-emulated", "ccidgadget.cards.cac:build_card",
             keys=("certs", "db", "pin_file", "db_password_file"), rules=_cac_rules),
    CardType("iso", "a small ISO 7816-4 card (files, challenge, serial)", "ccidgadget.cards.iso:build_card"),
    CardType("openpgp", "OpenPGP card 3.4 (GnuPG: sign, decrypt, ssh via gpg-agent)",
             "ccidgadget.cards.openpgp:build_card"),
)}
DEFAULT_CARD_TYPE = "piv"


def slot_keys(engine: Engine) -> tuple[str, ...]:
    """Every [[slot]] key an engine takes, "engine" first."""
    keys = ("engine",) + ENGINES[engine].keys
    if engine is Engine.EMULATED:
        keys += tuple(k for t in CARD_TYPES.values() for k in t.keys)
    return tuple(dict.fromkeys(keys))


def all_slot_keys() -> tuple[str, ...]:
    return tuple(dict.fromkeys(k for engine in Engine for k in slot_keys(engine)))


# -- one slot ---------------------------------------------------------------------------
@dataclass
class SlotSpec:
    """One slot as the configuration file or the command line describes it."""

    engine: Engine = Engine.EMULATED
    type: str = DEFAULT_CARD_TYPE            # emulated card type (CARD_TYPES)
    name: str | None = None                  # state directory name of an emulated card
    inserted: bool = True                    # emulated: card in the slot at start
    listen: str | None = None                # passthru / vpcd: ADDR:PORT
    allow: list[str] = field(default_factory=list)   # client addresses or networks
    stay_attached: bool = False              # passthru: keep the reader on the bus without a client
    reader: str | None = None                # pcsc: reader name regex
    exclusive: bool = True                   # pcsc: exclusive access to the real card
    certs: list[str] = field(default_factory=list)   # cac: 3 nicknames (with db) or 3 files
    db: str | None = None                    # cac: sql:DIR NSS database
    pin_file: str | None = None              # cac: file holding the PIN (the NSS password, as under QEMU)
    db_password_file: str | None = None      # cac: file holding the NSS database password, if not the PIN
    #: keys the file or the command line set explicitly (for "not used by this engine"); not compared
    given: frozenset[str] = field(default=frozenset(), compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.engine, Engine):
            try:
                self.engine = Engine(self.engine)
            except ValueError:
                pass                         # kept as given: slot_problems() names it

    def copy(self) -> "SlotSpec":
        from dataclasses import replace
        return replace(self, allow=list(self.allow), certs=list(self.certs))

    @property
    def card_type(self) -> CardType | None:
        return CARD_TYPES.get(self.type) if self.engine is Engine.EMULATED else None

    @property
    def label(self) -> str:
        """The slot's engine as status lines and the journal's ENGINE= field name it: "emulated-piv", "vpcd"."""
        return f"emulated-{self.type}" if self.engine is Engine.EMULATED else str(self.engine)

    def listen_address(self) -> tuple[str, int] | None:
        """Where a listening engine listens: `listen`, or its engine's loopback default."""
        if self.listen is not None:
            return parse_listen(self.listen)
        info = ENGINES.get(self.engine)
        return info.default_listen if info else None


def parse_listen(text: str) -> tuple[str, int]:
    """``ADDR:PORT`` (``[::1]:2001`` for IPv6) -> (host, port); ValueError says what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"listen address {text!r} must be ADDR:PORT (for example 127.0.0.1:2001)")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ValueError(f"listen address {text!r}: {host!r} is not an IP address") from None
    # isascii: "²" is a digit to str.isdigit() but not to int() (found while fuzzing the config loader).
    if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ValueError(f"listen address {text!r}: port must be 1..65535")
    return host, int(port)


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_allow(allow: Iterable[str]) -> list[IPNetwork]:
    """Addresses ("192.0.2.7") or networks ("192.0.2.0/24", "fd00::/8"); ValueError names a bad one."""
    nets = []
    for item in allow:
        try:
            nets.append(ipaddress.ip_network(str(item).strip(), strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or network; allowed: addresses or networks such as "
                             f"\"192.168.7.0/24\", \"::1\"") from None
    return nets


def slot_problems(spec: SlotSpec) -> list[Problem]:
    """Everything wrong with one slot (empty: it can be built)."""
    if not isinstance(spec.engine, Engine):
        return [Problem("engine", f"{spec.engine!r} is not allowed; allowed: {', '.join(e.value for e in Engine)}")]
    out: list[Problem] = []
    engine = spec.engine
    allowed = slot_keys(engine)
    for key in sorted(spec.given - set(allowed)):
        out.append(Problem(key, f"not used by engine {engine.value!r}; allowed for {engine.value}: "
                                f"{', '.join(allowed)}"))
    if engine is Engine.EMULATED:
        card_type = CARD_TYPES.get(spec.type)
        if card_type is None:
            out.append(Problem("type", f"{spec.type!r} is not allowed; allowed: {', '.join(CARD_TYPES)}"))
            return out
        if spec.name is not None and not CARD_NAME_RE.match(spec.name):
            out.append(Problem("name", f"{spec.name!r} is not allowed; allowed: a directory name of letters, "
                                       f"digits, '_', '.', '-'"))
        for other in CARD_TYPES.values():
            if other is card_type:
                continue
            for key in other.keys:
                if key in spec.given and key not in card_type.keys:
                    out.append(Problem(key, f"only a type = \"{other.name}\" card takes {key} (this slot is "
                                            f"{spec.type!r})"))
        if card_type.rules is not None:
            out.extend(card_type.rules(spec))
    if engine in (Engine.PASSTHRU, Engine.VPCD):
        if spec.listen is not None:
            try:
                parse_listen(spec.listen)
            except ValueError as e:
                out.append(Problem("listen", f"{e}; allowed: IPv4 or [IPv6] address and port 1..65535, "
                                             f"e.g. \"127.0.0.1:2001\" or \"[::1]:2001\""))
        try:
            parse_allow(spec.allow)
        except ValueError as e:
            out.append(Problem("allow", str(e)))
    if engine is Engine.PCSC:
        if not spec.reader:
            out.append(Problem("reader", "missing: a pcsc slot needs reader = \"REGEX\" naming the PC/SC reader "
                                         "to relay"))
        else:
            try:
                re.compile(spec.reader)
            except (re.error, OverflowError, RecursionError) as e:     # "a{4294967296}": OverflowError
                out.append(Problem("reader", f"{spec.reader!r} is not a regular expression: {e}"))
    return out


# -- the whole daemon ------------------------------------------------------------------------
@dataclass
class DaemonOptions:
    """Everything the daemon runs by: the file's keys with the command line applied, or the defaults."""

    # [gadget]
    identity: str = DEFAULT_PRESET
    vid: int | None = None                   # None: the preset's
    pid: int | None = None
    manufacturer: str = DEFAULT_MANUFACTURER
    product: str = DEFAULT_PRODUCT
    serial: str | None = None                # None: stable per board (usb.gadget.board_serial)
    udc: str | None = None                   # None: the only one in /sys/class/udc
    gadget_name: str = DEFAULT_GADGET_NAME
    max_message_length: int | None = None    # None: DEFAULT_MAX_MESSAGE_LENGTH
    # [daemon]
    state_dir: Path = DEFAULT_STATE_DIR
    runtime_dir: Path = DEFAULT_RUNTIME_DIR
    log_level: str = DEFAULT_LOG_LEVEL
    control_group: str | None = None         # None: the control socket is root-only (0600)
    # [[slot]], [[function]]
    slots: list[SlotSpec] = field(default_factory=lambda: [SlotSpec()])
    functions: list[ExtraFunction] = field(default_factory=list)
    # [presence], [pinpad]: buttons, keypad and LED on the board (presence/config.py validates them)
    board: BoardConfig = field(default_factory=BoardConfig)
    # [vault]: emulated cards' keys at rest (cards.vault.VaultOptions); None: the defaults
    vault: object | None = None
    #: False: no control socket (embedding, tests)
    control_socket: bool = True
    #: where this came from, for messages: a path or "built-in defaults"
    source: str = field(default="built-in defaults", compare=False)

    @property
    def usb_identity(self) -> Identity:
        vid, pid, _ = PRESETS[self.identity]
        return Identity(vid=self.vid if self.vid is not None else vid,
                        pid=self.pid if self.pid is not None else pid,
                        manufacturer=self.manufacturer, product=self.product, serial=self.serial)

    @property
    def control_socket_path(self) -> Path:
        return self.runtime_dir / CONTROL_SOCKET_NAME

    @property
    def shared_gadget(self) -> bool:
        """More than our one slot on the USB device: no slot may take the device off the bus."""
        return len(self.slots) > 1 or bool(self.functions)

    def gadget_key(self) -> dict[str, object]:
        """What the host only learns by enumerating the device again, by name (reload compares these)."""
        return {"identity": self.usb_identity, "udc": self.udc, "gadget name": self.gadget_name,
                "max_message_length": self.max_message_length,
                "functions": tuple((f.kind, f.name, tuple(sorted(f.attributes.items()))) for f in self.functions),
                "number of slots": len(self.slots),
                "pinpad": self.board.pinpad}            # the PIN pad is in the descriptor (bPINSupport)

    def copy(self) -> "DaemonOptions":
        from dataclasses import replace
        return replace(self, slots=[s.copy() for s in self.slots],
                       functions=[replace(f, attributes=dict(f.attributes)) for f in self.functions])


def option_problems(opts: DaemonOptions) -> list[Problem]:
    """Everything wrong with the reader-wide options and every slot (slot keys as ``slot[N].KEY``)."""
    out: list[Problem] = []
    if opts.identity not in PRESETS:
        out.append(Problem("gadget.identity", f"{opts.identity!r} is not allowed; allowed: "
                                              f"{', '.join(sorted(PRESETS))}"))
    for key in ("manufacturer", "product", "serial"):
        value = getattr(opts, key)
        if value is not None and len(value) > MAX_USB_STRING:
            out.append(Problem(f"gadget.{key}", f"is {len(value)} characters long; allowed: at most "
                                                f"{MAX_USB_STRING} (a USB string descriptor)"))
    if not GADGET_NAME_RE.match(opts.gadget_name):
        out.append(Problem("gadget.name", f"{opts.gadget_name!r} is not allowed; allowed: letters, digits, '_', "
                                          f"'.', '-' (a configfs directory name, at most 64 characters)"))
    if opts.max_message_length is not None and not (
            MIN_MAX_MESSAGE_LENGTH <= opts.max_message_length <= MAX_MAX_MESSAGE_LENGTH):
        out.append(Problem("gadget.max_message_length",
                           f"{opts.max_message_length} is out of range; allowed: {MIN_MAX_MESSAGE_LENGTH}.."
                           f"{MAX_MAX_MESSAGE_LENGTH} (default {DEFAULT_MAX_MESSAGE_LENGTH})"))
    for key in ("state_dir", "runtime_dir"):
        path = getattr(opts, key)
        if not Path(path).is_absolute():
            out.append(Problem(f"daemon.{key}", f"{str(path)!r} is a relative path; allowed: an absolute path "
                                                f"such as {getattr(DaemonOptions, key)}"))
    if opts.log_level not in LOG_LEVELS:
        out.append(Problem("daemon.log_level", f"{opts.log_level!r} is not allowed; allowed: {', '.join(LOG_LEVELS)}"))
    if opts.control_group is not None:
        try:
            grp.getgrnam(opts.control_group)
        except (KeyError, ValueError):      # ValueError: a NUL in the name (found by fuzzing)
            out.append(Problem("daemon.control_group",
                               f"no group named {opts.control_group!r} on this system; allowed: an existing group "
                               f"(create it with 'groupadd {opts.control_group}') or no key for root only"))
    if not 1 <= len(opts.slots) <= MAX_SLOTS:
        out.append(Problem("slot", f"{len(opts.slots)} slots; allowed: 1..{MAX_SLOTS} (CCID bMaxSlotIndex)"))
    for i, spec in enumerate(opts.slots):
        out.extend(Problem(f"slot[{i}].{p.key}", p.message) for p in slot_problems(spec))
    seen = set()
    for i, f in enumerate(opts.functions):
        if f.kind not in KERNEL_FUNCTIONS:
            out.append(Problem(f"function[{i}].kind", f"{f.kind!r} is not allowed; allowed: "
                                                      f"{', '.join(KERNEL_FUNCTIONS)}"))
        if not FUNCTION_NAME_RE.match(f.name):
            out.append(Problem(f"function[{i}].name", f"{f.name!r} is not allowed; allowed: letters, digits and "
                                                      f"'_' (the configfs instance name)"))
        if (f.kind, f.name) in seen:
            out.append(Problem("function", f"two functions are {f.kind}.{f.name}; allowed: each kind and name "
                                           f"once (give the second a different name)"))
        seen.add((f.kind, f.name))
    return out
