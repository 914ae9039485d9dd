"""Run vsmartcard's vicc (the Python virtual card) for integration tests.

Debian 12 ships the library (python3-virtualsmartcard) in a directory that
is not on sys.path, and it imports PyCrypto's `Crypto` package, which Debian
only has as `Cryptodome` (see /work/shared/reference/vm-test-bed.md).  So
`ensure_vicc()` builds, once, a venv under .cache/vicc-venv with the system
site packages plus pycryptodome, and returns the argv prefix that starts
vicc in it.  The vicc *script* comes from /usr/bin/vicc (package
vsmartcard-vpicc) when installed, else from `vicc_launcher.py` next to this
file, which drives the same library class (VirtualICC) with vicc's options.

Usage:  argv = ensure_vicc() + ["-t", "iso7816", "-H", "127.0.0.1", "-P", str(port)]
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".cache" / "vicc-venv"
SYSTEM_PYTHON = "/usr/bin/python3"
LIBRARY_DIR = "/usr/lib/python3/site-packages/virtualsmartcard"
VICC_SCRIPT = "/usr/bin/vicc"
LAUNCHER = Path(__file__).with_name("vicc_launcher.py")


class ViccUnavailable(RuntimeError):
    """vicc cannot run on this machine; the message says why."""


def _venv_python() -> Path:
    return VENV / "bin" / "python"


def _works(python: Path) -> bool:
    probe = ("import Crypto.Cipher.DES3, virtualsmartcard.VirtualSmartcard")
    r = subprocess.run([str(python), "-c", probe], env={**os.environ, "PYTHONPATH": LIBRARY_DIR},
                       capture_output=True, timeout=120)
    return r.returncode == 0


def ensure_vicc() -> list[str]:
    """The argv prefix that runs vicc; builds the venv on first use.

    Raises ViccUnavailable with the reason when it cannot be made to work.
    """
    if not Path(SYSTEM_PYTHON).exists():
        raise ViccUnavailable(f"{SYSTEM_PYTHON} not found")
    if not Path(LIBRARY_DIR, "virtualsmartcard", "VirtualSmartcard.py").exists():
        raise ViccUnavailable(f"python3-virtualsmartcard is not installed ({LIBRARY_DIR})")
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(VENV.parent / "vicc-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)          # concurrent test sessions build it once
        python = _venv_python()
        if not (python.exists() and _works(python)):
            steps = [[SYSTEM_PYTHON, "-m", "venv", "--system-site-packages", str(VENV)],
                     [str(python), "-m", "pip", "install", "--quiet", "pycryptodome"]]
            for cmd in steps:
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
                if r.returncode != 0:
                    raise ViccUnavailable(f"{' '.join(cmd)} failed: {r.stderr.strip()[-500:]}")
            if not _works(python):
                raise ViccUnavailable("vicc venv built but the virtualsmartcard library does not import")
    script = VICC_SCRIPT if Path(VICC_SCRIPT).exists() else str(LAUNCHER)
    return ["env", f"PYTHONPATH={LIBRARY_DIR}", str(python), "-u", script]


if __name__ == "__main__":
    try:
        print(" ".join(ensure_vicc()))
    except ViccUnavailable as e:
        sys.exit(f"vicc unavailable: {e}")
