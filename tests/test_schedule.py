"""Schedule strings: round trips, the grammar's edges, and nothing but ScheduleError on junk."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shmpamt.records.schedule_string import MAX_STEPS, Schedule, ScheduleError

SHELL_SAFE = re.compile(r"[A-Za-z0-9._:-]*")
EXAMPLE = "s1:rfc-norecheck:c2.r1.g1.p1.w42:0x5.1x3.0x2"


@st.composite
def schedules(draw: st.DrawFn) -> Schedule:
    cpus = draw(st.integers(1, 6))
    variant = draw(
        st.one_of(
            st.from_regex(r"[a-z][a-z0-9-]{0,15}", fullmatch=True),
            st.text(min_size=1, max_size=30),
        )
    )
    steps = draw(st.lists(st.integers(0, cpus - 1), max_size=60))
    return Schedule(
        variant=variant,
        cpus=cpus,
        rounds=draw(st.integers(1, 5)),
        ranges=draw(st.integers(1, 4)),
        pages=draw(st.integers(1, 512)),
        seed=draw(st.integers(0, 2**64 - 1)),
        steps=tuple(steps),
    )


@given(schedules())
def test_parse_encode_round_trip(s: Schedule) -> None:
    text = s.encode()
    # Invariant: a schedule string needs no quoting in a shell.
    assert SHELL_SAFE.fullmatch(text)
    assert Schedule.parse(text) == s
    assert Schedule.parse(text).encode() == text


def test_the_documented_example() -> None:
    s = Schedule.parse(EXAMPLE)
    assert s.variant == "rfc-norecheck"
    assert (s.cpus, s.rounds, s.ranges, s.pages, s.seed) == (2, 1, 1, 1, 42)
    assert s.steps == (0,) * 5 + (1,) * 3 + (0,) * 2
    assert s.encode() == EXAMPLE
    assert s.replay_command() == f"shmpamt replay {EXAMPLE}"
    assert s.blocks() == ((0, 5), (1, 3), (0, 2))
    assert s.context_switches() == 2
    # 0 -> 1 is a preemption (cpu 0 runs again later); 1 -> 0 is not.
    assert s.preemptions() == 1


def test_single_steps_and_empty_steps() -> None:
    s = Schedule("locked", 3, 2, 1, 4, 0, (0, 1, 2, 2))
    assert s.encode() == "s1:locked:c3.r2.g1.p4.w0:0.1.2x2"
    empty = Schedule("locked", 1, 1, 1, 1, 7)
    assert empty.encode() == "s1:locked:c1.r1.g1.p1.w7:"
    assert Schedule.parse(empty.encode()) == empty
    # Non-canonical run-length forms are accepted and normalised.
    assert Schedule.parse("s1:x:c2.r1.g1.p1.w0:0x1.0x2.1").encode() == "s1:x:c2.r1.g1.p1.w0:0x3.1"
    assert Schedule.parse(f"  {EXAMPLE}\n") == Schedule.parse(EXAMPLE)


def test_user_variant_paths_are_escaped_readably() -> None:
    s = Schedule("tests/my_variant.py:Mine", 2, 1, 1, 1, 0, (1, 0))
    text = s.encode()
    assert text == "s1:tests.2fmy_variant.2epy.3aMine:c2.r1.g1.p1.w0:1.0"
    assert Schedule.parse(text).variant == "tests/my_variant.py:Mine"
    assert Schedule("ünï", 1, 1, 1, 1, 0).encode().startswith("s1:.c3.bcn.c3.af:")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "4 ':'-separated fields"),
        ("s1:rfc:c2.r1.g1.p1.w0", "4 ':'-separated fields"),
        ("s3:rfc:c2.r1.g1.p1.w0:0", "unsupported schedule format 's3'"),
        ("s2:rfc:c2.r1.g1.p1.w0:0", "expected 5"),
        # a later format may add fields: its version is what is refused
        ("s2:rfc:c2.r1.g1.p1.w0:0:f1", "is not <cpu>p<point><kind>"),
        ("s2:rfc:c2.r1.g1.p1.w0:0:2p0a", "names cpu 2"),
        ("s3:rfc:c2.r1.g1.p1.w0:0:f1:x", "unsupported schedule format 's3'"),
        ("s1::c2.r1.g1.p1.w0:0", "variant field is empty"),
        ("s1:a/b:c2.r1.g1.p1.w0:0", "contains '/'"),
        ("s1:a.zz:c2.r1.g1.p1.w0:0", "two lowercase hex digits"),
        ("s1:a.41:c2.r1.g1.p1.w0:0", "stands for 'A'"),
        ("s1:a.ff:c2.r1.g1.p1.w0:0", "UTF-8"),
        ("s1:rfc:c2.r1.g1.p1:0", "c<cpus>.r<rounds>"),
        ("s1:rfc:c02.r1.g1.p1.w0:0", "no leading zeros"),
        ("s1:rfc:c0.r1.g1.p1.w0:", "cpus must be"),
        ("s1:rfc:c2.r0.g1.p1.w0:", "rounds must be"),
        ("s1:rfc:c2.r1.g1.p1.w99999999999999999999:", "seed must be"),
        ("s1:rfc:c2.r1.g1.p1.w0:0x", "step block 0"),
        ("s1:rfc:c2.r1.g1.p1.w0:0..1", "step block 1"),
        ("s1:rfc:c2.r1.g1.p1.w0:0x0", "zero times"),
        ("s1:rfc:c2.r1.g1.p1.w0:0.2x3", "names cpu 2, but the scenario has 2 CPUs"),
        ("s1:rfc:c2.r1.g1.p1.w0:0x99999999999", f"{MAX_STEPS} steps"),
        ("s1:rfc:c2.r1.g1.p1.w0:0x\u0661", "step block 0"),
    ],
)
def test_malformed_strings_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ScheduleError, match=re.escape(message)) as e:
        Schedule.parse(text)
    assert "\n" not in str(e.value)


def test_bad_values_are_schedule_errors() -> None:
    with pytest.raises(ScheduleError, match="step 1 names cpu 2"):
        Schedule("v", 2, 1, 1, 1, 0, (0, 2))
    with pytest.raises(ScheduleError, match="variant name is empty"):
        Schedule("", 2, 1, 1, 1, 0)
    with pytest.raises(ScheduleError, match="not valid Unicode"):
        Schedule("\ud800", 2, 1, 1, 1, 0)
    with pytest.raises(ScheduleError, match="a schedule is a string"):
        Schedule.parse(42)  # type: ignore[arg-type]


def test_preemptions_and_switches() -> None:
    s = Schedule("v", 3, 1, 1, 1, 0, (0, 1, 0, 2, 2, 1))
    assert s.context_switches() == 4
    # 0->1 (0 runs later): yes; 1->0 (1 runs later): yes; 0->2 (0 never again): no;
    # 2->1 (2 never again): no.
    assert s.preemptions() == 2
    assert s.with_steps([1, 1]).steps == (1, 1)
    assert Schedule.steps_from_blocks([(0, 2), (1, 1)]) == (0, 0, 1)
    assert str(s) == s.encode()


@settings(max_examples=300)
@given(st.text())
def test_arbitrary_text_is_a_schedule_or_a_schedule_error(text: str) -> None:
    try:
        assert isinstance(Schedule.parse(text), Schedule)
    except ScheduleError as e:
        assert str(e) and "\n" not in str(e)


_ALPHABET = "s1:.x0123456789abcdefgcrpwAZ_-/ \n\x00\u0661\u00e9"


@settings(max_examples=500)
@given(
    schedules(),
    st.lists(
        st.tuples(st.integers(0, 200), st.integers(0, 3), st.sampled_from(_ALPHABET)),
        min_size=1,
        max_size=4,
    ),
)
def test_mutated_valid_strings_are_a_schedule_or_a_schedule_error(
    s: Schedule, edits: list[tuple[int, int, str]]
) -> None:
    text = s.encode()
    for pos, kind, ch in edits:
        i = pos % (len(text) + 1)
        if kind == 0:
            text = text[:i] + ch + text[i:]  # insert
        elif kind == 1:
            text = text[:i] + text[i + 1 :]  # delete
        elif kind == 2:
            text = text[:i] + ch + text[i + 1 :]  # replace
        else:
            text = text[:i] + text[i:] * 2  # duplicate a tail
    try:
        parsed = Schedule.parse(text)
    except ScheduleError as e:
        assert str(e) and "\n" not in str(e)
    else:
        # Whatever parses is canonical and round-trips.
        assert Schedule.parse(parsed.encode()) == parsed


def test_a_schedule_with_faults_round_trips_as_s2_and_one_without_stays_s1() -> None:
    s = Schedule("v6", 2, 2, 1, 2, 7, (0, 0, 1), faults=((1, 3, 1), (0, 0, 4)))
    text = s.encode()
    assert text == "s2:v6:c2.r2.g1.p2.w7:0x2.1:0p0m.1p3r"
    back = Schedule.parse(text)
    assert back == s and back.fault_names() == ("alloc.fail", "remove.busy")
    plain = s.with_faults(())
    assert plain.encode() == "s1:v6:c2.r2.g1.p2.w7:0x2.1"
    assert Schedule.parse(plain.encode()).faults == ()
