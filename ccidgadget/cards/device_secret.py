"""The optional device secret mixed into every key wrap of every emulated card.

Sources (configuration ``[vault] device_secret``; docs/card-state-format.md "Device secret"):

``none`` (default)
    Nothing.  The PIN alone protects the card's data key; keys usable without a PIN (PIV 9E,
    F9, PIN policy NEVER) and the PIV management key are only *obfuscated* at rest: anyone
    holding a copy of the state directory and this source code can use them.
``file``
    At least 32 bytes read from ``device_secret_file`` at start (a file outside the state
    directory: another partition, a USB key, a secure element's mount).  Stops an attacker who
    copies the state directory alone; not one who copies the whole medium when the file is on it.
``tpm``
    32 random bytes sealed by the board's TPM 2.0 (``ccidgadget card tpm-seal`` creates
    ``tpm_sealed_dir/seal.pub`` and ``seal.priv``); unsealed at start with tpm2-tools
    (``tpm2_createprimary`` under the owner hierarchy, ``tpm2_load``, ``tpm2_unseal``).  The
    sealed blobs are useless without that very TPM: a copy of the whole SD card is not enough,
    the board itself is needed.  It does not stop someone who has the board running (root can
    unseal), nor, without a PCR policy, someone who boots another system on the same board.
``rpi-otp``
    The 256-bit customer/device private key in the OTP of a Raspberry Pi 4/5 (BCM2711/2712),
    read as Raspberry Pi OS's ``rpi-otp-private-key`` reads it: the firmware mailbox tag
    0x00030081 through ``vcmailbox 0x00030081 40 40 0 8 0 0 0 0 0 0 0 0``; the eight words
    after the offset and count are the key, printed big-endian.  All-zero means not
    programmed (refused).  Like the TPM it binds the state to the SoC; anyone who can run code
    as root on the board reads it.  The Zero, Zero 2 and older models have no such region.

The secret itself never reaches a log; `DeviceSecret.fingerprint` (a one-way, 8-byte check
value) is stored in each card so that a wrong or missing secret is refused with a message
instead of looking like a wrong PIN.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .base import CardSetupError

KINDS = ("none", "file", "tpm", "rpi-otp")
MIN_FILE_SECRET = 32
SECRET_LEN = 32
TOOL_TIMEOUT = 30
#: Mailbox property tag "get customer private key" (Raspberry Pi firmware, raspberrypi-firmware.h).
RPI_GET_PRIVATE_OTP = 0x00030081
RPI_OTP_WORDS = 8


class DeviceSecretError(CardSetupError):
    """The configured device secret cannot be read (message says why and what to do)."""


@dataclass(frozen=True)
class DeviceSecret:
    kind: str = "none"
    value: bytes = field(default=b"", repr=False)

    @property
    def fingerprint(self) -> str:
        """8 bytes of HMAC(secret, label), hex: tells secrets apart, reveals nothing of them."""
        if self.kind == "none":
            return "none"
        return hmac.new(self.value, b"ccidgadget-card device secret check", hashlib.sha256).hexdigest()[:16]

    def describe(self) -> str:
        return "no device secret" if self.kind == "none" else f"device secret {self.kind} ({self.fingerprint})"


NO_DEVICE_SECRET = DeviceSecret()


# -- file -----------------------------------------------------------------------------------------
def read_file_secret(path: str | Path) -> DeviceSecret:
    path = Path(path)
    try:
        st = os.stat(path)
        data = path.read_bytes()
    except OSError as e:
        raise DeviceSecretError(f"device secret file {path}: {e.strerror or e}") from None
    if st.st_mode & 0o077:
        raise DeviceSecretError(f"device secret file {path} has mode {st.st_mode & 0o777:04o}; "
                                "allowed: readable by its owner only (chmod 600)")
    if len(data) < MIN_FILE_SECRET:
        raise DeviceSecretError(f"device secret file {path} holds {len(data)} bytes; allowed: at least "
                                f"{MIN_FILE_SECRET} random bytes (head -c 32 /dev/urandom > {path})")
    # A file of any length becomes 32 bytes; trailing newlines of a hex/base64 file count as written.
    return DeviceSecret("file", hashlib.sha256(b"ccidgadget device secret file\x00" + data).digest())


def create_file_secret(path: str | Path) -> DeviceSecret:
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, os.urandom(SECRET_LEN))
        os.fsync(fd)
    finally:
        os.close(fd)
    return read_file_secret(path)


# -- TPM 2.0 (tpm2-tools) -------------------------------------------------------------------------
def _tpm_env(tcti: str | None) -> dict:
    env = dict(os.environ, LANG="C", LC_ALL="C")
    if tcti:
        env["TPM2TOOLS_TCTI"] = tcti
    return env


def _tpm(args: list[str], tcti: str | None, *, input: bytes | None = None) -> bytes:
    tool = shutil.which(args[0])
    if tool is None:
        raise DeviceSecretError(f"{args[0]} not found: install Debian's tpm2-tools for device_secret = \"tpm\"")
    try:
        done = subprocess.run([tool, *args[1:]], input=input, capture_output=True, timeout=TOOL_TIMEOUT,
                              env=_tpm_env(tcti))
    except subprocess.TimeoutExpired:
        raise DeviceSecretError(f"{args[0]} did not answer in {TOOL_TIMEOUT} s (TPM busy or absent?)") from None
    if done.returncode != 0:
        lines = [x for x in done.stderr.decode("utf-8", "replace").splitlines() if x.strip()]
        raise DeviceSecretError(f"{args[0]} failed: {lines[-1] if lines else 'exit status %d' % done.returncode}")
    return done.stdout


def _flush(tcti: str | None) -> None:
    # Without the kernel's resource manager (/dev/tpmrm0), e.g. straight to swtpm, transient
    # objects stay loaded between tool runs and the TPM soon has no room left (TPM_RC_OBJECT_MEMORY).
    for kind in ("-t", "-s"):
        try:
            _tpm(["tpm2_flushcontext", kind], tcti)
        except DeviceSecretError:
            pass


def tpm_seal(directory: str | Path, *, tcti: str | None = None) -> DeviceSecret:
    """Create 32 random bytes sealed under the owner hierarchy; write seal.pub/seal.priv to `directory`."""
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if (directory / "seal.priv").exists():
        raise DeviceSecretError(f"{directory} already holds a sealed secret; remove it first (cards sealed "
                                "with it can no longer be opened)")
    secret = os.urandom(SECRET_LEN)
    with tempfile.TemporaryDirectory(prefix="ccidgadget-tpm-") as tmp:
        primary = Path(tmp) / "primary.ctx"
        _flush(tcti)
        _tpm(["tpm2_createprimary", "-Q", "-C", "o", "-g", "sha256", "-G", "ecc", "-c", str(primary)], tcti)
        _flush(tcti)
        _tpm(["tpm2_create", "-Q", "-C", str(primary), "-i", "-", "-u", str(directory / "seal.pub"),
              "-r", str(directory / "seal.priv")], tcti, input=secret)
        _flush(tcti)
    return DeviceSecret("tpm", secret)


def tpm_unseal(directory: str | Path, *, tcti: str | None = None) -> DeviceSecret:
    directory = Path(directory)
    for name in ("seal.pub", "seal.priv"):
        if not (directory / name).is_file():
            raise DeviceSecretError(f"no TPM-sealed device secret in {directory} ({name} missing); create it "
                                    "with: ccidgadget card tpm-seal --dir " + str(directory))
    with tempfile.TemporaryDirectory(prefix="ccidgadget-tpm-") as tmp:
        primary, sealed = Path(tmp) / "primary.ctx", Path(tmp) / "seal.ctx"
        _flush(tcti)
        _tpm(["tpm2_createprimary", "-Q", "-C", "o", "-g", "sha256", "-G", "ecc", "-c", str(primary)], tcti)
        _flush(tcti)
        _tpm(["tpm2_load", "-Q", "-C", str(primary), "-u", str(directory / "seal.pub"),
              "-r", str(directory / "seal.priv"), "-c", str(sealed)], tcti)
        _flush(tcti)
        value = _tpm(["tpm2_unseal", "-c", str(sealed)], tcti)
        _flush(tcti)
    if len(value) != SECRET_LEN:
        raise DeviceSecretError(f"the TPM unsealed {len(value)} bytes, not {SECRET_LEN}: not a ccidgadget secret")
    return DeviceSecret("tpm", value)


# -- Raspberry Pi OTP -----------------------------------------------------------------------------
def parse_vcmailbox_private_key(output: str) -> bytes:
    """The key from ``vcmailbox 0x00030081 40 40 0 8 0...`` output (see the module note)."""
    try:
        words = [int(w, 16) for w in output.split()]
    except ValueError:
        raise DeviceSecretError(f"vcmailbox printed something other than hex words: {output[:80]!r}") from None
    # buffer size, response code, tag, value size, response size|0x80000000, offset, count, 8 words, end tag
    if len(words) < 7 + RPI_OTP_WORDS or words[2] != RPI_GET_PRIVATE_OTP:
        raise DeviceSecretError("vcmailbox did not answer the OTP private key request (a Raspberry Pi 4 or 5 "
                                "with current firmware is needed)")
    if words[1] != 0x80000000:
        raise DeviceSecretError(f"the firmware refused the OTP private key request (code {words[1]:#010x})")
    if words[6] != RPI_OTP_WORDS:
        raise DeviceSecretError(f"the firmware returned {words[6]} OTP key words, not {RPI_OTP_WORDS}")
    key = b"".join(w.to_bytes(4, "big") for w in words[7:7 + RPI_OTP_WORDS])
    if not any(key):
        raise DeviceSecretError("the Raspberry Pi OTP private key is not programmed (all zero); program it once "
                                "with: rpi-otp-private-key -w $(openssl rand -hex 32)  (irreversible)")
    return key


def read_rpi_otp(vcmailbox: str = "vcmailbox") -> DeviceSecret:
    tool = shutil.which(vcmailbox)
    if tool is None:
        raise DeviceSecretError(f"{vcmailbox} not found: device_secret = \"rpi-otp\" needs Raspberry Pi OS's "
                                "vcmailbox (package raspi-utils or libraspberrypi-bin) on a Raspberry Pi 4/5")
    argv = [tool, f"{RPI_GET_PRIVATE_OTP:#010x}", "40", "40", "0", str(RPI_OTP_WORDS)] + ["0"] * RPI_OTP_WORDS
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DeviceSecretError(f"cannot run {tool}: {e}") from None
    if done.returncode != 0:
        raise DeviceSecretError(f"{tool} failed (exit status {done.returncode}): {done.stderr.strip()[:200]}")
    # The OTP key is used through a KDF, never as it is: the same OTP may serve other purposes.
    raw = parse_vcmailbox_private_key(done.stdout)
    return DeviceSecret("rpi-otp", hashlib.sha256(b"ccidgadget device secret rpi-otp\x00" + raw).digest())


def load(kind: str, *, path: str | None = None, tcti: str | None = None,
         vcmailbox: str = "vcmailbox") -> DeviceSecret:
    """Read the configured device secret; DeviceSecretError with a message for the user."""
    if kind == "none":
        return NO_DEVICE_SECRET
    if kind == "file":
        if not path:
            raise DeviceSecretError("device_secret = \"file\" needs device_secret_path = \"/path/to/file\"")
        return read_file_secret(path)
    if kind == "tpm":
        if not path:
            raise DeviceSecretError("device_secret = \"tpm\" needs device_secret_path = \"/dir/with/seal.pub\"")
        return tpm_unseal(path, tcti=tcti)
    if kind == "rpi-otp":
        return read_rpi_otp(vcmailbox)
    raise DeviceSecretError(f"unknown device secret {kind!r}; allowed: {', '.join(KINDS)}")
