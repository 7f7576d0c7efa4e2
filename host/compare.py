"""Compare devices by their normalised traces: match, or the first differing event with context.

The traces come from :func:`host.scenario.run_scenario`, one per (device, scenario).  Events are compared in
order; ``stats`` (DMA requests and bytes, interrupt totals, elapsed time) differ by design between a DMA
engine that fetches descriptors in bursts and a software model, so they are shown side by side and never
compared.
"""

from __future__ import annotations

import html
from typing import Any

CONTEXT = 3


def first_difference(a: list[list], b: list[list]) -> int | None:
    """Index of the first event where two traces differ (a missing event counts), None if identical."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    if len(a) != len(b):
        return min(len(a), len(b))
    return None


def diff_scenario(reference: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """Compare one scenario's trace on two devices."""
    a, b = reference["events"], other["events"]
    index = first_difference(a, b)
    result: dict[str, Any] = {
        "scenario": reference["scenario"],
        "devices": [reference["device"], other["device"]],
        "match": index is None,
        "events": [len(a), len(b)],
        "stats": {reference["device"]: reference.get("stats", {}), other["device"]: other.get("stats", {})},
    }
    if index is not None:
        lo = max(0, index - CONTEXT)
        result["first_difference"] = {
            "index": index,
            reference["device"]: a[index] if index < len(a) else None,
            other["device"]: b[index] if index < len(b) else None,
            "context": {
                reference["device"]: a[lo : index + CONTEXT + 1],
                other["device"]: b[lo : index + CONTEXT + 1],
            },
            "context_start": lo,
        }
    return result


def compare_runs(reference: list[dict], other: list[dict]) -> dict[str, Any]:
    """Pair traces by scenario name and summarise: the JSON ``virtio-fpga compare --json`` prints.

    Two runs of the same kind of device get distinct labels (the second one primed) so neither hides the other.
    """
    if reference and other and reference[0]["device"] == other[0]["device"]:
        other = [dict(t, device=t["device"] + "'") for t in other]
    by_name = {t["scenario"]: t for t in other}
    results = []
    for trace in reference:
        counterpart = by_name.get(trace["scenario"])
        if counterpart is None:
            counterpart = {"device": "?", "scenario": trace["scenario"], "events": [], "stats": {}}
        results.append(diff_scenario(trace, counterpart))
    matched = sum(r["match"] for r in results)
    return {
        "devices": [reference[0]["device"], other[0]["device"]] if reference and other else [],
        "scenarios": len(results),
        "matched": matched,
        "mismatched": len(results) - matched,
        "results": results,
    }


# ---- rendering ----------------------------------------------------------------------------------------------


def render_text(report: dict[str, Any]) -> str:
    devs = " vs ".join(report["devices"])
    lines = [f"comparison {devs}: {report['matched']}/{report['scenarios']} scenarios match"]
    for r in report["results"]:
        if r["match"]:
            lines.append(f"  match     {r['scenario']} ({r['events'][0]} events)")
            continue
        d = r["first_difference"]
        a_dev, b_dev = r["devices"]
        lines.append(f"  MISMATCH  {r['scenario']} at event {d['index']}:")
        lines.append(f"      {a_dev}: {d[a_dev]}")
        lines.append(f"      {b_dev}: {d[b_dev]}")
        for dev in (a_dev, b_dev):
            lines.append(f"      context on {dev} from event {d['context_start']}:")
            for event in d["context"][dev]:
                lines.append(f"        {event}")
    return "\n".join(lines)


def _dma_chart(report: dict[str, Any]) -> str:
    """An inline SVG: DMA read and write requests per scenario, one bar per device."""
    rows = []
    devs = report["devices"]
    peak = 1
    for r in report["results"]:
        for dev in devs:
            dma = r["stats"].get(dev, {}).get("dma", {})
            peak = max(peak, dma.get("read_requests", 0) + dma.get("write_requests", 0))
    width, bar_h, label_w = 640, 9, 180
    colours = ["#3b7dd8", "#e07b39", "#4caf50"]
    y = 20
    for r in report["results"]:
        rows.append(f'<text x="0" y="{y + 8}" font-size="10">{html.escape(r["scenario"])}</text>')
        for k, dev in enumerate(devs):
            dma = r["stats"].get(dev, {}).get("dma", {})
            reads, writes = dma.get("read_requests", 0), dma.get("write_requests", 0)
            wr = (width - label_w - 60) * reads / peak
            ww = (width - label_w - 60) * writes / peak
            rows.append(
                f'<rect x="{label_w}" y="{y}" width="{wr:.1f}" height="{bar_h - 1}" fill="{colours[k % 3]}"/>'
                f'<rect x="{label_w + wr:.1f}" y="{y}" width="{ww:.1f}" height="{bar_h - 1}" '
                f'fill="{colours[k % 3]}" fill-opacity="0.45"/>'
                f'<text x="{label_w + wr + ww + 4:.1f}" y="{y + 8}" font-size="9">{reads}r/{writes}w</text>'
            )
            y += bar_h
        y += 6
    legend = " ".join(
        f'<rect x="{label_w + 140 * k}" y="2" width="10" height="10" fill="{colours[k % 3]}"/>'
        f'<text x="{label_w + 14 + 140 * k}" y="11" font-size="10">{html.escape(dev)}</text>'
        for k, dev in enumerate(devs)
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{y + 10}" role="img" '
        f'aria-label="DMA requests per scenario">{legend}{"".join(rows)}</svg>'
    )


def render_html(report: dict[str, Any]) -> str:
    devs = " vs ".join(report["devices"])
    out = [
        "<!doctype html><html><head><meta charset='utf-8'><title>virtio-fpga comparison</title>",
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;text-align:left}"
        ".ok{color:#2e7d32}.bad{color:#c62828}pre{background:#f4f4f4;padding:6px}</style></head><body>",
        f"<h1>Device comparison: {html.escape(devs)}</h1>",
        f"<p>{report['matched']} of {report['scenarios']} scenarios match; {report['mismatched']} differ.</p>",
        "<h2>DMA requests per scenario (reads solid, writes light; reported, not compared)</h2>",
        _dma_chart(report),
        "<h2>Scenarios</h2><table><tr><th>scenario</th><th>result</th><th>events</th><th>interrupts</th></tr>",
    ]
    for r in report["results"]:
        cls, word = ("ok", "match") if r["match"] else ("bad", f"differs at event {r['first_difference']['index']}")
        irqs = "; ".join(f"{dev}: {r['stats'].get(dev, {}).get('interrupts', {})}" for dev in r["devices"])
        out.append(
            f"<tr><td>{html.escape(r['scenario'])}</td><td class='{cls}'>{word}</td>"
            f"<td>{r['events'][0]} / {r['events'][1]}</td><td>{html.escape(irqs)}</td></tr>"
        )
    out.append("</table>")
    for r in report["results"]:
        if r["match"]:
            continue
        d = r["first_difference"]
        out.append(f"<h3>{html.escape(r['scenario'])}: first difference at event {d['index']}</h3>")
        for dev in r["devices"]:
            body = "\n".join(str(e) for e in d["context"][dev])
            out.append(f"<p>{html.escape(dev)} (from event {d['context_start']}):</p><pre>{html.escape(body)}</pre>")
    out.append("</body></html>")
    return "\n".join(out)


def render_markdown(report: dict[str, Any]) -> str:
    devs = " vs ".join(report["devices"])
    out = [
        f"# Device comparison: {devs}",
        "",
        f"{report['matched']} of {report['scenarios']} scenarios match.",
        "",
        "| scenario | result | DMA requests (read/write) per device |",
        "|---|---|---|",
    ]
    for r in report["results"]:
        word = "match" if r["match"] else f"**differs at event {r['first_difference']['index']}**"
        dma = ", ".join(
            f"{dev}: {r['stats'].get(dev, {}).get('dma', {}).get('read_requests', '?')}/"
            f"{r['stats'].get(dev, {}).get('dma', {}).get('write_requests', '?')}"
            for dev in r["devices"]
        )
        out.append(f"| {r['scenario']} | {word} | {dma} |")
    for r in report["results"]:
        if not r["match"]:
            d = r["first_difference"]
            out += ["", f"## {r['scenario']}: first difference at event {d['index']}", ""]
            for dev in r["devices"]:
                out.append(f"- {dev}: `{d[dev]}`")
    return "\n".join(out) + "\n"
