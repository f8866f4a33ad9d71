"""A self-contained HTML report: a timeline chart (requests per cluster per time bin, failures,
latency p50/p99, shaded fault windows) drawn as SVG by a small inline script from embedded JSON,
then the summary and verdict tables. No network access is needed to open it."""
from __future__ import annotations

import html
import json

COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#17becf"]

SCRIPT = r"""
(function () {
  const data = JSON.parse(document.getElementById('report-data').textContent);
  const tl = data.timeline, svgNS = 'http://www.w3.org/2000/svg';
  const W = 960, H1 = 260, H2 = 160, L = 56, R = 56, T = 16, GAP = 40;
  const svg = document.getElementById('timeline');
  svg.setAttribute('viewBox', `0 0 ${W} ${T + H1 + GAP + H2 + 30}`);
  const n = tl.t.length, x = i => L + (W - L - R) * (n > 1 ? i / (n - 1) : 0);
  const tx = t => L + (W - L - R) * (n > 1 ? t / tl.t[n - 1] : 0);
  const el = (name, attrs, text) => { const e = document.createElementNS(svgNS, name);
    for (const k in attrs) e.setAttribute(k, attrs[k]); if (text !== undefined) e.textContent = text; svg.appendChild(e); return e; };
  const names = Object.keys(tl.clusters);
  const maxReq = Math.max(1, ...names.flatMap(c => tl.clusters[c]), ...tl.failed);
  const maxLat = Math.max(1, ...tl.p99_ms);
  const y1 = v => T + H1 - H1 * v / maxReq, y2 = v => T + H1 + GAP + H2 - H2 * v / maxLat;
  for (const w of data.windows) {
    const x0 = tx(Math.min(w.start, tl.t[n - 1])), x1 = tx(Math.min(w.end, tl.t[n - 1]));
    el('rect', {x: x0, y: T, width: Math.max(x1 - x0, 2), height: H1 + GAP + H2, fill: '#d62728', 'fill-opacity': 0.10, class: 'fault'});
    el('text', {x: x0 + 3, y: T + 12, 'font-size': 11, fill: '#a00'}, w.label);
  }
  el('line', {x1: L, y1: T + H1, x2: W - R, y2: T + H1, stroke: '#444'});
  el('line', {x1: L, y1: T + H1 + GAP + H2, x2: W - R, y2: T + H1 + GAP + H2, stroke: '#444'});
  el('text', {x: 4, y: T + 10, 'font-size': 11}, `req/${tl.bin_s}s`);
  el('text', {x: 4, y: T + 24, 'font-size': 11}, String(maxReq));
  el('text', {x: 4, y: T + H1 + GAP + 10, 'font-size': 11}, 'latency ms');
  el('text', {x: 4, y: T + H1 + GAP + 24, 'font-size': 11}, maxLat.toFixed(0));
  const line = (values, y, colour, cls, dash) => {
    const d = values.map((v, i) => `${i ? 'L' : 'M'}${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(' ');
    return el('path', {d: d, fill: 'none', stroke: colour, 'stroke-width': 1.8, class: cls, 'stroke-dasharray': dash || ''});
  };
  names.forEach((c, k) => line(tl.clusters[c], y1, data.colours[k % data.colours.length], 'series cluster'));
  line(tl.failed, y1, '#d62728', 'series failed', '4 3');
  line(tl.p50_ms, y2, '#555', 'series p50');
  line(tl.p99_ms, y2, '#000', 'series p99', '6 3');
  for (let s = 0; s <= tl.t[n - 1]; s += Math.max(1, Math.round(tl.t[n - 1] / 10))) {
    el('text', {x: tx(s) - 6, y: T + H1 + GAP + H2 + 16, 'font-size': 11}, `${s}s`);
  }
  const legend = document.getElementById('legend');
  names.concat(['failed', 'p50', 'p99']).forEach((c, k) => {
    const span = document.createElement('span');
    span.textContent = c; span.style.color = k < names.length ? data.colours[k % data.colours.length] : (c === 'failed' ? '#d62728' : '#000');
    span.style.marginRight = '14px'; legend.appendChild(span);
  });
  svg.setAttribute('data-drawn', String(svg.querySelectorAll('path.series').length));
})();
"""


def render(title: str, timeline: dict, windows: list[dict], summary: dict, criteria: list[dict] | None = None) -> str:
    data = {"timeline": timeline, "windows": windows, "colours": COLOURS}
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in summary.items())
    verdicts = ""
    if criteria:
        verdicts = "<h2>Criteria</h2><table><tr><th>criterion</th><th>measured</th><th>bound</th><th>verdict</th></tr>" + "".join(
            f"<tr class='{'pass' if c['pass'] else 'fail'}'><td>{html.escape(c['name'])}</td><td>{html.escape(_fmt(c['value']))}</td>"
            f"<td>{html.escape(c['bound'])}</td><td>{'pass' if c['pass'] else 'FAIL'}</td></tr>" for c in criteria) + "</table>"
    payload = json.dumps(data).replace("</", "<\\/")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:24px;color:#222}} table{{border-collapse:collapse;margin:8px 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:13px}} tr.fail td{{background:#fdd}}
tr.pass td:last-child{{color:#070}} svg{{width:100%;max-width:960px;border:1px solid #eee}}</style></head>
<body><h1>{html.escape(title)}</h1>
<svg id="timeline" role="img" aria-label="requests per cluster and latency over time"></svg>
<div id="legend"></div>
{verdicts}
<h2>Summary</h2><table>{rows}</table>
<script type="application/json" id="report-data">{payload}</script>
<script>{SCRIPT}</script>
</body></html>
"""


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}".rstrip("0").rstrip(".") if v == v else "n/a"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items())
    return "n/a" if v is None else str(v)
