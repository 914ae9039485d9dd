# SPDX-License-Identifier: GPL-3.0-or-later
"""What every fuzz target shares: the target registry, the input reader, findings, corpus files.

A target is a name, a `make()` that does the slow set-up once (keys, a card
directory) and returns ``one_input(data: bytes) -> None``, and the seed inputs
committed under ``fuzz/corpus/<name>/``.  ``one_input`` raises `Finding` when
an invariant breaks; any other exception that escapes is a finding too.  The
same function runs under atheris (coverage-guided, `atheris_main.py`), under
the corpus replay and the bounded pass of the test suite
(`test_fuzz_bounded.py`), and under `scripts/fuzz.py --reproduce`.

Nothing here imports atheris: replaying a corpus needs only the project.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]
CORPUS_ROOT = REPO / "fuzz" / "corpus"
CACHE_ROOT = REPO / ".cache" / "fuzz"

OneInput = Callable[[bytes], None]


class Finding(AssertionError):
    """An invariant of the code under test does not hold for this input."""


@dataclass(frozen=True)
class Target:
    name: str
    make: Callable[[], OneInput]
    #: Seed inputs, name -> bytes (written to fuzz/corpus/<name>/ by `scripts/fuzz.py --write-seeds`).
    seeds: Callable[[], dict[str, bytes]]
    #: libFuzzer -max_len: inputs longer than this are not generated.
    max_len: int = 4096
    #: Executions of the bounded pass in the test suite (each target's cost differs a lot).
    bounded_runs: int = 5000
    #: Extra seed directories (read-only) replayed and fed to the fuzzer.
    extra_corpus: tuple[Callable[[], dict[str, bytes]], ...] = field(default=())

    @property
    def corpus_dir(self) -> Path:
        return CORPUS_ROOT / self.name

    def corpus(self) -> dict[str, bytes]:
        """The committed corpus files plus the extra seeds (name -> bytes)."""
        out: dict[str, bytes] = {}
        for extra in self.extra_corpus:
            out.update(extra())
        if self.corpus_dir.is_dir():
            for path in sorted(self.corpus_dir.iterdir()):
                if path.is_file():
                    out[path.name] = path.read_bytes()
        return out


TARGETS: dict[str, Target] = {}


def register(target: Target) -> Target:
    TARGETS[target.name] = target
    return target


class Input:
    """Reads a fuzz input as a little program: bytes, small integers, slices.

    Past the end every read returns zeros / empty, so any input is a valid
    program and short mutations stay meaningful (the shape of atheris'
    FuzzedDataProvider, but usable without atheris).
    """

    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes) -> None:
        self.data = bytes(data)
        self.pos = 0
        self.end = len(self.data)

    def more(self) -> bool:
        return self.pos < self.end

    def byte(self) -> int:
        pos = self.pos
        if pos >= self.end:
            return 0
        self.pos = pos + 1
        return self.data[pos]

    def u16(self) -> int:
        """Big-endian; a missing byte reads as zero."""
        pos = self.pos
        if pos + 2 <= self.end:
            self.pos = pos + 2
            return self.data[pos] << 8 | self.data[pos + 1]
        return (self.byte() << 8) | self.byte()

    def take(self, n: int) -> bytes:
        out = self.data[self.pos:self.pos + max(0, n)]
        self.pos += len(out)
        return out

    def rest(self) -> bytes:
        return self.take(len(self.data) - self.pos)


class Writer:
    """Builds inputs for `Input` (seed corpora)."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def byte(self, b: int) -> "Writer":
        self.buf.append(b & 0xFF)
        return self

    def u16(self, n: int) -> "Writer":
        self.buf += (n & 0xFFFF).to_bytes(2, "big")
        return self

    def raw(self, data: bytes) -> "Writer":
        self.buf += data
        return self

    def bytes(self) -> bytes:
        return bytes(self.buf)


class LogCapture(logging.Handler):
    """Records ERROR-and-above log records of one logger (e.g. "emulated card failed")."""

    def __init__(self, logger: str, needle: str) -> None:
        super().__init__(logging.ERROR)
        self.needle = needle
        self.records: list[logging.LogRecord] = []
        self.logger = logging.getLogger(logger)
        self.logger.addHandler(self)

    def close(self) -> None:
        self.logger.removeHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        if self.needle in record.getMessage():
            self.records.append(record)

    def check(self, what: str) -> None:
        """Raise a Finding carrying the logged exception, if one was logged since the last check."""
        if not self.records:
            return
        record = self.records[0]
        self.records.clear()
        exc = record.exc_info[1] if record.exc_info else None
        raise Finding(f"{what}: {record.getMessage()}: {exc!r}") from exc


# -- a plain mutator, for the bounded pass when atheris is missing ------------------
def mutate(rng: random.Random, data: bytes, other: bytes, max_len: int) -> bytes:
    """One random mutation in libFuzzer's spirit (no coverage feedback)."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(7)
        pos = rng.randrange(len(buf) + 1)
        if choice == 0 and buf:                          # flip a bit
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif choice == 1 and buf:                        # random byte
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif choice == 2:                                # insert bytes
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif choice == 3 and buf:                        # erase a run
            del buf[pos:pos + rng.randint(1, 16)]
        elif choice == 4 and other:                      # splice in part of another input
            a = rng.randrange(len(other))
            buf[pos:pos] = other[a:a + rng.randint(1, 64)]
        elif choice == 5 and buf:                        # interesting values
            i = rng.randrange(len(buf))
            buf[i] = rng.choice((0x00, 0x01, 0x7F, 0x80, 0xFF, 0x10, 0x0A))
        elif choice == 6 and len(buf) > 1:               # duplicate a run
            a = rng.randrange(len(buf))
            buf[pos:pos] = buf[a:a + rng.randint(1, 32)]
    return bytes(buf[:max_len])


def run_mutations(target: Target, one_input: OneInput, runs: int, seed: int) -> int:
    """Run `runs` mutated corpus inputs through `one_input`; return executions done."""
    rng = random.Random(seed)
    corpus = list(target.corpus().values()) or [b""]
    done = 0
    for _ in range(runs):
        base = rng.choice(corpus)
        data = mutate(rng, base, rng.choice(corpus), target.max_len)
        try:
            one_input(data)
        except BaseException as e:
            save_crash(target.name, data)
            raise Finding(f"{target.name}: input {data.hex()} failed: {e!r}") from e
        done += 1
    return done


def save_crash(name: str, data: bytes) -> Path:
    import hashlib
    directory = CACHE_ROOT / "crashes" / name
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"crash-{hashlib.sha1(data).hexdigest()}"
    path.write_bytes(data)
    return path
