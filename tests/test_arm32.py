# SPDX-License-Identifier: GPL-3.0-or-later
"""The unit, property and corpus suites again on 32-bit ARM: a Debian armhf userland under qemu-user.

Raspberry Pi OS on a Pi Zero/1/2 (and the 32-bit image on any Pi) is a 32-bit ARM userland with
Debian 12's python3-cryptography 38.0.4 (PyPI has no 32-bit ARM wheel of a newer one). This test
runs ``pytest -m 'not vm'`` from this checkout inside the armhf chroot of tests/vm/rootfs.py
(debootstrap through binfmt_misc + qemu-user-static; Debian's cryptography, pyscard, systemd;
the rest of the project's requirements from PyPI in a venv), in private mount and network
namespaces, so every struct layout, ctypes size and wire encoding the suites check is checked with
4-byte pointers and longs (the FunctionFS/AIO adapters' python-functionfs and python-libaio
structures included; tests/usb/test_abi.py checks those against the kernel's sizes).

Why armhf and not armel: armhf (ARMv7, hard-float EABI) is the ABI Raspberry Pi OS's 32-bit
userland uses on every Pi (it is rebuilt for ARMv6 there, with the same struct layouts and calling
convention); armel (soft-float) runs on a Pi Zero's ARMv6 too but is not what a Pi runs, and the
32-bit layouts this test is about are the same in both.

Not run there: the bounded fuzzing (atheris has no ARM build; the corpus replay runs), vicc (see
DESELECT) and the ``vm`` tests (they boot guests). If the chroot cannot be built (no binfmt_misc, no network for
the first build), the test is skipped with the reason, or fails in CI (tests/ci.py).
Wall time: preparation (first run) and the suite are printed; CCIDGADGET_ARM32_TIMEOUT bounds the
suite (default 1500 s).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from tests.ci import skip_or_fail
from test_vm import testbed  # tests/vm/ loaded by path once, there

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = float(os.environ.get("CCIDGADGET_ARM32_TIMEOUT", "1500"))
ROOT = "armhf"

pytestmark = pytest.mark.vm
rootfs = testbed.rootfs()


@pytest.fixture(scope="module")
def armhf_root():
    t0 = time.monotonic()
    try:
        root = rootfs.ensure_root(rootfs.ROOT_SPECS[ROOT], ROOT)
    except rootfs.RootUnavailable as e:
        skip_or_fail(f"armhf chroot unavailable: {e}")
    print(f"armhf root ready in {time.monotonic() - t0:.0f} s")
    return root


#: the suites in two shards that run side by side, each in its own namespaces (this machine has 2 cores;
#: a shard's pcscd, vpcd port and /tmp meet nobody else's); the second is everything the first is not
#: (NSS databases and RSA key generation are three quarters of the time)
SHARD = ("tests/cards/test_cac_nss.py", "tests/cards/test_piv.py", "tests/cards/test_keys.py")
#: not run there: the bounded fuzzing (atheris has no ARM build; the corpus replay runs) and vicc, a
#: third-party card emulator the passthrough tests use as their peer: its venv needs pycryptodome,
#: which has no 32-bit ARM wheel (a build needs a compiler)
#: nor what tests another program's work with ours, which the architecture does not change and which
#: under qemu-user would cost minutes or tools the chroot does not need: GnuPG's scdaemon against the
#: OpenPGP card (the card's own tests run here), the .deb (architecture all: built, linted and installed
#: in the amd64 guests; it needs dpkg-dev, lintian and PyPI), groff rendering the man page, swtpm and
#: tpm2-tools sealing the device secret (the vault's other device-secret sources run here); nor the
#: benchmarks' C peer (scripts/min_peer.c: a compiler, and the benchmarks run on amd64 and arm64)
IGNORE = ("tests/cards/test_openpgp_gnupg.py", "tests/packaging", "tests/passthrough/test_min_peer.py")
#: what pcscd (no large-file support on armhf) lists with readdir(): see rootfs.chroot_argv
PCSC_DIRS = ("/etc/reader.conf.d", "/usr/lib/pcsc/drivers")
DESELECT = ("not test_bounded_fuzzing and not test_real_vicc_insert_apdu_kill_restart"
            " and not test_groff_renders_without_warnings and not test_tpm_sealed_device_secret_against_swtpm")


def test_unit_suites_on_armhf(armhf_root, tmp_path):
    env = {**rootfs.CHROOT_ENV, "PYTHONPATH": str(REPO), "CI": os.environ.get("CI", ""),
           "HYPOTHESIS_PROFILE": os.environ.get("HYPOTHESIS_PROFILE", "")}
    env = {k: v for k, v in env.items() if v}
    env.pop("PYTHONDONTWRITEBYTECODE", None)           # compiling under qemu-user is slow: keep .pyc
    probe = ("import platform, struct, ctypes, cryptography; "
             "print(platform.machine(), struct.calcsize('P') * 8, 'bit, cryptography', cryptography.__version__)")
    pytest_argv = [f"{rootfs.VENV}/bin/python", "-m", "pytest", "-m", "not vm", "-q", "-p", "no:cacheprovider",
                   "-k", DESELECT, "-o", "addopts=-ra", "--durations=15"]
    shards = [list(SHARD), ["tests", *(f"--ignore={d}" for d in (*SHARD, *IGNORE))]]
    t0 = time.monotonic()
    procs = []
    for i, paths in enumerate(shards):
        script = (f"{rootfs.VENV}/bin/python -c {shlex.quote(probe)} && exec "
                  + " ".join(shlex.quote(a) for a in [*pytest_argv, *paths]))
        argv = rootfs.chroot_argv(armhf_root, ["env", "-i", *(f"{k}={v}" for k, v in env.items()),
                                               "/bin/sh", "-c", script],
                                  binds=[REPO], cwd=str(REPO), private_net=True, tmpfs_copies=PCSC_DIRS)
        log = open(tmp_path / f"armhf-shard{i}.log", "w+")
        procs.append((subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT), log))
    problems, summary, probe_line = [], [], ""
    for i, (proc, log) in enumerate(procs):
        try:
            proc.wait(timeout=max(1.0, TIMEOUT - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:
            for other, _ in procs:
                other.kill()
            proc.wait()
        log.seek(0)
        out = log.read()
        log.close()
        lines = out.strip().splitlines()
        if proc.returncode is not None and proc.returncode < 0:
            problems.append(f"shard {i} ({' '.join(shards[i])}) did not finish in {TIMEOUT:.0f} s\n{out[-6000:]}")
            continue
        probe_line = probe_line or (lines[0] if lines else "")
        if not lines or not lines[0].startswith("armv7l 32 bit"):
            problems.append(f"shard {i}: not a 32-bit ARM userland:\n{out[-3000:]}")
        elif proc.returncode != 0:
            problems.append(f"shard {i} ({' '.join(shards[i])}): pytest exit {proc.returncode}\n{out[-12000:]}")
        summary.append(f"shard {i}: {lines[-1] if lines else ''}")
    took = time.monotonic() - t0
    print(f"armhf suites: {took:.0f} s; {probe_line}; " + "; ".join(summary))
    assert not problems, f"pytest on armhf ({took:.0f} s):\n" + "\n".join(problems)
