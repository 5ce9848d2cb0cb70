"""Output: the markdown table and the throughput / memory plots."""

from __future__ import annotations

from .common import _need


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def format_table(result: dict) -> str:
    """Markdown table of all rows."""
    lines = [
        "| model | size (tokens) | batch | status | throughput img/s | latency p50 ms | p99 ms | peak GPU MiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        size = f"{r['size']}" + (f" (asked {r['requested_size']})" if r["size"] != r["requested_size"] else "")
        batch = r.get("batch")
        bstr = ("-" if batch is None else str(batch)) + (" (max)" if r.get("batch_mode") == "max" else "")
        st = r["status"]
        thr = r.get("throughput_img_s") if st in ("ok", "too_slow") else None
        if st == "too_slow":
            st = f"too slow ({r['est_ms'] / 1e3:.1f} s/call)"
        lines.append(
            f"| {r['runner']} | {size} ({r['tokens']}) | {bstr} | {st} | {_fmt(thr, ',.1f')} | "
            f"{_fmt(r.get('p50_ms'), '.3f')} | {_fmt(r.get('p99_ms'), '.3f')} | "
            f"{_fmt(r.get('peak_mem_mib'), ',.0f')} |"
        )
    return "\n".join(lines)


def plot(result: dict, out_dir, names=("bench_throughput.png", "bench_memory.png")) -> list:
    """Throughput and peak memory vs resolution (log y), one line per runner, one panel per
    batch setting (batch 1, each fixed batch, the largest batch that fits)."""
    from pathlib import Path

    _need("matplotlib", "--plot-dir")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [r for r in result["rows"] if r["status"] == "ok"]
    panels = []
    for r in rows:
        key = ("max", None) if r["batch_mode"] == "max" else ("fixed", r["batch"])
        if key not in panels:
            panels.append(key)
    runners = list(dict.fromkeys(r["runner"] for r in result["rows"]))
    mb = result.get("settings", {}).get("max_batch")
    written = []
    for metric, ylabel, fname in (
        ("throughput_img_s", "throughput (images/s)", names[0]),
        ("peak_mem_mib", "peak GPU memory (MiB)", names[1]),
    ):
        fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(5.2 * max(1, len(panels)), 4.4), squeeze=False)
        for ax, (mode, b) in zip(axes[0], panels):
            for i, name in enumerate(runners):
                pts = [
                    (r["size"], r.get(metric), r["batch"])
                    for r in rows
                    if r["runner"] == name
                    and r["batch_mode"] == mode
                    and (mode == "max" or r["batch"] == b)
                    and r.get(metric)
                ]
                if not pts:
                    continue
                xs, ys, bs = zip(*pts)
                ax.plot(xs, ys, marker="o", label=name, color=f"C{i}")
                if mode == "max":
                    for x, y, bb in pts:
                        ax.annotate(
                            f"b{bb}", (x, y), textcoords="offset points", xytext=(3, 4), fontsize=7, color=f"C{i}"
                        )
            ax.set_yscale("log")
            ax.set_xlabel("resolution (pixels per side)")
            ax.set_ylabel(ylabel)
            ax.set_title(f"largest batch <= {mb} that fits" if mode == "max" else f"batch {b}")
            ax.grid(True, which="both", alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        env = result.get("env", {})
        fig.suptitle(
            f"{env.get('gpu', env.get('device', ''))}, "
            f"{result['runners'][0].get('dtype', '') if result['runners'] else ''}"
        )
        fig.tight_layout()
        path = out_dir / fname
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written
