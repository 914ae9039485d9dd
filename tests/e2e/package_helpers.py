# SPDX-License-Identifier: GPL-3.0-or-later
"""Host-side preparation for tests/e2e/test_package.py (the guest has no network).

``prepare_host()`` (called by tests/test_vm.py before the guest boots, ``VM_HOST_PREPARE``):

* builds the Debian package exactly as ``make deb`` does (scripts/build_deb.py, cached by the
  content of the checkout) into build/deb/;
* fills .cache/deb/wheelhouse with wheels of what ``make install`` pip-installs from PyPI
  (functionfs, libaio, ioctl-opt) and of this checkout, so that the guest's ``make install
  PIP_INSTALL_ARGS="--no-index --find-links=..." PIP_PACKAGE=<the checkout's wheel>`` needs no network.
  The checkout is built into that wheel here, not in the guest: building it there means
  installing setuptools into pip's isolated build environment under TCG, minutes of the
  module's budget for what every ``make venv`` and ``make test-deb12`` already builds.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WHEELHOUSE = REPO / ".cache" / "deb" / "wheelhouse"


def build_deb_module():
    name = "ccidgadget_build_deb"       # scripts/ is not a package: load it by path, once
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / "build_deb.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def deb_path() -> Path:
    mod = build_deb_module()
    return mod.OUT / f"ccidgadget_{mod.version()}_all.deb"


def _requirements() -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    # what pip resolves for `pip install .` in a venv made --system-site-packages from Debian's
    # python3 (cryptography comes from Debian)
    return [d for d in project["project"]["dependencies"] if not d.startswith("cryptography")]


def checkout_wheel() -> Path:
    from ccidgadget import __version__
    return WHEELHOUSE / f"ccidgadget-{__version__}-py3-none-any.whl"


def _pip_wheel(*args: str) -> None:
    # /usr/bin/python3: the wheels must suit the interpreter `make install` uses (Debian's)
    p = subprocess.run(["/usr/bin/python3", "-m", "pip", "wheel", "-q", "-w", str(WHEELHOUSE), *args],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"pip wheel {' '.join(args)}: exit {p.returncode}\n{p.stdout[-3000:]}")


def prepare_host() -> None:
    build_deb_module().build(lint=False)
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    checkout_wheel().unlink(missing_ok=True)
    _pip_wheel("--no-deps", str(REPO))     # always: the checkout changes between runs
    stamp = WHEELHOUSE / ".requirements"
    wanted = "\n".join(_requirements()) + "\n"
    if not (stamp.exists() and stamp.read_text() == wanted):
        _pip_wheel(*_requirements())       # with their dependencies (libaio, ioctl-opt)
        stamp.write_text(wanted)
