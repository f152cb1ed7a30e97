"""How long a misspelt --fn takes to answer with the closest kernel function names.

Run on the host, from the repository root (results in benchmarks/RESULTS.md):

    .venv/bin/python benchmarks/name_index.py [ROUNDS]

Over this host's /proc/kallsyms function names (what ``memtrace latency|record|conflicts
--fn`` suggests from), for each misspelling below, the median of ROUNDS (default 3):

(a) difflib:  what ``probes/targets._suggestions`` did before, ``difflib.get_close_matches``
              with cutoffs 0.8, then 0.6, then 0.45 until one gives names;
(b) index:    ``NameIndex(names)`` built, then ``ranked`` once and ``closest_by_tiers``
              (what it does now), build included.

Then the whole command, start to exit, as a subprocess: ``memtrace latency --dump-program
--fn drm_gem_vram_bo_drver_move`` (resolution without attaching: this host has no kprobes),
against the same with the right name; wall and CPU (user + sys) seconds.
"""

import difflib
import os
import statistics
import subprocess
import sys
import time

from memtrace.analysis.name_index import NameIndex, closest_by_tiers
from memtrace.probes.kallsyms import read_kallsyms

WORDS = (
    "drm_gem_vram_bo_drver_move",
    "memtype_reserv",
    "ioremap_wcc",
    "ttm_move_memcopy",
    "remap_pfn_ranges",
)
CUTOFFS = (0.8, 0.6, 0.45)


def _difflib(word, names):
    for cutoff in CUTOFFS:
        close = difflib.get_close_matches(word, names, n=3, cutoff=cutoff)
        if close:
            return close
    return []


def _index(word, names):
    return closest_by_tiers(NameIndex(names).ranked(word, cutoff=CUTOFFS[-1]), CUTOFFS)


def _median_seconds(function, rounds, *args):
    times, result = [], None
    for _ in range(rounds):
        started = time.perf_counter()
        result = function(*args)
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def _command(fn):
    memtrace = os.path.join(os.path.dirname(sys.executable), "memtrace")
    before = os.times()
    started = time.perf_counter()
    done = subprocess.run(
        [memtrace, "latency", "--dump-program", "--fn", fn],
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - started
    after = os.times()
    cpu = (
        after.children_user - before.children_user + after.children_system - before.children_system
    )
    last = (done.stderr or done.stdout).strip().splitlines()[-1]
    return wall, cpu, done.returncode, last


def main():
    """Print the results as the markdown tables of RESULTS.md."""
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    names = {n for n in read_kallsyms().function_names() if not n.startswith("__pfx_")}
    print(f"{len(names):,} function names in /proc/kallsyms, median of {rounds} rounds\n")
    print("| misspelt | difflib s | index s (build included) | difflib's names | index's names |")
    print("|---|---|---|---|---|")
    for word in WORDS:
        slow, expected = _median_seconds(_difflib, rounds, word, names)
        fast, got = _median_seconds(_index, rounds, word, names)
        print(f"| {word} | {slow:.2f} | {fast:.3f} | {', '.join(expected)} | {', '.join(got)} |")
    print("\n| command | wall s | CPU s | exit | last line |")
    print("|---|---|---|---|---|")
    for fn in ("drm_gem_vram_bo_drver_move", "memtype_reserve"):
        wall, cpu, code, last = _command(fn)
        print(
            f"| `memtrace latency --dump-program --fn {fn}` | {wall:.2f} | {cpu:.2f} | {code} "
            f"| {last[:90]} |"
        )


if __name__ == "__main__":
    main()
