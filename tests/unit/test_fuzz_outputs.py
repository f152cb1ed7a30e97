"""Hostile traces and strings through the trace reader and every renderer (Hypothesis).

Whatever a trace holds, `conflicts`, `latency`, `report` and `snapshot` answer or fail with
memtrace's own one-line error (exit 2), never a traceback; no output carries a raw control
character (a terminal escape, a C1 CSI, a newline inside a name); JSON always parses. The
budgets (``max_examples``) keep the unit suite fast; ``deadline=None`` because a first
example imports the analysis.
"""

import dataclasses
import json
import os
import re
import shutil
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memtrace.tools.cli import main
from tests import builders
from tests.builders import bochs_events, seed_events
from tests.conftest import FIXTURES

# Everything a renderer may not print raw: C0 but the newline, DEL, C1, line and paragraph
# separators, bidirectional overrides and isolates.
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
FORMATS = ("text", "markdown", "html", "json")
BOCHS_ROOT = os.path.join(FIXTURES, "handmade-6.1-bochs")
FUZZ = settings(
    max_examples=int(os.environ.get("MEMTRACE_FUZZ_EXAMPLES", "25")),  # more for a long hunt
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Text a trace from someone else's machine may hold: any code point, control characters,
# markup and terminal escapes more often than chance would give them.
HOSTILE_PIECES = [
    "\x1b]0;pwned\x07",
    "\x1b[2J",
    "\x9b31m",
    "\x7f",
    "\x00",
    "\x08",
    "\n",
    "\r",
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "[x](javascript:alert(1))",
    "**bold**",
    "## heading",
    "| cell |",
    "```",
    "\u202e",
    "_x_",
    "&amp;",
]
hostile_text = st.lists(
    st.one_of(st.sampled_from(HOSTILE_PIECES), st.text(max_size=12)), max_size=5
).map("".join)


def write_trace(path, events, header=None):
    """Write ``events`` as `memtrace record` would, with ``header`` fields."""
    base = {
        "memtrace": "0.1.0",
        "kernel": "6.1.0-56-amd64",
        "hostname": "lab-guest",
        "backend": {"name": "tracefs", "reason": "fuzz"},
        "pat_snapshot": [],
        "workload": ["modprobe", "bochs"],
    }
    return builders.write_trace(path, events, dict(base, **(header or {})))


def run(capsys, *args):
    """``memtrace ARGS`` in-process: (status, stdout, stderr)."""
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def check_answer(status, out, err, fmt):
    """An answer (0 or 1) or memtrace's own one-line error (2); nothing raw; JSON parses."""
    assert status in (0, 1, 2), (status, err)
    assert "internal error" not in err and "Traceback" not in err, err
    assert not RAW_CONTROL.search(out), repr(RAW_CONTROL.search(out))
    assert not RAW_CONTROL.search(err), repr(err)
    if status == 2:
        assert out == "" and err.count("\n") == 1 and ": error: " in err, err
    elif fmt == "json":
        json.loads(out)


# -- hostile names in a well-formed trace -----------------------------------------------------


def renamed(events, comm, fn_name, frame):
    """``events`` with every process name ``comm``, every stack's third frame ``frame`` and
    the move function (the one latency is asked for) called ``fn_name``."""
    out = []
    for event in events:
        stack = list(event.stack or [])
        if len(stack) > 2:
            stack[2] = frame
        fields = {"comm": comm, "stack": stack or None}
        if event.fn == "drm_gem_vram_bo_driver_move":
            fields.update(fn=fn_name, probe=fn_name)
        out.append(dataclasses.replace(event, **fields))
    return out


@FUZZ
@given(
    comm=hostile_text,
    frame=hostile_text,
    release=hostile_text,
    command=st.sampled_from(["conflicts", "latency", "report"]),
    fmt=st.sampled_from(FORMATS),
)
def test_hostile_names_never_reach_an_output_raw(capsys, comm, frame, release, command, fmt):
    with tempfile.TemporaryDirectory() as tmp:
        events = renamed(seed_events() + bochs_events(), comm, "drm_gem_vram_bo_driver_move", frame)
        trace = write_trace(
            os.path.join(tmp, "t.jsonl"), events, {"kernel": release, "hostname": comm}
        )
        extra = ["--fn", "*"] if command == "latency" else []
        status, out, err = run(capsys, command, "-i", trace, "--format", fmt, *extra)
    check_answer(status, out, err, fmt)
    if fmt == "text":
        assert max(map(len, out.splitlines()), default=0) <= 80


# -- arbitrary records --------------------------------------------------------------------------

FIELDS = [
    "ts_ns",
    "fn",
    "probe",
    "role",
    "pid",
    "tid",
    "comm",
    "start",
    "end",
    "size",
    "requested",
    "granted",
    "ret",
    "duration_ns",
    "stack",
    "caller",
    "bytes",
    "cpu",
    "vaddr",
    "cycles",
    "granted_from",
]
json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    hostile_text,
    st.sampled_from(
        [
            "0xfd000000",
            "0xfe000000",
            "-0x10",
            "WC",
            "UC-",
            "reserve",
            "free",
            "move",
            "memtype_reserve",
        ]
    ),
)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
record = st.fixed_dictionaries(
    {"type": st.sampled_from(["event", "event", "event", "process", "uevent", "bogus"])},
    optional={name: json_value for name in FIELDS},
)
line = st.one_of(
    record.map(lambda r: json.dumps(r)),
    hostile_text,
    st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
)


@FUZZ
@given(
    lines=st.lists(line, max_size=8),
    command=st.sampled_from(["conflicts", "latency", "report"]),
    fmt=st.sampled_from(FORMATS),
)
def test_arbitrary_records_give_an_answer_or_one_line_error(capsys, lines, command, fmt):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "t.jsonl")
        header = json.dumps(
            {
                "type": "header",
                "format": "memtrace-trace",
                "version": 1,
                "kernel": "6.1.0",
                "pat_snapshot": [],
            }
        )
        with open(path, "w", encoding="utf-8", errors="surrogatepass") as stream:
            stream.write("\n".join([header, *lines]) + "\n")
        extra = ["--fn", "*"] if command == "latency" else []
        status, out, err = run(capsys, command, "-i", path, "--format", fmt, *extra)
    check_answer(status, out, err, fmt)


# -- snapshot -------------------------------------------------------------------------------------


@FUZZ
@given(release=hostile_text, owner=hostile_text, fmt=st.sampled_from(["text", "json"]))
def test_snapshot_of_a_hostile_capture(capsys, release, owner, fmt):
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "capture")
        shutil.copytree(BOCHS_ROOT, root, symlinks=True)
        with open(
            os.path.join(root, "kernel-release"), "w", encoding="utf-8", errors="surrogatepass"
        ) as stream:
            stream.write(release)
        iomem = os.path.join(root, "proc", "iomem")
        with open(iomem, encoding="utf-8") as stream:
            text = stream.read()
        with open(iomem, "w", encoding="utf-8", errors="surrogatepass") as stream:
            stream.write(text.replace("bochs-drm", owner.replace("\n", " ") or "x"))
        status, out, err = run(capsys, "snapshot", "--root", root, "--format", fmt)
    check_answer(status, out, err, fmt)
