"""The closest names to a misspelt one, fast over a kernel's ~100,000 function names.

difflib alone compares the word with every name (minutes in an emulated guest). NameIndex
keeps the names as one newline-joined string, indexed once; a query finds the names that
share a trigram with the word by C-speed substring search, keeps the few sharing the most,
and only those are ranked by difflib's ratio, so the answer is the one difflib would give
for any name that shares enough of the word to be a plausible suggestion.
"""

import bisect
import difflib
import heapq
import re
from typing import Dict, Iterable, List, Set, Tuple

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
    """An index over a set of names answering "which names are closest to this word"."""

    def __init__(self, names: Iterable[str]):
        self.names: List[str] = sorted({n for n in names if n and _SEP not in n})
        self._text = _SEP + _SEP.join(self.names) + _SEP
        # Where each name starts in _text; a match's name is found by bisection.
        self._starts: List[int] = []
        position = 1
        for name in self.names:
            self._starts.append(position)
            position += len(name) + 1

    def __len__(self):
        return len(self.names)

    def candidates(self, word: str, limit: int = _CANDIDATES) -> List[str]:
        """Up to ``limit`` names sharing the largest part of ``word``'s trigrams (by Dice
        coefficient), best first; names sharing none are never returned."""
        grams = _trigrams(word)
        shared: Dict[int, int] = {}
        for gram in grams:
            hit = set()
            for match in re.finditer(re.escape(gram), self._text):
                # A gram starting with the separator starts the name after it.
                start = match.start() + (1 if gram[0] == _SEP else 0)
                hit.add(bisect.bisect_right(self._starts, start) - 1)
            for index in hit:
                shared[index] = shared.get(index, 0) + 1

        def dice(index):
            return 2 * shared[index] / (len(grams) + len(self.names[index]))

        best = heapq.nlargest(limit, shared, key=lambda i: (dice(i), -i))
        return [self.names[i] for i in best]

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
