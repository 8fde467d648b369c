"""The picture people look at first: every trial, the front, the budget and the chosen model."""

from __future__ import annotations

from pathlib import Path


def pareto_plot(
    trials,
    front_numbers: set[int],
    budget_ms: float,
    chosen: int | None,
    path: str | Path,
    title: str = "",
    intervals: dict[int, tuple[float, float]] | None = None,
    int8: list[tuple[float, float]] | None = None,
    chosen_point: tuple[float, float] | None = None,
    tier0: tuple[float, float] | None = None,
    tier0_chosen: bool = False,
) -> Path:
    """Every trial (validation accuracy vs predicted latency), the front, the budget and the chosen
    trial; ``intervals`` (trial number -> 95% interval of its validation accuracy, as fractions) draws
    the front's uncertainty as error bars: where they overlap, the search could not tell them apart.
    ``int8``: the front's int8 candidates as (predicted int8 latency, quantized accuracy) points;
    ``chosen_point`` places the recommendation's star when it is not its trial's fp32 point. ``tier0``: the
    tier-0 model (pruned without training) as (predicted latency, validation accuracy); ``tier0_chosen``:
    it is the recommendation (then ``chosen`` is None)."""
    # The object-oriented API: no pyplot figure registry and no backend switch (``matplotlib.use``),
    # both process-wide, while plots are drawn in the service's worker threads.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    feas = [t for t in trials if t.feasible]
    infeas = [t for t in trials if not t.feasible]
    ax.scatter(
        [t.latency_ms for t in infeas],
        [100 * t.accuracy for t in infeas],
        s=12,
        c="#bbbbbb",
        label=f"over budget ({len(infeas)})",
    )
    ax.scatter(
        [t.latency_ms for t in feas],
        [100 * t.accuracy for t in feas],
        s=14,
        c="#5b8fd9",
        label=f"within budget ({len(feas)})",
    )
    front = sorted((t for t in trials if t.number in front_numbers), key=lambda t: t.latency_ms)
    if front:
        ax.step(
            [t.latency_ms for t in front],
            [100 * t.accuracy for t in front],
            where="post",
            c="#d9534f",
            lw=1.5,
            label=f"Pareto front ({len(front)})",
        )
        ax.scatter([t.latency_ms for t in front], [100 * t.accuracy for t in front], s=22, c="#d9534f")
        bars = [t for t in front if intervals and t.number in intervals]
        if bars:
            ax.errorbar(
                [t.latency_ms for t in bars],
                [100 * t.accuracy for t in bars],
                yerr=[
                    [100 * max(0.0, t.accuracy - intervals[t.number][0]) for t in bars],
                    [100 * max(0.0, intervals[t.number][1] - t.accuracy) for t in bars],
                ],
                fmt="none",
                ecolor="#d9534f",
                elinewidth=0.8,
                capsize=2,
                alpha=0.6,
                label="95% interval (validation)",
            )
    if int8:
        ax.scatter(
            [ms for ms, _ in int8],
            [100 * acc for _, acc in int8],
            marker="D",
            s=30,
            c="#8e44ad",
            zorder=4,
            label=f"int8 on the front ({len(int8)})",
        )
    ax.axvline(budget_ms, ls="--", c="k", lw=1, label=f"budget {budget_ms:g} ms")
    if chosen is not None:
        best = next(t for t in trials if t.number == chosen)
        star = chosen_point or (best.latency_ms, best.accuracy)
        ax.scatter(
            [star[0]],
            [100 * star[1]],
            marker="*",
            s=220,
            c="#f0ad4e",
            edgecolors="k",
            zorder=5,
            label=f"recommended (trial {chosen})",
        )
    if tier0 is not None:
        ax.scatter(
            [tier0[0]],
            [100 * tier0[1]],
            marker="*" if tier0_chosen else "P",
            s=220 if tier0_chosen else 70,
            c="#f0ad4e" if tier0_chosen else "#2e86c1",
            edgecolors="k",
            zorder=5,
            label="recommended (tier 0, no training)" if tier0_chosen else "tier 0 (no training)",
        )
    ax.set_xlabel("predicted latency (ms, batch 1)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path
