// A small live line chart in SVG: series of (step, value) points, drawn at the figure's own width in CSS
// pixels (so text stays readable from phone to desktop) and a fixed height, so the page never jumps as
// points arrive. Each series has its own colour (Okabe-Ito, colour-blind safe) and
// dash pattern, so the lines differ without colour too; sparse series (eval) also get point markers.
import { el, svg } from "./dom.js";
import { fmtNum } from "./format.js";

const PAD = { left: 56, right: 12, top: 10, bottom: 28 };
const MAX_DRAWN = 800; // points per series actually drawn; longer runs are thinned evenly

function niceTicks(lo, hi, count) {
  if (!(hi > lo)) {
    const d = Math.abs(lo) * 0.1 || 1;
    [lo, hi] = [lo - d, hi + d];
  }
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const start = Math.floor(lo / step) * step;
  const ticks = [];
  for (let v = start; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  if (ticks[ticks.length - 1] < hi) ticks.push(Number((ticks[ticks.length - 1] + step).toPrecision(12)));
  return ticks;
}

function thin(points) {
  if (points.length <= MAX_DRAWN) return points;
  const every = points.length / MAX_DRAWN;
  const out = [];
  for (let i = 0; i < MAX_DRAWN; i++) out.push(points[Math.floor(i * every)]);
  out.push(points[points.length - 1]);
  return out;
}

export function createChart(figure, { title, series, format = fmtNum, height: H = 200 }) {
  let W = 600;
  const data = new Map(series.map((s) => [s.key, []]));
  const titleId = `${figure.id}-title`;
  const plot = svg("g", { class: "plot" });
  const root = svg(
    "svg",
    { viewBox: `0 0 ${W} ${H}`, width: "100%", height: H, role: "img", "aria-labelledby": titleId },
    plot,
  );
  const legend = el("ul", { class: "legend" });
  const values = new Map();
  for (const s of series) {
    const value = el("span", { class: "legend-value" }, "—");
    values.set(s.key, value);
    legend.append(
      el(
        "li",
        {},
        svg("svg", { width: 28, height: 10, "aria-hidden": "true", class: "swatch" },
          svg("line", { x1: 0, y1: 5, x2: 28, y2: 5, stroke: s.color, "stroke-width": 3,
            "stroke-dasharray": s.dash || null })),
        ` ${s.label}: `,
        value,
      ),
    );
  }
  figure.replaceChildren(el("figcaption", { id: titleId }, el("span", { class: "chart-title" }, title), legend), root);
  figure.dataset.points = "0";

  let pending = false;
  let emptyText = "waiting for data";

  function render() {
    pending = false;
    W = Math.max(200, Math.round(root.getBoundingClientRect().width) || W);
    root.setAttribute("viewBox", `0 0 ${W} ${H}`);
    const all = [...data.values()].flat();
    figure.dataset.points = String(all.length);
    const nodes = [];
    const x0 = PAD.left;
    const x1 = W - PAD.right;
    const y0 = H - PAD.bottom;
    const y1 = PAD.top;
    let xs = [0, 1];
    let ys = [0, 1];
    if (all.length) {
      xs = niceTicks(Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0])), 5);
      ys = niceTicks(Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1])), 4);
    }
    const [xlo, xhi] = [xs[0], xs[xs.length - 1]];
    const [ylo, yhi] = [ys[0], ys[ys.length - 1]];
    const sx = (x) => x0 + ((x - xlo) / (xhi - xlo || 1)) * (x1 - x0);
    const sy = (y) => y0 - ((y - ylo) / (yhi - ylo || 1)) * (y0 - y1);
    for (const y of ys) {
      nodes.push(svg("line", { class: "grid", x1: x0, x2: x1, y1: sy(y), y2: sy(y) }));
      nodes.push(svg("text", { class: "tick", x: x0 - 6, y: sy(y) + 4, "text-anchor": "end" }, format(y)));
    }
    for (const x of xs) {
      nodes.push(svg("text", { class: "tick", x: sx(x), y: H - 8, "text-anchor": "middle" }, fmtNum(x, 6)));
    }
    nodes.push(svg("text", { class: "tick axis-name", x: x1, y: y0 - 4, "text-anchor": "end" }, "step"));
    if (!all.length) {
      plot.replaceChildren(
        svg("line", { class: "grid", x1: x0, x2: x1, y1: y0, y2: y0 }),
        svg("text", { class: "empty", x: (x0 + x1) / 2, y: (y0 + y1) / 2, "text-anchor": "middle" },
          emptyText),
      );
      return;
    }
    for (const s of series) {
      const pts = thin(data.get(s.key));
      if (!pts.length) continue;
      const d = pts.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ");
      nodes.push(svg("polyline", { class: "series", points: d, stroke: s.color, "stroke-dasharray": s.dash || null,
        "data-series": s.key }));
      if (s.markers) {
        for (const p of pts) {
          nodes.push(svg("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 3.5, fill: s.color }));
        }
      }
    }
    plot.replaceChildren(...nodes);
  }

  render();
  let lastWidth = 0;
  const resized = new ResizeObserver(([entry]) => {
    const width = Math.round(entry.contentRect.width);
    if (width === lastWidth) return;
    lastWidth = width;
    if (!pending) {
      pending = true;
      requestAnimationFrame(render);
    }
  });
  resized.observe(root);
  return {
    add(key, step, value) {
      if (!Number.isFinite(step) || !Number.isFinite(value)) return;
      const pts = data.get(key);
      // A record for a step already drawn replaces it (a resumed run repeats no step, but be exact).
      if (pts.length && pts[pts.length - 1][0] >= step) {
        while (pts.length && pts[pts.length - 1][0] >= step) pts.pop();
      }
      pts.push([step, value]);
      values.get(key).textContent = format(value);
      if (!pending) {
        pending = true;
        requestAnimationFrame(render);
      }
    },
    // A resumed run starts again after its checkpoint's step: drop what came after it.
    truncate(afterStep) {
      for (const pts of data.values()) while (pts.length && pts[pts.length - 1][0] > afterStep) pts.pop();
      render();
    },
    // The stream has ended: an empty chart will stay empty.
    finished() {
      emptyText = "no data";
      render();
    },
    destroy() {
      resized.disconnect();
    },
  };
}
