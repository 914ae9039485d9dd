# SPDX-License-Identifier: GPL-3.0-or-later
"""Top-level pytest configuration.

tests/e2e holds the end-to-end tests that need a real USB gadget stack.  They run
inside the QEMU guest (or natively on a dummy_hcd machine) through tests/test_vm.py,
which sets CCIDGADGET_VM or CCIDGADGET_E2E; a plain host run does not collect them
(it would only skip them), so nothing is silently skipped in CI.
"""

import os
import sys
from pathlib import Path

# `from tests.X import ...` (tests/ci.py, tests/passthrough, tests/vm) whichever way pytest was started
_REPO = str(Path(__file__).resolve().parents[1])
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

if not (os.environ.get("CCIDGADGET_VM") == "1" or os.environ.get("CCIDGADGET_E2E") == "1"):
    collect_ignore = ["e2e"]
