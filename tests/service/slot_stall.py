# SPDX-License-Identifier: GPL-3.0-or-later
"""Does a long operation in one slot stall another?  Shared by the in-process test
(tests/service/test_slot_stall.py) and the one through USB (tests/e2e/test_reader.py).

The README promises that RSA-4096 key generation in one slot does not stall another.  Both tests
generate RSA-4096 keys on a PIV card in slot 0 while a second host thread keeps APDUs flowing on
slot 1, record when each slot-1 APDU completed, and judge every generation window:

- it overlaps the traffic: slot-1 APDUs completed inside it;
- slot 1's longest silence inside it (window edges included) is far below the generation time.
  A stalled slot 1 would be silent for (nearly) the whole generation.

A stall detector, not a benchmark: both sides are measured in the same run, and the bound is a
ratio between them.  Generations much shorter than slot 1's own pace say nothing (a few APDUs fit
in them whether or not slot 1 is stalled, and one scheduler pause of a loaded machine fills them),
so the helper generates again until one window is at least ``MIN_WINDOW_IN_APDUS`` slot-1 APDUs
and ``MIN_WINDOW_SECONDS`` long.  Those two choose which windows are judged; they assert nothing.

The PIV host is tests/cards/test_piv_support.py's ``PivClient`` over any ``transmit(apdu) ->
response`` (through the in-process service, or pyscard).
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from tests.cards.test_piv_support import PivClient

#: PIV algorithm identifier of RSA-4096 (Yubico PIV 5.7, as ALGORITHM.RSA4096 in our card).
RSA4096 = 0x16
#: A generation window is judged when it is at least this many slot-1 APDUs long, and this long.
MIN_WINDOW_IN_APDUS = 20
MIN_WINDOW_SECONDS = 0.5
#: ... and then slot 1's longest silence inside it must stay under this fraction of the window (a
#: stalled slot is silent for nearly all of it; a loaded 2-core machine adds 100-200 ms pauses).
MAX_SILENCE_FRACTION = 1 / 3
#: Pause between slot-1 APDUs: a host that sends back to back only measures GIL hand-offs.
SLOT1_PAUSE = 0.002
#: Generations tried until one window is long enough to judge (natively RSA-4096 takes 0.1-3 s).
MAX_GENERATIONS = 10


class Transmitter:
    """What PivClient drives: ``process_apdu(apdu) -> response`` over a transmit function."""

    def __init__(self, transmit: Callable[[bytes], bytes]) -> None:
        self.process_apdu = transmit


@dataclass
class Window:
    start: float
    end: float
    apdus: int = 0                    # slot-1 APDUs completed inside
    max_silence: float = 0.0          # slot 1's longest time without a completion inside

    @property
    def seconds(self) -> float:
        return self.end - self.start

    def describe(self) -> str:
        return (f"generation {self.seconds:.3f} s: {self.apdus} slot-1 APDUs inside, slot 1 silent at most "
                f"{self.max_silence * 1000:.1f} ms ({self.max_silence / self.seconds:.1%} of it)")


@dataclass
class StallReport:
    pace: float                               # median time between slot-1 completions before generating
    windows: list[Window] = field(default_factory=list)
    slot1_errors: list[str] = field(default_factory=list)

    @property
    def judged(self) -> list[Window]:
        return [w for w in self.windows if w.seconds >= max(MIN_WINDOW_IN_APDUS * self.pace, MIN_WINDOW_SECONDS)]

    def describe(self) -> str:
        lines = [f"slot 1 pace before generating: one APDU per {self.pace * 1000:.1f} ms"]
        lines += [("judged: " if w in self.judged else "too short to judge: ") + w.describe() for w in self.windows]
        return "\n".join(lines + [f"slot-1 errors: {self.slot1_errors}"] * bool(self.slot1_errors))

    def check(self) -> None:
        """The assertions both tests make."""
        text = self.describe()
        assert not self.slot1_errors, text
        assert self.judged, (f"no generation lasted {MIN_WINDOW_IN_APDUS} slot-1 APDUs and {MIN_WINDOW_SECONDS} s "
                             f"in {MAX_GENERATIONS} tries:\n{text}")
        for w in self.judged:
            assert w.apdus >= MIN_WINDOW_IN_APDUS // 2, f"slot 1 did not flow during the generation:\n{text}"
            assert w.max_silence < MAX_SILENCE_FRACTION * w.seconds, f"slot 1 stalled:\n{text}"


class Slot1Traffic(threading.Thread):
    """Sends ``apdu`` on slot 1 in a loop, records each completion time and any failure."""

    def __init__(self, transmit: Callable[[bytes], bytes], apdu: bytes) -> None:
        super().__init__(daemon=True, name="slot1-traffic")
        self.transmit, self.apdu = transmit, apdu
        self.done: list[float] = []
        self.errors: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                r = self.transmit(self.apdu)
            except Exception as e:                     # noqa: BLE001 - reported by the check
                self.errors.append(f"{type(e).__name__}: {e}")
                return
            if r[-2:] != b"\x90\x00":
                self.errors.append(f"{self.apdu.hex()} answered {r[-2:].hex()}")
                return
            self.done.append(time.monotonic())
            time.sleep(SLOT1_PAUSE)

    def wait_for(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.done) < count and not self.errors:
            assert self.is_alive() and time.monotonic() < deadline, \
                f"slot 1 answered {len(self.done)} APDUs in {timeout} s; errors {self.errors}"
            time.sleep(0.01)


def window(start: float, end: float, completions: list[float]) -> Window:
    inside = [t for t in completions if start <= t <= end]
    edges = [start, *inside, end]
    return Window(start, end, len(inside), max(b - a for a, b in zip(edges, edges[1:])))


def generate_while_slot1_flows(slot0: Callable[[bytes], bytes], slot1: Callable[[bytes], bytes],
                               slot1_apdu: bytes, *, timeout: float = 60,
                               after_generation: Callable[[Window], None] | None = None) -> StallReport:
    """Authenticate with the default management key on slot 0's PIV card, then generate RSA-4096
    keys in slot 9A until a window is long enough to judge, while ``slot1_apdu`` loops on slot 1.
    ``after_generation`` sees each window (the USB test counts time extensions with it)."""
    piv = PivClient(Transmitter(slot0))
    assert piv.select()[1] == 0x9000
    assert piv.authenticate() == 0x9000
    traffic = Slot1Traffic(slot1, slot1_apdu)
    traffic.start()
    try:
        traffic.wait_for(2 * MIN_WINDOW_IN_APDUS, timeout)
        before = traffic.done[-MIN_WINDOW_IN_APDUS:]
        report = StallReport(pace=statistics.median(b - a for a, b in zip(before, before[1:])))
        for _ in range(MAX_GENERATIONS):
            start = time.monotonic()
            public = piv.generate(0x9A, RSA4096)
            end = time.monotonic()
            assert len(public) > 512, public.hex()           # modulus (81) and exponent (82) of 4096 bits
            traffic.wait_for(len(traffic.done) + 1, timeout)  # slot 1 still answers afterwards
            w = window(start, end, traffic.done)
            report.windows.append(w)
            if after_generation is not None:
                after_generation(w)
            if report.judged:
                break
    finally:
        traffic.halt.set()
        traffic.join(timeout)
    report.slot1_errors = traffic.errors
    return report
