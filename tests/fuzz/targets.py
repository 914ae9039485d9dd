# SPDX-License-Identifier: GPL-3.0-or-later
"""Every fuzz target, registered in `harness.TARGETS` (importing this module registers them all)."""

from . import target_ccid, target_cards, target_codecs, target_config, target_secure  # noqa: F401  (registration)
from .harness import TARGETS, Finding, Target

__all__ = ["TARGETS", "Finding", "Target"]
