"""Forked worker processes, for validation that is bound by one core (msgspec holds the GIL).

Fork, not spawn: a spawned worker would import this package again (about a second here), more
than it saves on a file of a few hundred MB; a forked one starts in milliseconds with the parent's
modules, tokenizer included. Each worker runs one function call and sends back its result (or its
exception) through its own pipe; the parent reads them in order.

Upstream's data processing forks too: ``datasets`` (with ``num_proc``) runs in a
``multiprocessing`` pool, which ends its workers with SIGTERM and then waits for them. A forked
worker inherits its parent's Python signal handlers, and the processes that prepare data catch
SIGTERM: Airflow's task runner does, and ignores the signal in forked children; our CLI does, to
pass a stop on to its children. A worker that survives SIGTERM makes that wait endless, a task
hung rather than failed; ``workers_die_on_sigterm`` gives the children forked meanwhile
SIGTERM's default action back.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any


def can_fork() -> bool:
    """Whether workers can be forked here: not on a platform without fork, nor from a daemonic
    process (one of ours, or a pool's), which multiprocessing forbids to have children."""
    return "fork" in multiprocessing.get_all_start_methods() and not multiprocessing.current_process().daemon


def available_cpus() -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 quota (a Kubernetes pod's
    CPU limit), which the affinity does not show."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cpus


_sigterm_default_in_children = 0
_sigterm_lock = threading.Lock()
_mask_before_fork = threading.local()


def _block_sigterm_before_fork() -> None:
    """A SIGTERM that reaches a child before its after-fork hook has run meets the inherited
    handler, or is cleared by CPython's own after-fork reset: either way it is lost, and a pool that
    terminated a worker it had just forked waited for it for good (rarely; a CI run under load).
    Blocked across the fork, the signal waits in the kernel for the default action."""
    if _sigterm_default_in_children:
        _mask_before_fork.mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})


def _restore_mask_after_fork(in_child: bool) -> None:
    mask = getattr(_mask_before_fork, "mask", None)
    if mask is None:
        return
    del _mask_before_fork.mask
    try:
        if in_child:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    finally:  # never a child left deaf to SIGTERM
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


os.register_at_fork(
    before=_block_sigterm_before_fork,
    after_in_parent=lambda: _restore_mask_after_fork(in_child=False),
    after_in_child=lambda: _restore_mask_after_fork(in_child=True),
)


@contextmanager
def workers_die_on_sigterm() -> Iterator[None]:
    global _sigterm_default_in_children
    with _sigterm_lock:
        _sigterm_default_in_children += 1
    try:
        yield
    finally:
        with _sigterm_lock:
            _sigterm_default_in_children -= 1


class WorkerFailed(RuntimeError):
    """A worker died without a result (killed, or out of memory)."""


def _run(fn: Callable[..., Any], args: Sequence[Any], conn: Connection) -> None:
    try:
        result: tuple[bool, Any] = (True, fn(*args))
    except BaseException as exc:  # sent to the parent, which raises it
        exc.add_note("in a validation worker:\n" + "".join(traceback.format_exception(exc)))
        result = (False, exc)
    try:
        conn.send(result)
    except Exception as exc:  # an exception that does not pickle
        conn.send((False, RuntimeError(f"a validation worker failed: {result[1]!r}; {exc}")))


def run_forked(fn: Callable[..., Any], calls: Sequence[Sequence[Any]]) -> list[Any]:
    """``[fn(*args) for args in calls]``, each call in a forked process, all at once. The first
    exception raised in a worker is raised here; the other workers are then stopped."""
    context = multiprocessing.get_context("fork")
    workers = []
    with workers_die_on_sigterm():
        try:
            for args in calls:
                receive, send = context.Pipe(duplex=False)
                process = context.Process(target=_run, args=(fn, args, send), daemon=True)
                process.start()
                send.close()  # so that a worker that dies leaves an EOF, not a wait
                workers.append((process, receive))
            results = []
            for process, receive in workers:
                try:
                    ok, value = receive.recv()
                except EOFError:
                    process.join()
                    raise WorkerFailed(f"a validation worker died with exit code {process.exitcode}") from None
                if not ok:
                    raise value
                results.append(value)
            return results
        finally:
            for process, receive in workers:
                if process.is_alive():
                    process.terminate()
                process.join()
                receive.close()
