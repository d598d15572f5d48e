"""Lock-order (potential deadlock) detection, and that ordinary code stays quiet and correct."""

from __future__ import annotations

import _thread
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import pytest

from bingfa import locks

Instrument = Callable[..., list[locks.Report]]
THIS = Path(__file__).resolve()


def line_of(marker: str) -> int:
    """The line number of the line of this file that ends with ``# <marker>``."""
    for number, line in enumerate(THIS.read_text(encoding="utf-8").splitlines(), 1):
        if line.rstrip().endswith(f"# {marker}"):
            return number
    raise AssertionError(f"marker {marker!r} not found")


def site(marker: str) -> str:
    return f"{THIS}:{line_of(marker)}"


def kinds(reports: list[locks.Report]) -> list[str]:
    return [r.kind for r in reports]


# --------------------------------------------------------------------------- the seed's program


def test_seed_mythread_inversion_is_reported_without_hanging(instrument: Instrument) -> None:
    """func1 takes A then B, func2 takes B then A; one thread, so no hang, but a report."""
    seen = instrument()
    mutexA = threading.Lock()  # SEED:A
    mutexB = threading.Lock()  # SEED:B
    steps: list[str] = []

    class MyThread(threading.Thread):
        def run(self) -> None:
            self.func1()
            self.func2()

        def func1(self) -> None:
            mutexA.acquire()
            steps.append("func1 got A")
            mutexB.acquire()  # SEED:func1-B
            steps.append("func1 got B")
            mutexB.release()
            mutexA.release()

        def func2(self) -> None:
            mutexB.acquire()
            steps.append("func2 got B")
            mutexA.acquire()  # SEED:func2-A
            steps.append("func2 got A")
            mutexA.release()
            mutexB.release()

    t = MyThread(name="seed-thread")
    t.start()
    t.join(10)
    assert not t.is_alive()
    assert steps == ["func1 got A", "func1 got B", "func2 got B", "func2 got A"]

    assert kinds(locks.reports()) == ["potential-deadlock"]
    report = locks.reports()[0]
    assert seen == [report]  # the sink got it too
    assert {lock.name for lock in report.locks} == {"mutexA", "mutexB"}
    assert {lock.site for lock in report.locks} == {site("SEED:A"), site("SEED:B")}
    assert {(e.held.name, e.acquired.name, e.site) for e in report.edges} == {
        ("mutexA", "mutexB", site("SEED:func1-B")),
        ("mutexB", "mutexA", site("SEED:func2-A")),
    }
    assert all(e.thread == "seed-thread" for e in report.edges)
    for marker in ("SEED:A", "SEED:B", "SEED:func1-B", "SEED:func2-A"):
        assert site(marker) in report.message
    # stacks go outwards from the acquire site through run()
    edge = next(e for e in report.edges if e.acquired.name == "mutexB")
    assert [f.function for f in edge.stack[:2]] == ["func1", "run"]


def test_report_is_made_once_however_often_the_inversion_repeats(instrument: Instrument) -> None:
    instrument()
    a = threading.Lock()
    b = threading.Lock()
    for _ in range(50):
        with a, b:
            pass
        with b, a:
            pass
    assert kinds(locks.reports()) == ["potential-deadlock"]


def test_three_lock_cycle_lists_every_edge(instrument: Instrument) -> None:
    instrument()
    x = threading.Lock()
    y = threading.Lock()
    z = threading.RLock()
    with x, y:
        pass
    with y, z:
        pass
    assert locks.reports() == []
    with z, x:
        pass
    (report,) = locks.reports()
    assert report.kind == "potential-deadlock"
    names = [(e.held.name, e.acquired.name) for e in report.edges]
    assert sorted(names) == [("x", "y"), ("y", "z"), ("z", "x")]
    # the edges form a cycle, in order
    for first, second in zip(report.edges, report.edges[1:] + report.edges[:1], strict=True):
        assert first.acquired == second.held


def test_locks_created_on_one_line_are_told_apart(instrument: Instrument) -> None:
    """Classes are per creating call, not per line: a -> b -> c is no cycle."""
    instrument()
    a, b, c = threading.Lock(), threading.RLock(), threading.Lock()
    with a, b, c:
        pass
    assert locks.reports() == []
    with c, a:
        pass
    (report,) = locks.reports()
    assert sorted(lock.name for lock in report.locks) == ["a", "c"]


def test_trylocks_and_timed_acquires_add_no_edges(instrument: Instrument) -> None:
    instrument()
    a = threading.Lock()
    b = threading.Lock()
    with a:
        assert b.acquire(blocking=False)
        b.release()
    with b:
        assert a.acquire(timeout=1)
        a.release()
    assert locks.reports() == []
    # ...but a lock taken by trylock is held: a blocking acquire under it adds an edge
    c = threading.Lock()
    with b:
        assert c.acquire(False)
        with a:
            pass
        c.release()
    with a, c:
        pass
    assert kinds(locks.reports()) == ["potential-deadlock"]


def test_consistent_order_across_threads_is_quiet(instrument: Instrument) -> None:
    instrument()
    a = threading.Lock()
    b = threading.Lock()
    counter = [0]

    def work() -> None:
        for _ in range(200):
            with a, b:
                counter[0] += 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert counter[0] == 800
    assert locks.reports() == []


def test_locks_created_before_enable_are_not_tracked(instrument: Instrument) -> None:
    a = threading.Lock()
    b = threading.Lock()
    instrument()
    with a, b:
        pass
    with b, a:
        pass
    assert locks.reports() == []
    assert type(a) is _thread.LockType


# --------------------------------------------------------------------------- philosophers


def test_noodles_and_fork_with_the_rlock_cure_is_quiet(instrument: Instrument) -> None:
    """The seeds' cure: one RLock for both resources, taken in either order, many threads."""
    instrument()
    noodle_lock = fork_lock = threading.RLock()
    meals: list[str] = []

    def eat1(name: str) -> None:
        noodle_lock.acquire()
        fork_lock.acquire()
        meals.append(name)
        fork_lock.release()
        noodle_lock.release()

    def eat2(name: str) -> None:
        fork_lock.acquire()
        time.sleep(0.001)
        noodle_lock.acquire()
        meals.append(name)
        noodle_lock.release()
        fork_lock.release()

    threads = [
        threading.Thread(target=f, args=(f"{f.__name__}-{i}",))
        for i in range(5)
        for f in (eat1, eat2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(meals) == sorted(f"{f}-{i}" for i in range(5) for f in ("eat1", "eat2"))
    assert locks.reports() == []


def test_dining_philosophers_with_forks_from_one_site_are_reported(instrument: Instrument) -> None:
    """Five forks created on one line are one lock class; the cycle is found per instance."""
    instrument()
    forks = [threading.Lock() for _ in range(5)]  # FORKS
    for seat in range(5):  # each philosopher eats in turn: no hang
        with forks[seat], forks[(seat + 1) % 5]:
            pass
    (report,) = locks.reports()
    assert report.kind == "potential-deadlock"
    assert "same site" in report.message
    assert len(report.edges) == 5
    assert {lock.site for lock in report.locks} == {site("FORKS")}
    assert sorted(lock.name for lock in report.locks) == [f"forks#{i}" for i in range(1, 6)]


def test_dining_philosophers_ordering_forks_is_quiet(instrument: Instrument) -> None:
    instrument()
    forks = [threading.Lock() for _ in range(5)]
    for seat in range(5):
        first, second = sorted((seat, (seat + 1) % 5))
        with forks[first], forks[second]:
            pass
    assert locks.reports() == []


def test_bank_transfer_with_per_account_locks_is_reported(instrument: Instrument) -> None:
    instrument()

    class Account:
        def __init__(self, balance: int) -> None:
            self.balance = balance
            self.lock = threading.Lock()

    def transfer(src: Account, dst: Account, amount: int) -> None:
        with src.lock, dst.lock:
            src.balance -= amount
            dst.balance += amount

    alice, bob = Account(100), Account(100)
    transfer(alice, bob, 10)
    assert locks.reports() == []
    transfer(bob, alice, 5)
    assert kinds(locks.reports()) == ["potential-deadlock"]
    assert (alice.balance, bob.balance) == (95, 105)


# --------------------------------------------------------------------------- stdlib users


def test_queue_producer_consumer_is_quiet_and_correct(instrument: Instrument) -> None:
    instrument()
    q: queue.Queue[int | None] = queue.Queue(maxsize=8)
    assert type(q.mutex).__module__ == "bingfa.locks._core"
    results: list[int] = []
    results_lock = threading.Lock()

    def produce(start: int) -> None:
        for i in range(start, start + 200):
            q.put(i)

    def consume() -> None:
        while (item := q.get()) is not None:
            with results_lock:
                results.append(item)
            q.task_done()
        q.task_done()

    producers = [threading.Thread(target=produce, args=(k * 1000,)) for k in range(2)]
    consumers = [threading.Thread(target=consume) for _ in range(3)]
    for t in producers + consumers:
        t.start()
    for t in producers:
        t.join(10)
    for _ in consumers:
        q.put(None)
    q.join()
    for t in consumers:
        t.join(10)
    assert sorted(results) == [*range(0, 200), *range(1000, 1200)]
    assert locks.reports() == []


@pytest.mark.parametrize("lock_factory", [None, "Lock"])
def test_condition_wait_for_is_quiet_and_correct(
    instrument: Instrument, lock_factory: str | None
) -> None:
    instrument()
    cond = threading.Condition() if lock_factory is None else threading.Condition(threading.Lock())
    outer = threading.Lock()
    items: list[int] = []
    got: list[int] = []

    def consumer() -> None:
        with cond:
            assert cond.wait_for(lambda: len(items) == 3, timeout=10)
            got.extend(items)
        with outer:  # taken after the condition's lock was given back
            pass

    t = threading.Thread(target=consumer)
    t.start()
    for i in range(3):
        time.sleep(0.01)
        with cond:
            items.append(i)
            cond.notify_all()
    t.join(10)
    assert got == [0, 1, 2]
    with outer, cond:  # outer -> cond: fine unless cond's lock wrongly stayed "held" in t
        pass
    assert locks.reports() == []


def test_condition_wait_restores_rlock_recursion(instrument: Instrument) -> None:
    instrument()
    cond = threading.Condition()
    with cond, cond:  # held twice
        assert not cond.wait(timeout=0.05)
        # still held twice after the wait: two releases succeed, a third fails
    with pytest.raises(RuntimeError):
        cond.release()


def test_thread_pool_executor_is_quiet_and_correct(instrument: Instrument) -> None:
    instrument()
    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(lambda x: x * x, range(50))) == [x * x for x in range(50)]
        futures = [pool.submit(pow, 2, i) for i in range(20)]
        assert sorted(f.result() for f in as_completed(futures)) == [2**i for i in range(20)]
    assert locks.reports() == []


def test_event_semaphore_barrier_work_under_instrumentation(instrument: Instrument) -> None:
    instrument()
    event = threading.Event()
    sem = threading.BoundedSemaphore(2)
    barrier = threading.Barrier(3, timeout=10)
    inside: list[int] = []
    peak = [0]
    lock = threading.Lock()

    def worker() -> None:
        assert event.wait(10)
        for _ in range(20):
            with sem:
                with lock:
                    inside.append(1)
                    peak[0] = max(peak[0], len(inside))
                time.sleep(0.0005)
                with lock:
                    inside.pop()
        barrier.wait()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    event.set()
    barrier.wait()
    for t in threads:
        t.join(10)
    assert 1 <= peak[0] <= 2
    assert locks.reports() == []
