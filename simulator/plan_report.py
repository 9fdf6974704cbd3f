"""What a plan found (`PlanResult`) and how it reads: its JSON (`capsim plan --json`), the text
`capsim plan` prints, scenarios side by side (`--compare`), and the plot of each constraint's
metric against staff (matplotlib, imported only when a plot is drawn).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .office import Office
from .scenario import Scenario
from .sla import Constraint, fmt_ms

if TYPE_CHECKING:
    from .plan import PlanSettings


@dataclass
class PlanResult:
    staff: int
    unbounded: bool  # the search bound passed: the answer is at least `staff`
    first_failing: int | None
    binding: str | None
    binding_detail: dict | None
    slas: list[Constraint]
    office: Office
    scenario: Scenario
    profile_name: str
    settings: PlanSettings
    rps: float  # the office's request rate at `staff`
    at_answer: dict[str, dict]
    at_office: dict[str, dict]
    feel: dict  # medians at the office's own staff count
    classes: dict
    capacity_rps: dict[str, float | None] = field(default_factory=dict)
    capacity_ladder_rps: dict[str, float | None] = field(default_factory=dict)
    curve: list[dict] = field(default_factory=list)  # per evaluated staff count, for plots
    evaluations: int = 0
    # the constraints at the answer with the fitted parameters drawn per replication (a fitted profile's
    # uncertainty): how sure the answer is, beside the answer itself
    at_answer_uncertain: dict[str, dict] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "staff": self.staff, "binding": self.binding, "capacity_rps": self.capacity_rps,
            "rps": self.rps, "unbounded": self.unbounded, "first_failing_staff": self.first_failing,
            "binding_detail": self.binding_detail,
            "sla": [{"constraint": str(c), "key": c.key, "bound_ms": c.bound_ms, "strict": c.strict} for c in self.slas],
            "confidence": self.settings.confidence, "replications": self.settings.replications,
            "per_person_rps": self.office.office_rps(1),
            "at_staff": self.at_answer, "at_office_staff": self.at_office, "feel_at_office_staff": self.feel,
            "classes_at_office_staff": self.classes,
            "capacity_ladder_rps": self.capacity_ladder_rps,
            "capacity_workload": "random 4000/500, range ratio 0.9, burstiness 0.7, seed 42 (11-rate-sweep)",
            "profile": self.profile_name, "scenario": self.scenario.describe(), "office": self.office.describe(),
            "evaluated": self.curve, "evaluations": self.evaluations,
            "at_staff_with_fit_uncertainty": self.at_answer_uncertain,
        }



def format_plan(r: PlanResult) -> str:
    o = r.office
    mix = ", ".join(f"{name} {share:.3g}" for name, share in o.shares())
    per_h = o.office_rps(1) * 3600
    lines = [f"capsim plan: profile {r.profile_name}" + (f", scenario {r.scenario.name}" if r.scenario.name != "base" else "")
             + (f" ({', '.join(r.scenario.edits)})" if r.scenario.edits else "")
             + (f", {r.scenario.boxes} boxes ({r.scenario.routing})" if r.scenario.boxes > 1 else "")
             + (f", prefix-cache hit {r.scenario.prefix_hit:.0%}" if r.scenario.prefix_hit else ""),
             f"office: {per_h:.3g} requests/person/hour"
             + (f" at {o.start_hour():g}h ({o.profile_name()} day)" if o.profile_name() else "")
             + f", mix {mix}, burstiness {o.burstiness:g}"
             + (f", burst x{o.burst_factor:g} for {o.burst_s / 60:g} min" if o.burst_s > 0 else "")
             + (f", max {o.max_concurrency} in flight" if o.max_concurrency else ""),
             f"SLA, each met in >= {r.settings.need} of {r.settings.replications} replications: "
             + ", ".join(str(c) for c in r.slas), ""]
    if r.staff == 0:
        lines.append(f"Largest staff: 0 (the SLA fails already at {r.first_failing} staff)")
    else:
        lines.append(f"Largest staff: {'>= ' if r.unbounded else ''}{r.staff}  ({r.rps:.3g} req/s)")
    if r.binding:
        d = r.binding_detail
        lines.append(f"Binds first: {r.binding} (at {d['staff']} staff it fails in {d['failed']} of {d['replications']} "
                     f"replications run there; median {fmt_ms(d['median_ms'])}, worst {fmt_ms(d['worst_ms'])}, "
                     f"bound {fmt_ms(d['bound_ms'])})")
    elif r.unbounded:
        lines.append(f"Binds first: nothing up to the search bound of {r.settings.staff_max} staff (--staff-max)")
    lines.append("")
    head = f"{'constraint':<18} {'bound':>8} {'at ' + str(o.staff) + ' staff':>22}"
    if r.staff:
        head += f" {'at ' + str(r.staff) + ' staff':>22}"
    if r.at_answer_uncertain:
        head += f" {'fit uncertainty, 5-95%':>26}"
    lines.append(head + f"   (the value met in {r.settings.need} of {r.settings.replications} replications)")
    for c in r.slas:
        a = r.at_office[c.label]
        row = f"{c.label:<18} {fmt_ms(c.bound_ms):>8} {fmt_ms(a['level_ms']) + (' ok' if a['ok'] else ' FAIL'):>22}"
        if r.staff:
            b = r.at_answer[c.label]
            row += f" {fmt_ms(b['level_ms']) + (' ok' if b['ok'] else ' FAIL'):>22}"
        if r.at_answer_uncertain:
            u = r.at_answer_uncertain[c.label]
            row += f" {fmt_ms(u['lo_ms']) + ' - ' + fmt_ms(u['hi_ms']):>26}"
        lines.append(row)
    if r.at_answer_uncertain:
        lines.append(f"(fit uncertainty: the replications at {r.staff} staff run again with the profile's fitted "
                     "parameters and model error drawn per replication)")
    f = r.feel
    lines += ["", f"How {o.staff} staff feel it (median of replications): TTFT p50 {fmt_ms(f.get('median_ttft_ms'))}, "
              f"p95 {fmt_ms(f.get('p95_ttft_ms'))}, p99 {fmt_ms(f.get('p99_ttft_ms'))}; "
              f"{1000 / f['median_tpot_ms']:.1f} tok/s per user (TPOT p50 {fmt_ms(f['median_tpot_ms'])}); "
              f"E2EL p95 {fmt_ms(f.get('p95_e2el_ms'))}; peak {f.get('max_concurrent_requests', 0):.0f} "
              + ("in flight or queued at the gateway" if o.max_concurrency and o.queue_in_ttft else "in flight")
              if f.get("median_tpot_ms") else f"How {o.staff} staff feel it: no completed requests"]
    if len(r.classes) > 1:
        for name, c in r.classes.items():
            lines.append(f"  {name:<10} TTFT p50 {fmt_ms(c['median_ttft_ms']):>7}  p95 {fmt_ms(c['p95_ttft_ms']):>7}  "
                         f"TPOT p50 {fmt_ms(c['median_tpot_ms']):>7}  E2EL p95 {fmt_ms(c['p95_e2el_ms']):>7}  "
                         f"prompt {c['mean_prompt_tokens']:.0f} tok")
    if r.capacity_rps:
        ks = list(r.capacity_rps)
        lines += ["", f"Capacity on the 11-rate-sweep workload (random 4000/500, range 0.9, burstiness 0.7, "
                      f"seed {r.settings.capacity_seed}):",
                  f"  {'p95 TTFT under':<16}" + "".join(f"{k:>8}" for k in ks),
                  f"  {'req/s':<16}" + "".join(f"{_rps(r.capacity_rps[k]):>8}" for k in ks),
                  f"  {'suite ladder':<16}" + "".join(f"{_rps(r.capacity_ladder_rps.get(k)):>8}" for k in ks)]
    return "\n".join(lines)


def _rps(v: float | None) -> str:
    return "none" if v is None else f"{v:.2f}"


def format_compare(results: Sequence[PlanResult]) -> str:
    """Scenarios side by side, one column each."""
    names = [r.scenario.name for r in results]
    rows: list[tuple[str, list[str]]] = [
        ("largest staff", [("≥" if r.unbounded else "") + str(r.staff) for r in results]),
        ("office req/s at that staff", [f"{r.rps:.3g}" for r in results]),
        ("binds first", [r.binding or "-" for r in results]),
    ]
    for c in results[0].slas:
        rows.append((f"{c.label} at {results[0].office.staff} staff", [fmt_ms(r.at_office[c.label]["level_ms"])
                                                                       for r in results]))
    rows.append((f"tok/s per user at {results[0].office.staff}",
                 [f"{1000 / r.feel['median_tpot_ms']:.1f}" if r.feel.get("median_tpot_ms") else "-" for r in results]))
    if results[0].capacity_rps:
        for k in results[0].capacity_rps:
            rows.append((f"capacity p95 TTFT<{k} (req/s)", [_rps(r.capacity_rps.get(k)) for r in results]))
    rows.append(("edits", [", ".join(r.scenario.edits + tuple(
        x for x in (f"boxes={r.scenario.boxes}" if r.scenario.boxes > 1 else "",
                    f"routing={r.scenario.routing}" if r.scenario.boxes > 1 else "",
                    f"prefix_hit={r.scenario.prefix_hit:g}" if r.scenario.prefix_hit else "") if x)) or "-"
                         for r in results]))
    w0 = max(len(k) for k, _ in rows)
    widths = [max(len(n), *(len(v[i]) for _, v in rows)) for i, n in enumerate(names)]
    out = [f"{'':<{w0}}  " + "  ".join(f"{n:>{w}}" for n, w in zip(names, widths))]
    for k, vals in rows:
        out.append(f"{k:<{w0}}  " + "  ".join(f"{v:>{w}}" for v, w in zip(vals, widths)))
    return "\n".join(out)


# ------------------------------------------------------------------ plot

def plot_plan(results: PlanResult | Sequence[PlanResult], path: str | None = None):
    """Each constraint's metric against staff: median and 5-95% band over replications,
    the value met with the plan's confidence (dashed), the SLA line, the answer (dotted).

    Saves to `path` (and closes the figure) when given; otherwise returns the open
    figure, which a notebook shows inline.
    """
    import matplotlib.pyplot as plt

    rs = [results] if isinstance(results, PlanResult) else list(results)
    slas = rs[0].slas
    fig, axes = plt.subplots(1, len(slas), figsize=(4.6 * len(slas), 3.8), squeeze=False)
    for ax, c in zip(axes[0], slas):
        for i, r in enumerate(rs):
            pts = [p for p in r.curve if c.label in p["metrics"]]
            x = [p["staff"] for p in pts]
            med = np.array([p["metrics"][c.label]["median_ms"] for p in pts]) / 1000
            lo = np.array([p["metrics"][c.label]["lo_ms"] for p in pts]) / 1000
            hi = np.array([p["metrics"][c.label]["hi_ms"] for p in pts]) / 1000
            lv = np.array([p["metrics"][c.label]["level_ms"] for p in pts]) / 1000
            color = f"C{i}"
            label = r.scenario.name if len(rs) > 1 else "median"
            ax.plot(x, med, "o-", color=color, ms=3, label=label)
            ax.fill_between(x, lo, hi, color=color, alpha=0.2, lw=0)
            ax.plot(x, lv, "--", color=color, lw=1,
                    label=None if len(rs) > 1 else f"met in {r.settings.need} of {r.settings.replications}")
            if r.staff:
                ax.axvline(r.staff, color=color, ls=":", lw=1)
        ax.axhline(c.bound_ms / 1000, color="k", lw=1.2, label=f"SLA {fmt_ms(c.bound_ms)}")
        ax.set_title(c.label)
        ax.set_xlabel("staff")
        ax.set_ylabel("seconds")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{rs[0].profile_name}: answer {', '.join(f'{r.scenario.name} {r.staff}' for r in rs)} staff"
                 f" (band: 5-95% of {rs[0].settings.replications} replications)", fontsize=9)
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig
