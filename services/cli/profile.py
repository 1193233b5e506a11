"""`dilu profile FILE`: profile a spec live and show the curve it measured.

It asks the profiler (`ProfileFunction`, joining a run already under way for the same key),
follows the run with `GetProfile` — saying on stderr what it waits for or measures — and
prints the measured points with the search's choice marked, the sizing derived from them,
and a PNG of capacity against share per batch (the request and limit drawn in).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

from dilu.v1 import profiler_pb2, profiler_pb2_grpc, types_pb2

from services.common.tables import render

P = profiler_pb2
_FINISHED = (P.PROFILE_STATE_READY, P.PROFILE_STATE_FAILED)


def follow(stub: profiler_pb2_grpc.ProfilerServiceStub, spec: types_pb2.FunctionSpec, *,
           design_rate_rps: float = 0.0, gpu_model: str = "", refresh: bool = False,
           poll_s: float = 1.0, say: Callable[[str], None] = lambda line: None,
           timeout_s: float = 3600.0) -> profiler_pb2.Profile:
    """Ask for the profile of `spec` and wait until it is ready or failed, telling `say`
    every new progress message."""
    profile = stub.ProfileFunction(P.ProfileFunctionRequest(
        function=spec, design_rate_rps=design_rate_rps, gpu_model=gpu_model, refresh=refresh),
        timeout=30).profile
    said = ""
    deadline = time.monotonic() + timeout_s
    while profile.state not in _FINISHED:
        state = P.ProfileState.Name(profile.state).removeprefix("PROFILE_STATE_").lower()
        line = f"{state}: {profile.message}"
        if line != said:
            say(line)
            said = line
        if time.monotonic() > deadline:
            raise TimeoutError(f"the profile is not finished after {timeout_s:.0f} s ({line})")
        time.sleep(poll_s)
        profile = stub.GetProfile(P.GetProfileRequest(key=profile.key), timeout=10).profile
    return profile


def curve_table(profile: profiler_pb2.Profile) -> str:
    """The measured points, the chosen one marked with `*`."""
    training = profile.key.kind == types_pb2.FUNCTION_KIND_TRAINING
    points = sorted(profile.points, key=lambda p: (p.batch_size, p.sm_share))
    if training:
        steps = [("*" if p.chosen else "", f"{p.sm_share:.2f}", f"{p.throughput_rps:.2f}",
                  f"{p.latency_ms:.1f}") for p in sorted(profile.points, key=lambda p: p.sm_share)]
        return render(("", "SHARE", "STEPS/S", "STEP MS"), steps)
    rows = [("*" if p.chosen else "", f"{p.sm_share:.2f}", p.batch_size,
             f"{p.throughput_rps:.1f}", f"{p.throughput_rps / p.sm_share:.1f}",
             f"{p.latency_ms:.1f}", "yes" if p.meets_slo else "no", p.trials, f"{p.seconds:.1f}")
            for p in points]
    return render(("", "SHARE", "MAX BATCH", "CAPACITY RPS", "PER SHARE", "LATENCY MS", "MEETS SLO",
                   "TRIALS", "SECONDS"), rows)


def summary(profile: profiler_pb2.Profile) -> str:
    key = profile.key
    if key.kind == types_pb2.FUNCTION_KIND_TRAINING:
        lines = [f"{key.model} training on {key.gpu_model}: share {profile.sm_request:.2f} "
                 f"(request = limit), step batch {profile.best_batch_size}, {profile.memory_mib} MiB",
                 profile.message]
    else:
        lines = [
            f"{key.model} at a {key.slo_latency_ms:g} ms SLO (p{key.slo_percentile:g}) on {key.gpu_model}",
            f"  choice: share {profile.chosen_share:.2f}, batch {profile.best_batch_size} "
            f"({profile.chosen_capacity_rps:.1f} requests/s, "
            f"{profile.chosen_capacity_rps / max(profile.chosen_share, 1e-9):.1f} per whole GPU)",
            f"  limit {profile.sm_limit:.2f} ({profile.capacity_at_limit_rps:.1f} requests/s there), "
            f"request {profile.sm_request:.2f} for a design rate of "
            f"{profile.design_rate_rps:.1f} requests/s, memory {profile.memory_mib} MiB",
            f"  {profile.measured} points measured, {profile.pruned} settled without measuring, "
            f"{profile.seconds:.0f} s"]
    lines += [f"  note: {note}" for note in profile.notes]
    return "\n".join(lines)


def plot(profile: profiler_pb2.Profile, path: Path) -> Path:
    """Capacity against share, one line per batch; the choice, request and limit marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    training = profile.key.kind == types_pb2.FUNCTION_KIND_TRAINING
    for batch in sorted({p.batch_size for p in profile.points}):
        mine = sorted((p for p in profile.points if p.batch_size == batch), key=lambda p: p.sm_share)
        ax.plot([p.sm_share for p in mine], [p.throughput_rps for p in mine], marker="o",
                linewidth=1, label="steps/s" if training else f"max batch {batch}")
    chosen = [p for p in profile.points if p.chosen]
    if chosen:
        ax.scatter([p.sm_share for p in chosen], [p.throughput_rps for p in chosen], s=160,
                   facecolors="none", edgecolors="red", label="choice")
    ax.axvline(profile.sm_request, color="green", linestyle="--", linewidth=0.8, label="request")
    if not training:
        ax.axvline(profile.sm_limit, color="black", linestyle=":", linewidth=0.8, label="limit")
    ax.set_xlabel("SM share (fraction of one GPU's time)")
    ax.set_ylabel("steps/s" if training else "capacity, requests/s within the SLO")
    key = profile.key
    ax.set_title(f"{key.model}" + ("" if training else f", SLO {key.slo_latency_ms:g} ms") +
                 f" on {key.gpu_model}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
