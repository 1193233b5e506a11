"""Cluster simulator: replays placement traces in virtual time through the very policy
objects the scheduler uses (`services.scheduler.placement`), at thousands of GPUs."""
