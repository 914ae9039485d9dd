# SPDX-License-Identifier: GPL-3.0-or-later
"""ccidgadget(8) comes from the argparse definitions: every option of every verb is on the page, and groff is happy."""

from __future__ import annotations

import datetime
import re
import subprocess

from ccidgadget import cli, manpage


def test_every_verb_and_option_is_on_the_page():
    page = manpage.render(datetime.date(2025, 1, 2))
    titles = [title for title, _ in manpage.verb_parsers()]
    assert titles[0] == "ccidgadget" and {f"ccidgadget {v}" for v in cli.VERBS} <= set(titles)
    assert "ccidgadget card generate" in titles and "ccidgadget doctor" in titles
    for title, parser in manpage.verb_parsers():
        assert f".SS {manpage.roff(title)}" in page or title == "ccidgadget"
        for action in parser._actions:
            for option in action.option_strings:
                assert manpage.roff(option) in page, (title, option)
    assert page.startswith('.TH CCIDGADGET 8 "2025-01-02" "ccidgadget ')


def test_capture_runs_nothing(tmp_path, monkeypatch):
    # the daemon's entry point would build a gadget; capturing its parser must not even read the config
    monkeypatch.setattr(cli, "load_config", lambda args: (_ for _ in ()).throw(AssertionError("ran")))
    parser = manpage.capture_parser([])
    assert parser.prog == "ccidgadget" and any("--card" in a.option_strings for a in parser._actions)


def test_roff_escapes():
    assert manpage.roff("--dir a\\b") == "\\-\\-dir a\\eb"
    assert manpage.roff(".not a request\n'nor this") == "\\&.not a request\n\\&'nor this"


def test_groff_renders_without_warnings(tmp_path):
    page = tmp_path / "ccidgadget.8"
    page.write_text(manpage.render())
    p = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(page)], capture_output=True, text=True)
    assert p.returncode == 0 and not p.stderr.strip(), p.stderr
    p = subprocess.run(["groff", "-man", "-Tutf8", str(page)], capture_output=True, text=True, check=True)
    text = re.sub(".\b", "", p.stdout)        # overstrike bold/underline
    assert "ccidgadget doctor" in text and "EXIT STATUS" in text and "--max-message-length" in text
