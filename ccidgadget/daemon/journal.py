# SPDX-License-Identifier: GPL-3.0-or-later
"""Logging set-up: the journal with structured fields when there is one, plain stderr otherwise.

The code logs events with ``extra={"slot": 0, "event": "insert"}``.  In the
journal these become the fields SLOT=, EVENT= and ENGINE= (the slot's engine,
filled in from the running daemon), so an administrator can ask
``journalctl -u ccidgadget SLOT=1`` or ``EVENT=card-error``.  journald only
keeps upper-case field names, hence `StructuredFields`.

Where systemd-python is missing, or stderr is not connected to the journal
($JOURNAL_STREAM), logs go to stderr as text; the structured fields are then
appended to the message as ``[slot=0 event=insert]``, and under systemd each
line carries its syslog priority prefix (``<6>``) so journald still files it
at the right level.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable


def journal_handler_class():
    """systemd-python's JournalHandler (optional: the `systemd` extra), or None; imported only when asked
    (a daemon that logs to stderr never loads it)."""
    try:
        from systemd.journal import JournalHandler
    except ImportError:                         # pragma: no cover - depends on the installation
        return None
    return JournalHandler


#: record attribute -> journal field
FIELDS = {"slot": "SLOT", "engine": "ENGINE", "event": "EVENT"}


class StructuredFields(logging.Filter):
    """Copies `extra` fields to journal field names and fills in a slot's engine."""

    def __init__(self, engine_of: Callable[[int], str | None] | None = None) -> None:
        super().__init__()
        self.engine_of = engine_of

    def filter(self, record: logging.LogRecord) -> bool:
        slot = getattr(record, "slot", None)
        if slot is not None and getattr(record, "engine", None) is None and self.engine_of is not None:
            try:
                engine = self.engine_of(slot)
            except Exception:
                engine = None
            if engine:
                record.engine = engine
        for attr, name in FIELDS.items():
            value = getattr(record, attr, None)
            if value is not None:
                setattr(record, name, str(value))
        return True


class TextFormatter(logging.Formatter):
    """Plain text, the structured fields appended; `<N>` syslog prefixes when journald reads stderr."""

    PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

    def __init__(self, *, syslog_prefix: bool) -> None:
        fmt = "%(name)s: %(message)s" if syslog_prefix else "%(asctime)s %(levelname)s %(name)s: %(message)s"
        super().__init__(fmt)
        self.syslog_prefix = syslog_prefix

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = " ".join(f"{a}={getattr(record, a)}" for a in FIELDS if getattr(record, a, None) is not None)
        if fields:
            text = f"{text} [{fields}]"
        if self.syslog_prefix:
            prio = self.PRIORITY.get(record.levelno, 6)
            text = "\n".join(f"<{prio}>{line}" for line in text.splitlines())
        return text


def journal_available() -> bool:
    """True when stderr goes to journald and systemd-python can write to it directly."""
    return _stderr_is_journal() and journal_handler_class() is not None


def _stderr_is_journal() -> bool:
    # systemd.exec(5): $JOURNAL_STREAM is "DEV:INODE" of stderr when it is connected to the journal.
    stream = os.environ.get("JOURNAL_STREAM")
    if not stream:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"


def setup_logging(level: str = "info", *, engine_of: Callable[[int], str | None] | None = None,
                  target: str = "auto") -> logging.Handler:
    """Configure the root logger once; returns the handler.  `target`: auto, journal, stderr."""
    if target == "auto":
        target = "journal" if journal_available() else "stderr"
    handler_class = journal_handler_class() if target == "journal" else None
    if handler_class is not None:
        handler: logging.Handler = handler_class(SYSLOG_IDENTIFIER="ccidgadget")
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(TextFormatter(syslog_prefix=_stderr_is_journal()))
    handler.addFilter(StructuredFields(engine_of))
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_ccidgadget", False):
            root.removeHandler(old)
    handler._ccidgadget = True
    root.addHandler(handler)
    set_level(level)
    return handler


def set_level(level: str) -> None:
    logging.getLogger().setLevel(getattr(logging, level.upper()))
