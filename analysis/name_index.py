"""The closest names to a misspelt one, fast over a kernel's ~100,000 function names.

difflib alone compares the word with every name (minutes in an emulated guest). NameIndex
keeps the names as one newline-joined string, indexed once; a query finds the names that
share a trigram with the word by C-speed substring search, keeps the few sharing the most,
and only those are ranked by difflib's ratio, so the answer is the one difflib would give
for any name that shares enough of the word to be a plausible suggestion. The steps over
all the names run in C (str methods, itertools, bisect); Python code runs only for the
names that share a trigram with the word.
"""

import bisect
import difflib
import functools
import heapq
import itertools
import operator
import re
from collections import Counter
from typing import Iterable, List, Set, Tuple

# Pools this small are ranked whole: filtering would only risk missing a far match.
_RANK_ALL_BELOW = 2000
# How many of the names sharing the most trigrams difflib then ranks.
_CANDIDATES = 500
_SEP = "\n"


def _trigrams(word: str) -> Set[str]:
    """The trigrams of ``word`` padded with the separator, so that the ends count too."""
    padded = f"{_SEP}{word}{_SEP}"
    return {padded[i : i + 3] for i in range(len(padded) - 2)}


class NameIndex:
    """An index over a set of names answering "which names are closest to this word".

    ``names`` lists each indexed name once, in the order given (a set's own order).
    """

    def __init__(self, names: Iterable[str], skip_prefix: str = ""):
        """Index ``names`` (each once; empty ones and any holding a newline left out), and not
        those starting with ``skip_prefix`` when one is given."""
        # Kept in the order given, not sorted: sorting 100,000 names costs more than a query,
        # and ties are broken by name wherever an order shows. The names are joined and
        # filtered as one string: a pass over them in Python would cost as much again.
        unique = names if isinstance(names, (set, frozenset)) else dict.fromkeys(names)
        text = _SEP.join(unique)
        if "" in unique or text.count(_SEP) != len(unique) - 1:
            text = _SEP.join(name for name in unique if name and _SEP not in name)
        if skip_prefix:
            skipped = re.escape(_SEP + skip_prefix) + f"[^{_SEP}]*"
            text = re.sub(skipped, "", _SEP + text)[1:]
        self.names: List[str] = text.split(_SEP) if text else []
        self._text = _SEP + text + _SEP
        # Where each name starts in _text; a match's name is found by bisection.
        steps = map((1).__add__, map(len, self.names))
        self._starts: List[int] = list(itertools.accumulate(steps, initial=1))
        self._starts.pop()

    def __len__(self):
        return len(self.names)

    def candidates(self, word: str, limit: int = _CANDIDATES) -> List[str]:
        """Up to ``limit`` names sharing the largest part of ``word``'s trigrams (by Dice
        coefficient), best first (ties in name order); names sharing none are never
        returned."""
        grams = _trigrams(word)
        shared: Counter[int] = Counter()
        name_at = functools.partial(bisect.bisect_right, self._starts)
        for gram in grams:
            # Split rather than search: the occurrences' offsets then come from the pieces'
            # lengths without a Python step per occurrence (a common trigram has thousands).
            pieces = self._text.split(gram)
            pieces.pop()
            # A gram starting with the separator starts the name after it.
            ends = itertools.accumulate(map(len, pieces))
            found = map(operator.add, ends, itertools.count(int(gram[0] == _SEP), len(gram)))
            shared.update(set(map(name_at, found)))
        names = [self.names[index - 1] for index in shared]
        sizes = map(len(grams).__add__, map(len, names))
        dice = map(operator.truediv, map((-2).__mul__, shared.values()), sizes)
        return [name for _, name in heapq.nsmallest(limit, zip(dice, names))]

    def ranked(self, word: str, cutoff: float = 0.0) -> List[Tuple[float, str]]:
        """(ratio, name) for the plausible names whose difflib ratio to ``word`` is at least
        ``cutoff``, best first (ties in name order)."""
        if len(self.names) < _RANK_ALL_BELOW:
            pool = self.names
        else:
            pool = self.candidates(word)
        matcher = difflib.SequenceMatcher()
        matcher.set_seq2(word)
        scored = []
        for name in pool:
            matcher.set_seq1(name)
            if matcher.real_quick_ratio() >= cutoff and matcher.quick_ratio() >= cutoff:
                ratio = matcher.ratio()
                if ratio >= cutoff:
                    scored.append((ratio, name))
        scored.sort(key=lambda pair: (-pair[0], pair[1]))
        return scored

    def closest(self, word: str, n: int = 3, cutoff: float = 0.0) -> List[str]:
        """The ``n`` names most similar to ``word`` by difflib's ratio, at least ``cutoff``,
        best first: what ``difflib.get_close_matches`` answers over the plausible names."""
        return [name for _, name in self.ranked(word, cutoff)[:n]]


def closest_by_tiers(
    ranked: List[Tuple[float, str]], cutoffs: Iterable[float], n: int = 3
) -> List[str]:
    """The best ``n`` names of ``ranked`` (from NameIndex.ranked) at the first of ``cutoffs``
    that any name reaches: near misses alone when there are some, else the looser ones."""
    for cutoff in cutoffs:
        close = [name for ratio, name in ranked if ratio >= cutoff][:n]
        if close:
            return close
    return []
