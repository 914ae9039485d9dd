# SPDX-License-Identifier: GPL-3.0-or-later
"""Property tests: no input from the host or the engines makes the reader raise or wedge."""

import pathlib
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccidgadget.ccid import BulkIn, PowerOn, Reader, ReaderConfig, Transmit

from .wire import ATR, GET_SLOT_STATUS, SLOT_STATUS, cmd, parse

CORPUS = pathlib.Path(__file__).parent / "corpus"

MESSAGE_TYPES = [0x61, 0x62, 0x63, 0x65, 0x69, 0x6A, 0x6B, 0x6C, 0x6D, 0x6E, 0x6F, 0x71, 0x72, 0x73, 0x00, 0xFF]


@st.composite
def plausible_message(draw):
    """A message that often gets past framing, so the state machine is exercised too."""
    message_type = draw(st.sampled_from(MESSAGE_TYPES))
    data = draw(st.binary(max_size=40))
    length = draw(st.one_of(st.just(len(data)), st.integers(0, 0xFFFFFFFF)))
    slot = draw(st.integers(0, 3))
    seq = draw(st.integers(0, 255))
    specific = draw(st.one_of(st.just(b"\0\0\0"), st.sampled_from([b"\x01\0\0", b"\0\x01\0", b"\0\x03\0",
                                                                      b"\0\x02\0", b"\0\x10\0"]),
                              st.binary(min_size=3, max_size=3)))
    return struct.pack("<BIBB", message_type, length, slot, seq) + specific + data


chunk = st.one_of(st.binary(max_size=64), plausible_message())
stream = st.lists(st.tuples(chunk, st.booleans()), max_size=30)

adapter_action = st.one_of(
    st.tuples(st.just("answer"), st.integers(0, 40), st.binary(max_size=40)),
    st.tuples(st.just("fail"), st.integers(0, 40), st.integers(0, 255)),
    st.tuples(st.just("present"), st.integers(0, 1), st.booleans()),
    st.tuples(st.just("time"), st.integers(0, 1), st.none()),
    st.tuples(st.just("control"), st.integers(0, 255), st.integers(0, 0xFFFF)),
    st.tuples(st.just("hwerror"), st.integers(0, 1), st.integers(0, 255)),
    st.tuples(st.just("reset"), st.none(), st.none()),
    st.tuples(st.just("interrupt"), st.none(), st.none()),
)


def check_responses(events) -> None:
    for event in events:
        if isinstance(event, BulkIn):
            resp = parse(event.data)  # dwLength always matches
            assert 0x80 <= resp.message_type <= 0x84


def expect_slot_status_answer(reader: Reader, slot: int, seq: int) -> None:
    reader.receive_bulk_out(cmd(GET_SLOT_STATUS, slot, seq), transfer_end=True)
    events = reader.next_events()
    check_responses(events)
    (resp,) = [parse(e.data) for e in events if isinstance(e, BulkIn)]
    state = reader.slot_state(slot)
    assert (resp.message_type, resp.slot, resp.seq) == (SLOT_STATUS, slot, seq)
    if state.aborting:
        assert (resp.status >> 6, resp.error) == (1, 0xFF)
    elif state.busy:
        assert (resp.status >> 6, resp.error) == (1, 0xE0)
    else:
        assert (resp.status, resp.error) == (int(state.icc_status), 0)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chunks=stream)
def test_arbitrary_bytes_never_raise_and_resync(chunks):
    reader = Reader(ReaderConfig(slots=2, max_message_length=300))
    reader.set_card_present(0, True)
    for data, end in chunks:
        reader.receive_bulk_out(data, transfer_end=end)
        check_responses(reader.next_events())
    reader.receive_bulk_out(b"", transfer_end=True)
    check_responses(reader.next_events())
    expect_slot_status_answer(reader, 0, 0x5A)
    expect_slot_status_answer(reader, 1, 0x5B)
    # after a bus reset the slot is always usable
    reader.reset()
    reader.next_events()
    expect_slot_status_answer(reader, 0, 0x5C)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(st.one_of(st.tuples(st.just("bulk"), st.tuples(chunk, st.booleans())), adapter_action),
                      max_size=40))
def test_host_and_engines_interleaved(steps):
    reader = Reader(ReaderConfig(slots=2, max_message_length=300))
    for step in steps:
        kind = step[0]
        if kind == "bulk":
            data, end = step[1]
            reader.receive_bulk_out(data, transfer_end=end)
        elif kind == "answer":
            reader.card_answer(step[1], ATR if step[1] % 3 == 0 else step[2])
        elif kind == "fail":
            reader.card_failed(step[1], step[2])
        elif kind == "present":
            reader.set_card_present(step[1], step[2])
        elif kind == "time":
            reader.time_extension(step[1])
        elif kind == "control":
            reader.control_request(0x21 if step[1] % 2 else 0xA1, step[1] % 5, step[2], 0, step[1] % 3)
        elif kind == "hwerror":
            reader.hardware_error(step[1], step[2])
        elif kind == "reset":
            reader.reset()
        elif kind == "interrupt":
            msg = reader.pop_interrupt()
            assert msg is None or msg[0] in (0x50, 0x51)
        events = reader.next_events()
        check_responses(events)
        # every engine request names a slot that is busy with exactly that token
        for event in events:
            if isinstance(event, (PowerOn, Transmit)):
                assert event.slot in reader.busy_slots()
    reader.receive_bulk_out(b"", transfer_end=True)
    reader.next_events()
    for slot in (0, 1):
        expect_slot_status_answer(reader, slot, 0x77)


def test_corpus_files_parse_and_run():
    files = sorted(CORPUS.glob("*.hex"))
    assert len(files) >= 10
    for path in files:
        raw = bytes.fromhex("".join(line.split("#")[0] for line in path.read_text().splitlines()))
        reader = Reader()
        reader.set_card_present(0, True)
        reader.receive_bulk_out(raw, transfer_end=True)
        check_responses(reader.next_events())
        expect_slot_status_answer(reader, 0, 0x42)
