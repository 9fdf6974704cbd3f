"""llama-benchy's markdown tables (closed loop) as calibrate.results rows.

`parse_benchy` reads the first pipe table with a 'test' column and a t/s column of a report (or a bare
table): its pp/tg rows paired per shape, the model column, and the footer's version and latency mode.
"""
from __future__ import annotations

import math
import re

from .files import file_error
from .results import ClosedRow

NO_TABLE = "no llama-benchy table found"
NO_ROWS = "llama-benchy table has no pp/tg rows"


# "pp2048 @ d4 (c10)", "tg256", "pp4096 (c1)"; ctx_pp/ctx_tg rows (--enable-prefix-caching's phase 1) are
# skipped, and say that the rows after them found their contexts cached (footer "prefix_caching").
_TEST_RE = re.compile(r"^(pp|tg)(\d+)(?:\s*@\s*d(\d+))?(?:\s*\(c(\d+)\))?$")
_NUM = r"[-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|nan|inf)"
# llama-benchy prints Python's nan / inf for a figure it had no samples for ("nan ± nan")
_CELL_RE = re.compile(rf"^({_NUM})(?:\s*(?:±|\+/-)\s*({_NUM}))?$", re.IGNORECASE)
_VERSION_RE = re.compile(r"llama-benchy \(([^)]+)\)")
_LATMODE_RE = re.compile(r"latency mode:\s*(\w+)")


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def find_table(text: str):
    """Return (header, [(lineno, cells)]) of the first pipe table with 'test' and a t/s column."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].lstrip().startswith("|"):
            i += 1
            continue
        start = i
        while i < len(lines) and lines[i].lstrip().startswith("|"):
            i += 1
        block = lines[start:i]
        header = _cells(block[0])
        if "test" in header and any(h.startswith("t/s") for h in header):
            body = [(start + k + 1, _cells(l)) for k, l in enumerate(block[1:], start=1)
                    if not set(l.replace("|", "").strip()) <= set("-: ")]
            return header, body
    return None


def _column_roles(header: list[str]) -> dict[int, tuple[str, ...]]:
    """Map column index -> metric roles. 'tp'/'tp_req' become pp_* or tg_* per row.

    A lone 't/s' column (c=1 tables, v0.1.x) is both total and per request, because one request
    is the whole batch; likewise a lone 'peak t/s'.
    """
    has_req, has_peak_req = "t/s (req)" in header, "peak t/s (req)" in header
    roles = {}
    for i, h in enumerate(header):
        if h == "t/s (total)" or (h == "t/s" and has_req):
            roles[i] = ("tp",)
        elif h == "t/s":
            roles[i] = ("tp", "tp_req")
        elif h == "t/s (req)":
            roles[i] = ("tp_req",)
        elif h == "peak t/s":
            roles[i] = ("peak_throughput",) if has_peak_req else ("peak_throughput", "peak_req_throughput")
        elif h == "peak t/s (req)":
            roles[i] = ("peak_req_throughput",)
        elif h in ("ttfr (ms)", "est_ppt (ms)", "e2e_ttft (ms)"):
            roles[i] = (h.split(" ")[0],)
    return roles


def _parse_cell(cell: str, path, where: str) -> tuple[float, float] | None:
    if cell == "":
        return None
    m = _CELL_RE.match(cell)
    if not m:
        raise file_error(path, f"bad number {cell!r} in {where}")
    mean = float(m.group(1))
    if not math.isfinite(mean):
        return None  # no samples: the figure is missing, as an empty cell is
    # A mean without '±' has an unknown spread: NaN, never a made-up 0.
    return mean, (float(m.group(2)) if m.group(2) is not None else math.nan)


def parse_benchy(text: str, path=None) -> tuple[list[ClosedRow], str | None, dict]:
    """Rows, the model column's value, and footer facts (version, latency_mode, prefix_caching)."""
    found = find_table(text)
    if found is None:
        raise file_error(path, NO_TABLE)
    header, body = found
    roles = _column_roles(header)
    t_col = header.index("test")
    m_col = header.index("model") if "model" in header else None
    rows: list[ClosedRow] = []
    pending: ClosedRow | None = None   # pp row waiting for its tg row
    model = None
    footer: dict = {}

    def short(lineno: int, cells: list[str]) -> str:
        return f"line {lineno}: {len(cells)} cells, header has {len(header)}"

    lines = text.splitlines()
    # a row cut inside its last cell has every cell but not the closing pipe its header has
    header_line = next((lines[i] for i in range(body[0][0] - 2, -1, -1)
                        if not set(lines[i].replace("|", "").strip()) <= set("-: ")), "") if body else ""
    open_end = header_line.rstrip().endswith("|") and body and not lines[body[-1][0] - 1].rstrip().endswith("|")
    if body and (len(body[-1][1]) < len(header) or open_end) and not "".join(lines[body[-1][0]:]).strip():
        # the file ends inside the table's last row: the writer stopped there (a test that died
        # mid-print, a full disk, a cut copy); the rows before it are whole
        lineno, cells = body.pop()
        footer["cut"] = short(lineno, cells) if len(cells) < len(header) else f"line {lineno}: its last cell has no closing '|'"
    for lineno, cells in body:
        if len(cells) != len(header):
            raise file_error(path, short(lineno, cells))
        test = cells[t_col]
        if test.startswith("ctx_"):
            footer["prefix_caching"] = True
            continue
        m = _TEST_RE.match(test)
        if not m:
            raise file_error(path, f"line {lineno}: unknown test name {test!r}")
        if m_col is not None and model is None:
            model = cells[m_col] or None
        kind, n = m.group(1), int(m.group(2))
        depth, conc = int(m.group(3) or 0), int(m.group(4) or 1)
        metrics: dict[str, tuple[float, float]] = {}
        for i, rs in roles.items():
            val = _parse_cell(cells[i], path, f"line {lineno} ({test!r}, {header[i]!r})")
            if val is None:
                continue
            if val[0] < 0 and rs != ("est_ppt",):  # est_ppt is ttfr less the latency probe: it may dip under 0
                raise file_error(path, f"line {lineno} ({test!r}, {header[i]!r}): a negative {cells[i]!r}")
            for r in rs:
                key = {"tp": f"{kind}_throughput", "tp_req": f"{kind}_req_throughput"}.get(r, r)
                metrics[key] = val
        if kind == "pp":
            if pending is not None:
                rows.append(pending)
            pending = ClosedRow(pp=n, tg=0, depth=depth, concurrency=conc, metrics=metrics)
        elif pending is not None and (pending.depth, pending.concurrency) == (depth, conc):
            # llama-benchy prints each shape's pp row immediately followed by its tg row.
            pending.tg = n
            # Peak t/s belongs to decode: the tg row's value wins over anything on the pp row.
            pending.metrics.update(metrics)
            rows.append(pending)
            pending = None
        else:
            if pending is not None:
                rows.append(pending)
                pending = None
            rows.append(ClosedRow(pp=0, tg=n, depth=depth, concurrency=conc, metrics=metrics))
    if pending is not None and "cut" not in footer:  # cut, a last pp row lost its tg row: the shape is incomplete
        rows.append(pending)
    if not rows:
        cut = f" before its cut {footer['cut']}" if "cut" in footer else ""
        raise file_error(path, f"{NO_ROWS}{cut}")
    if (v := _VERSION_RE.search(text)):
        footer["version"] = v.group(1)
    if (lm := _LATMODE_RE.search(text)):
        footer["latency_mode"] = lm.group(1)
    return rows, model, footer


def parse_benchy_markdown(text: str, path=None) -> list[ClosedRow]:
    """Parse a llama-benchy markdown table (bare, or inside a report) into ClosedRows; a cut table is an error."""
    rows, _, footer = parse_benchy(text, path)
    if "cut" in footer:
        raise file_error(path, footer["cut"])
    return rows
