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

``test_e2e_arm64`` runs the modules of ``ARM64_MODULES`` again in the arm64 flavour of the test
bed (Debian's arm64 kernel under qemu-system-aarch64 -cpu cortex-a72, an arm64 Debian root with its
own Python and venv, the same checkout over 9p): the boards' architecture, end to end.

If the test bed cannot run here (no QEMU, no kernel package, no binfmt_misc for building the
arm64 root), the tests are skipped with the reason, or fail in CI (``CI`` truthy, tests/ci.py).

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
import warnings
from pathlib import Path

import pytest

from tests.ci import in_ci, junit_skips, skip_or_fail

REPO = Path(__file__).resolve().parents[1]
E2E_DIR = REPO / "tests" / "e2e"
E2E_MODULES = sorted(p.name for p in E2E_DIR.glob("test_*.py"))
TIMEOUT = float(os.environ.get("CCIDGADGET_VM_TIMEOUT", "900"))
#: the modules that also run in the arm64 guest (the CI budget for the arm64 part is 15 minutes)
ARM64_MODULES = ("test_smoke.py", "test_reader.py", "test_piv.py")

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
    skip_or_fail(f"VM test bed unavailable: {reason}")


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


@pytest.fixture(scope="session")
def vm_prepared_arm64():
    try:
        return testbed.prepare(flavour_name="arm64")
    except testbed.TestbedUnavailable as e:
        _unavailable(f"arm64 flavour: {e}")


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


def _host_prepare(module: str) -> None:
    """``VM_HOST_PREPARE = "helpers_module:function"`` at the top level of an e2e module: run that
    function of tests/e2e/helpers_module.py here before the guest boots (the guest has no network;
    tests/e2e/test_package.py builds the .deb and a wheelhouse this way)."""
    m = re.search(r"""^VM_HOST_PREPARE\s*=\s*["'](\w+):(\w+)["']""", (E2E_DIR / module).read_text(), re.M)
    if not m:
        return
    name = f"ccidgadget_e2e_{m.group(1)}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, E2E_DIR / f"{m.group(1)}.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    try:
        getattr(sys.modules[name], m.group(2))()
    except Exception as e:      # noqa: BLE001 - whatever failed, the module cannot run
        pytest.fail(f"tests/e2e/{module}: host-side preparation {m.group(1)}.{m.group(2)}() failed: {e}",
                    pytrace=False)


def _guest_init(module: str) -> str:
    """PID 1 of the module's guest: ``VM_INIT = "systemd"`` at the top level of the module asks for
    systemd (tests/vm/systemd_guest.py); the default is the initramfs' busybox init."""
    m = re.search(r"""^VM_INIT\s*=\s*["'](\w+)["']""", (E2E_DIR / module).read_text(), re.M)
    return m.group(1) if m else "busybox"


def _check_skips(module: str, out: Path) -> None:
    """In CI a test that skipped inside the guest fails the module (tests/ci.py); elsewhere a warning."""
    skips = junit_skips(out / "junit.xml")
    if not skips:
        return
    text = f"tests/e2e/{module}: {len(skips)} test(s) skipped inside the guest:\n" + "\n".join(skips)
    if in_ci():
        where = _keep_artifacts(out, module)
        pytest.fail(f"{text}\nin CI nothing may skip; {where}", pytrace=False)
    warnings.warn(text)


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
    _host_prepare(module)
    if _native_gadget_stack() and _host_side(module) is None:
        p = subprocess.run([sys.executable, *_pytest_args(module, str(out / "junit.xml"))], cwd=REPO,
                           env={**os.environ, **env, "CCIDGADGET_VM_OUT": str(out)},
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, timeout=TIMEOUT)
        (out / testbed.OUTPUT_FILE).write_text(p.stdout)
        if p.returncode != 0:
            where = _keep_artifacts(out, module)
            pytest.fail(f"tests/e2e/{module} failed natively (exit {p.returncode}); {where}\n"
                        f"{_tail(p.stdout, 200)}", pytrace=False)
        _check_skips(module, out)
        return

    _run_in_guest(module, request.getfixturevalue("vm_prepared"), out, env)


@pytest.mark.parametrize("module", ARM64_MODULES)
def test_e2e_arm64(module, tmp_path, vm_prepared_arm64):
    out = tmp_path / "out"
    out.mkdir()
    _run_in_guest(module, vm_prepared_arm64, out, {"CCIDGADGET_E2E": "1"})


def test_make_demo(tmp_path, vm_prepared):
    """README: `make demo` on a fresh machine shows what a user gains. scripts/demo.py in a guest: it
    exits non-zero when the card's signature does not verify on the host, ssh-keygen -D lists no key, or
    gpg --card-status does not show the OpenPGP card (the demo once printed GnuPG's 'No such device')."""
    res = testbed.run([vm_prepared.guest_python, str(REPO / "scripts/demo.py"), "--guest"], timeout=600, cwd=REPO,
                      out_dir=tmp_path, prepared=vm_prepared)
    print(f"scripts/demo.py: {res.duration:.1f} s of guest wall time")
    assert res.returncode == 0, res.describe(tail=80)
    for shown in ("Verified OK", "ecdsa-sha2-nistp256", "Application type .: OpenPGP"):
        assert shown in res.output, f"the demo did not show {shown!r}\n{_tail(res.output, 80)}"


def _run_in_guest(module: str, prepared, out: Path, env: dict) -> None:
    # the shell in the guest expands $CCIDGADGET_VM_OUT (the results share)
    args = _pytest_args(module, "JUNIT")
    command = shlex.join([prepared.guest_python, *args]).replace(
        "--junitxml=JUNIT", '--junitxml="$CCIDGADGET_VM_OUT/junit.xml"')
    host = _host_side(module)
    extra = {} if host is None else {"qemu_args": host.qemu_args(out), "host_command": host.host_command(out)}
    res = testbed.run(command, timeout=TIMEOUT, env=env, cwd=REPO, out_dir=out, prepared=prepared,
                      init=_guest_init(module), **extra)
    # the guest's wall time (QEMU start to exit), for the budgets; shown with -rP or -s
    print(f"tests/e2e/{module}: {res.duration:.1f} s of guest wall time\n{_tail(res.output, 25)}")
    if res.returncode != 0:
        where = _keep_artifacts(out, module if prepared.flavour == "amd64" else f"{prepared.flavour}-{module}")
        output = res.output
        msg = [f"tests/e2e/{module} in the {prepared.flavour} VM: {res.describe(tail=0).splitlines()[0]}"]
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
            log_file = out / testbed.HOST_LOG_FILE
            host_log = log_file.read_text(errors="replace") if log_file.exists() else ""
            msg += [f"--- host side (exit {res.host_returncode}, tail) ---", _tail(host_log, 40)]
        pytest.fail("\n".join(msg), pytrace=False)
    _check_skips(module, out)
