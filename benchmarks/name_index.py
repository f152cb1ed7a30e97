"""How long a misspelt --fn takes to answer with the closest kernel function names.

Run on the host, from the repository root (results in benchmarks/RESULTS.md):

    .venv/bin/python benchmarks/name_index.py [ROUNDS]

Over this host's /proc/kallsyms function names (what ``memtrace latency|record|conflicts
--fn`` suggests from), for each misspelling below, the median of ROUNDS (default 3):

(a) difflib:  what ``probes/targets._suggestions`` did before, ``difflib.get_close_matches``
              with cutoffs 0.8, then 0.6, then 0.45 until one gives names;
(b) index:    ``NameIndex(function names, skip_prefix="__pfx_")`` built, then ``ranked``
              once and ``closest_by_tiers`` (what it does now), build included.

Then the steps before it, medians of ROUNDS: reading and parsing /proc/kallsyms
(``read_kallsyms``), looking the misspelt name up, and ``function_names()``.

Then the whole command, start to exit, as a subprocess: ``memtrace latency --dump-program
--fn drm_gem_vram_bo_drver_move`` (resolution without attaching: this host has no kprobes),
against the same with the right name; wall and CPU (user + sys) seconds, the median of
ROUNDS runs each.
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


def _index(word, pool):
    index = NameIndex(pool, skip_prefix="__pfx_")
    return closest_by_tiers(index.ranked(word, cutoff=CUTOFFS[-1]), CUTOFFS)


def _kallsyms_steps(rounds):
    """Medians of reading /proc/kallsyms, a lookup of the misspelt name, function_names()."""
    steps = {"read_kallsyms()": [], "functions(misspelt)": [], "function_names()": []}
    for _ in range(rounds):
        started = time.perf_counter()
        table = read_kallsyms()
        looked_up = time.perf_counter()
        table.functions(WORDS[0])
        named = time.perf_counter()
        table.function_names()
        done = time.perf_counter()
        for step, seconds in zip(steps, (looked_up - started, named - looked_up, done - named)):
            steps[step].append(seconds)
    return {step: statistics.median(times) for step, times in steps.items()}


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
    pool = read_kallsyms().function_names()
    names = {n for n in pool if not n.startswith("__pfx_")}
    print(f"{len(names):,} function names in /proc/kallsyms, median of {rounds} rounds\n")
    print("| misspelt | difflib s | index s (build included) | difflib's names | index's names |")
    print("|---|---|---|---|---|")
    for word in WORDS:
        slow, expected = _median_seconds(_difflib, rounds, word, names)
        fast, got = _median_seconds(_index, rounds, word, pool)
        print(f"| {word} | {slow:.2f} | {fast:.3f} | {', '.join(expected)} | {', '.join(got)} |")
    print("\n| step | s |")
    print("|---|---|")
    for step, seconds in _kallsyms_steps(rounds).items():
        print(f"| `{step}` | {seconds:.3f} |")
    print("\n| command | wall s | CPU s | exit | last line |")
    print("|---|---|---|---|---|")
    for fn in ("drm_gem_vram_bo_drver_move", "memtype_reserve"):
        runs = [_command(fn) for _ in range(rounds)]
        wall = statistics.median(run[0] for run in runs)
        cpu = statistics.median(run[1] for run in runs)
        _, _, code, last = runs[-1]
        print(
            f"| `memtrace latency --dump-program --fn {fn}` | {wall:.2f} | {cpu:.2f} | {code} "
            f"| {last[:90]} |"
        )


if __name__ == "__main__":
    main()
