# SPDX-License-Identifier: GPL-3.0-or-later
"""What a daemon with the ISO card loads at its start: no cryptography, PC/SC, systemd or input-device
binding, no OpenSSL (asyncio's ssl, hashlib, hmac), no compression library (shutil, behind argparse's help
formatter, ctypes.util and tempfile) and no TOML parser without a file. Each is milliseconds to hundreds of
milliseconds and megabytes on a small board (issue 15: start to READY and RSS); a type annotation importing
the vault once brought cryptography into every ISO start, and libcrypto, libssl, libbz2 and liblzma were
5 MiB of a 26 MiB daemon."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, os, sys
import ccidgadget.cli, ccidgadget.daemon.app, ccidgadget.usb.function
from ccidgadget.daemon import config
from ccidgadget.engines import CardContext, build_card
from ccidgadget.options import SlotSpec
from ccidgadget.usb.gadget import board_serial
ccidgadget.cli.daemon_parser().parse_args(["--card", "emulated", "--type", "iso"])
card = build_card(SlotSpec(engine="emulated", type="iso"), CardContext(slot=0, state_dir=sys.argv[1]))
board_serial()
import asyncio.base_events
print(json.dumps([type(card).__name__, sorted(sys.modules), asyncio.base_events.ssl is None]))
"""

HEAVY = ("cryptography", "smartcard", "systemd", "evdev", "gpiod", "ssl", "_ssl", "_hashlib", "hashlib", "hmac",
         "secrets", "bz2", "lzma", "shutil", "tempfile", "tomllib")


def test_the_iso_card_starts_without_the_heavy_bindings(tmp_path):
    out = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path)], capture_output=True, text=True,
                         check=True).stdout
    card, modules, asyncio_without_tls = json.loads(out)
    assert card == "IsoCard"
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert heavy == []
    # nor the PIN pad's structures (4 enums, 3 dataclasses) for a reader without a PIN pad
    assert "ccidgadget.ccid.secure" not in modules
    assert asyncio_without_tls


def test_ssl_still_imports_after_the_daemon_modules():
    code = "import ccidgadget.cli, ssl, ctypes.util; print(ssl.OPENSSL_VERSION, ctypes.util.find_library('c'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("OpenSSL")
