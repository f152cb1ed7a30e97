"""Event.from_record takes a compiled path for each record shape; whatever the record, it
must answer exactly as the field-by-field path does (the same Event, or the same error)."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from memtrace.analysis.events import Event

FIELDS = [
    "type", "ts_ns", "fn", "probe", "role", "cpu", "pid", "tid", "comm", "start", "end",
    "size", "requested", "granted", "ret", "vaddr", "bytes", "duration_ns", "cycles",
    "cycles_source", "caller", "stack", "mtrr_type", "mtrr_reg", "unknown",
]  # fmt: skip
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**66), max_value=2**66),
    st.sampled_from([0, 1, -1, 2**64 - 1, 2**64, -(2**64) + 1, -(2**64)]),
    st.floats(allow_nan=False),
    st.sampled_from(["WC", "UC-", "uc-", "WB", "0x1000", "0xfd000000", "zz", "0x" + "f" * 17]),
    st.text(max_size=8),
    st.lists(st.sampled_from(["memtype_reserve", "a [m]", 3, None]), max_size=3),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
)


def outcome(build, record):
    try:
        return build(record, {}).to_record()
    except (TypeError, ValueError) as err:
        return f"{err.__class__.__name__}: {err}"


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.sampled_from(FIELDS), unique=True, max_size=12).flatmap(
        lambda keys: st.fixed_dictionaries(
            {"ts_ns": VALUES, "fn": VALUES, **dict.fromkeys(keys, VALUES)}
        )
    )
)
def test_the_compiled_path_answers_as_the_field_by_field_one(record):
    assert outcome(Event.from_record, record) == outcome(Event._checked, record)


def test_a_recorded_event_takes_the_compiled_path_and_comes_back_whole():
    with open("tests/fixtures/traces/6.1-tracefs-bochs.jsonl", encoding="utf-8") as trace:
        records = [json.loads(line) for line in trace]
    events = [r for r in records if r.get("type") == "event"]
    shared = {}
    for record in events:
        event = Event.from_record(record, shared)
        assert event == Event._checked(record, {})
        assert {k: v for k, v in event.to_record().items()} == {
            k: v for k, v in record.items() if v is not None
        }
