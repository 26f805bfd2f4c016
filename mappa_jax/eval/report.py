"""One self-contained HTML report of a run's evaluations: look at trajectories instead of reading.

Reads what the trainer writes under a run workdir:
  <workdir>/config.json                                     run name, workflow, agents
  <workdir>/eval_results/step{step:06d}_{set}.json          EvalReport JSON (runner.write_results)
  <workdir>/eval_results/step{step:06d}_{set}.trajectories.jsonl   records.write_trajectories
  <workdir>/coach_bias.jsonl                                the bias guard, once per train step

and renders, per eval set: the accuracy curve (mean with its 95% CI band) and every agent's mean
coach score per eval step as inline SVG, a summary table, and the trajectories of the latest
step (plus the first step's, so base and final can be compared), each collapsible, showing
every agent's input, output, tool runs, coach score and rationale, and the outcome; then a
'Coach bias' section: per agent, its score gaps between task types with their CI bands beside
the outcome gaps (x outcome_scale), and a table of the guard's warnings.

The file has inline CSS and SVG only: no JavaScript, no external URL, so it opens anywhere
(also from a copied-out file). Model and tool text is untrusted and always html-escaped.
"""
from __future__ import annotations

import datetime
import glob
import html
import json
import math
import os
import re
from typing import Any, Sequence

from mappa_jax.workflows.records import read_trajectories

_RESULT_RE = re.compile(r"^step(\d+)_(.+)\.json$")
_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")


def _e(x: Any) -> str:
  """Escapes any value for HTML text and attributes."""
  return html.escape("" if x is None else str(x), quote=True)


def _clip(text: str, limit: int) -> str:
  """Keeps head and tail of a long text (prompts can be thousands of tokens)."""
  if limit <= 0 or len(text) <= limit:
    return text
  half = limit // 2
  return (f"{text[:half]}\n\n[... {len(text) - 2 * half} characters left out ...]\n\n"
          f"{text[-half:]}")


def _fmt(v: Any, digits: int = 3) -> str:
  if v is None or (isinstance(v, float) and not math.isfinite(v)):
    return "–"
  if isinstance(v, float):
    return f"{v:.{digits}f}"
  return str(v)


# ----------------------------------------------------------------------------- loading


def load_run(workdir: str) -> dict[str, Any]:
  """Reads config and eval results of a run.

  Returns:
    {'config': dict, 'agents': [agent names in workflow order],
     'sets': {set name: {step: {'report': dict, 'trajectories': list[dict] | None}}}}
  """
  config: dict[str, Any] = {}
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      config = json.load(f)
  sets: dict[str, dict[int, dict[str, Any]]] = {}
  for p in sorted(glob.glob(os.path.join(workdir, "eval_results", "step*_*.json"))):
    m = _RESULT_RE.match(os.path.basename(p))
    if not m:
      continue
    step, name = int(m.group(1)), m.group(2)
    with open(p, encoding="utf-8") as f:
      report = json.load(f)
    tpath = p[:-len(".json")] + ".trajectories.jsonl"
    trajs = read_trajectories(tpath) if os.path.exists(tpath) else None
    sets.setdefault(name, {})[step] = {"report": report, "trajectories": trajs}
  # Agent order: the workflow's execution order, as the trajectories' actions show it (this
  # module needs nothing beyond the standard library), then any other configured agent.
  agents: list[str] = []
  for runs in sets.values():
    for run in runs.values():
      for t in run["trajectories"] or ():
        for a in t.get("actions", ()):
          if a.get("agent") not in agents:
            agents.append(a.get("agent"))
  agents += [a for a in (config.get("agents") or {}) if a not in agents]
  return {"config": config, "agents": agents, "sets": sets}


def agent_mean_scores(trajs: Sequence[dict[str, Any]]) -> dict[str, tuple[float, int]]:
  """Per agent: (mean coach score over its scored actions, number of scored actions)."""
  acc: dict[str, list[float]] = {}
  for t in trajs:
    for a in t.get("actions", ()):
      c = a.get("coach") or {}
      if c.get("status") == "scored" and c.get("score") is not None:
        acc.setdefault(a["agent"], []).append(float(c["score"]))
  return {k: (sum(v) / len(v), len(v)) for k, v in acc.items()}


def _primary_metrics(summary: dict[str, Any]) -> list[str]:
  """The accuracy-like metrics with CIs worth a curve (math first, then DSBench)."""
  keys = [k for k in ("rule_accuracy", "coach_accuracy", "success_rate", "fair_gain")
          if isinstance(summary.get(k), dict)]
  return keys


def _correctness(traj: dict[str, Any], sample: dict[str, Any] | None) -> bool | None:
  """True/False when the trajectory was graded, None when not (rule grade wins over coach)."""
  for src, key in ((sample, "rule_correct"), (traj.get("outcome"), "rule_correct"),
                   (sample, "success"), (traj.get("outcome"), "correct"),
                   (sample, "coach_correct")):
    if src and src.get(key) is not None:
      return bool(src[key])
  return False if traj.get("error") else None


# ----------------------------------------------------------------------------- SVG charts


def svg_chart(title: str, series: Sequence[dict[str, Any]], *, y_min: float, y_max: float,
              width: int = 560, height: int = 260) -> str:
  """A line chart as inline SVG.

  Args:
    title: chart title.
    series: [{'label': str, 'points': [(step, value, ci_low | None, ci_high | None), ...]}];
      a CI band is drawn where both bounds are given.
    y_min, y_max: value axis range.

  Every point is a <circle class="pt" data-series=... data-step=... data-value=...> with a
  <title> tooltip, so the report (and its tests) can be read without JavaScript.
  """
  rows = max(1, -(-len(series) // 3))  # legend rows, three entries per row
  ml, mr, mt, mb = 48, 12, 28, 40 + 16 * rows
  pw, ph = width - ml - mr, height - mt - mb
  steps = sorted({p[0] for s in series for p in s["points"]})
  lo_s, hi_s = (steps[0], steps[-1]) if steps else (0, 1)

  def x(step: float) -> float:
    return ml + (pw / 2 if hi_s == lo_s else (step - lo_s) / (hi_s - lo_s) * pw)

  def y(v: float) -> float:
    v = min(max(v, y_min), y_max)
    return mt + ph - (v - y_min) / ((y_max - y_min) or 1.0) * ph

  out = [f'<svg class="chart" width="{width}" '
         f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
         f'aria-label="{_e(title)}">',
         f'<text x="{ml}" y="16" class="ctitle">{_e(title)}</text>']
  for i in range(5):  # horizontal grid with value labels
    v = y_min + (y_max - y_min) * i / 4
    out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{y(v):.1f}" y2="{y(v):.1f}" class="grid"/>'
               f'<text x="{ml - 6}" y="{y(v) + 4:.1f}" class="tick" text-anchor="end">'
               f'{v:g}</text>')
  for s in steps:  # one x tick per eval step
    out.append(f'<text x="{x(s):.1f}" y="{mt + ph + 16}" class="tick" text-anchor="middle">'
               f'{s}</text>')
  out.append(f'<text x="{ml + pw / 2}" y="{mt + ph + 30}" class="tick" '
             f'text-anchor="middle">training step</text>')
  for k, s in enumerate(series):
    color = _PALETTE[k % len(_PALETTE)]
    pts = sorted(p for p in s["points"] if p[1] is not None and math.isfinite(p[1]))
    band = [p for p in pts if p[2] is not None and p[3] is not None]
    if band:
      poly = ([f"{x(p[0]):.1f},{y(p[3]):.1f}" for p in band]
              + [f"{x(p[0]):.1f},{y(p[2]):.1f}" for p in reversed(band)])
      if len(band) == 1:  # a single step: show its CI as a vertical bar
        out.append(f'<line x1="{x(band[0][0]):.1f}" x2="{x(band[0][0]):.1f}" '
                   f'y1="{y(band[0][2]):.1f}" y2="{y(band[0][3]):.1f}" stroke="{color}" '
                   f'stroke-width="6" stroke-opacity="0.25" class="ci"/>')
      else:
        out.append(f'<polygon points="{" ".join(poly)}" fill="{color}" fill-opacity="0.15" '
                   f'class="ci"/>')
    if len(pts) > 1:
      path = " ".join(f"{x(p[0]):.1f},{y(p[1]):.1f}" for p in pts)
      # Odd series dashed: equal curves (e.g. rule and coach accuracy) stay both visible.
      dash = ' stroke-dasharray="7 4"' if k % 2 else ""
      out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"'
                 f'{dash}/>')
    for p in pts:
      ci = f" [{p[2]:.3g}, {p[3]:.3g}]" if p[2] is not None and p[3] is not None else ""
      out.append(f'<circle class="pt" data-series="{_e(s["label"])}" data-step="{p[0]}" '
                 f'data-value="{p[1]:.6g}" cx="{x(p[0]):.1f}" cy="{y(p[1]):.1f}" r="3.5" '
                 f'fill="{color}"><title>{_e(s["label"])} step {p[0]}: {p[1]:.3g}{ci}'
                 f'</title></circle>')
    lx, ly = ml + (k % 3) * (pw // 3), mt + ph + 50 + 16 * (k // 3)  # legend below the axis
    out.append(f'<rect x="{lx}" y="{ly - 9}" width="10" height="10" fill="{color}"/>'
               f'<text x="{lx + 14}" y="{ly}" class="tick">{_e(s["label"])}</text>')
  out.append("</svg>")
  return "".join(out)


# ----------------------------------------------------------------------------- HTML pieces

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
 margin:0 auto;max-width:1200px;padding:16px 24px;color:#222;background:#fafafa}
h1{font-size:22px;margin:8px 0}h2{font-size:19px;border-bottom:2px solid #ddd;padding-bottom:4px;
 margin-top:28px}h3{font-size:16px;margin:18px 0 8px}
.meta{color:#666}.charts{display:flex;flex-wrap:wrap;gap:12px}
.chart{background:#fff;border:1px solid #ddd;border-radius:6px}
.ctitle{font-size:13px;font-weight:600;fill:#333}.tick{font-size:11px;fill:#555}
.grid{stroke:#eee;stroke-width:1}
table{border-collapse:collapse;background:#fff;margin:8px 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}th{background:#f0f0f0}
td:first-child,th:first-child{text-align:left}
details.traj{border:1px solid #ccc;border-left:6px solid #999;border-radius:4px;margin:6px 0;
 background:#fff}
details.traj>summary{padding:6px 10px;cursor:pointer}
details.correct{border-left-color:#2e7d32}details.correct>summary{background:#e8f5e9}
details.incorrect{border-left-color:#c62828}details.incorrect>summary{background:#ffebee}
details.ungraded>summary{background:#f3f3f3}
.badge{display:inline-block;border-radius:10px;padding:0 8px;margin:0 3px;font-size:12px;
 font-weight:600;color:#fff;background:#777}
.b-ok{background:#2e7d32}.b-bad{background:#c62828}.b-hi{background:#388e3c}
.b-mid{background:#f9a825;color:#222}.b-lo{background:#d84315}.b-inv{background:#757575}
.body{padding:6px 12px}.action{border-top:1px solid #eee;padding:6px 0}
.ahead{font-weight:600}.sub{color:#666;font-weight:400;font-size:12px}
pre{white-space:pre-wrap;word-wrap:break-word;background:#f6f8fa;border:1px solid #e1e4e8;
 border-radius:4px;padding:6px 8px;margin:4px 0;font:12px/1.4 ui-monospace,"DejaVu Sans Mono",
 monospace;max-height:480px;overflow:auto}
pre.out{background:#fff}pre.err{background:#fff5f5}pre.rat{background:#fffbea}
.tool{border-left:3px solid #90caf9;padding-left:8px;margin:4px 0}
.kv{font-size:12px;color:#444}.left-out{color:#a15c00;font-style:italic}
"""


def _score_badge(coach: dict[str, Any] | None) -> str:
  if not coach:
    return '<span class="badge b-inv">no coach</span>'
  if coach.get("status") != "scored" or coach.get("score") is None:
    return f'<span class="badge b-inv" title="{_e(coach.get("reason"))}">invalid</span>'
  s = float(coach["score"])
  cls = "b-hi" if s >= 7 else "b-mid" if s >= 4 else "b-lo"
  return f'<span class="badge {cls}">{s:g}/10</span>'


def _pre(text: str, cls: str, limit: int) -> str:
  return f'<pre class="{cls}">{_e(_clip(text or "", limit))}</pre>'


def _action_html(a: dict[str, Any], role: str, limit: int) -> str:
  coach = a.get("coach") or {}
  head = (f'<div class="ahead">{_e(role)} <span class="sub">({_e(a.get("agent"))}, turn '
          f'{_e(a.get("turn"))})</span> {_score_badge(a.get("coach"))}'
          f' <span class="sub">{_e(a.get("n_prompt_tokens"))} prompt / '
          f'{_e(a.get("n_response_tokens"))} response tokens, finish '
          f'{_e(a.get("finish_reason"))}{", TRUNCATED" if a.get("truncated") else ""}, '
          f'weights v{_e(a.get("weight_version"))}</span></div>')
  parts = [head]
  if "prompt_text" in a:
    parts.append(f'<details><summary>input (prompt)</summary>'
                 f'{_pre(a["prompt_text"], "in", limit)}</details>')
  parts.append(f'<div class="kv">output</div>{_pre(a.get("text", ""), "out", limit)}')
  for i, t in enumerate(a.get("tool_calls") or ()):
    status = ("timed out" if t.get("timed_out") else f'exit code {_e(t.get("exit_code"))}')
    bad = t.get("timed_out") or t.get("exit_code") not in (0, None)
    parts.append(
        f'<div class="tool"><div class="kv">tool run {i + 1}: '
        f'<span class="badge {"b-bad" if bad else "b-ok"}">{status}</span></div>'
        f'{_pre(t.get("code", ""), "in", limit)}'
        + (f'<div class="kv">stdout</div>{_pre(t["stdout"], "out", limit)}'
           if t.get("stdout") else "")
        + (f'<div class="kv">stderr</div>{_pre(t["stderr"], "err", limit)}'
           if t.get("stderr") else "") + "</div>")
  if coach:
    verdict = ("" if coach.get("answer_correct") is None
               else f', answer_correct={_e(coach["answer_correct"])}')
    parts.append(
        f'<div class="kv">coach {_e(coach.get("coach_name"))}: {_e(coach.get("status"))}'
        f'{verdict}{", reason: " + _e(coach["reason"]) if coach.get("reason") else ""}'
        f'{" (cached)" if coach.get("cached") else ""}</div>'
        f'{_pre(coach.get("rationale", ""), "rat", limit)}')
  return f'<div class="action">{"".join(parts)}</div>'


def _trajectory_html(t: dict[str, Any], sample: dict[str, Any] | None, roles: dict[str, str],
                     limit: int, open_: bool) -> str:
  ok = _correctness(t, sample)
  cls = "ungraded" if ok is None else "correct" if ok else "incorrect"
  badge = ('<span class="badge">ungraded</span>' if ok is None else
           f'<span class="badge {"b-ok" if ok else "b-bad"}">'
           f'{"✓ correct" if ok else "✗ incorrect"}</span>')
  scores = " ".join(f'<span class="sub">{_e(roles.get(a["agent"], a["agent"]))}</span>'
                    f'{_score_badge(a.get("coach"))}' for a in t.get("actions", ()))
  answer = (sample or {}).get("answer") or t.get("final_answer") or ""
  summary = (f'{badge} <b>{_e(t.get("task_id"))}</b> #{_e(t.get("sample_index"))} '
             f'<span class="sub">{_e(t.get("task_type"))}</span> answer '
             f'<code>{_e(_clip(str(answer), 80))}</code> {scores}'
             + (f' <span class="badge b-bad">error</span>' if t.get("error") else ""))
  body = [f'<div class="kv">outcome: {_e(json.dumps(t.get("outcome") or {}, sort_keys=True))}'
          + (f' · label: {_e(t["metadata"]["label"])}' if "label" in (t.get("metadata") or {})
             else "") + "</div>"]
  if t.get("error"):
    body.append(f'<div class="kv">workflow error</div>{_pre(t["error"], "err", limit)}')
  body += [_action_html(a, roles.get(a["agent"], a["agent"]), limit)
           for a in t.get("actions", ())]
  return (f'<details class="traj {cls}"{" open" if open_ else ""}><summary>{summary}</summary>'
          f'<div class="body">{"".join(body)}</div></details>')


def _set_html(name: str, runs: dict[int, dict[str, Any]], agents: Sequence[str],
              roles: dict[str, str], max_trajectories: int, max_text_chars: int) -> str:
  steps = sorted(runs)
  out = [f'<h2 id="set-{_e(name)}">Eval set {_e(name)}</h2>']
  first_summary = runs[steps[0]]["report"].get("summary", {})
  acc_series = []
  for key in _primary_metrics(first_summary):
    pts = []
    for s in steps:
      v = runs[s]["report"].get("summary", {}).get(key)
      if isinstance(v, dict) and v.get("mean") is not None:
        pts.append((s, v["mean"], v.get("ci_low"), v.get("ci_high")))
    acc_series.append({"label": key, "points": pts})
  per_step_scores = {s: agent_mean_scores(runs[s]["trajectories"] or ()) for s in steps}
  score_series = [{"label": roles.get(a, a),
                   "points": [(s, per_step_scores[s][a][0], None, None) for s in steps
                              if a in per_step_scores[s]]} for a in agents]
  score_series = [s for s in score_series if s["points"]]
  charts = []
  if acc_series:
    lo = min([0.0] + [p[2] for s in acc_series for p in s["points"] if p[2] is not None])
    hi = max([1.0] + [p[3] for s in acc_series for p in s["points"] if p[3] is not None])
    charts.append(svg_chart(f"{name}: accuracy (mean, 95% CI)", acc_series, y_min=lo, y_max=hi))
  if score_series:
    charts.append(svg_chart(f"{name}: mean coach score per agent", score_series,
                            y_min=0.0, y_max=10.0))
  out.append(f'<div class="charts">{"".join(charts)}</div>')
  # Summary table: one row per eval step.
  metric_keys = _primary_metrics(first_summary) + [
      k for k in ("process_score", "error_rate", "n_samples") if k in first_summary]
  head = "".join(f"<th>{_e(k)}</th>" for k in metric_keys)
  head += "".join(f"<th>{_e(roles.get(a, a))} score</th>" for a in agents)
  rows = []
  for s in steps:
    summ = runs[s]["report"].get("summary", {})
    cells = []
    for k in metric_keys:
      v = summ.get(k)
      cells.append(f"<td>{_fmt(v['mean'])} [{_fmt(v.get('ci_low'))}, {_fmt(v.get('ci_high'))}]"
                   f"</td>" if isinstance(v, dict) else f"<td>{_fmt(v)}</td>")
    cells += [f"<td>{_fmt(per_step_scores[s][a][0], 2)}</td>" if a in per_step_scores[s]
              else "<td>–</td>" for a in agents]
    rows.append(f"<tr><td>step {s}</td>{''.join(cells)}</tr>")
  out.append(f'<table class="summary"><tr><th>eval step</th>{head}</tr>{"".join(rows)}</table>')
  # Trajectories: the latest step, and the first for comparison when it differs.
  shown = [(steps[-1], f"latest (step {steps[-1]})")]
  if len(steps) > 1:
    shown.append((steps[0], f"{'base' if steps[0] == 0 else 'first'} (step {steps[0]})"))
  for s, label in shown:
    trajs = runs[s]["trajectories"]
    out.append(f'<h3 class="step-trajs" data-step="{s}">Trajectories: {_e(label)}</h3>')
    if trajs is None:
      out.append('<p class="left-out">no trajectories file for this step</p>')
      continue
    samples = {(str(r.get("task_id")), r.get("sample_index")): r
               for r in runs[s]["report"].get("samples", ())}
    keep = trajs[:max(max_trajectories, 0)]
    n_ok = sum(_correctness(t, samples.get((str(t["task_id"]), t["sample_index"]))) is True
               for t in trajs)
    out.append(f'<p class="meta">{len(trajs)} trajectories, {n_ok} correct; '
               f'showing {len(keep)}.</p>')
    out += [_trajectory_html(t, samples.get((str(t["task_id"]), t["sample_index"])), roles,
                             max_text_chars, open_=(i == 0)) for i, t in enumerate(keep)]
    if len(trajs) > len(keep):
      out.append(f'<p class="left-out">{len(trajs) - len(keep)} more trajectories left out '
                 f'(max_trajectories={max_trajectories}).</p>')
  return "".join(out)


# ----------------------------------------------------------------------------- coach bias

_BIAS_PREFIX = "coach_bias/"
_OUTCOME = "outcome"  # coach.bias_guard.OUTCOME, the outcome gaps' namespace


def load_coach_bias(workdir: str) -> list[dict[str, Any]]:
  """<workdir>/coach_bias.jsonl (coach/bias_monitor.py), one entry per step in step order (a
  step written twice, by a resumed run, keeps its last line); [] when there is none."""
  path = os.path.join(workdir, "coach_bias.jsonl")
  by_step: dict[int, dict[str, Any]] = {}
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      for line in f:
        if line.strip():
          entry = json.loads(line)
          by_step[int(entry["step"])] = entry
  return [by_step[s] for s in sorted(by_step)]


def _gap_series(entries: Sequence[dict[str, Any]], who: str, scale: float = 1.0
                ) -> dict[str, list[tuple]]:
  """{'a_minus_b': [(step, gap, ci_low, ci_high), ...]} of one agent (or the outcome) x scale."""
  out: dict[str, list[tuple]] = {}
  prefix = f"{_BIAS_PREFIX}{who}/"
  for e in entries:
    scalars = e.get("scalars", {})
    for key, value in scalars.items():
      pair = key[len(prefix):] if key.startswith(prefix) else ""
      if "_minus_" not in pair or "/" in pair:
        continue
      lo, hi = scalars.get(f"{key}/ci_low"), scalars.get(f"{key}/ci_high")
      out.setdefault(pair, []).append(
          (e["step"], value * scale, None if lo is None else lo * scale,
           None if hi is None else hi * scale))
  return out


def coach_bias_html(entries: Sequence[dict[str, Any]], agents: Sequence[str],
                    roles: dict[str, str], outcome_scale: float = 10.0) -> str:
  """The 'Coach bias' section: per agent, each score gap between task types with its CI band
  and the outcome gap x outcome_scale (coach points) beside it; then the guard's warnings."""
  out = ['<h2 id="coach-bias">Coach bias</h2>']
  if not entries:
    return "".join(out + ['<p class="left-out">No coach_bias.jsonl in the workdir (the bias '
                          'guard is off, or no step has finished yet).</p>'])
  out.append(f'<p class="meta">Per agent: the coach-score gap between task types (rolling '
             f'window, bootstrap CI band) and the outcome gap x{outcome_scale:g} on the same '
             'points scale. A score gap that widens while the outcome gap stays flat is the '
             'signature of a biased coach.</p>')
  outcome = _gap_series(entries, _OUTCOME, outcome_scale)
  # Agents the config does not list (no config.json) still get their charts, after the team.
  logged = sorted({k[len(_BIAS_PREFIX):].split("/")[0] for e in entries
                   for k in e.get("scalars", {}) if k.count("/") >= 2} - {_OUTCOME})
  charts = []
  for agent in list(agents) + [a for a in logged if a not in agents]:
    gaps = _gap_series(entries, agent)
    if not gaps:
      continue
    series = [{"label": f"score {pair.replace('_minus_', ' - ')}", "points": pts}
              for pair, pts in sorted(gaps.items())]
    series += [{"label": f"outcome {pair.replace('_minus_', ' - ')} x{outcome_scale:g}",
                "points": [(p[0], p[1], None, None) for p in outcome[pair]]}
               for pair in sorted(gaps) if pair in outcome]
    values = [v for s in series for p in s["points"] for v in p[1:] if v is not None]
    lo, hi = min(values + [0.0]), max(values + [0.0])
    pad = 0.1 * (hi - lo) or 1.0
    charts.append(svg_chart(f"{roles.get(agent, agent)}: score gap between task types",
                            series, y_min=lo - pad, y_max=hi + pad))
  out.append(f'<div class="charts">{"".join(charts)}</div>' if charts else
             '<p class="left-out">No stratum has enough scored actions in the window yet '
             '(coach_bias.min_count) for a gap.</p>')
  warnings = [(e["step"], w) for e in entries for w in e.get("warnings", ())]
  if warnings:
    rows = "".join(f"<tr><td>{s}</td><td style=\"text-align:left\">{_e(w)}</td></tr>"
                   for s, w in warnings)
    out.append(f'<table class="bias-warnings"><tr><th>step</th><th>warning</th></tr>{rows}'
               '</table>')
  else:
    out.append(f'<p class="meta">No bias warnings ({len(entries)} steps watched).</p>')
  return "".join(out)


def build_report(workdir: str, *, max_trajectories: int = 100,
                 max_text_chars: int = 20000) -> str:
  """Renders the run's report as one self-contained HTML document.

  Args:
    workdir: the run workdir (config.json, eval_results/).
    max_trajectories: trajectories shown per eval set and step (the rest are counted only),
      so the file stays small.
    max_text_chars: longer texts (prompts, outputs, tool output) keep head and tail.
  """
  run = load_run(workdir)
  config = run["config"]
  roles = {a: (config.get("agents", {}).get(a) or {}).get("role", a) for a in run["agents"]}
  title = f'MAPPA report: {config.get("name") or os.path.basename(os.path.abspath(workdir))}'
  body = [f"<h1>{_e(title)}</h1>",
          f'<p class="meta">workflow {_e(config.get("workflow", "?"))} · agents '
          f'{_e(" → ".join(roles[a] for a in run["agents"]))} · workdir '
          f'<code>{_e(os.path.abspath(workdir))}</code> · generated '
          f'{_e(datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S"))}</p>']
  if not run["sets"]:
    body.append('<p class="left-out">No evaluation results yet (eval_results/ is empty).</p>')
  else:
    body.append("<p>Eval sets: " + ", ".join(f'<a href="#set-{_e(n)}">{_e(n)}</a> '
                                             f'({len(r)} steps)'
                                             for n, r in sorted(run["sets"].items())) + "</p>")
  for name, runs in sorted(run["sets"].items()):
    body.append(_set_html(name, runs, run["agents"], roles, max_trajectories, max_text_chars))
  scale = float((config.get("coach_bias") or {}).get("outcome_scale", 10.0))
  body.append(coach_bias_html(load_coach_bias(workdir), run["agents"], roles, scale))
  return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
          f'<meta name="viewport" content="width=device-width, initial-scale=1">'
          f'<title>{_e(title)}</title><style>{_CSS}</style></head><body>'
          f'{"".join(body)}</body></html>\n')


def write_report(workdir: str, out: str | None = None, *, max_trajectories: int = 100,
                 max_text_chars: int = 20000) -> str:
  """Writes build_report(workdir) to `out` (default <workdir>/report.html); returns the path.

  Written via a temporary file and rename, so a browser reloading it never sees half a file.
  """
  out = out or os.path.join(workdir, "report.html")
  text = build_report(workdir, max_trajectories=max_trajectories, max_text_chars=max_text_chars)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  tmp = f"{out}.tmp.{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, out)
  return out
