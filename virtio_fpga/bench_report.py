"""``results/bench.png`` and ``results/bench.html`` from a ``results/bench.json`` document (matplotlib, Agg).

The plot: throughput (Gbit/s of Ethernet frames) against frame size, one line per host read latency, for the
loopback cases with NOTIFICATION_DATA and EVENT_IDX on; the PCIe completion limit of the link (the direction
TX frames travel) and the Ethernet port's line rate drawn as horizontal lines.  The HTML page embeds the PNG
(as a data URI, so the page is one file) above a table of every case.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

#: Columns of the HTML table: (key, heading, format).
COLUMNS: list[tuple[str, str, str]] = [
    ("mode", "mode", "{}"),
    ("frame_bytes", "frame B", "{}"),
    ("read_latency_ns", "latency ns", "{:g}"),
    ("notification_data", "notif. data", "{}"),
    ("event_idx", "event idx", "{}"),
    ("cycles_per_frame", "cycles/frame", "{:.1f}"),
    ("mpps", "Mpps", "{:.2f}"),
    ("gbps", "Gbit/s", "{:.2f}"),
    ("link_fraction_to_device", "link to dev", "{:.1%}"),
    ("link_fraction_to_host", "link to host", "{:.1%}"),
    ("reads_in_flight_max", "reads in flight max", "{}"),
    ("reads_in_flight_mean", "mean", "{:.2f}"),
    ("desc_reads_per_desc", "desc reads/desc", "{:.3f}"),
    ("used_writes_per_frame", "used writes/frame", "{:.2f}"),
    ("irqs_per_frame", "irqs/frame", "{:.3f}"),
    ("ok", "ok", "{}"),
]


def _fmt(fmt: str, value: Any) -> str:
    if value is None:
        return "-"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def plot_png(doc: dict[str, Any]) -> bytes:
    """The throughput plot as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from sim.benchmath import link_limits

    fig = Figure(figsize=(8, 5), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    cases = [
        c
        for c in doc["cases"]
        if c["mode"] == "loopback" and c["notification_data"] and c["event_idx"] and c.get("gbps") is not None
    ]
    for latency in sorted({c["read_latency_ns"] for c in cases}):
        points = sorted((c["frame_bytes"], c["gbps"]) for c in cases if c["read_latency_ns"] == latency)
        label = "model latency (~10 cycles)" if latency == 0 else f"+{latency:g} ns host read latency"
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    limit = link_limits(doc.get("data_width", 256))["completion"] * 8 / 1e9
    ax.axhline(limit, color="black", linestyle="--", linewidth=1)
    ax.annotate(f"PCIe completion limit, 256 B payload ({limit:.1f} Gbit/s)", (64, limit), textcoords="offset points",
                xytext=(2, 4), fontsize=8)  # fmt: skip
    eth = doc.get("eth_width")
    if eth:
        line = eth * doc.get("clock_mhz", 250) / 1000
        ax.axhline(line, color="grey", linestyle=":", linewidth=1)
        ax.annotate(f"{eth}-bit Ethernet port at {doc.get('clock_mhz', 250):g} MHz ({line:.0f} Gbit/s)", (64, line),
                    textcoords="offset points", xytext=(2, 4), fontsize=8, color="grey")  # fmt: skip
    ax.set_xscale("log", base=2)
    sizes = sorted({c["frame_bytes"] for c in cases})
    if sizes:
        ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_xlabel("frame size (bytes)")
    ax.set_ylabel("throughput (Gbit/s of frames)")
    ax.set_title(
        f"virtio-net endpoint, TX->RX loopback, steady state ({doc.get('data_width')}-bit, {doc.get('clock_mhz')} MHz)"
    )
    ax.set_ylim(bottom=0, top=max([limit * 1.1] + [c["gbps"] * 1.1 for c in cases]))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="center right")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def render_html(doc: dict[str, Any], png: bytes | None) -> str:
    rows = []
    for c in doc["cases"]:
        cells = "".join(f"<td>{html.escape(_fmt(fmt, c.get(key)))}</td>" for key, _, fmt in COLUMNS)
        errs = "; ".join(c.get("errors") or [])
        rows.append(f"<tr{' class=bad' if not c.get('ok') else ''} title='{html.escape(errs)}'>{cells}</tr>")
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h, _ in COLUMNS)
    img = f"<img alt='throughput against frame size' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
    bringup = doc.get("bringup_cycles")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>virtio-fpga bench</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}} tr.bad{{background:#fdd}}</style></head>
<body><h1>virtio-fpga bench</h1>
<p>{html.escape(doc.get("command", ""))}: {len(doc["cases"])} cases, {doc.get("data_width")}-bit interface at
{doc.get("clock_mhz")} MHz, simulated cycles (exact).  Steady state: {doc.get("method", "")}</p>
<p>Driver bring-up (not in any per-frame figure): {bringup if bringup is not None else "-"} cycles.</p>
{img if png else "<p>(no plot)</p>"}
<table><tr>{head}</tr>
{"".join(rows)}
</table></body></html>
"""


def markdown(doc: dict[str, Any]) -> str:
    """The cases as a Markdown table (for the README), bring-up on its own line."""
    heads = ["case", "cycles/frame", "Mpps", "Gbit/s", "link to device / host", "reads in flight max / mean",
             "desc reads/desc", "used writes/frame", "irqs/frame"]  # fmt: skip
    lines = [
        f"Driver bring-up: {doc.get('bringup_cycles')} cycles (reset to DRIVER_OK with RX buffers posted; not in "
        "any per-frame figure).",
        "",
        "| " + " | ".join(heads) + " |",
        "|---|" + "---:|" * (len(heads) - 1),
    ]
    for c in doc["cases"]:
        if c.get("cycles_per_frame") is None:
            lines.append(f"| {c['label']} | failed: {'; '.join(c.get('errors') or [])} |" + " |" * (len(heads) - 2))
            continue
        cells = [
            c["label"],
            f"{c['cycles_per_frame']:.1f}",
            f"{c['mpps']:.2f}",
            f"{c['gbps']:.2f}",
            f"{c['link_fraction_to_device']:.1%} / {c['link_fraction_to_host']:.1%}",
            f"{c['reads_in_flight_max']} / {c['reads_in_flight_mean']:.2f}",
            f"{c['desc_reads_per_desc']:.3f}",
            f"{c['used_writes_per_frame']:.2f}",
            f"{c['irqs_per_frame']:.3f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_reports(doc: dict[str, Any], json_path: Path) -> list[Path]:
    """Write ``<stem>.png`` and ``<stem>.html`` beside ``json_path``; returns the paths written."""
    png = plot_png(doc)
    png_path = json_path.with_suffix(".png")
    png_path.write_bytes(png)
    html_path = json_path.with_suffix(".html")
    html_path.write_text(render_html(doc, png))
    return [png_path, html_path]
