"""A `Profile` as one self-contained HTML flame graph (inline CSS/JS, no CDN), route filter, click to zoom."""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime

from wardrobe.ops.profiling.aggregation import Profile
from wardrobe.ops.profiling.folded import frame_label


def _data(profile: Profile) -> dict:
    names: dict[str, int] = {}
    routes = profile.routes()
    route_index = {route: i for i, route in enumerate(routes)}
    merged: dict[tuple[int, tuple[int, ...]], int] = {}
    for (tags, stack), count in profile.samples.items():
        route = dict(tags).get("route")
        path = tuple(names.setdefault(frame_label(frame.name), len(names)) for frame in stack)
        key = (route_index.get(route, -1) if route is not None else -1, path)
        merged[key] = merged.get(key, 0) + count
    return {
        "type": profile.profile_type,
        "periodMs": 1000 / profile.hz,
        "names": list(names),
        "routes": routes,
        "stacks": [[route, list(path), count] for (route, path), count in merged.items()],
    }


def render(profile: Profile, selected_route: str | None = None) -> str:
    payload = json.dumps(_data(profile), separators=(",", ":"))
    # The JSON sits inside <script>: "</" must not close the element early.
    payload = payload.replace("</", "<\\/")
    started = datetime.fromtimestamp(profile.start, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    title = f"{profile.profile_type} flame graph, {profile.end - profile.start:.0f} s from {started}"
    if len(profile.sources) > 1:
        title += f", {len(profile.sources)} processes"
    selected = json.dumps(selected_route or "").replace("</", "<\\/")
    # Data goes in last so nothing inside it is mistaken for a placeholder.
    return (
        _PAGE.replace("{{selected}}", selected)
        .replace("{{title}}", html.escape(title))
        .replace("{{data}}", payload)
    )


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{title}}</title>
<style>
  body { font: 13px system-ui, sans-serif; margin: 12px; color: #222; }
  header { display: flex; gap: 16px; align-items: center; flex-wrap: wrap; margin-bottom: 8px; }
  h1 { font-size: 15px; margin: 0; }
  #chart { position: relative; width: 100%; overflow: hidden; }
  .node { position: absolute; height: 17px; box-sizing: border-box; border: 1px solid #fff;
          font-size: 11px; line-height: 15px; padding: 0 3px; overflow: hidden; white-space: nowrap;
          text-overflow: ellipsis; cursor: pointer; }
  .node:hover { border-color: #000; }
  .node.ancestor { opacity: .55; }
  #details { min-height: 18px; color: #555; font-family: ui-monospace, monospace; margin: 6px 0; }
  .empty { color: #777; padding: 24px 0; }
</style>
</head>
<body>
<header>
  <h1>{{title}}</h1>
  <label>Route <select id="route"><option value="">all routes</option></select></label>
  <button id="reset" type="button">Reset zoom</button>
</header>
<div id="details">Click a frame to zoom in, click the root to zoom out.</div>
<div id="chart"></div>
<script>
"use strict";
const DATA = {{data}};
const SELECTED = {{selected}};
const ROW = 17;
const select = document.getElementById("route");
const chart = document.getElementById("chart");
const details = document.getElementById("details");
DATA.routes.forEach(function (route, i) {
  const option = document.createElement("option");
  option.value = String(i);
  option.textContent = route;
  if (route === SELECTED) { option.selected = true; }
  select.appendChild(option);
});

function buildTree(routeFilter) {
  const root = { name: "all", value: 0, children: new Map(), parent: null };
  DATA.stacks.forEach(function (entry) {
    const route = entry[0], path = entry[1], count = entry[2];
    if (routeFilter !== "" && String(route) !== routeFilter) { return; }
    let node = root;
    root.value += count;
    path.forEach(function (nameIndex) {
      let child = node.children.get(nameIndex);
      if (!child) {
        child = { name: DATA.names[nameIndex], value: 0, children: new Map(), parent: node };
        node.children.set(nameIndex, child);
      }
      child.value += count;
      node = child;
    });
  });
  return root;
}

function colour(name) {
  let hash = 0;
  for (let i = 0; i < name.length; i++) { hash = (hash * 31 + name.charCodeAt(i)) | 0; }
  const hue = 10 + Math.abs(hash) % 45;
  const light = 55 + Math.abs(hash >> 8) % 20;
  return "hsl(" + hue + ",85%," + light + "%)";
}

let tree = null;
let focus = null;

function describe(node) {
  const pct = tree.value ? (100 * node.value / tree.value).toFixed(1) : "0";
  const ms = (node.value * DATA.periodMs).toFixed(0);
  return node.name + " \\u2014 " + node.value + " samples (" + pct + "%, ~" + ms + " ms " + DATA.type + ")";
}

function draw() {
  chart.textContent = "";
  if (!tree.value) {
    chart.innerHTML = '<div class="empty">No samples for this selection.</div>';
    chart.style.height = "auto";
    return;
  }
  const width = chart.clientWidth || 1000;
  let depth = 0;
  const ancestors = [];
  for (let node = focus; node; node = node.parent) { ancestors.unshift(node); }
  ancestors.forEach(function (node, level) {
    place(node, level, 0, width, level < ancestors.length - 1);
  });
  function visit(node, level, x, w) {
    depth = Math.max(depth, level);
    let childX = x;
    const children = Array.from(node.children.values()).sort(function (a, b) {
      return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
    });
    children.forEach(function (child) {
      const childW = w * child.value / node.value;
      if (childW >= 1) {
        place(child, level + 1, childX, childW, false);
        visit(child, level + 1, childX, childW);
      }
      childX += childW;
    });
  }
  visit(focus, ancestors.length - 1, 0, width);
  chart.style.height = ((depth + 1) * ROW) + "px";
}

function place(node, level, x, w, isAncestor) {
  const el = document.createElement("div");
  el.className = isAncestor ? "node ancestor" : "node";
  el.style.left = x + "px";
  el.style.width = w + "px";
  el.style.top = (level * ROW) + "px";
  el.style.background = colour(node.name);
  el.textContent = w > 30 ? node.name : "";
  el.title = describe(node);
  el.addEventListener("mouseenter", function () { details.textContent = describe(node); });
  el.addEventListener("click", function () {
    focus = (node === focus && node.parent) ? node.parent : node;
    draw();
  });
  chart.appendChild(el);
}

function rebuild() {
  tree = buildTree(select.value);
  focus = tree;
  draw();
}
select.addEventListener("change", rebuild);
document.getElementById("reset").addEventListener("click", function () { focus = tree; draw(); });
window.addEventListener("resize", draw);
rebuild();
</script>
</body>
</html>
"""
