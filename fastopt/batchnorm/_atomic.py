"""Commit blocks that an interrupt cannot split: state updates happen whole or not at all."""

from __future__ import annotations

import contextlib
import signal
import threading


@contextlib.contextmanager
def deferred_interrupts():
    """Hold back SIGINT (KeyboardInterrupt) until the block is done, then deliver it.

    Python runs signal handlers in the main thread only, so other threads need nothing; in the
    main thread the handler is swapped for one that records the signal for the block's duration
    (a few array assignments).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    try:
        previous = signal.getsignal(signal.SIGINT)
    except (ValueError, TypeError):  # pragma: no cover - no signal support here
        yield
        return
    if previous is None:  # installed from C: leave it alone
        yield
        return
    pending: list = []
    signal.signal(signal.SIGINT, lambda signum, frame: pending.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if pending:
            if callable(previous):
                previous(signal.SIGINT, pending[0])
            elif previous == signal.SIG_DFL:
                raise KeyboardInterrupt
