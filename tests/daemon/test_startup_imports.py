# SPDX-License-Identifier: GPL-3.0-or-later
"""What a daemon with the ISO card loads at its start: no cryptography, PC/SC, systemd or input-device
binding. Each is hundreds of milliseconds and megabytes on a small board (issue 15: start to READY and
RSS); a type annotation importing the vault once brought cryptography into every ISO start."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys, tempfile
import ccidgadget.cli, ccidgadget.daemon.app
from ccidgadget.engines import CardContext, build_card
from ccidgadget.options import SlotSpec
card = build_card(SlotSpec(engine="emulated", type="iso"), CardContext(slot=0, state_dir=tempfile.mkdtemp()))
print(json.dumps([type(card).__name__, sorted(sys.modules)]))
"""


def test_the_iso_card_starts_without_the_heavy_bindings():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout
    card, modules = json.loads(out)
    assert card == "IsoCard"
    heavy = sorted(m for m in modules if m.split(".")[0] in ("cryptography", "smartcard", "systemd", "evdev", "gpiod"))
    assert heavy == []
