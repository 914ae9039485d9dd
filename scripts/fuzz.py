#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""`make fuzz`: coverage-guided fuzzing of every parser and state machine that takes hostile input.

    scripts/fuzz.py --long                  every target, 10 minutes in all (two at a time)
    scripts/fuzz.py --long --seconds 120    every target for 120 s each
    scripts/fuzz.py --seconds 60 piv_card   one target for a minute
    scripts/fuzz.py --list                  the targets
    scripts/fuzz.py --reproduce TARGET FILE run one input in this process, with the traceback
    scripts/fuzz.py --write-seeds           (re)write the generated seeds into fuzz/corpus/<target>/
    scripts/fuzz.py --replay                run every committed corpus input once (regression check)
    scripts/fuzz.py --plain-runs N          N mutated inputs per target without atheris (no coverage feedback)

The fuzzer is atheris (libFuzzer for Python).  Targets live in tests/fuzz/ and
are described in docs/threat-model.md.  New interesting inputs go to
.cache/fuzz/corpus/<target>/ (not committed); crashes to
.cache/fuzz/crashes/<target>/crash-<sha1>, each printed with the command that
reproduces it.  A crash that was fixed belongs in fuzz/corpus/<target>/ as a
regression input (the test suite replays that directory).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fuzz import runner  # noqa: E402
from tests.fuzz.targets import TARGETS  # noqa: E402

DEFAULT_LONG_TOTAL = 600


def write_seeds() -> None:
    for target in TARGETS.values():
        target.corpus_dir.mkdir(parents=True, exist_ok=True)
        for name, data in target.seeds().items():
            (target.corpus_dir / f"seed-{name}").write_bytes(data)
        print(f"{target.name}: {len(list(target.corpus_dir.iterdir()))} files in {target.corpus_dir.relative_to(REPO)}")


def reproduce(name: str, path: Path) -> int:
    logging.basicConfig(level=logging.WARNING)
    target = TARGETS[name]
    one_input = target.make()
    data = path.read_bytes()
    print(f"{name}: {len(data)} bytes from {path}: {data[:64].hex()}{'...' if len(data) > 64 else ''}")
    try:
        one_input(data)
    except BaseException:
        traceback.print_exc()
        return 1
    print("no finding: the input runs clean (fixed?)")
    return 0


def replay(targets) -> int:
    """Every corpus input of every target, in this process; a failure is printed with its file."""
    logging.getLogger().addHandler(logging.NullHandler())
    failures = 0
    for target in targets:
        one_input = target.make()
        corpus = target.corpus()
        for name, data in corpus.items():
            try:
                one_input(data)
            except BaseException as e:
                failures += 1
                print(f"FINDING {target.name}: {name}: {e!r}")
                traceback.print_exc()
        print(f"{target.name}: {len(corpus)} corpus inputs replayed")
    return 1 if failures else 0


def plain_runs(targets, runs: int, seed: int) -> int:
    """The bounded pass without atheris: seeded random mutations of the corpus, no coverage feedback."""
    from tests.fuzz.harness import run_mutations
    logging.getLogger().addHandler(logging.NullHandler())
    failures = 0
    for target in targets:
        one_input = target.make()
        try:
            done = run_mutations(target, one_input, runs or target.bounded_runs, seed)
            print(f"{target.name}: {done} executions (plain mutations)")
        except BaseException as e:
            failures += 1
            print(f"FINDING {target.name}: {e}")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("targets", nargs="*", help="targets to run (default: all)")
    p.add_argument("--long", action="store_true", help=f"a long run ({DEFAULT_LONG_TOTAL} s in all unless --seconds)")
    p.add_argument("--seconds", type=float, help="seconds per target")
    p.add_argument("--runs", type=int, help="executions per target instead of a time")
    p.add_argument("--seed", type=int, help="libFuzzer -seed (deterministic runs)")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="targets fuzzed at once")
    p.add_argument("--list", action="store_true")
    p.add_argument("--reproduce", nargs=2, metavar=("TARGET", "FILE"))
    p.add_argument("--write-seeds", action="store_true")
    p.add_argument("--replay", action="store_true", help="replay the committed corpus in this process")
    p.add_argument("--plain-runs", type=int, metavar="N", help="N plain mutations per target (0: bounded_runs)")
    args = p.parse_args(argv)

    if args.list:
        for t in TARGETS.values():
            print(f"{t.name:<12} max_len {t.max_len:<6} corpus {t.corpus_dir.relative_to(REPO)}")
        return 0
    if args.write_seeds:
        write_seeds()
        return 0
    if args.reproduce:
        return reproduce(args.reproduce[0], Path(args.reproduce[1]))
    unknown = [n for n in args.targets if n not in TARGETS]
    if unknown:
        p.error(f"unknown target(s) {', '.join(unknown)}; --list shows them")
    targets = [TARGETS[n] for n in args.targets] or list(TARGETS.values())
    if args.replay:
        return replay(targets)
    if args.plain_runs is not None:
        return plain_runs(targets, args.plain_runs, args.seed or 1)
    if not runner.have_atheris():
        print("atheris is not installed: pip install atheris (see pyproject.toml, extra 'test')", file=sys.stderr)
        return 2
    seconds = args.seconds
    if seconds is None and args.runs is None:
        total = DEFAULT_LONG_TOTAL if args.long else 60
        seconds = total * max(1, args.jobs) / len(targets)
    how = f"{args.runs} runs" if args.runs else f"{seconds:.0f} s"
    print(f"fuzzing {len(targets)} target(s), {how} each, {args.jobs} at a time (atheris / libFuzzer)", flush=True)
    results = runner.run_many(targets, args.jobs, seconds=None if args.runs else seconds, runs=args.runs,
                              seed=args.seed)
    print(f"\n{'target':<12} {'executions':>11} {'exec/s':>8} {'cov':>6} {'corpus':>7} {'rss MB':>7}  findings")
    findings = 0
    for r in results:
        print(f"{r.target:<12} {r.executions:>11} {r.rate:>8.0f} {r.coverage:>6} {r.corpus:>7} {r.peak_rss_mb:>7}  "
              f"{len(r.crashes)}")
    for r in results:
        for crash, error in zip(r.crashes, r.errors):
            findings += 1
            print(f"\nFINDING {r.target}: {error}\n  input: {crash}\n"
                  f"  reproduce: {sys.executable} scripts/fuzz.py --reproduce {r.target} {crash}")
        for error in r.errors[len(r.crashes):]:
            findings += 1
            print(f"\nERROR {r.target}: {error}\n{r.log[-3000:]}")
    print(f"\n{sum(r.executions for r in results)} executions, {findings} finding(s)")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
