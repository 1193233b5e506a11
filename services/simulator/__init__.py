"""Cluster simulator: replays placement traces in virtual time through the very policy
objects the scheduler uses (`services.scheduler.placement`), at thousands of GPUs; and, in
`serving/`, serving scenarios request by request through the scheduler's core, the node
arbitration, the worker's batcher and the gate (see `services.simulator.serving`)."""
