"""The dask model on a local in-process cluster (skipped if ``distributed`` is not installed)."""

from __future__ import annotations

import sys

import pytest
from executor_helpers import fail, recall, remember, square

from bingfa.errors import UsageError
from bingfa.executor import Executor, RemoteTraceback

pytestmark = pytest.mark.timeout(90)


def test_missing_distributed_is_a_clear_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # makes `import distributed` fail
    with pytest.raises(UsageError, match=r"pip install 'bingfa\[dask\]'"):
        Executor("dask", 1)


def test_local_cluster_runs_submit_map_and_initializer() -> None:
    distributed = pytest.importorskip("distributed")
    with Executor(
        "dask",
        2,
        cluster_kwargs={"processes": False},
        initializer=remember,
        initargs=("dask-init", 7),
    ) as ex:
        assert ex.submit(square, 9).result(timeout=30) == 81
        assert list(ex.map(square, range(500))) == [i * i for i in range(500)]
        assert ex.submit(recall, "dask-init").result(timeout=30) == 7
        with pytest.raises(ValueError, match="nope") as info:
            ex.submit(fail, "nope").result(timeout=30)
        assert isinstance(info.value.__cause__, RemoteTraceback)
        assert ex.submit(lambda: 5).result(timeout=30) == 5
    assert distributed is not None


def test_address_and_client_are_not_closed_by_the_executor() -> None:
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0"
    )
    client = distributed.Client(cluster)
    try:
        with Executor("dask", address=cluster.scheduler_address) as ex:
            assert ex.submit(square, 3).result(timeout=30) == 9
        with Executor("dask", client=client) as ex:
            assert ex.submit(square, 4).result(timeout=30) == 16
        assert client.status == "running"  # ours to close, not the executor's
        assert client.submit(square, 5).result(timeout=30) == 25
    finally:
        client.close()
        cluster.close()


def test_dask_rejects_max_tasks_per_worker() -> None:
    pytest.importorskip("distributed")
    with pytest.raises(UsageError):
        Executor("dask", 1, max_tasks_per_worker=5, cluster_kwargs={"processes": False})
