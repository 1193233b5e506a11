"""The simulated instances: what one sim worker does, in virtual time.

An inference instance runs the worker's own batching decisions (`worker/batching.py`'s
`BatchQueue`) and paces every batch through the gate's rules in closed form (`pacing.py`):
the same batch, at the same moment, lasting the same time as in a sim worker with the same
history. A training instance steps back to back: each step's GPU part is paced the same way
while its host part overlaps it (step = max(GPU part at the share, host part)).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from services.node_agent.pages import control_for
from services.node_agent.token_bucket import PPM, BucketParams
from services.node_agent.worker.batching import BatchQueue
from services.node_agent.worker.gate import bucket_params
from services.perf import PerfModel
from services.simulator.serving.pacing import PacedRun
from services.simulator.serving.scenario import TrainingJob
from services.simulator.serving.windows import QosWindow, WindowCounter

if TYPE_CHECKING:
    from services.simulator.serving.engine import FunctionRuntime

NS = 1_000_000_000
STARTING, READY, DRAINING, STOPPED = "starting", "ready", "draining", "stopped"


class Scheduler(Protocol):
    """What an instance needs from the simulation around it."""

    def schedule(self, at_ns: int, action: Callable[..., None], *args: Any, first: bool = False) -> None: ...

    def add_busy(self, gpus: tuple[str, ...], work_ns: int) -> None: ...


class Arbitration(Protocol):
    def poke(self, instance: Any, now_ns: int) -> None: ...


def page_params(share: float, request: float, limit: float, memory_mib: int) -> BucketParams:
    """The bucket's view of the control page the agent writes for this share."""
    return bucket_params(control_for(share, request, limit, memory_mib << 20))


class _Instance:
    """What inference and training instances share: identity, quota, share, gate pacing."""

    training = False

    def __init__(self, sim: Scheduler, instance_id: str, node: str, gpus: tuple[str, ...],
                 request: float, limit: float, memory_mib: int, perf: PerfModel) -> None:
        self.sim = sim
        self.id = instance_id
        self.node = node
        self.gpus = gpus
        self.request, self.limit, self.memory_mib = request, limit, memory_mib
        self.perf = perf
        self.state = STARTING
        self.arbitration: Arbitration | None = None
        self.tat_ns = 0
        self.run: PacedRun | None = None
        self.version = 0
        self.past_wait_end: int | None = None  # latest end of a gate sleep in ended runs
        self.busy_ns = 0
        self.set_params(request)

    def set_params(self, share: float) -> None:
        self.share = share
        self.params = page_params(share, self.request, self.limit, self.memory_mib)
        # What the worker reads back from its page (parts per million).
        self.page_share = self.params.share_ppm / PPM

    # ---- hunger, as the node agent sees it (ends of the gate's sleeps) ------------------

    def last_wait_end(self, t_ns: int) -> int | None:
        run = self.run
        if run is not None and run.start_ns <= t_ns:
            latest = run.last_wait_end(t_ns)
            if latest is not None:
                return latest
        return self.past_wait_end

    def next_wait_end(self, t_ns: int) -> int | None:
        return self.run.next_wait_end(t_ns) if self.run is not None else None

    def _retire_run(self, until_ns: int) -> None:
        """The current run is replaced or done: keep its last sleep end before `until_ns`
        (for the arbitration; an instance alone, as in the stand-in profile, has none)."""
        assert self.run is not None
        if self.arbitration is None:
            return
        latest = self.run.last_wait_end(until_ns)
        if latest is not None:
            self.past_wait_end = latest

    def _poke(self, now_ns: int) -> None:
        if self.arbitration is not None:
            self.arbitration.poke(self, now_ns)

    def set_share(self, now_ns: int, share: float) -> None:
        """The arbiter changed the share at `now_ns` (a period boundary)."""
        raise NotImplementedError


class InferenceInstance(_Instance):
    def __init__(self, sim: Scheduler, function: FunctionRuntime, instance_id: str, node: str,
                 gpus: tuple[str, ...], request: float, limit: float, memory_mib: int,
                 max_batch: int, perf: PerfModel, now_ns: int, slowdown: float = 1.0) -> None:
        super().__init__(sim, instance_id, node, gpus, request, limit, memory_mib, perf)
        self.function = function
        # The sim runtime's `slowdown` option: every batch takes this factor longer than the
        # tables say (the worker's own estimate knows it, as a measuring worker's would).
        self.slowdown = slowdown
        self.max_batch = max_batch
        self.queue: BatchQueue[int] = BatchQueue(function.slo_s, max_batch, self._estimate_s,
                                                 now_ns / NS)
        self.batch: list[int] = []  # client arrival times of the batch running
        self.batch_work_ns = 0
        self.outstanding = 0        # routed here, not yet answered
        self.window = WindowCounter(now_ns)
        self.window.set_share(now_ns, self.page_share)
        self.last_window: QosWindow | None = None
        self._cost_s: dict[int, float] = {}  # whole-GPU time of a batch, by size

    def _full_cost_s(self, batch: int) -> float:
        cost = self._cost_s.get(batch)
        if cost is None:
            cost = self._cost_s[batch] = self.perf.full_gpu_cost_s(batch) * self.slowdown
        return cost

    def _estimate_s(self, batch: int, share: float) -> float:
        # `engines.time_sliced_s`, with the table lookup cached.
        return self._full_cost_s(batch) / max(share, 0.01)

    def set_max_batch(self, max_batch: int) -> None:
        self.max_batch = self.queue.max_batch = max_batch

    # ---- requests ----------------------------------------------------------------------

    def arrive(self, now_ns: int, client_ns: int) -> None:
        """A request reaches the worker at `now_ns`; `client_ns` is when the client sent it."""
        self.queue.push(client_ns, now_ns / NS)
        self.outstanding += 1
        self.window.arrivals += 1
        self.window.inflight(now_ns, 1)
        if self.run is None:
            self._decide(now_ns)

    def _decide(self, now_ns: int) -> None:
        wait_s = self.queue.wait_s(now_ns / NS, self.page_share)
        self.version += 1
        if wait_s <= 0:
            self._start(now_ns)
            return
        # The worker waits with asyncio.wait_for: due at the loop's time plus the wait.
        self.sim.schedule(round((now_ns / NS + wait_s) * NS), self._collected, self.version)

    def _collected(self, now_ns: int, version: int) -> None:
        if version == self.version and self.run is None and len(self.queue):
            self._start(now_ns)

    def _start(self, now_ns: int) -> None:
        taken = self.queue.take(now_ns / NS, self.page_share)
        self.batch = [client for _, client in taken]
        work = max(1, round(self._full_cost_s(len(taken)) * NS))
        self.batch_work_ns = work
        self.run = PacedRun(self.tat_ns, now_ns, work, self.params)
        self.version += 1
        self.sim.schedule(self.run.end_ns, self._finished, self.version)
        self._poke(now_ns)

    def _finished(self, now_ns: int, version: int) -> None:
        if version != self.version:
            return
        run = self.run
        assert run is not None
        self._retire_run(now_ns)
        self.tat_ns = run.tat_ns
        self.run = None
        self.busy_ns += self.batch_work_ns
        self.window.busy_ns += self.batch_work_ns
        self.sim.add_busy(self.gpus, self.batch_work_ns)
        self.window.throttled_ns += run.throttled_ns
        batch, self.batch = self.batch, []
        self.outstanding -= len(batch)
        self.window.inflight(now_ns, -len(batch))
        self.function.answered(self, now_ns, batch)
        if len(self.queue):
            self._decide(now_ns)
        elif self.state == DRAINING:
            self.function.sim.drained(self, now_ns)

    def set_share(self, now_ns: int, share: float) -> None:
        self.set_params(share)
        self.window.set_share(now_ns, self.page_share)
        run = self.run
        if run is None:
            return
        resumed = run.resume(now_ns, self.params)
        if resumed is None or resumed is run:
            return
        # The old run's throttled time up to the resumed run's start.
        self.window.throttled_ns += run.throttled_ns - _throttled_from(run, resumed.start_ns)
        self._retire_run(resumed.start_ns - 1)
        self.run = resumed
        self.version += 1
        self.sim.schedule(resumed.end_ns, self._finished, self.version)
        self._poke(now_ns)

    def close_window(self, now_ns: int) -> QosWindow:
        self.last_window = self.window.close(now_ns, len(self.queue))
        return self.last_window


def _throttled_from(run: PacedRun, t_ns: int) -> int:
    """Throttled time of `run` from `t_ns` on (what a resumed run counts again)."""
    total = 0
    for k in range(run.launches):
        one = run.launch(k)
        total += max(0, one.admitted_ns - max(one.asked_ns, t_ns))
    return total


class TrainingInstance(_Instance):
    training = True

    def __init__(self, sim: Scheduler, job: TrainingJob, instance_id: str, node: str,
                 gpus: tuple[str, ...], perf: PerfModel, now_ns: int) -> None:
        super().__init__(sim, instance_id, node, gpus, job.quota.request, job.quota.limit,
                         job.quota.memory_mib, perf)
        self.job = job
        self.step_work_ns = max(1, round(job.step_gpu_s * job.slowdown * NS))
        self.host_ns = round(job.host_ms * 1_000_000)
        self.iterations = 0
        self.step_started_ns = now_ns
        self.step_end_ns = now_ns

    def begin(self, now_ns: int) -> None:
        self.state = READY
        self._step(now_ns)

    def _step(self, now_ns: int) -> None:
        self.step_started_ns = now_ns
        self.run = PacedRun(self.tat_ns, now_ns, self.step_work_ns, self.params)
        self._schedule_end()
        self._poke(now_ns)

    def _schedule_end(self) -> None:
        assert self.run is not None
        self.version += 1
        self.step_end_ns = max(self.run.end_ns, self.step_started_ns + self.host_ns)
        self.sim.schedule(self.step_end_ns, self._stepped, self.version)

    def _stepped(self, now_ns: int, version: int) -> None:
        if version != self.version or self.state != READY:
            return
        assert self.run is not None
        self._retire_run(now_ns)
        self.tat_ns = self.run.tat_ns
        self.iterations += 1
        self.busy_ns += self.step_work_ns
        self.sim.add_busy(self.gpus, self.step_work_ns)
        self._step(now_ns)

    def set_share(self, now_ns: int, share: float) -> None:
        self.set_params(share)
        run = self.run
        if run is None or self.state != READY:
            return
        resumed = run.resume(now_ns, self.params)
        if resumed is None or resumed is run:
            return
        self._retire_run(resumed.start_ns - 1)
        self.run = resumed
        self._schedule_end()
        self._poke(now_ns)

    def progress(self, now_ns: int) -> float:
        """Steps done by `now_ns`, the one in progress counted by its elapsed part."""
        span = max(1, self.step_end_ns - self.step_started_ns)
        return self.iterations + min(1.0, max(0.0, (now_ns - self.step_started_ns) / span))
