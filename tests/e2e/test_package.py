# SPDX-License-Identifier: GPL-3.0-or-later
"""The Debian package and `make install` under systemd as PID 1, used from the host side (issues 17, 10).

One guest (``VM_INIT``), the tests in order, sharing one card:

1. ``dpkg -i build/deb/ccidgadget_*_all.deb`` (built on the host by ``VM_HOST_PREPARE``, as
   ``make deb`` builds it): installed, neither enabled nor started; ``ccidgadget doctor`` passes;
2. an edit of the conffile, ``systemctl enable --now ccidgadget``: the reader (with the edited
   product name) through pcscd + OpenSC; a key generated on the card by yubico-piv-tool, a
   certificate over it imported, the key listed by ``ssh-keygen -D`` (OpenSC's PKCS#11 module);
3. ``dpkg -i`` of the same package again: configuration kept, service restarted, same key;
4. ``dpkg -r``: stopped, no gadget left, configuration and card state kept;
5. ``dpkg --purge``: configuration gone, card state kept, and the message says how to remove it;
6. ``make install`` (offline: the host's wheels, the checkout's included) twice, ``systemctl enable --now``: the card of
   step 2 is still the card; ``make uninstall``: configuration and card state kept.

The dpkg database and everything installed live in the guest's tmpfs overlay of the host's root.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from package_helpers import REPO, WHEELHOUSE, checkout_wheel, deb_path
from piv_helpers import PKCS11_MODULE, PivStack

VM_INIT = "systemd"                                  # tests/test_vm.py: systemd as PID 1
VM_HOST_PREPARE = "package_helpers:prepare_host"     # tests/test_vm.py: build the .deb first

CONF = Path("/etc/ccidgadget/ccidgadget.toml")
STATE = Path("/var/lib/ccidgadget")
CARD_STATE = STATE / "cards" / "slot0-piv" / "state.json"
PACKAGED_UNIT = Path("/lib/systemd/system/ccidgadget.service")
MAKE_UNIT = Path("/etc/systemd/system/ccidgadget.service")
WANTS = Path("/etc/systemd/system/multi-user.target.wants/ccidgadget.service")
PRODUCT = "ccidgadget packaged reader"


def _in_guest_with_systemd() -> None:
    problem = None
    if os.environ.get("CCIDGADGET_VM") != "1":
        problem = "installs a Debian package into this system: runs only in the test bed's guest"
    elif Path("/proc/1/comm").read_text().strip() != "systemd":
        problem = "systemd is not PID 1 (tests/test_vm.py boots this module with VM_INIT = 'systemd')"
    elif not deb_path().exists() or not checkout_wheel().exists():
        problem = f"{deb_path()} or {WHEELHOUSE} missing: tests/test_vm.py makes them (VM_HOST_PREPARE)"
    if problem:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(problem, pytrace=False)
        pytest.skip(problem)


class Bed:
    """The guest as a user's board: commands, the service, and the host side (pcscd, OpenSC)."""

    def __init__(self, e2e, work: Path, logs: Path) -> None:
        self.e2e = e2e
        self.card = PivStack(e2e, STATE, work, logs)
        self.timings: dict[str, float] = {}
        self.ssh_key = ""            # the card's key as ssh-keygen -D lists it (step 2)

    def sh(self, cmd: str | list[str], timeout: float = 300, check: bool = True, **kw) -> subprocess.CompletedProcess:
        t0 = time.monotonic()
        p = self.e2e.run_command(cmd, timeout=timeout, check=check, **kw)
        name = cmd if isinstance(cmd, str) else " ".join(cmd)
        self.timings[name[:60]] = self.timings.get(name[:60], 0) + time.monotonic() - t0
        return p

    def unit(self, *props: str) -> dict[str, str]:
        out = self.sh(["systemctl", "show", "ccidgadget", "-p", ",".join(props)]).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def attach_host(self) -> None:
        """The service is up: wait for the bind, restart pcscd (no udev here), find the card."""
        self.e2e.wait_until(lambda: self.e2e.bound_gadgets().get("ccidgadget"), 60, what="the gadget bound")
        self.e2e.wait_until(self.e2e.ccid_interfaces, 60, what="the host enumerating the reader")
        c = self.card
        c.pcscd.restart()
        c.reader = self.e2e.find_reader(lambda name: "ccidgadget" in name, timeout=60)
        c._wait_card_present(60)
        c.opensc_index = c._opensc_index()
        c.pkcs11_slot = c._pkcs11_slot()

    def detach_host(self) -> None:
        self.card.pcscd.stop()

    def the_same_card_again(self) -> None:
        """After a (re)start: the reader with the edited product name, and the key of step 2."""
        self.attach_host()
        assert PRODUCT in str(self.card.reader), self.card.reader
        assert self.listed_key() == self.ssh_key

    def before_change(self) -> tuple[str, str]:
        """(card state digest, configuration text), with pcscd let go of the reader."""
        self.detach_host()
        return _sha256(CARD_STATE), CONF.read_text()

    def listed_key(self) -> str:
        out = self.card.run(["ssh-keygen", "-D", PKCS11_MODULE]).stdout
        keys = [line for line in out.splitlines() if line.startswith(("ssh-", "ecdsa-"))]
        assert keys, out
        return keys[0]

    def journal(self) -> str:
        return self.sh(["journalctl", "-u", "ccidgadget", "--no-pager", "-n", "40"], check=False).stdout


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def bed(gadget_environment, e2e, tmp_path_factory):
    _in_guest_with_systemd()
    out = Path(os.environ.get("CCIDGADGET_VM_OUT", tmp_path_factory.mktemp("out")))
    logs = out / "logs" / "test_package"
    logs.mkdir(parents=True, exist_ok=True)
    # man-db's dpkg trigger rebuilds its index for minutes under TCG; it has nothing to do with us
    Path("/var/lib/man-db/auto-update").unlink(missing_ok=True)
    # A container image's policy-rc.d (exit 101: "no service actions") makes deb-systemd-invoke skip
    # the package's try-restart and stop; a board has none. The guest's root is a throw-away overlay.
    Path("/usr/sbin/policy-rc.d").unlink(missing_ok=True)
    b = Bed(e2e, tmp_path_factory.mktemp("work"), logs)
    t0 = time.monotonic()
    yield b
    b.detach_host()
    j = b.sh(["journalctl", "-u", "ccidgadget", "--no-pager", "-o", "short-monotonic"], check=False)
    (logs / "ccidgadget-journal.log").write_text(j.stdout + j.stderr)
    steps = "\n".join(f"  {v:6.1f} s  {k}" for k, v in sorted(b.timings.items(), key=lambda kv: -kv[1])[:12])
    print(f"\ntest_package: {time.monotonic() - t0:.0f} s in the guest; slowest commands:\n{steps}")


# --------------------------------------------------------------------------- the package


def test_dpkg_install_neither_enables_nor_starts(bed):
    p = bed.sh(["dpkg", "-i", str(deb_path())])
    assert "ccidgadget: installed, not started." in p.stdout, p.stdout + p.stderr
    assert "systemctl enable --now ccidgadget" in p.stdout
    assert bed.sh(["systemctl", "is-enabled", "ccidgadget"], check=False).stdout.strip() == "disabled"
    assert bed.unit("ActiveState", "FragmentPath") == {"ActiveState": "inactive",
                                                       "FragmentPath": str(PACKAGED_UNIT)}
    assert not bed.e2e.gadgets()
    assert CONF.read_text() == (REPO / "etc/ccidgadget.toml.example").read_text()
    assert "/etc/ccidgadget/ccidgadget.toml" in bed.sh(["dpkg-query", "-W", "-f=${Conffiles}", "ccidgadget"]).stdout
    # byte-compiled by py3compile at install time, removed again by py3clean (prerm)
    assert list(Path("/usr/share/ccidgadget/ccidgadget/__pycache__").glob("cli.cpython-*.pyc"))
    assert Path("/usr/share/man/man8/ccidgadget.8.gz").is_file()    # its text: tests/packaging


def test_doctor_in_the_guest(bed):
    p = bed.sh(["ccidgadget", "doctor"], check=False)
    print(p.stdout)
    assert p.returncode == 0, p.stdout + p.stderr
    for line in ("ok    udc            dummy_udc.0", "ok    configfs", "ok    libcomposite   loaded",
                 "ok    python         functionfs and libaio import"):
        assert line in p.stdout, p.stdout


def test_enable_now_and_use_the_card_from_the_host(bed):
    text = CONF.read_text()
    assert '#product = "ccidgadget CCID reader"' in text
    CONF.write_text(text.replace('#product = "ccidgadget CCID reader"', f'product = "{PRODUCT}"'))
    bed.sh(["systemctl", "enable", "--now", "ccidgadget"], timeout=240)
    assert WANTS.is_symlink()
    assert bed.unit("ActiveState", "SubState") == {"ActiveState": "active", "SubState": "running"}, bed.journal()
    bed.attach_host()
    assert PRODUCT in str(bed.card.reader), bed.card.reader
    c = bed.card
    # a key generated on the card; openssl issues a certificate over it (yubico-piv-tool 2.2.0
    # cannot self-sign under OpenSSL 3, see tests/e2e/test_piv.py), imported into the card
    assert "Successfully generated" in c.piv("-a", "generate", "-s", "9a", "-A", "ECCP256", "-o", "9a.pub",
                                             mgm=True).stdout
    c.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
           "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=package test CA", "-days", "30"])
    c.run(["openssl", "x509", "-new", "-force_pubkey", "9a.pub", "-subj", "/CN=package test", "-CA", "ca.crt",
           "-CAkey", "ca.key", "-days", "30", "-out", "9a.crt"])
    c.piv("-a", "import-certificate", "-s", "9a", "-i", "9a.crt", mgm=True)
    bed.ssh_key = bed.listed_key()
    pub = c.run(["ssh-keygen", "-i", "-m", "PKCS8", "-f", "9a.pub"]).stdout.split()[:2]
    assert bed.ssh_key.split()[:2] == pub, (bed.ssh_key, pub)
    st = os.stat(CARD_STATE)
    assert st.st_uid == 0 and st.st_mode & 0o077 == 0
    assert os.stat(STATE).st_mode & 0o777 == 0o700


def test_upgrade_over_itself_keeps_the_configuration_and_restarts(bed):
    before = bed.unit("MainPID")["MainPID"]
    conf = CONF.read_text()
    bed.detach_host()
    p = bed.sh(["dpkg", "-i", str(deb_path())], timeout=300)
    assert "installed, not started" not in p.stdout, p.stdout      # the first-install note only
    assert CONF.read_text() == conf and f'product = "{PRODUCT}"' in conf
    after = bed.unit("MainPID", "ActiveState")
    assert after["ActiveState"] == "active" and after["MainPID"] not in ("0", before), (before, after)
    bed.the_same_card_again()


def test_remove_stops_and_keeps_configuration_and_card_state(bed):
    card, conf = bed.before_change()
    bed.sh(["dpkg", "-r", "ccidgadget"], timeout=300)
    assert bed.unit("ActiveState")["ActiveState"] == "inactive"
    assert not bed.e2e.gadgets(), bed.e2e.bound_gadgets()
    assert not Path("/usr/bin/ccidgadget").exists() and not PACKAGED_UNIT.exists()
    assert not Path("/usr/share/ccidgadget").exists(), "py3clean/dpkg left files behind"
    assert CONF.read_text() == conf
    assert _sha256(CARD_STATE) == card
    status = bed.sh(["dpkg-query", "-W", "-f=${db:Status-Abbrev}", "ccidgadget"]).stdout.strip()
    assert status == "rc", status           # removed, configuration files remain


def test_purge_removes_the_configuration_and_says_how_to_remove_the_keys(bed):
    card = _sha256(CARD_STATE)
    p = bed.sh(["dpkg", "--purge", "ccidgadget"], timeout=300)
    assert "rm -r /var/lib/ccidgadget" in p.stdout, p.stdout + p.stderr
    assert not CONF.exists() and not CONF.parent.exists()
    assert not WANTS.exists()
    assert _sha256(CARD_STATE) == card
    assert bed.sh(["dpkg-query", "-W", "ccidgadget"], check=False).returncode != 0


# --------------------------------------------------------------------------- make install


def _make(bed, target: str) -> subprocess.CompletedProcess:
    # offline: the wheels the host made (tests/e2e/package_helpers.py), the checkout's among them
    args = f"--no-index --find-links={WHEELHOUSE}"
    return bed.sh(["make", "-C", str(REPO), target, f"PIP_INSTALL_ARGS={args}", f"PIP_PACKAGE={checkout_wheel()}"],
                  timeout=600)


def test_make_install_twice_enable_and_the_card_is_still_there(bed):
    p = _make(bed, "install")
    assert "installed /etc/ccidgadget/ccidgadget.toml" in p.stdout, p.stdout
    assert Path("/opt/ccidgadget/venv/bin/ccidgadget").exists()
    assert bed.unit("FragmentPath", "ActiveState") == {"FragmentPath": str(MAKE_UNIT), "ActiveState": "inactive"}
    # over itself: the configuration is kept
    CONF.write_text(CONF.read_text().replace('#product = "ccidgadget CCID reader"', f'product = "{PRODUCT}"'))
    conf = CONF.read_text()
    p = _make(bed, "install")
    assert "kept your /etc/ccidgadget/ccidgadget.toml" in p.stdout, p.stdout
    assert CONF.read_text() == conf
    bed.sh(["systemctl", "enable", "--now", "ccidgadget"], timeout=240)
    assert bed.unit("ActiveState")["ActiveState"] == "active", bed.journal()
    bed.the_same_card_again()         # the card the package's service made: same state directory


def test_make_uninstall_keeps_configuration_and_card_state(bed):
    card, conf = bed.before_change()
    p = _make(bed, "uninstall")
    assert "kept /etc/ccidgadget (configuration) and /var/lib/ccidgadget" in p.stdout, p.stdout
    assert bed.unit("ActiveState", "LoadState") == {"ActiveState": "inactive", "LoadState": "not-found"}
    assert not bed.e2e.gadgets()
    assert not MAKE_UNIT.exists() and not Path("/opt/ccidgadget").exists()
    assert not Path("/usr/local/bin/ccidgadget").exists()
    assert CONF.read_text() == conf and _sha256(CARD_STATE) == card
    assert re.search(r"remove them by hand if you mean to: rm -r /etc/ccidgadget /var/lib/ccidgadget", p.stdout)
