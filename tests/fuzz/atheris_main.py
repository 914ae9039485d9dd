# SPDX-License-Identifier: GPL-3.0-or-later
"""Run one fuzz target under atheris (libFuzzer): ``python -m tests.fuzz.atheris_main TARGET [libFuzzer args]``.

The project's modules (and tomllib, which the configuration loader is built
on) are imported under `atheris.instrument_imports`, so libFuzzer sees their
branch coverage.  `scripts/fuzz.py` builds the command line (corpus
directories, time, artifact prefix); this file only starts the fuzzer.
"""

from __future__ import annotations

import logging
import sys

import atheris


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit("usage: python -m tests.fuzz.atheris_main TARGET [libFuzzer args]")
    name = argv[1]
    # Warnings the cards log on every construction would drown libFuzzer's output; a finding
    # that is only a log record ("emulated card failed") is caught by the harness itself.
    logging.getLogger().addHandler(logging.NullHandler())
    with atheris.instrument_imports(include=["ccidgadget", "tomllib"]):
        from tests.fuzz import targets
        import ccidgadget.daemon.config  # noqa: F401  (instrumented even when the target imports it lazily)
        # make() imports what only its target needs (the PIV, ISO and OpenPGP cards): inside the
        # block, or libFuzzer would not see a branch of the code it fuzzes.
        one_input = targets.TARGETS[name].make()
    atheris.Setup([argv[0]] + argv[2:], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
