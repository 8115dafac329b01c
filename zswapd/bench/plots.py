"""PNG plots of a ``zswapd bench`` result (matplotlib, when installed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot"]


def plot(result: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write one PNG per suite present in ``result``; returns their paths.

    Raises:
        RuntimeError: matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("--plot needs matplotlib: pip install matplotlib") from exc
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(fig: Any, name: str) -> None:
        path = out_dir / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    if "compressors" in result:
        algos = result["compressors"]["algorithms"]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for label, v in algos.items():
            ax.scatter(v["compress_per_s"], v["ratio"])
            ax.annotate(label, (v["compress_per_s"], v["ratio"]), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("compress pages/s (log)")
        ax.set_ylabel("ratio")
        ax.set_title("compressors: ratio against speed")
        save(fig, "compressors.png")
    if "allocators" in result:
        for scale, table in result["allocators"]["efficiency"].items():
            fig, ax = plt.subplots(figsize=(8, 4.5))
            labels = list(table)
            for k, key in enumerate(("all_live", "after_free", "after_compact")):
                ax.barh(
                    [i + k * 0.27 for i in range(len(labels))],
                    [table[lbl][key] for lbl in labels],
                    height=0.27,
                    label=key.replace("_", " "),
                )
            ax.set_yticks([i + 0.27 for i in range(len(labels))], labels, fontsize=7)
            ax.set_xlabel("object bytes / pool bytes")
            ax.set_title(f"allocator efficiency, {int(scale):,} objects")
            ax.legend(fontsize=7)
            save(fig, f"allocators-{scale}.png")
    if "scale" in result:
        levels = result["scale"]["levels"]
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [r["stored_pages"] for r in levels]
        for key in ("store_us_per_page", "load_us_per_page", "free_us_per_page"):
            ax.plot(xs, [r[key] for r in levels], marker="o", label=key.split("_")[0])
        ax.set_xscale("log")
        ax.set_xlabel("stored pages")
        ax.set_ylabel("microseconds per page")
        ax.set_title("cost per operation as the pool grows")
        ax.legend()
        save(fig, "scale.png")
    if "peers" in result:
        servers = result["peers"]["servers"]
        fig, axes = plt.subplots(1, 2, figsize=(9, 4))
        names = list(servers)
        axes[0].bar(names, [servers[n]["store_per_s"] for n in names], label="store")
        axes[0].set_title("store pages/s")
        axes[1].bar(names, [servers[n]["rss_growth"] / 2**20 for n in names])
        axes[1].set_title("memory for the same pages (MiB)")
        for ax in axes:
            ax.tick_params(axis="x", labelrotation=30, labelsize=7)
        save(fig, "peers.png")
    return written
