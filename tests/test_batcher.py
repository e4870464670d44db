"""Inference batches across series (issue 16 part 3, ``node.infer.batcher``).

The unit tests drive a batcher with a fake model that records every run, so what shares a run
is counted, not guessed from timings. Blocking is event-based (a gate the fake model waits on,
polling the batcher's pending count); the only timing assertion is a lower bound (a request
*was* held for the latency budget) with a generous upper one. The end-to-end test runs two
series through the real pipeline and bundled models concurrently, sharing batches, and checks
their findings against each series analysed alone without batching.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select, update

from node.bulk import import_file
from node.config import Config, parse_config
from node.domain import JobState
from node.infer import batcher as batcher_mod
from node.infer.batcher import BatchedSession, BatcherStopped, BatchingGroup, DynamicBatcher
from node.phantom import render_index
from node.phantom.dicom import build_dataset, make_study_info, to_bytes
from node.pipeline import Models, Pipeline
from node.receive.storage import InstanceStore
from node.registry import Database, Job, Result
from node.series import complete_due_series

REPO = Path(__file__).resolve().parents[1]
LONG_S = 30.0  # "never": what a hang would look like to these tests


# --------------------------------------------------------------------------- a fake model


class FakeModel:
    """Echoes its input and a per-row sum; records each run's rows. ``gate``: the first run
    waits on it (so requests pile up behind it); a row whose first value is NaN is poison."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.runs: list[np.ndarray] = []
        self.lock = threading.Lock()
        self.gate = gate
        self.entered = threading.Event()
        self.broken = False

    def __call__(self, x: np.ndarray) -> Mapping[str, np.ndarray]:
        with self.lock:
            self.runs.append(x.copy())
            first = len(self.runs) == 1
        self.entered.set()
        if first and self.gate is not None:
            assert self.gate.wait(LONG_S)
        if self.broken:
            raise RuntimeError("the model is broken")
        if np.isnan(x[:, 0, 0, 0]).any():
            raise ValueError("poisoned input")
        return {"echo": x.copy(), "sum": x.reshape(x.shape[0], -1).sum(axis=1)}

    def tags(self) -> list[list[float]]:
        """Per run, the caller tag of each row."""
        with self.lock:
            return [[float(v) for v in r[:, 0, 0, 0]] for r in self.runs]


def rows(tag: float, n: int) -> np.ndarray:
    """``n`` rows tagged ``tag`` (first value) and numbered (second value)."""
    x = np.zeros((n, 1, 1, 2), np.float32)
    x[:, 0, 0, 0] = tag
    x[:, 0, 0, 1] = np.arange(n)
    return x


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # collected for the assertions
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, box


def wait_for(predicate: Callable[[], bool], timeout_s: float = LONG_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def join(t: threading.Thread) -> None:
    t.join(LONG_S)
    assert not t.is_alive(), "a caller hangs"


def make(max_batch: int, max_wait_ms: float, model: FakeModel) -> tuple[BatchingGroup, DynamicBatcher]:
    group = BatchingGroup(max_batch=max_batch, max_wait_ms=max_wait_ms)
    return group, group.batcher(model, "fake")


def assert_own_rows(box: dict[str, Any], sent: np.ndarray) -> None:
    assert "error" not in box, box.get("error")
    out = box["result"]
    np.testing.assert_array_equal(out["echo"], sent)
    np.testing.assert_array_equal(out["sum"], sent.reshape(sent.shape[0], -1).sum(axis=1))


# --------------------------------------------------------------------------- unit tests


def test_requests_of_several_job_threads_share_one_run() -> None:
    """Four registered job threads submit at once: one run serves them all, as soon as the
    last is waiting (not after the 30 s budget), and each gets exactly its rows back."""
    model = FakeModel()
    group, b = make(64, 30_000, model)
    barrier = threading.Barrier(4, timeout=LONG_S)
    sent = {k: rows(k, 3) for k in range(4)}

    def job(k: int) -> Any:
        with group.client():
            barrier.wait()
            return b.submit(sent[k])

    started = time.monotonic()
    threads = [in_thread(lambda k=k: job(k)) for k in range(4)]
    for t, _ in threads:
        join(t)
    assert time.monotonic() - started < 20.0  # started early: all clients were waiting
    assert len(model.runs) == 1 and model.runs[0].shape[0] == 12
    for k, (_, box) in enumerate(threads):
        assert_own_rows(box, sent[k])
    assert b.stats.shared_runs == 1 and b.stats.requests == 4


def test_unregistered_callers_merge_when_the_batch_fills() -> None:
    """Threads that never registered are not waited for, but requests that pile up while the
    model is busy share the next run."""
    gate = threading.Event()
    model = FakeModel(gate)
    _, b = make(64, 30_000, model)
    first = in_thread(lambda: b.submit(rows(9, 1)))
    assert model.entered.wait(LONG_S)
    sent = {k: rows(k, 2) for k in range(5)}
    threads = [in_thread(lambda k=k: b.submit(sent[k])) for k in range(5)]
    wait_for(lambda: b.pending() == 5)
    gate.set()
    for t, _ in [first, *threads]:
        join(t)
    assert [len(r) for r in model.tags()] == [1, 10]  # the blocker, then one merged run
    for k, (_, box) in enumerate(threads):
        assert_own_rows(box, sent[k])


def test_max_wait_bounds_how_long_a_request_is_held() -> None:
    """Job A waits on the model while job B (registered) is busy elsewhere: A's batch starts
    after the latency budget, without B's rows, not later."""
    model = FakeModel()
    group, b = make(64, 300, model)
    b_registered, a_done = threading.Event(), threading.Event()

    def job_b() -> Any:
        with group.client():
            b_registered.set()
            assert a_done.wait(LONG_S)  # "busy elsewhere" until A has its result
            return b.submit(rows(2, 1))

    tb, box_b = in_thread(job_b)
    assert b_registered.wait(LONG_S)
    sent = rows(1, 2)
    with group.client():
        t0 = time.monotonic()
        out = b.submit(sent)
        held = time.monotonic() - t0
    a_done.set()
    join(tb)
    np.testing.assert_array_equal(out["echo"], sent)
    assert held >= 0.3 - 1e-3, held  # it did wait for B ...
    assert held < 10.0, held  # ... but only for the budget
    assert model.tags() == [[1.0, 1.0], [2.0]]
    assert_own_rows(box_b, rows(2, 1))


def test_max_batch_bounds_every_run() -> None:
    """No run exceeds ``max_batch`` rows; a request larger than that is split across runs and
    comes back whole, in order."""
    gate = threading.Event()
    model = FakeModel(gate)
    _, b = make(5, 30_000, model)
    first = in_thread(lambda: b.submit(rows(99, 1)))
    assert model.entered.wait(LONG_S)
    sent = {k: rows(k, 3) for k in range(6)}
    sent[6] = rows(6, 12)
    threads = [in_thread(lambda k=k: b.submit(sent[k])) for k in sent]
    wait_for(lambda: b.pending() == 6 + 3)  # 12 rows: three requests of <= 5
    gate.set()
    for t, _ in [first, *threads]:
        join(t)
    sizes = [len(r) for r in model.tags()]
    assert max(sizes) <= 5 and sum(sizes) == 1 + 6 * 3 + 12
    assert b.stats.max_rows <= 5
    for k, (_, box) in enumerate(threads):
        assert_own_rows(box, sent[k])


def test_an_error_goes_back_to_its_own_caller_only() -> None:
    """A poisoned request shares a batch with two good ones: the batch fails, is run again
    request by request, and only the poisoned caller gets the error; the batcher lives on."""
    gate = threading.Event()
    model = FakeModel(gate)
    _, b = make(64, 30_000, model)
    first = in_thread(lambda: b.submit(rows(9, 1)))
    assert model.entered.wait(LONG_S)
    poison = rows(math.nan, 2)
    good = {k: rows(k, 2) for k in (1, 2)}
    tp, box_p = in_thread(lambda: b.submit(poison))
    tg = [in_thread(lambda k=k: b.submit(good[k])) for k in good]
    wait_for(lambda: b.pending() == 3)
    gate.set()
    for t, _ in [first, (tp, box_p), *tg]:
        join(t)
    assert isinstance(box_p.get("error"), ValueError) and "poisoned" in str(box_p["error"])
    for k, (_, box) in zip(good, tg, strict=True):
        assert_own_rows(box, good[k])
    assert b.stats.failed_runs == 1
    assert_own_rows({"result": b.submit(rows(3, 1))}, rows(3, 1))


def test_a_failing_model_fails_that_batch_not_the_next() -> None:
    """Every caller of a batch that cannot run gets the model's error (no crash, no hang), and
    the next batch runs when the model works again."""
    model = FakeModel()
    _, b = make(64, 0, model)
    model.broken = True
    boxes = [in_thread(lambda k=k: b.submit(rows(k, 1))) for k in range(3)]
    for t, _ in boxes:
        join(t)
    for _, box in boxes:
        assert isinstance(box.get("error"), RuntimeError) and "broken" in str(box["error"])
    model.broken = False
    assert_own_rows({"result": b.submit(rows(7, 2))}, rows(7, 2))


def test_live_requests_go_before_imported_ones() -> None:
    """Imported images queued first, live ones after: the next batches take the live ones
    first, imported ones in arrival order after them."""
    gate = threading.Event()
    model = FakeModel(gate)
    _, b = make(2, 30_000, model)
    first = in_thread(lambda: b.submit(rows(0, 1)))
    assert model.entered.wait(LONG_S)
    threads = []
    for tag in (11, 12, 13, 14):  # import, priority -10
        threads.append(in_thread(lambda tag=tag: b.submit(rows(tag, 1), priority=-10)))
        queued = len(threads)
        wait_for(lambda queued=queued: b.pending() == queued)
    for tag in (1, 2):  # live, priority 0 (the caller's default)
        threads.append(in_thread(lambda tag=tag: b.submit(rows(tag, 1))))
        queued = len(threads)
        wait_for(lambda queued=queued: b.pending() == queued)
    gate.set()
    for t, _ in [first, *threads]:
        join(t)
    assert model.tags() == [[0.0], [1.0, 2.0], [11.0, 12.0], [13.0, 14.0]]


def test_the_priority_of_a_client_block_is_used() -> None:
    """A job thread's requests carry the priority it registered with (the pipeline passes the
    job's), so an import job's images wait behind a live job's."""
    gate = threading.Event()
    model = FakeModel(gate)
    group, b = make(1, 30_000, model)
    first = in_thread(lambda: b.submit(rows(0, 1)))
    assert model.entered.wait(LONG_S)

    def job(tag: int, priority: int) -> Any:
        with group.client(priority):
            return b.submit(rows(tag, 1))

    ti = in_thread(lambda: job(5, -10))
    wait_for(lambda: b.pending() == 1)
    tl = in_thread(lambda: job(6, 0))
    wait_for(lambda: b.pending() == 2)
    gate.set()
    for t, _ in (first, ti, tl):
        join(t)
    assert model.tags() == [[0.0], [6.0], [5.0]]


def test_stop_fails_waiting_callers_and_refuses_new_ones() -> None:
    """Stopping: the batch running finishes for its caller, a waiting request fails at once
    with BatcherStopped, and later requests are refused."""
    gate = threading.Event()
    model = FakeModel(gate)
    _, b = make(64, 30_000, model)
    t1, box1 = in_thread(lambda: b.submit(rows(1, 1)))
    assert model.entered.wait(LONG_S)
    t2, box2 = in_thread(lambda: b.submit(rows(2, 1)))
    wait_for(lambda: b.pending() == 1)
    ts, _ = in_thread(b.stop)
    join(t2)  # failed without waiting for the running batch
    assert isinstance(box2.get("error"), BatcherStopped)
    assert t1.is_alive()
    gate.set()
    join(t1)
    join(ts)
    assert_own_rows(box1, rows(1, 1))
    with pytest.raises(BatcherStopped):
        b.submit(rows(3, 1))
    assert len(model.runs) == 1


def test_two_instances_run_two_batches_at_once() -> None:
    """``instances=2``: while one run of the model is held, the next batch runs beside it
    (and what piled up meanwhile is merged into it)."""
    gate = threading.Event()
    model = FakeModel(gate)
    group = BatchingGroup(max_batch=64, max_wait_ms=30_000, instances=2)
    b = group.batcher(model, "fake")
    first = in_thread(lambda: b.submit(rows(1, 1)))
    assert model.entered.wait(LONG_S)
    second = in_thread(lambda: b.submit(rows(2, 2)))
    join(second[0])  # finished while the first run is still held
    assert first[0].is_alive()
    assert_own_rows(second[1], rows(2, 2))
    gate.set()
    join(first[0])
    assert_own_rows(first[1], rows(1, 1))
    assert model.tags() == [[1.0], [2.0, 2.0]]
    b.stop()
    assert b.threads() == 0


def test_an_idle_batcher_thread_ends_and_comes_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batcher_mod, "IDLE_EXIT_S", 0.05)
    model = FakeModel()
    _, b = make(8, 0, model)
    assert_own_rows({"result": b.submit(rows(1, 1))}, rows(1, 1))
    wait_for(lambda: b.threads() == 0)
    assert_own_rows({"result": b.submit(rows(2, 3))}, rows(2, 3))
    assert len(model.runs) == 2


# --------------------------------------------------------------------------- the node's models


def _config(tmp: Path, name: str, *, batching: bool, max_wait_ms: float = 5.0) -> Config:
    return parse_config({
        "storage": {"root": str(tmp / name / "storage"), "min_free_mb": 1},
        "database": {"url": f"sqlite:///{tmp / name / 'db.sqlite'}"},
        "outputs": {"root": str(tmp / name / "results"), "sc_compression": "none"},
        "models": {"root": str(REPO / "models")},
        "series": {"quiet_period_s": 0.01},
        "batching": {"enabled": batching, "max_wait_ms": max_wait_ms},
        "log_level": "WARNING",
    })


#: two series (studies) of several views; implants drawn at random per image
SERIES = (("ap_pelvis", "ap_hip", "lateral_hip"), ("ap_pelvis", "ap_pelvis"))


def _write_series(root: Path) -> list[Path]:
    rng = np.random.default_rng(1616)
    root.mkdir(parents=True)
    paths = []
    for study, views in enumerate(SERIES):
        info = make_study_info(1616, study + 1, "F", rng, modality="DX")
        for n, view in enumerate(views):
            img = render_index(1616, study * 10 + n, views=[view], size=256)
            path = root / f"s{study}-{n}.dcm"
            path.write_bytes(to_bytes(build_dataset(img, info, 1, n + 1, rng)))
            paths.append(path)
    return paths


def _queue(cfg: Config, paths: list[Path]) -> tuple[Database, list[int]]:
    Path(cfg.storage.root).parent.mkdir(parents=True, exist_ok=True)
    db = Database(cfg.database.url)
    db.migrate()
    store = InstanceStore(cfg.storage.root, min_free_mb=1)
    for path in paths:
        assert import_file(cfg, db, store, path, "CR1") == "new"
    time.sleep(0.05)
    jobs = sorted(complete_due_series(db, cfg))
    assert len(jobs) == len(SERIES)
    return db, jobs


def _findings(db: Database, jobs: list[int]) -> list[Any]:
    with db.session() as s:
        out = []
        for job_pk in jobs:
            job = s.get(Job, job_pk)
            assert job is not None
            results = sorted(
                (r.kind, r.sop_instance_uid, r.payload) for r in s.scalars(select(Result).where(Result.job_pk == job_pk))
            )
            out.append((job.summary, results))
        return out


def _close(a: Any, b: Any, path: str = "") -> None:
    """Equal, floats within 1e-6 (relative): the same numbers whether batched or not."""
    if isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, (int, float)) and isinstance(b, (int, float)), (path, a, b)
        assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9), (path, a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (path, a, b)
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), (path, a, b)
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


def test_models_run_through_batchers_with_the_same_numbers(tmp_path: Path) -> None:
    """With batching on, every session of ``Models`` is batched, and the predictions of images
    submitted from several threads at once equal the unbatched ones."""
    batched = Models(_config(tmp_path, "b", batching=True, max_wait_ms=10_000))  # early start, never the budget
    plain = Models(_config(tmp_path, "p", batching=False))
    try:
        assert batched.triage is not None and batched.detector is not None and batched.morphology is not None
        assert isinstance(batched.triage.model, BatchedSession)
        assert len(batched.triage.sessions) >= 2  # the bundled triage is an ensemble: every member batched
        assert all(isinstance(s, BatchedSession) for s in batched.triage.sessions)
        assert isinstance(batched.detector.model, BatchedSession)
        assert all(isinstance(m.model, BatchedSession) for m in batched.morphology.models)
        assert plain.triage is not None and not isinstance(plain.triage.model, BatchedSession)
        images = [render_index(77, i, views=[v], size=256).normalized()
                  for i, v in enumerate(("ap_pelvis", "ap_hip", "lateral_hip", "other", "ap_pelvis", "ap_hip"))]
        want = plain.triage.probabilities(images)
        barrier = threading.Barrier(3, timeout=LONG_S)

        def job(part: list[np.ndarray]) -> Any:
            assert batched.triage is not None
            with batched.inference():
                barrier.wait()
                return batched.triage.probabilities(part)

        threads = [in_thread(lambda k=k: job(images[2 * k : 2 * k + 2])) for k in range(3)]
        for t, _ in threads:
            join(t)
        for k, (_, box) in enumerate(threads):
            assert "error" not in box, box.get("error")
            for name, arr in box["result"].items():
                np.testing.assert_allclose(arr, want[name][2 * k : 2 * k + 2], rtol=1e-5, atol=1e-6)
        stats = batched.batching.stats() if batched.batching is not None else {}
        first, *others = batched.triage.sessions
        triage_stats = stats[first.manifest.label.replace(" ", "-")]
        assert triage_stats.runs == 1 and triage_stats.requests == 3  # the three jobs shared one run
        # the ensemble's later members went through their batchers too; a job that reaches one
        # while the others are still waking from the first member's run may start it alone
        for session in others:
            member_stats = stats[session.manifest.label.replace(" ", "-")]
            assert member_stats.requests == 3 and 1 <= member_stats.runs <= 3, session.manifest.label
    finally:
        batched.close()
        plain.close()


def test_two_series_analysed_concurrently_give_the_findings_they_give_alone(tmp_path: Path) -> None:
    """The bar: two series processed at once by two pipelines over one set of models share
    inference runs, and their results (findings payloads, result UIDs, job summaries) are those
    of each series analysed alone without batching."""
    paths = _write_series(tmp_path / "in")

    # alone: one series after the other, batching off
    cfg_alone = _config(tmp_path, "alone", batching=False)
    db_alone, jobs_alone = _queue(cfg_alone, paths)
    alone = Pipeline(cfg_alone, db_alone)
    for job_pk in jobs_alone:
        outcome = alone.process(job_pk)
        assert outcome.state is JobState.DONE, outcome
        with db_alone.session() as s:
            s.execute(update(Job).where(Job.id == job_pk).values(summary=outcome.summary))
            s.commit()

    # together: two job threads, held at the start of inference until both are registered
    cfg = _config(tmp_path, "together", batching=True, max_wait_ms=10_000)
    db, jobs = _queue(cfg, paths)
    with db.session() as s:  # the second series as an imported job: its priority reaches inference
        s.execute(update(Job).where(Job.id == jobs[1]).values(priority=-10))
        s.commit()
    models = Models(cfg)
    assert models.batching is not None
    try:
        barrier = threading.Barrier(2, timeout=LONG_S)
        pipelines = [Pipeline(cfg, db, models) for _ in jobs]
        for p in pipelines:
            original = p._infer_images

            def held(sources: Any, original: Any = original) -> None:
                barrier.wait()
                original(sources)

            p._infer_images = held  # type: ignore[method-assign]
        assert pipelines[1]._load_context(jobs[1]).priority == -10

        def run(i: int) -> Any:
            outcome = pipelines[i].process(jobs[i])
            with db.session() as s:
                s.execute(update(Job).where(Job.id == jobs[i]).values(summary=outcome.summary))
                s.commit()
            return outcome

        threads = [in_thread(lambda i=i: run(i)) for i in range(len(jobs))]
        for t, _ in threads:
            t.join(300)
            assert not t.is_alive()
        for _, box in threads:
            assert "error" not in box, box.get("error")
            assert box["result"].state is JobState.DONE, box["result"]
        stats = models.batching.stats()
        assert sum(s.shared_runs for s in stats.values()) >= 1, stats
        assert models.triage is not None
        # the first triage member's runs were shared (a later member of the ensemble may be
        # reached by one job while the other still counts as waiting on the first: not asserted)
        first = models.triage.sessions[0]
        assert stats[first.manifest.label.replace(" ", "-")].shared_runs >= 1, stats
    finally:
        models.close()

    together = _findings(db, jobs)
    expected = _findings(db_alone, jobs_alone)
    assert len(together) == len(expected) == 2
    assert all(results for _, results in together)
    _close(together, expected)
    db.dispose()
    db_alone.dispose()
