"""A long trace of one repeated load: identical findings are one finding with a count,
the report's reservations and timeline fold repeats, and the reservation model answers as
a plain list of live entries would (it is an interval index now)."""

import importlib.util
import json
import os
import random

import pytest

from memtrace.analysis.events import Event
from memtrace.analysis.reservations import ReservationModel, replay
from memtrace.tools.cli import main

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def _pipeline():
    spec = importlib.util.spec_from_file_location(
        "stream_pipeline", os.path.join(ROOT, "benchmarks", "stream_pipeline.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def replicated(tmp_path_factory):
    """The recorded bochs load (tests/fixtures/traces) 300 times, each unloaded after."""
    path = tmp_path_factory.mktemp("long") / "bochs-x300.jsonl"
    copies, _events = _pipeline().write_replicated_trace(str(path), 300 * 27)
    assert copies == 300
    return str(path)


def run_json(capsys, *argv):
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, json.loads(out)


def test_a_repeated_downgrade_is_one_finding_with_its_count(capsys, replicated):
    _status, doc = run_json(capsys, "conflicts", "-i", replicated, "--format", "json")
    downgrades = [c for c in doc["conflicts"] if c["kind"] == "downgrade"]
    assert len(downgrades) == 1
    (downgrade,) = downgrades
    # each load asks twice (ttm_kmap_iter_linear_io_init, ttm_bo_vmap): one finding, 600
    assert downgrade["count"] == downgrade["occurrences"] == 600
    # the kworker that maps it is one process throughout; each load's modprobe is another
    assert downgrade["process_count"] == 301 and len(downgrade["processes"]) == 16
    assert downgrade["first_ts_ns"] < downgrade["last_ts_ns"]
    user = [c for c in doc["conflicts"] if c["kind"] == "user-map-downgrade"]
    assert len(user) == 1 and user[0]["count"] == 300
    assert len(downgrade["requesters"]) <= 16


def test_the_report_folds_repeated_reservations_and_timeline_entries(capsys, replicated):
    _status, doc = run_json(capsys, "report", "-i", replicated, "--format", "json")
    (downgrade,) = [f for f in doc["findings"] if f["kind"] == "downgrade"]
    assert downgrade["count"] == 600
    folded = [r for r in doc["reservations"] if "count" in r]
    assert folded and all(r["count"] >= 1 and r["last_ts_ns"] >= r["ts_ns"] for r in folded)
    # every reservation is listed or counted: 5 memtype_reserve calls a load
    assert sum(r.get("count", 1) for r in doc["reservations"]) == 5 * 300
    assert len(doc["reservations"]) <= 11 * 5
    assert sum(t.get("count", 1) for t in doc["timeline"] if t["kind"] == "move") == 300
    assert len(doc["timeline"]) < 400
    text = [t["text"] for t in doc["timeline"] if t.get("count")]
    assert any(line.startswith("290 more like this from +") for line in text), text[:3]


def _naive(events, snapshot):
    """The reservation model as a list scanned in full (what it was before the index)."""
    live, seq, out = [], 0, []
    for start, end, memtype in snapshot:
        seq += 1
        live.append((start, seq, end, memtype))
    for event in sorted(events, key=lambda e: e.ts_ns):
        live.sort()
        found = [e for e in live if e[0] < event.end and e[2] > event.start]
        if event.role == "reserve":
            if event.ret < 0:
                out.append(None)
                continue
            # a lenient caller adopts the first entry's type, unless the entries disagree
            agree = found and all(e[3] == found[0][3] for e in found)
            granted = event.granted or (found[0][3] if agree else event.requested)
            seq += 1
            live.append((event.start, seq, event.end, granted))
            out.append((granted, found[0][:2] if found else None))
        else:
            exact = [e for e in found if (e[0], e[2]) == (event.start, event.end)]
            if exact:
                live.remove(exact[0])
            else:
                shrink = [e for e in found if e[0] < event.start and e[2] == event.end]
                if shrink:
                    live.remove(shrink[0])
                    live.append((shrink[0][0], shrink[0][1], event.start, shrink[0][3]))
    return out, sorted((e[0], e[2], e[3]) for e in live)


def test_the_interval_index_answers_as_a_full_scan(monkeypatch):
    rng = random.Random(7)
    for _trial in range(60):
        events = []
        for ts in range(150):
            start = rng.randrange(64) * 0x1000
            end = start + rng.choice((1, 2, 8, 40)) * 0x1000
            if events and rng.random() < 0.35:
                made = rng.choice(events)
                cut = made.start + 0x1000 if rng.random() < 0.2 else made.start
                events.append(
                    Event(
                        ts_ns=ts,
                        fn="memtype_free",
                        role="free",
                        start=min(cut, made.end - 1),
                        end=made.end,
                        ret=0,
                    )
                )
            else:
                events.append(
                    Event(
                        ts_ns=ts,
                        fn="memtype_reserve",
                        role="reserve",
                        start=start,
                        end=end,
                        requested="WC",
                        ret=0,
                        granted=rng.choice(("WC", "UC-", None)),
                        stack=["memtype_reserve", "__ioremap_caller"],
                    )
                )
        snapshot = [(0x10000, 0x20000, "UC-")]
        model, decisions = replay(events, snapshot)
        expected, expected_live = _naive(events, snapshot)
        got = [
            None
            if d.refused
            else (d.granted, None if d.first is None else (d.first.start, d.first.seq))
            for d in decisions
        ]
        assert got == expected
        assert sorted((e.start, e.end, e.type) for e in model.live) == expected_live


def test_many_live_reservations_of_one_range_stay_fast():
    model = ReservationModel()
    for ts in range(20000):
        model.reserve(
            Event(
                ts_ns=ts,
                fn="memtype_reserve",
                role="reserve",
                start=0xFD000000,
                end=0xFE000000,
                requested="WC",
                granted="UC-",
                ret=0,
            )
        )
    assert len(model) == 20000
    assert model.check(0xFD000000, 0xFD001000, "WC") == ("UC-", model.live[0], None)
