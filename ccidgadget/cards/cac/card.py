"""An emulated CAC card with three certificates, like QEMU's ``ccid-card-emulated``.

``ccidgadget --card emulated --type cac --db sql:DIR --cert id-cert --cert
signing-cert --cert encryption-cert`` (or three ``--cert FILE`` without
``--db``) builds the card libcacard builds for ``backend=certificates``: three
PKI applets, the CCC, the ACA and libcacard's empty containers (applets.py,
aca.py).  OpenSC's ``cac`` driver finds it through the CCC and labels the
three certificate/key pairs "CAC ID Certificate", "CAC Email Signature
Certificate" and "CAC Email Encryption Certificate" (card-cac-common.c).

The PIN.  libcacard logs in to the NSS database with the PIN, so its PIN *is*
the database password, and an empty-password database accepts any PIN and
signs without one.  We keep a real PIN with a retry counter (3 tries, then
6983) in the state directory:

- `pin` given: that is the PIN (for a password-protected database it is also
  the database password, exactly as under QEMU, unless `db_password` is given);
- no `pin`: the PIN is `DEFAULT_PIN`, 12345678 (the PIN of OpenSC's own CAC CI,
  virt_cacard), and a password-protected database needs `db_password`.

The PIN is 4 to 8 characters, what OpenSC's cac PKCS#15 emulator allows
(pkcs15-cac.c: min 4, max 8, padded with FF).  The stored verifier and counter
survive restarts; a different `pin` on a later start replaces the PIN and
resets the counter (the configuration is the administrator's): the card then
gets a new data key and its keys are sealed again from their sources.

Keys at rest (cards/vault.py): the three private keys are sealed to the card
key, whose private half is under the data key the PIN wraps; a VERIFY opens
it, a card reset or power-off drops it (GSC-IS 2.1 §5.2: the PIN state does
not survive a reset).  The certificates and key files or NSS database the
card is built from are the administrator's to protect; the state directory
holds no key in clear.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

from cryptography import x509

from ..applet import AppletCard
from ..iso7816 import SW, ApduError, CommandAPDU
from cryptography.hazmat.primitives import hashes, serialization

from ..device_secret import NO_DEVICE_SECRET
from ..keys import CardKey, KeyLoadError, LockedCardKey
from ..pin import PinSlot
from ..storage import CardStore, IntegrityError, StorageError, b64d, b64e
from ..vault import DEFAULT_OPTIONS, CardVault, VaultOptions, save_migrated
from .aca import AcaApplet
from .applets import (ACF_AID, CARD_ID_LEN, GSC_RID, INS, CacContainer, PkiApplet, ccc_applet, empty_applet)
from .material import CAC_LABELS, CacCredential, CacMaterialError, load_cac_material

log = logging.getLogger(__name__)

STATE_TYPE = "cac"
DEFAULT_PIN = "12345678"
PIN_MIN, PIN_MAX = 4, 8
PIN_PAD = 0xFF
PIN_TRIES = 3
#: libcacard's CAC ATR (cac.c `cac_atr`, from an early G&D CAC card; libcacard >= 2.7).
#: OpenSC also lists it in piv_atrs, so the PIV driver probes first and steps aside (6A82).
CAC_ATR = bytes.fromhex("3B7A18000073667465206364313434")
CHALLENGE_LEN = 8          # card-cac.c `cac_get_challenge`: "CAC requires 8 byte response"
PIN_LABEL = "cac/pin"


def _pin_bytes(pin: str) -> bytes:
    raw = pin.encode("utf-8")
    if not PIN_MIN <= len(raw) <= PIN_MAX or PIN_PAD in raw:
        raise CacMaterialError(f"the CAC PIN must be {PIN_MIN} to {PIN_MAX} characters "
                               "(OpenSC's cac driver sends at most 8)")
    return raw


def _credentials_from_state(state: dict) -> list[CacCredential]:
    """Format 2: certificates and sealed keys; format 1: certificates and PEM keys in clear."""
    try:
        if state.get("version", 2) == 1:
            return [CacCredential(x509.load_der_x509_certificate(b64d(c["cert"])), CardKey.from_pem(c["key"]),
                                  c.get("source", "state")) for c in state["credentials"]]
        return [CacCredential(x509.load_der_x509_certificate(b64d(c["cert"])), None, c.get("source", "state"),
                              sealed=dict(c["sealed"])) for c in state["credentials"]]
    except (KeyError, TypeError, ValueError, KeyLoadError) as e:
        raise StorageError(f"malformed CAC card state: {e}") from None


def _key_label(index: int, cert_der: bytes) -> str:
    # The certificate's hash is associated data: a sealed key opens only next to its certificate.
    h = hashes.Hash(hashes.SHA256())
    h.update(cert_der)
    return f"cac/key/{index};cert={h.finalize()[:16].hex()}"


def _vault_and_pin(state: dict, device, pin_value: bytes | None) -> tuple[CardVault | None, PinSlot, bool]:
    """(vault, PIN slot, migrated) from a stored state; vault None when the card must be sealed anew."""
    if state.get("version", 2) == 1:
        vault, dek = CardVault.new(device)
        slot = PinSlot.from_dict(state["pin"], device=device, aad=vault.aad(PIN_LABEL))
        slot.upgrade(dek)
        return vault, slot, True
    vault = CardVault.from_dict(state["vault"], device)
    slot = PinSlot.from_dict(state["pin"], device=device, aad=vault.aad(PIN_LABEL))
    if slot.legacy or slot.wrap is None:
        raise StorageError("malformed CAC card state: a format 2 PIN record without its data key wrap")
    return vault, slot, False


class CacCard(AppletCard):
    """``--card emulated --type cac``: a GSC-IS 2.1 CAC card with three RSA keys."""

    ATR = CAC_ATR
    # Reads of in-memory state; VERIFY and SIGN/DECRYPT go to the worker thread.
    QUICK_INS = frozenset({INS.SELECT, INS.GET_RESPONSE, INS.GET_ACR, INS.READ_BUFFER, INS.GET_PROPERTIES,
                           INS.GET_CHALLENGE})

    def __init__(self, credentials: list[CacCredential], pin: PinSlot, *, card_id: bytes,
                 store: CardStore | None = None, inserted: bool = True, vault: CardVault | None = None) -> None:
        self.credentials = list(credentials)
        self.pin = pin
        self.card_id = card_id
        self.store = store
        self.verified = False
        self.session = None
        if vault is None:
            # A new card (or one whose PIN the configuration replaced): a new data key, wrapped under the
            # key-encryption key that PinSlot.new()/set() derived from the PIN.
            device = store.device if store is not None else NO_DEVICE_SECRET
            vault, dek = CardVault.new(device)
            pin.device, pin.aad = device, vault.aad(PIN_LABEL)
            pin.wrap_data_key(dek)
            del dek
        self.vault = vault
        self._open_keys: dict[int, CardKey] = {i: c.key for i, c in enumerate(self.credentials) if c.key is not None}
        self._sealed: dict[int, dict] = {i: c.sealed for i, c in enumerate(self.credentials) if c.sealed is not None}
        for i, c in enumerate(self.credentials):
            if i not in self._sealed:
                if c.key is None:
                    raise StorageError(f"CAC credential {c.source}: neither a key nor a sealed key")
                self._sealed[i] = vault.seal(c.key.to_der(), _key_label(i, c.cert_der))
        self.pki = [PkiApplet(self, i, c.cert_der, c.key or LockedCardKey(c.certificate.public_key()))
                    for i, c in enumerate(self.credentials)]
        applets: list = list(self.pki)
        applets.append(AcaApplet(self, len(self.pki)))
        applets.append(ccc_applet(self, card_id, len(self.pki)))
        applets += [empty_applet(self, GSC_RID + bytes((0x02, x)), []) for x in (0xF0, 0xF1, 0xF2)]
        applets += [empty_applet(self, GSC_RID + bytes((0x02, 0xFB)), [b"\x02\xFB"]),
                    empty_applet(self, GSC_RID + b"\x02\xFE", [b"\x02\xFE"], name="PKI Certificate"),
                    empty_applet(self, GSC_RID + b"\x02\xFD", [b"\x02\xFD"], name="PKI Credential"),
                    # Person Instance / Personnel: SimpleTLV containers, empty without a real card.
                    empty_applet(self, GSC_RID + b"\x02\x00", [b"\x02\x00"], simpletlv=True, name="Person Instance"),
                    empty_applet(self, GSC_RID + b"\x02\x01", [b"\x02\x01"], simpletlv=True, name="Personnel"),
                    empty_applet(self, GSC_RID + b"\x12\x01", [b"\x12\x01"]),
                    empty_applet(self, GSC_RID + b"\x12\x02", [b"\x12\x02"]),
                    empty_applet(self, ACF_AID, [b"\x30\x00", b"\x60\x10", b"\x60\x30", b"\x90\x00"],
                                 name="Access Control File")]
        super().__init__(applets, inserted=inserted)

    # -- construction ---------------------------------------------------------
    @classmethod
    def from_sources(cls, state_dir: Path, *, certs: list[str], db: str | None = None,
                     pin: str | None = None, db_password: str | None = None,
                     inserted: bool = True, options: VaultOptions = DEFAULT_OPTIONS) -> "CacCard":
        """Load three certificates (nicknames in `db`, or files) and the card state in `state_dir`.

        Raises CacMaterialError (bad input, with a message for the user) or
        StorageError (state directory unusable).
        """
        pin_value = _pin_bytes(pin) if pin is not None else None
        password = db_password if db_password is not None else pin
        store = CardStore(Path(state_dir), options.device())
        state = store.load() if store.exists() else None
        if state is not None and state.get("type") != STATE_TYPE:
            raise StorageError(f"{store.directory} holds a {state.get('type')!r} card, not a CAC card")
        kdf = options.kdf.to_dict() if options.kdf is not None else None
        vault, migrated, known = None, False, {}
        changed = state is None
        if state is not None:
            card_id = b64d(state["card_id"])
            vault, slot, migrated = _vault_and_pin(state, store.device, pin_value)
            if pin_value is not None and not slot.matches(pin_value):
                # The data key is wrapped under the old PIN, which we do not know: a new data key, and the
                # keys sealed again from their sources (the configuration is the administrator's).
                log.info("CAC PIN set from the configuration; retry counter reset, keys sealed again")
                vault, migrated = None, False
                slot = PinSlot.new(pin_value, max_tries=slot.max_tries, device=store.device, kdf=kdf)
                changed = True
            else:
                # Certificates already in the state need no slow key export from NSS, nor a new seal.
                known = {c.cert_der: c for c in _credentials_from_state(state)}
        else:
            card_id = secrets.token_bytes(CARD_ID_LEN)
            slot = PinSlot.new(pin_value or DEFAULT_PIN.encode(), max_tries=PIN_TRIES,
                               is_default=pin_value is None, device=store.device, kdf=kdf)
        slot.next_kdf = kdf
        loaded = load_cac_material(certs, db, password=password, known=known if db is not None else None)
        credentials = []
        for c in loaded:
            stored = known.get(c.cert_der)
            if stored is not None and stored.sealed is not None and c.sealed is None:
                c = CacCredential(c.certificate, c.key, c.source, sealed=stored.sealed)
            credentials.append(c)
        if state is not None and [x.get("cert") for x in state.get("credentials", [])] != [
                b64e(c.cert_der) for c in credentials]:
            log.info("CAC certificates changed since the last start; storing the new ones")
            changed = True
        card = cls(credentials, slot, card_id=card_id, store=store, inserted=inserted, vault=vault)
        if migrated:
            save_migrated(store, card.to_state(), options, f"CAC card {card_id.hex()}")
        elif changed:
            card.save()
        return card

    @classmethod
    def from_state(cls, state_dir: Path | CardStore, *, inserted: bool = True,
                   options: VaultOptions = DEFAULT_OPTIONS) -> "CacCard":
        """Rebuild the card from its state directory (or store) alone (no NSS database needed)."""
        store = state_dir if isinstance(state_dir, CardStore) else CardStore(Path(state_dir), options.device())
        state = store.load()
        if state.get("type") != STATE_TYPE:
            raise StorageError(f"{store.directory} holds a {state.get('type')!r} card, not a CAC card")
        try:
            vault, slot, migrated = _vault_and_pin(state, store.device, None)
            card = cls(_credentials_from_state(state), slot, card_id=b64d(state["card_id"]), store=store,
                       inserted=inserted, vault=vault)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise StorageError(f"malformed CAC card state: {e!r}") from None
        if migrated:
            save_migrated(store, card.to_state(), options, f"CAC card {card.card_id.hex()}")
        return card

    def to_state(self) -> dict:
        return {"type": STATE_TYPE, "card_id": b64e(self.card_id), "vault": self.vault.to_dict(),
                "pin": self.pin.to_dict(),
                "credentials": [{"label": CAC_LABELS[i] if i < len(CAC_LABELS) else f"CAC Cert {i + 1}",
                                 "source": c.source, "cert": b64e(c.cert_der), "sealed": dict(self._sealed[i])}
                                for i, c in enumerate(self.credentials)]}

    # -- keys at rest -----------------------------------------------------------
    def unlock(self, dek: bytes) -> None:
        self.lock()
        self.session = self.vault.open_session(dek)

    def lock(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            session.close()
        self._open_keys.clear()

    def private_key(self, index: int) -> CardKey:
        """The PKI applet's private key: 6982 while locked, 6581 if its sealed form fails its check."""
        key = self._open_keys.get(index)
        if key is not None:
            return key
        if self.session is None:
            raise ApduError(SW.SECURITY_STATUS_NOT_SATISFIED)
        cred = self.credentials[index]
        try:
            der = self.vault.open(self._sealed[index], _key_label(index, cred.cert_der), self.session)
            key = CardKey(serialization.load_der_private_key(der, None))
            if not key.matches(cred.certificate.public_key()):
                raise StorageError(f"CAC key {index} does not match its certificate")
        except (StorageError, ValueError, KeyLoadError) as e:
            log.error("CAC card %s: %s", self.card_id.hex(), e)
            raise ApduError(SW.MEMORY_FAILURE) from None
        self._open_keys[index] = key
        return key

    def save(self) -> None:
        if self.store is not None:
            self.store.save(self.to_state())

    def describe(self) -> dict:
        info = super().describe()
        info.update({"type": "cac", "serial": self.card_id.hex(), "pin_tries_left": self.pin.tries_left,
                     "certificates": [{"label": CAC_LABELS[i], "subject": c.certificate.subject.rfc4514_string(),
                                       "source": c.source} for i, c in enumerate(self.credentials)]})
        return info

    # -- EmulatedCard -----------------------------------------------------------
    def atr(self) -> bytes:
        return self.ATR

    def reset(self) -> None:
        super().reset()
        self.verified = False
        self.lock()
        for applet in self.pki:
            applet.deselect()

    # -- card-wide commands ------------------------------------------------------
    def select_other(self, cmd: CommandAPDU) -> bytes:
        # SELECT P1=02: a card object inside the current applet (GSC-IS 2.1 §5.3.3.2);
        # other forms are not supported (libcacard: 6A81).
        if cmd.p1 != 0x02:
            raise ApduError(SW.FUNCTION_NOT_SUPPORTED)
        if not isinstance(self.selected, CacContainer):
            raise ApduError(SW.FILE_NOT_FOUND)
        return self.selected.select_object(cmd)

    def process_unselected(self, cmd: CommandAPDU):
        return self.card_command(cmd)

    def card_command(self, cmd: CommandAPDU):
        """Commands every applet accepts: VERIFY and GET CHALLENGE; anything else is 6D00."""
        if cmd.ins == INS.VERIFY:
            return self.verify(cmd)
        if cmd.ins == INS.GET_CHALLENGE:
            if cmd.p1 or cmd.p2:
                raise ApduError(SW.INCORRECT_P1P2)
            if cmd.data:
                raise ApduError(SW.WRONG_LENGTH)
            return secrets.token_bytes(min(cmd.le or CHALLENGE_LEN, 256))
        raise ApduError(SW.INS_NOT_SUPPORTED)

    def verify(self, cmd: CommandAPDU) -> bytes:
        """VERIFY (ISO 7816-4 §7.5.6): the PIN, FF-padded to 8 bytes by OpenSC."""
        if cmd.p1 != 0x00:
            raise ApduError(SW.INCORRECT_P1P2)
        if cmd.p2 != 0x00:
            raise ApduError(SW.REFERENCE_NOT_FOUND)      # the CAC has one PIN, reference 00
        if not cmd.data:
            # Status query: 9000 when verified, else 63Cx (6983 when blocked).
            if self.verified:
                return b""
            blocked = self.pin.status_error()
            if blocked is not None:
                raise blocked
            raise ApduError(SW.VERIFY_FAILED | self.pin.tries_left)
        if len(cmd.data) > PIN_MAX:
            raise ApduError(SW.WRONG_LENGTH)
        self.verified = False
        self.lock()
        candidate = bytes(cmd.data).rstrip(bytes((PIN_PAD,)))
        try:
            dek = self.pin.verify(candidate, self.save)
            self.unlock(dek)
        except IntegrityError as e:
            log.error("CAC card %s: %s; PIN refused", self.card_id.hex(), e)
            raise ApduError(SW.MEMORY_FAILURE) from None
        except StorageError:
            raise ApduError(SW.MEMORY_FAILURE) from None
        self.verified = True
        return b""

    def require_pin(self) -> None:
        if not self.verified:
            raise ApduError(SW.SECURITY_STATUS_NOT_SATISFIED)
