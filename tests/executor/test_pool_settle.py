"""``settle``: what becomes of each job a dead worker held - a pure function, tested alone.

The end-to-end behaviour (real workers killed mid-task) is in ``test_executor_process.py``;
here every branch is driven with plain inputs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from bingfa.executor import TaskTimeout, WorkerDied
from bingfa.executor._pool import (
    MAX_REQUEUES,
    REASON_HELD,
    REASON_LOADING,
    REASON_LOST,
    REASON_NOT_STARTED,
    REASON_RUNNING,
    Settlement,
    _slot_view,
    settle,
)
from bingfa.executor._worker import SLOT_IDLE, SLOT_LOADING, SLOT_REPORTING

PID = 4242
KILLED = -9


def describe(i: int) -> str:
    return f"app.work({i})"


def decide(
    n: int,
    state: float | None,
    group_end: int = 0,
    *,
    reported: int = 0,
    sequential: bool = True,
    requeues: int = 0,
    kill_timeout: float | None = None,
    terminated: bool = False,
) -> Settlement:
    return settle(
        n,
        reported,
        state,
        group_end,
        sequential=sequential,
        requeues=requeues,
        kill_timeout=kill_timeout,
        terminated=terminated,
        pid=PID,
        exitcode=KILLED,
        describe=describe,
    )


def reasons(s: Settlement) -> dict[int, str]:
    """Item -> ``WorkerDied.reason`` (``"timeout"`` for a TaskTimeout)."""
    out: dict[int, str] = {}
    for i, exc in s.errors.items():
        if isinstance(exc, TaskTimeout):
            out[i] = "timeout"
        else:
            assert isinstance(exc, WorkerDied), exc
            out[i] = exc.reason
    return out


# --- never started ----------------------------------------------------------------------------


@pytest.mark.parametrize("state", [None, SLOT_IDLE])
def test_a_job_that_never_started_is_requeued(state: float | None) -> None:
    s = decide(1, state)
    assert s.requeue
    assert s.requeues == 1
    assert not s.errors and s.not_run_from is None


def test_a_batch_that_never_started_is_requeued_whole() -> None:
    s = decide(50, None, requeues=1)
    assert s.requeue and s.requeues == 2 and not s.errors


def test_requeued_at_most_max_requeues_times() -> None:
    s = decide(3, None, requeues=MAX_REQUEUES - 1)
    assert s.requeue and s.requeues == MAX_REQUEUES
    s = decide(3, None, requeues=MAX_REQUEUES)
    assert not s.requeue
    assert s.requeues == MAX_REQUEUES + 1
    assert reasons(s) == dict.fromkeys(range(3), REASON_NOT_STARTED)
    assert s.not_run_from is None


def test_nothing_is_requeued_while_terminating() -> None:
    s = decide(2, None, terminated=True)
    assert not s.requeue
    assert reasons(s) == {0: REASON_NOT_STARTED, 1: REASON_NOT_STARTED}


# --- loading and reporting --------------------------------------------------------------------


def test_died_while_loading_the_job() -> None:
    s = decide(4, SLOT_LOADING)
    assert not s.requeue and s.requeues == 0
    assert reasons(s) == dict.fromkeys(range(4), REASON_LOADING)
    assert s.not_run_from is None


def test_died_while_reporting_loses_what_was_not_reported() -> None:
    s = decide(5, SLOT_REPORTING, 5, reported=2)
    assert reasons(s) == dict.fromkeys(range(2, 5), REASON_LOST)  # 0 and 1 arrived
    assert s.not_run_from is None


# --- running ----------------------------------------------------------------------------------


def test_a_single_call_that_was_running() -> None:
    s = decide(1, 0.0, 1)
    assert reasons(s) == {0: REASON_RUNNING}
    assert s.not_run_from is None
    exc = s.errors[0]
    assert isinstance(exc, WorkerDied)
    assert (exc.pid, exc.exitcode, exc.signal, exc.task) == (PID, KILLED, 9, "app.work(0)")
    assert "killed by SIGKILL while running the task: app.work(0)" in str(exc)


def test_mid_batch_pins_the_running_call_and_gives_back_the_rest() -> None:
    """Calls 0-1 were reported, 2-4 finished but their outcomes were lost, 5 was running,
    6-9 never started: the map driver re-runs those."""
    s = decide(10, 5.0, 6, reported=2)
    assert not s.requeue
    assert reasons(s) == {2: REASON_LOST, 3: REASON_LOST, 4: REASON_LOST, 5: REASON_RUNNING}
    assert s.not_run_from == 6


def test_mid_batch_with_nothing_reported_yet() -> None:
    s = decide(4, 0.0, 1)
    assert reasons(s) == {0: REASON_RUNNING}
    assert s.not_run_from == 1


def test_the_last_call_of_a_batch_leaves_nothing_to_rerun() -> None:
    s = decide(4, 3.0, 4, reported=1)
    assert reasons(s) == {1: REASON_LOST, 2: REASON_LOST, 3: REASON_RUNNING}
    assert s.not_run_from is None


def test_a_crash_inside_a_group_of_small_calls_fails_the_group() -> None:
    s = decide(100, 10.0, 42, reported=10)
    group = "while running a group of 32 small tasks this one was in"
    assert reasons(s) == dict.fromkeys(range(10, 42), group)
    assert s.not_run_from == 42


def test_a_group_whose_end_is_unknown_runs_to_the_end_of_the_job() -> None:
    s = decide(6, 2.0, 0)
    assert reasons(s) == {
        0: REASON_LOST,
        1: REASON_LOST,
        **dict.fromkeys(range(2, 6), "while running a group of 4 small tasks this one was in"),
    }
    assert s.not_run_from is None


def test_a_group_end_past_the_job_is_clamped() -> None:
    s = decide(3, 1.0, 99)
    assert set(s.errors) == {0, 1, 2}
    assert s.not_run_from is None


# --- timeout kill -----------------------------------------------------------------------------


def test_a_timeout_kill_fails_the_running_call_with_task_timeout() -> None:
    s = decide(1, 0.0, 1, kill_timeout=2.5)
    assert reasons(s) == {0: "timeout"}
    exc = s.errors[0]
    assert isinstance(exc, TaskTimeout)
    assert (exc.timeout, exc.pid, exc.task) == (2.5, PID, "app.work(0)")
    assert exc.how == f"worker pid {PID} was killed and replaced"


def test_a_timeout_kill_mid_batch() -> None:
    s = decide(5, 3.0, 4, kill_timeout=1.0)
    assert reasons(s) == {0: REASON_LOST, 1: REASON_LOST, 2: REASON_LOST, 3: "timeout"}
    assert s.not_run_from == 4


def test_a_timeout_kill_is_not_pinned_on_a_group() -> None:
    s = decide(8, 0.0, 4, kill_timeout=1.0)
    assert all(isinstance(e, WorkerDied) for e in s.errors.values())
    assert s.not_run_from == 4


# --- concurrent workers -----------------------------------------------------------------------


@pytest.mark.parametrize("state", [None, SLOT_IDLE, SLOT_LOADING, 0.0])
def test_a_concurrent_worker_fails_everything_it_held(state: float | None) -> None:
    """hybrid and gevent workers run many calls at once and keep no slot: every unreported
    call fails, nothing is re-queued or re-run."""
    s = decide(4, state, sequential=False)
    assert not s.requeue and s.requeues == 0
    assert reasons(s) == dict.fromkeys(range(4), REASON_HELD)
    assert s.not_run_from is None


def test_a_concurrent_worker_keeps_what_it_reported() -> None:
    s = decide(4, None, reported=1, sequential=False, terminated=True)
    assert reasons(s) == dict.fromkeys(range(1, 4), REASON_HELD)


# --- robustness and form ----------------------------------------------------------------------


def test_an_index_before_the_reported_prefix_counts_from_the_prefix() -> None:
    s = decide(6, 1.0, 2, reported=3)  # inconsistent slot: never blames a reported call
    assert min(s.errors) == 3
    assert reasons(s)[3] == REASON_RUNNING
    assert s.not_run_from == 4


def test_an_index_past_the_end_blames_no_running_call() -> None:
    s = decide(3, 7.0, 8, reported=1)
    assert reasons(s) == {1: REASON_LOST, 2: REASON_LOST}
    assert s.not_run_from is None


def test_the_decision_is_a_frozen_value() -> None:
    s = decide(3, 1.0, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.requeue = True  # type: ignore[misc]
    errors: Any = s.errors
    with pytest.raises(TypeError):
        errors[0] = None
    again = decide(3, 1.0, 2)
    assert (again.requeue, again.requeues, again.not_run_from) == (
        s.requeue,
        s.requeues,
        s.not_run_from,
    )
    assert reasons(again) == reasons(s)


def test_settle_only_describes_the_calls_it_fails() -> None:
    asked: list[int] = []

    def spy(i: int) -> str:
        asked.append(i)
        return describe(i)

    settle(
        10,
        4,
        6.0,
        7,
        sequential=True,
        requeues=0,
        kill_timeout=None,
        terminated=False,
        pid=PID,
        exitcode=None,
        describe=spy,
    )
    assert sorted(asked) == [4, 5, 6]


# --- reading a dead worker's slot -------------------------------------------------------------


def test_slot_view() -> None:
    # slot layout: [job id, state or first item of the running group, start, end of the group]
    assert _slot_view(None, 7) == (None, 0)
    assert _slot_view([8.0, 3.0, 0.0, 4.0], 7) == (None, 0)  # another job
    assert _slot_view([7.0, 3.0, 123.0, 4.0], 7) == (3.0, 4)
    assert _slot_view([7.0, SLOT_LOADING, 0.0, 0.0], 7) == (SLOT_LOADING, 0)
