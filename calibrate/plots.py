"""Plots of validation results and the profile card (matplotlib, Agg backend, imported when drawing)."""
from __future__ import annotations

import numpy as np

from simulator.plotting import IMAGE_SUFFIXES, check_plot_path, pyplot  # noqa: F401 (re-exported)


def plot_validation(v, path: str, title: str = "measured vs predicted") -> None:
    """One panel per metric family: predicted (median, 5-95% band) against measured, log-log."""
    from .validate import FAMILY_OF

    plt = pyplot()
    families = list(v.families())
    fig, axes = plt.subplots(1, len(families), figsize=(4.2 * len(families), 4.2))
    for ax, fam in zip(axes, families):
        rows = [r for r in v.rows if FAMILY_OF.get(r.metric) == fam and r.measured > 0]
        if not rows:
            ax.set_visible(False)
            continue
        m = np.array([r.measured for r in rows])
        p = np.array([r.predicted for r in rows])
        lo = np.array([r.band_lo for r in rows])
        hi = np.array([r.band_hi for r in rows])
        ok = np.array([r.in_band for r in rows])
        ax.errorbar(m, p, yerr=[np.maximum(p - lo, 0), np.maximum(hi - p, 0)], fmt="none", ecolor="0.7", lw=1)
        ax.scatter(m[ok], p[ok], s=14, color="tab:green", label="measured inside band")
        ax.scatter(m[~ok], p[~ok], s=14, color="tab:red", label="outside band")
        a, b = min(m.min(), p.min()) * 0.8, max(m.max(), p.max()) * 1.25
        ax.plot([a, b], [a, b], "k--", lw=0.8)
        ax.fill_between([a, b], [a * 0.9, b * 0.9], [a * 1.1, b * 1.1], color="0.9", zorder=0, label="±10%")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("measured")
        ax.set_ylabel("predicted")
        med = np.median(np.abs(100 * (p - m) / m))
        ax.set_title(f"{fam}: median |error| {med:.1f}%")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------ the profile card


def _context_colors():
    """A colour per context (tokens), shared by model lines and measured points: log scale, 256..32k."""
    import matplotlib
    from matplotlib import colors

    base = matplotlib.colormaps["viridis"]
    cmap = colors.LinearSegmentedColormap.from_list("ctx", base(np.linspace(0.0, 0.85, 256)))
    norm = colors.LogNorm(vmin=256, vmax=32768)
    return cmap, norm


def _log2_axis(ax, ticks):
    from matplotlib.ticker import FixedLocator, NullLocator

    from .card import ctx_label

    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(list(ticks)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([ctx_label(t) if t >= 1024 else str(t) for t in ticks])


def plot_profile_card(profile, runs=None, path: str = "profile-card.png", card: dict | None = None,
                      title: str | None = None) -> dict:
    """Draw the profile card (calibrate.card.profile_card) as one PNG; returns the card's dict.

    Panels: prefill tokens/s by prompt length; decode tokens/s per user and in total
    by concurrency at a few contexts; engine limits, KV capacity and the memory
    roofline. Measured closed-loop runs (ClosedRun) are overlaid as points.
    """
    from .card import ctx_label, profile_card

    check_plot_path(path)
    if card is None:
        card = profile_card(profile, runs)
    plt = pyplot()
    cmap, norm = _context_colors()
    fig = plt.figure(figsize=(13, 9.5))
    gs = fig.add_gridspec(2, 2, hspace=0.32, wspace=0.22)
    ax_pp, ax_user = fig.add_subplot(gs[0, 0]), fig.add_subplot(gs[0, 1])
    ax_tot, ax_txt = fig.add_subplot(gs[1, 1]), fig.add_subplot(gs[1, 0])
    meas = card.get("measured") or {}

    # (1) prefill
    pts = [p for p in card["prefill"] if p["tokens_per_s"]]
    if pts:
        ax_pp.plot([p["context"] for p in pts], [p["tokens_per_s"] for p in pts], "-o", color="tab:blue", ms=4,
                   lw=2, label="model: one request")
    mp = meas.get("prefill") or []
    if mp:
        ax_pp.scatter([p["context"] for p in mp], [p["tokens_per_s"] for p in mp], marker="D", s=36,
                      facecolor="none", edgecolor="tab:red", lw=1.5, zorder=3, label="measured (1 user)")
    ticks = sorted({p["context"] for p in card["prefill"]})
    lo = min([p["context"] for p in mp], default=ticks[0])
    while ticks and lo < ticks[0] / 1.2 and ticks[0] > 64:
        ticks.insert(0, ticks[0] // 2)
    _log2_axis(ax_pp, ticks)
    ax_pp.set_xlabel("prompt length (tokens, server count)")
    ax_pp.set_ylabel("prefill throughput (tokens/s)")
    ax_pp.set_title("Prefill speed, one request (llama-benchy pp t/s)")
    ax_pp.set_ylim(bottom=0)
    ax_pp.grid(True, alpha=0.3)
    if pts or mp:
        ax_pp.legend(fontsize=8, loc="best")

    # (2) and (3) decode per user and total, by concurrency
    contexts = sorted({d["context"] for d in card["decode"]})
    conc = sorted({d["concurrency"] for d in card["decode"]})
    for ctx in contexts:
        rows = [d for d in card["decode"] if d["context"] == ctx and d["per_user_tokens_per_s"]]
        if not rows:
            continue
        col = cmap(norm(ctx))
        b = [d["concurrency"] for d in rows]
        ax_user.plot(b, [d["per_user_tokens_per_s"] for d in rows], "-o", ms=4, lw=2, color=col,
                     label=f"model, {ctx_label(ctx)} context")
        ax_tot.plot(b, [d["total_tokens_per_s"] for d in rows], "-o", ms=4, lw=2, color=col,
                    label=f"model, {ctx_label(ctx)} context")
        bad = [d for d in rows if d.get("limit")]
        if bad:
            ax_user.scatter([d["concurrency"] for d in bad], [d["per_user_tokens_per_s"] for d in bad], marker="x",
                            s=50, color="k", zorder=4)
            ax_tot.scatter([d["concurrency"] for d in bad], [d["total_tokens_per_s"] for d in bad], marker="x",
                           s=50, color="k", zorder=4)
    md = meas.get("decode") or []
    if md:
        def scatter(ax, key, marker, filled, label):
            ds = [d for d in md if d.get(key)]
            if not ds:
                return
            c = [cmap(norm(min(max(d["context"], 256), 32768))) for d in ds]
            kw = {"color": c} if filled else {"facecolor": "none", "edgecolor": c, "lw": 1.5}
            ax.scatter([d["concurrency"] for d in ds], [d[key] for d in ds], marker=marker, s=40, zorder=3,
                       label=label, **kw)
        scatter(ax_user, "per_user_tokens_per_s", "o", True, "measured tg t/s per user")
        scatter(ax_user, "peak_per_user_tokens_per_s", "s", False, "measured peak t/s / users")
        scatter(ax_tot, "total_tokens_per_s", "o", True, "measured tg t/s (total)")
        scatter(ax_tot, "peak_tokens_per_s", "s", False, "measured peak t/s (total)")
    cticks = sorted(set(conc) | {d["concurrency"] for d in md})
    for ax in (ax_user, ax_tot):
        _log2_axis(ax, cticks)
        ax.set_xlabel("concurrent users (requests decoding together)")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    ax_user.set_ylabel("decode speed per user (tokens/s)")
    ax_user.set_title("Decode speed each user sees")
    ax_tot.set_ylabel("decode throughput, all users (tokens/s)")
    ax_tot.set_title("Decode throughput of the box")
    handles, labels = ax_user.get_legend_handles_labels()
    if any(d.get("limit") for d in card["decode"]):
        from matplotlib.lines import Line2D
        handles.append(Line2D([], [], marker="x", color="k", ls="none"))
        labels.append("does not fit the engine")
    ax_user.legend(handles, labels, fontsize=8, loc="lower left")
    ax_tot.legend(fontsize=8, loc="upper left")
    for leg in (ax_user.get_legend(), ax_tot.get_legend()):
        for h in getattr(leg, "legend_handles", None) or getattr(leg, "legendHandles", []):
            if hasattr(h, "get_offsets"):  # measured points: coloured by context, so grey in the legend
                if h.get_facecolor().size and h.get_facecolor()[0][3] > 0:
                    h.set_facecolor("0.4")
                h.set_edgecolor("0.4")
    if md:
        sm = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
        cb = fig.colorbar(sm, ax=[ax_user, ax_tot], fraction=0.025, pad=0.02)
        cb.set_label("context of the measured/modelled requests (tokens)")
        cb.set_ticks([256, 1024, 4096, 8192, 16384, 32768])
        cb.set_ticklabels(["256", "1k", "4k", "8k", "16k", "32k"])

    # (4) engine, KV cache, memory roofline
    _card_text(ax_txt, card)

    name = card.get("profile") or "profile"
    fig.suptitle(title or f"Profile card: {name}" + (f"  ({card['box']})" if card.get("box") else ""),
                 fontsize=13, fontweight="bold")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return card


def _card_text(ax, card: dict) -> None:
    """The card's limits panel: engine limits and KV capacity as text, the memory roofline as bars."""
    from .card import ctx_label

    ax.set_title("Engine limits and memory roofline")
    kv, eng, mem = card["kv_cache"], card["engine"], card["memory"]
    cap = kv.get("capacity_tokens")
    lines = [("KV-cache capacity", f"{cap:,} tokens" if cap is not None else "unknown (not binding in the runs)"),
             ("max_num_batched_tokens", f"{eng['max_num_batched_tokens']:,}"),
             ("max_num_seqs", f"{eng['max_num_seqs']:,}"),
             ("max_model_len", f"{eng['max_model_len']:,}"),
             ("step model", str(card.get("step_model")))]
    if card.get("model"):
        lines.insert(0, ("model", str(card["model"])))
    y = 0.97
    for k, v in lines:
        ax.text(0.02, y, k, transform=ax.transAxes, fontsize=10, va="top")
        ax.text(0.45, y, v, transform=ax.transAxes, fontsize=10, va="top", fontweight="bold")
        y -= 0.075

    peak = mem["peak_bw"]
    bars = []
    if mem.get("bw_weights"):
        bars.append(("fitted weight bandwidth", mem["bw_weights_pct_of_peak"],
                     f"{mem['bw_weights'] / 1e9:,.0f} of {peak / 1e9:,.0f} GB/s"))
    if mem.get("single_user_decode_pct_of_roofline"):
        bars.append((f"1-user decode at {ctx_label(mem['single_user_context'])}",
                     mem["single_user_decode_pct_of_roofline"],
                     f"{mem['single_user_decode_tokens_per_s']:.1f} of {mem['roofline_decode_tokens_per_s']:.1f} t/s"))
    note = []
    if mem.get("weight_bytes_per_decode_step"):
        note.append(f"weights read per decode step: {mem['weight_bytes_per_decode_step'] / 1e9:.2f} GB; "
                    f"roofline: {peak / 1e9:,.0f} GB/s / that = {mem['roofline_decode_tokens_per_s']:.1f} t/s")
    if mem.get("bw_weights_pct_of_peak") and mem["bw_weights_pct_of_peak"] > 100:
        note.append("fitted bandwidth above the box's peak: the fit traded it for fixed step time;\n"
                    "the 1-user decode share is the physical one")
    if not bars:
        ax.text(0.02, y - 0.05, "memory roofline: the step model has no bandwidth parameters",
                transform=ax.transAxes, fontsize=9, va="top", color="0.3")
        ax.axis("off")
        return
    ax.axis("off")
    top = y - 0.04
    inset = ax.inset_axes([0.34, 0.27, 0.58, max(0.12, top - 0.31)])
    labels = [b[0] for b in bars]
    vals = [b[1] for b in bars]
    ypos = np.arange(len(bars))[::-1]
    inset.barh(ypos, vals, color=["tab:green" if v <= 100 else "tab:orange" for v in vals], height=0.55)
    inset.axvline(100, color="k", lw=1, ls="--")
    for yy, b in zip(ypos, bars):
        inset.text(b[1] + 2, yy, f"{b[1]:.0f}%  ({b[2]})", va="center", fontsize=8.5)
    inset.set_yticks(ypos)
    inset.set_yticklabels(labels, fontsize=9)
    inset.set_xlim(0, max(160.0, max(vals) * 1.75))
    inset.set_xlabel(f"% of the box's memory roofline ({peak / 1e9:,.0f} GB/s peak)", fontsize=9)
    inset.grid(True, axis="x", alpha=0.3)
    if note:
        ax.text(0.02, 0.0, "\n".join(note), transform=ax.transAxes, fontsize=8, va="bottom", color="0.3")
