"""Many hosts in one report: hosts with the same findings are shown once, as a group.

`memtrace report -i guest1.jsonl ... -i guest100.jsonl` of a fleet where 50 guests share the
bochs downgrade and 50 have nothing would otherwise repeat the same findings 50 times and give
the environment 100 columns. :func:`group_hosts` rewrites a report document
(docs/report-json.md) for the text, markdown and HTML renderings: each group of hosts with the
same findings keeps its first host's findings, reservations, latency, timeline and
environment under one name (``host-1 +49``), the notes about its hosts are said once for the
group, and a note names every member and what differs between them. The ``json`` format keeps
every host. Pure functions; no I/O.
"""

import re
from typing import Dict, List, Tuple

__all__ = ["findings_key", "partition", "group_name", "group_hosts"]

# What makes two findings "the same" across hosts: not the times, pids or evidence, which
# differ between any two guests.
_FINDING_FIELDS = ("kind", "title", "severity", "effective")
_ROW_SECTIONS = ("findings", "reservations", "latency", "timeline")
# Facts of a host that, when they differ inside a group, the group's note names.
_VARYING = (
    ("kernel", "kernels"),
    ("cpu_model", "CPU models"),
    ("hypervisor", "hypervisors"),
    ("memtrace", "memtrace versions"),
    ("lost_events", "lost-event counts"),
)


def _entries(doc, key):
    value = doc.get(key)
    return value if isinstance(value, list) else []


def findings_key(findings):
    """The findings of one host as a comparable value: each finding's kind, title, severity
    and effective type, in order; hosts with equal keys have the same findings."""
    return tuple(tuple(str(f.get(field)) for field in _FINDING_FIELDS) for f in findings)


def partition(doc):
    """``[[host name, ...], ...]``: the document's hosts grouped by :func:`findings_key`, the
    groups in the order of their first host, hosts in document order inside each."""
    names = [h.get("name") for h in _entries(doc, "hosts") if isinstance(h, dict)]
    for finding in _entries(doc, "findings"):
        if finding.get("host") not in names:
            names.append(finding.get("host"))
    findings: Dict[object, list] = {name: [] for name in names}
    for finding in _entries(doc, "findings"):
        findings[finding.get("host")].append(finding)
    groups: Dict[Tuple, List] = {}
    for name in names:
        groups.setdefault(findings_key(findings[name]), []).append(name)
    return list(groups.values())


def group_name(members):
    """The name a group goes by: its first host, and how many more (``host-1 +49``)."""
    first = members[0] if members[0] is not None else "unknown host"
    return first if len(members) == 1 else f"{first} +{len(members) - 1}"


def _differences(members, records):
    parts = []
    for field, plural in _VARYING:
        counts: Dict[str, int] = {}
        for name in members:
            value = str(records.get(name, {}).get(field) or "unknown")
            counts[value] = counts.get(value, 0) + 1
        if len(counts) > 1:
            parts.append(
                f"{len(counts)} {plural} ("
                + ", ".join(f"{value} × {count}" for value, count in counts.items())
                + ")"
            )
    return parts


def _note(name, members, records, found):
    what = "the same findings" if found else "no findings"
    text = (
        f"{name} stands for {len(members)} hosts with {what}: {', '.join(map(str, members))}."
        f" Its reservations, latency, timeline and environment are {members[0]}'s"
    )
    differences = _differences(members, records)
    if differences:
        text += "; between them: " + "; ".join(differences)
    return text + ". --format json has every host's."


def group_hosts(doc):
    """A copy of the report document ``doc`` with each group of hosts that have the same
    findings (:func:`partition`) shown as its first host, renamed :func:`group_name`, plus
    one note per group of more than one host, and ``host_count`` and ``finding_count``, the
    whole document's, for the headline. A document whose hosts all differ comes back as
    ``doc`` itself."""
    groups = partition(doc)
    if all(len(members) == 1 for members in groups):
        return doc
    rename = {members[0]: group_name(members) for members in groups}
    records = {h.get("name"): h for h in _entries(doc, "hosts") if isinstance(h, dict)}
    out = dict(doc)
    # The headline counts what the fleet has, not what is shown.
    out["host_count"] = sum(len(members) for members in groups)
    out["finding_count"] = len(_entries(doc, "findings"))
    out["hosts"] = [
        dict(h, name=rename[h.get("name")])
        for h in _entries(doc, "hosts")
        if isinstance(h, dict) and h.get("name") in rename
    ]
    for key in _ROW_SECTIONS:
        out[key] = [
            dict(row, host=rename[row.get("host")])
            for row in _entries(doc, key)
            if row.get("host") in rename
        ]
    found = {f.get("host") for f in _entries(doc, "findings")}
    notes = [
        _note(rename[members[0]], members, records, members[0] in found)
        for members in groups
        if len(members) > 1
    ]
    group_of = {name: rename[members[0]] for members in groups for name in members}
    names = sorted((n for n in group_of if isinstance(n, str) and n), key=len, reverse=True)
    pattern = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, names)) + r")(?![\w-])")
    for note in _entries(doc, "notes"):
        renamed = (
            pattern.sub(lambda match: group_of[match.group(1)], note)
            if isinstance(note, str) and names
            else note
        )
        if renamed not in notes:
            notes.append(renamed)
    out["notes"] = notes
    return out
