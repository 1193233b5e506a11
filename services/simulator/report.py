"""Plain-text tables and a PNG of active GPUs over time."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from services.common.tables import render
from services.simulator.replay import Result

HEADERS = ("POLICY", "PEAK GPUS", "MEAN GPUS", "SM FRAG", "MEM FRAG", "FGD SM", "FGD MEM",
           "UNPLACED", "DECIDE µs p50/p99", "MAX REQ/LIM/MEM")


def result_row(result: Result, label: str | None = None) -> tuple[str, ...]:
    return (
        label or result.policy,
        str(result.peak_active_gpus),
        f"{result.mean_active_gpus:.1f}",
        f"{result.mean(result.sm_fragmentation):.3f}",
        f"{result.mean(result.memory_fragmentation):.3f}",
        f"{result.mean(result.fgd_sm_fragmentation):.3f}",
        f"{result.mean(result.fgd_memory_fragmentation):.3f}",
        str(result.unplaced),
        f"{result.decision_us(0.5):.0f}/{result.decision_us(0.99):.0f}",
        f"{result.max_requested:.2f}/{result.max_limited:.2f}/{result.max_memory_ratio:.2f}",
    )


def table(results: Sequence[Result], labels: Sequence[str] | None = None) -> str:
    labels = labels or [r.policy for r in results]
    return render(HEADERS, [result_row(r, label) for r, label in zip(results, labels, strict=True)])


def plot_active_gpus(panels: Sequence[tuple[str, Sequence[Result]]], path: Path) -> Path:
    """One panel per trace, one line per policy: active GPUs against virtual time."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 3.6 * len(panels)), squeeze=False)
    for ax, (title, results) in zip(axes[:, 0], panels, strict=True):
        for result in results:
            ax.step(result.times_s, result.active_gpus, where="post", linewidth=1.2,
                    label=f"{result.policy} (peak {result.peak_active_gpus})")
        ax.set_title(title)
        ax.set_xlabel("time since the trace began (s)")
        ax.set_ylabel("active GPUs")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
