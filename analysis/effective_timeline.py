"""The effective memory type of every traced reservation, with the MTRRs in force at its time.

``analysis.effective`` says what the CPU uses for one granted type over one range, given the
PAT state and an MTRR table. A trace can change MTRRs while it runs (``mtrr_add_page`` and
``mtrr_del_page`` events, e.g. a driver's ``arch_phys_wc_add`` with PAT off), so the table is
replayed along the events: each reservation is judged against the MTRRs of its moment.

Pure: events in, effective types out; no I/O.
"""

from typing import Dict, Optional

from memtrace.analysis.effective import Effective, PatState, effective_type
from memtrace.analysis.events import ROLE_MTRR_ADD, ROLE_MTRR_DEL

__all__ = ["MemoryTypeContext", "EffectiveTimeline"]


class MemoryTypeContext:
    """What decides the effective type besides the granted one: the PAT state and the MTRR
    table when tracing started (None when unknown; the trace header's ``mtrr``)."""

    def __init__(self, pat_state: Optional[PatState] = None, mtrr_table=None):
        self.pat_state = pat_state if pat_state is not None else PatState(None, None)
        self.mtrr_table = mtrr_table

    @property
    def pat_disabled(self):
        """True when PAT is known to be off (``nopat``, no CPU support, Xen PV ...)."""
        return self.pat_state.enabled is False


def _apply_mtrr_change(table, event):
    """Apply one successful ``mtrr_add_page``/``mtrr_del_page`` event to ``table``."""
    if event.ret is None or event.ret < 0:
        return
    if event.role == ROLE_MTRR_ADD:
        if event.start is None or event.end is None or event.mtrr_type is None:
            return
        table.add(event.ret, event.start, event.end - event.start, event.mtrr_type)
    elif event.role == ROLE_MTRR_DEL:
        register = event.mtrr_reg if event.mtrr_reg is not None else event.ret
        size = None if event.start is None or event.end is None else event.end - event.start
        table.delete(register, event.start, size)


class EffectiveTimeline:
    """The effective type of reservations as events come in time order: MTRR changes
    (``mtrr_add_page``/``mtrr_del_page`` events) are applied to a copy of the context's
    table as they come, and each reservation is judged against the MTRRs of its moment."""

    def __init__(self, context):
        self.context = context
        self._table = context.mtrr_table.copy() if context.mtrr_table is not None else None
        # The answer depends only on the type, the range and the MTRRs: a long trace asks
        # the same few questions thousands of times, until an MTRR changes.
        self._answers: Dict[tuple, Optional[Effective]] = {}

    def observe(self, event):
        """Apply ``event`` if it changes an MTRR; True when it was an MTRR change."""
        if event.role not in (ROLE_MTRR_ADD, ROLE_MTRR_DEL):
            return False
        if self._table is not None:
            _apply_mtrr_change(self._table, event)
            self._answers.clear()
        return True

    def of(self, granted, start, end) -> Optional[Effective]:
        """The :class:`Effective` type of ``granted`` over ``[start, end)`` now."""
        key = (granted, start, end)
        if key not in self._answers:
            self._answers[key] = effective_type(
                granted, start, end, self.context.pat_state, self._table
            )
        return self._answers[key]
