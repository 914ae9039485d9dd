# SPDX-License-Identifier: GPL-3.0-or-later
"""Run the end-to-end tests (tests/e2e/test_*.py) in the QEMU test bed, one guest per module.

Each module gets a fresh guest (tests/vm/testbed.py) that runs
``<this interpreter> -m pytest -x -q tests/e2e/<module>``; the guest sees this
machine's root file system read-only, so this interpreter (a venv included)
works there at the same path. On a machine that already has configfs and
dummy_hcd (``/sys/class/udc/dummy_udc.0``) and runs as root, the module runs
natively instead.

A module that sets ``VM_INIT = "systemd"`` gets a guest with systemd as PID 1
(``testbed.run(..., init="systemd")``, tests/vm/systemd_guest.py): its pytest
then runs as a service of that systemd.

A module that sets ``VM_HOST = "name"`` needs this machine as well as the guest
(tests/e2e/test_qemu_vscard.py: QEMU's own usb-ccid fed from here): the file
tests/e2e/<name>.py gives ``qemu_args(out_dir)``, devices added to the guest,
and ``host_command(out_dir)``, a process run here while the guest runs
(``testbed.run(..., qemu_args=, host_command=)``; its output is host.log in the
results).  Such a module always runs in a guest, also where dummy_hcd exists.

If the test bed cannot run here (no QEMU, no kernel package), the tests are
skipped with the reason, or fail when ``CI=true``.

Environment knobs: ``CCIDGADGET_VM_TIMEOUT`` (seconds per module, default 900),
``CCIDGADGET_VM_ARTIFACTS`` (copy each module's results directory there:
console, pytest output, junit.xml, daemon/pcscd logs).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
E2E_DIR = REPO / "tests" / "e2e"
E2E_MODULES = sorted(p.name for p in E2E_DIR.glob("test_*.py"))
TIMEOUT = float(os.environ.get("CCIDGADGET_VM_TIMEOUT", "900"))

pytestmark = pytest.mark.vm


def _load_testbed():
    # tests/ is not a package: load tests/vm/testbed.py by path, under one stable name
    name = "ccidgadget_vm_testbed"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "tests" / "vm" / "testbed.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


testbed = _load_testbed()


def _native_gadget_stack() -> bool:
    if os.geteuid() != 0 or not Path("/sys/class/udc/dummy_udc.0").exists():
        return False
    mounts = Path("/proc/mounts").read_text().split("\n")
    return any(" /sys/kernel/config configfs " in f" {m} " for m in mounts)


def _unavailable(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"VM test bed unavailable in CI: {reason}", pytrace=False)
    pytest.skip(f"VM test bed unavailable: {reason}")


def _host_side_prerequisites() -> None:
    """What the guest cannot make itself (it has no network): vicc's venv with pycryptodome."""
    try:
        from tests.passthrough.vicc import ViccUnavailable, ensure_vicc
    except ImportError:
        return
    try:
        ensure_vicc()
    except ViccUnavailable as e:        # the guest test that needs vicc reports it
        print(f"vicc prerequisite not ready: {e}")


@pytest.fixture(scope="session")
def vm_prepared():
    _host_side_prerequisites()
    try:
        return testbed.prepare()
    except testbed.TestbedUnavailable as e:
        _unavailable(str(e))


def _tail(text: str, n: int) -> str:
    lines = text.splitlines()
    return "\n".join(lines[-n:])


def _keep_artifacts(out: Path, module: str) -> str:
    dest_root = os.environ.get("CCIDGADGET_VM_ARTIFACTS")
    if not dest_root:
        return f"results: {out}"
    dest = Path(dest_root) / module.removesuffix(".py")
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(out, dest, symlinks=True)
    return f"results: {dest}"


def _pytest_args(module: str, junit: str) -> list[str]:
    return ["-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", f"tests/e2e/{module}", f"--junitxml={junit}"]


def _guest_init(module: str) -> str:
    """PID 1 of the module's guest: ``VM_INIT = "systemd"`` at the top level of the module asks for
    systemd (tests/vm/systemd_guest.py); the default is the initramfs' busybox init."""
    m = re.search(r"""^VM_INIT\s*=\s*["'](\w+)["']""", (E2E_DIR / module).read_text(), re.M)
    return m.group(1) if m else "busybox"


def _host_side(module: str):
    """The module's ``VM_HOST = "name"``: tests/e2e/<name>.py, loaded (or None)."""
    m = re.search(r"""^VM_HOST\s*=\s*["'](\w+)["']""", (E2E_DIR / module).read_text(), re.M)
    if not m:
        return None
    name = f"ccidgadget_vm_host_{m.group(1)}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, E2E_DIR / f"{m.group(1)}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


@pytest.mark.parametrize("module", E2E_MODULES)
def test_e2e(module, tmp_path, request):
    out = tmp_path / "out"
    out.mkdir()
    env = {"CCIDGADGET_E2E": "1"}
    host = _host_side(module)
    if _native_gadget_stack() and host is None:
        p = subprocess.run([sys.executable, *_pytest_args(module, str(out / "junit.xml"))], cwd=REPO,
                           env={**os.environ, **env, "CCIDGADGET_VM_OUT": str(out)},
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, timeout=TIMEOUT)
        (out / testbed.OUTPUT_FILE).write_text(p.stdout)
        if p.returncode != 0:
            where = _keep_artifacts(out, module)
            pytest.fail(f"tests/e2e/{module} failed natively (exit {p.returncode}); {where}\n"
                        f"{_tail(p.stdout, 200)}", pytrace=False)
        return

    prepared = request.getfixturevalue("vm_prepared")
    # the shell in the guest expands $CCIDGADGET_VM_OUT (the results share)
    args = _pytest_args(module, "JUNIT")
    command = shlex.join([sys.executable, *args]).replace("--junitxml=JUNIT", '--junitxml="$CCIDGADGET_VM_OUT/junit.xml"')
    extra = {} if host is None else {"qemu_args": host.qemu_args(out), "host_command": host.host_command(out)}
    res = testbed.run(command, timeout=TIMEOUT, env=env, cwd=REPO, out_dir=out, prepared=prepared,
                      init=_guest_init(module), **extra)
    if res.returncode != 0:
        where = _keep_artifacts(out, module)
        output = res.output
        msg = [f"tests/e2e/{module} in the VM: {res.describe(tail=0).splitlines()[0]}"]
        if os.environ.get("CCIDGADGET_VM_ARTIFACTS"):
            msg[0] += f"; {where}"
        if output.strip():
            msg += ["--- guest pytest output (tail) ---", _tail(output, 200)]
        console = res.console
        if output.strip():  # the command's output is in the console too: show the rest of it
            console = "\n".join(line for line in console.splitlines()
                                 if line.startswith(("[", "vm-init:", "vm-job:")))
        msg += ["--- guest console (tail) ---", _tail(console, 60 if output.strip() else 150)]
        if res.qemu_stderr.strip():
            msg += ["--- qemu ---", res.qemu_stderr.strip()]
        if host is not None:
            host_log = (out / testbed.HOST_LOG_FILE).read_text(errors="replace") if (out / testbed.HOST_LOG_FILE).exists() else ""
            msg += [f"--- host side (exit {res.host_returncode}, tail) ---", _tail(host_log, 40)]
        pytest.fail("\n".join(msg), pytrace=False)
