"""Serving replay: a scenario (YAML) under a system, request by request, in virtual time,
through the production code — the instrument co-scaling policies are measured with.

    dilu simulate serve SCENARIO.yaml [--systems static,...] [--json FILE] [--plot FILE]
    .venv/bin/python bench/coscaling.py     # every system on demo, paper-testbed, cluster-50

## What runs, and what is simulated

Production objects, driven in virtual time (integer ns, event-driven):

- the scheduler's pure core (`SchedulerCore`): deploys in the scenario's order, replica
  planning, placement by the system's policy on its `Ledger`, instance lifecycle, quota
  changes; every request is routed by its least-outstanding `router` (`engine.py`);
- the node agent's `NodeArbitration` (one `GpuArbiter` per GPU, hunger, gangs, draining),
  evaluated only at the periods where an input changes and equal to the agent's 10 ms
  ticks (`arbitration.py`, tested against a ticked run);
- the worker's batching decisions (`worker/batching.BatchQueue`) and the gate's rules
  (`node_agent/token_bucket.py`), with a batch's pacing computed in closed form
  (`pacing.py`); a test replays random arrivals through a real sim worker (its batcher,
  engine, device and gate on a virtual-time asyncio loop) and gets the same batches at the
  same nanoseconds (`instances.py`).

Simulated: time; the GPU, by DESIGN.md's execution model (a batch occupies the whole GPU
for the tables' 100 % latency, paced by the gate; a training step is max(GPU part / share,
host part)); the node agents around their own admission (`NodeBudget`, production code:
starts and quota changes against the bounds each node announces in its heartbeat): they
report an instance ready after its cold start (2 s + fp16 weights at 2 GB/s);
the trip through the scheduler (a constant proxy overhead, measured live by
`bench/demo_agreement.py`). Arrivals are Poisson within each trace sample (`arrivals.py`);
a request with no ready instance waits in a bounded per-function queue (1,000; beyond it,
refused and a violation), and its whole wait counts.

## The System interface (`systems.py`)

A system bundles what a platform decides, behind one interface:

    class System(Protocol):
        name: str
        def parameters(self) -> Mapping[str, object]          # printed beside its results
        def placement(self, bounds: PlacementBounds) -> Placement
        def arbitration(self) -> ArbitrationFactory           # per-node arbitration driver
        def sizing(self, function, profile) -> Sizing         # replicas, request, limit,
                                                              # memory, max batch at start
        def policy(self, scenario, profiles) -> ScalingPolicy | None

Registered in `systems.SYSTEMS` (name → factory): adding a system is one line. `static`
is today's platform; the baselines live in `baselines/`, each from its published rules
and defaults: `exclusive-kpa` (a whole GPU per instance, Knative's KPA), `static-kpa`
(fixed fractional shares, best fit, KPA), `has-gpu` (HAS-GPU's Kalman-predicted hybrid
scaling of quotas) and `dilu-paper` (the paper's placement, its RCKM arbitration and lazy
scaling); none but `static` and `dilu-paper` lends GPU time. Every system sizes from the
stand-in profile (`profile.py`:
`capacity(share, max_batch)`, `best_batch`, `share_for(rate)`, `lone_batch_share`,
`efficient_batch`), measured with the simulator's own single-instance model.

`arbitration()` returns a factory `make(schedule, node, gpus, *, ticked, on_shares)` of
per-node drivers. A driver is told `attach(instance, now)`, `update(instance, now,
draining=...)` (a quota change or a drain), `detach(instance, now)` and `poke(instance,
now)` (the instance's pacing changed); it reads an instance's `last_wait_end(t)` /
`next_wait_end(t)` (its gate's sleeps, the agent's hunger signal) and its `run`
(`PacedRun`: the batch or step in progress), schedules its own evaluations with
`schedule(at_ns, callback, *args, first=True)` and sets shares with
`instance.set_share(now_ns, share)`. `arbitration.NodeArbitrationDriver` is today's; a rule
that ticks on its own clock implements the same five calls (`baselines/rckm.py`: RCKM's
5 ms ticks, evaluated on events; `baselines/fixed_share.py`: no lending).

## Policy hooks (`policy.py`)

A `ScalingPolicy` has `interval_s` and `decide(view) -> actions`. Every `interval_s` the
simulator builds a `ClusterView`: per function its last one-second `QosWindow` (offered
arrivals incl. refused, completions, within SLO, p50/p99), its queue and its instances;
per instance its state, request/limit, effective share, max batch and last `QosWindow`
(rps, within SLO, p99, queue, GPU busy seconds, seconds throttled, mean share, mean
concurrency); per GPU what is committed on it (the headroom to the bounds) and its busy
time in the last second. Actions, applied with the live platform's semantics:

- `SetQuota(instance_id, request, limit)`: vertical, through the scheduler core's
  `set_quota` to the instance's agent, which admits it against its GPU's bounds (refused:
  counted in `refused_actions`); it takes effect at the next arbiter period (10 ms) and
  in the worker at its gate's next step.
- `ScaleOut(function, count)`: horizontal, through the core's `scale`: placed by the
  system's placement policy (pending and retried every second while nothing admits it),
  serving after its cold start. `ScaleIn(function, instance_id=None)`: the named instance
  (or the one the core's replica planning picks) drains and then releases its GPU.
- `SetMaxBatch(instance_id, max_batch)`: the batcher uses it from its next batch.

Replica bounds are the scenario's; an action beyond them is refused.

## Modules

`scenario` (YAML and its validator), `generate` (cluster-50), `arrivals`, `pacing`,
`instances`, `arbitration`, `engine` (`Simulation`), `windows` (QoS windows), `policy`,
`systems`, `baselines` (the systems Dilu is measured against), `profile` (the stand-in
profile and its cache), `report` (results, oracle, GPU-seconds bound, tables, PNG), `run`
(systems × scenarios in parallel processes), `cli`.
The scenarios live in `services/simulator/scenarios/`.
"""
