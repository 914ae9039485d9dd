# SPDX-License-Identifier: GPL-3.0-or-later
"""Log records' extra fields become journal fields SLOT/ENGINE/EVENT; plain stderr keeps them in the text."""

from __future__ import annotations

import logging

import pytest

from tests.ci import in_ci

from ccidgadget.daemon import journal
from ccidgadget.daemon.journal import StructuredFields, TextFormatter


def record(**extra) -> logging.LogRecord:
    r = logging.LogRecord("ccidgadget.test", logging.INFO, __file__, 1, "slot %d: card %s", (1, "inserted"), None)
    for k, v in extra.items():
        setattr(r, k, v)
    return r


def test_fields_and_engine_filled_in():
    r = record(slot=1, event="insert")
    assert StructuredFields(lambda slot: {1: "passthru"}[slot]).filter(r)
    assert (r.SLOT, r.EVENT, r.ENGINE) == ("1", "insert", "passthru")
    r = record(event="ready")
    StructuredFields(lambda slot: "x").filter(r)
    assert r.EVENT == "ready" and not hasattr(r, "SLOT") and not hasattr(r, "ENGINE")


def test_text_formatter_plain_and_under_journald():
    r = record(slot=1, event="insert", engine="emulated-piv")
    assert TextFormatter(syslog_prefix=False).format(r).endswith(
        "ccidgadget.test: slot 1: card inserted [slot=1 engine=emulated-piv event=insert]")
    assert TextFormatter(syslog_prefix=True).format(r) == (
        "<6>ccidgadget.test: slot 1: card inserted [slot=1 engine=emulated-piv event=insert]")


# CI installs the systemd extra: there a missing systemd-python fails this test instead of skipping it.
@pytest.mark.skipif(journal.journal_handler_class() is None and not in_ci(),
                    reason="systemd-python is not installed (outside CI)")
def test_journal_handler_sends_upper_case_fields(monkeypatch):
    sent = []
    handler = journal.setup_logging("debug", engine_of=lambda s: "vpcd", target="journal")
    try:
        handler.send = lambda MESSAGE, **fields: sent.append((MESSAGE, fields))
        logging.getLogger("ccidgadget.test").info("slot %d: card %s", 0, "removed",
                                                  extra={"slot": 0, "event": "remove"})
    finally:
        logging.getLogger().removeHandler(handler)
    msg, fields = sent[-1]
    assert msg == "slot 0: card removed"
    assert fields["SLOT"] == "0" and fields["ENGINE"] == "vpcd" and fields["EVENT"] == "remove"
    assert fields["SYSLOG_IDENTIFIER"] == "ccidgadget"


def test_stderr_without_journal(monkeypatch, capsys):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    assert journal.journal_available() is False
    handler = journal.setup_logging("info")
    try:
        assert isinstance(handler, logging.StreamHandler)
    finally:
        logging.getLogger().removeHandler(handler)
