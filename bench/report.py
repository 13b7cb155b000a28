"""The benchmark's figures and targets, computed from measurements, and printed as tables.

Everything here is a pure function of the measurements (plain dicts, as ``--json`` writes them):
:func:`compute` derives ratios, efficiency, percentiles and the targets' verdicts; :func:`tables`
lays them out with rich; :func:`render_text` gives the same as plain text.

The measurements of one model, ``result``::

    {"model": "vgg16", "n": 200,
     "naive":     {"img_s": ..., "peak_rss_mb": {pid: MiB}, "errors": [...]},           # optional
     "reference": {"img_s": ..., "stages": {stage: {"cpu_s_per_image", "wall_s_per_image"}},
                   "raw_classify_img_s": ..., "same_top1": {"checked", "identical"}},     # optional
     "darkroom":  {"img_s": ..., "classify_pipeline_img_s": ..., "peak_rss_mb": {...},
                   "queue_depth_max": {queue: n}, "queue_bound": n, "failed": [...],
                   "latency": {"drops": [{"file", "latency_s"}]}, "config": {...}},      # optional
     "compute_s": {file: seconds},      # in-process compute time of each latency photo
     "flush_s": 0.0,                    # the batch flush interval in the effective settings
     "scale": [{"n": 200, "img_s": ..., "queue_depth_max": {...}, "queue_bound": n}, ...],
     "outputs": {"labels_checked", "labels_identical", "faces_checked", "faces_identical", ...}}
"""

from __future__ import annotations

import math
from typing import Any

#: Darkroom / naive peer, per model (the issue's targets; other models are reported without one).
SPEEDUP_TARGETS = {"vgg16": 2.0, "mobilenet_v2": 3.0}
CLASSIFY_RATIO_TARGET = 0.9
EFFICIENCY_TARGET = 0.85
LATENCY_FACTOR = 1.5
SCALE_RATIO_TARGET = 1.2
FACE_IOU = 0.9
#: Share of the machine's CPU used by other processes above which a system's figures are flagged.
FOREIGN_LOAD_WARNING = 0.05


def _get(d: dict | None, *keys, default=None):
    for key in keys:
        if not isinstance(d, dict) or key not in d or d[key] is None:
            return default
        d = d[key]
    return d


def _ratio(a, b) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100), linear between closest ranks (numpy's default)."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def cpu_efficiency(darkroom_img_s: float, cores: int, stage_cpu_s_per_image: dict[str, float]) -> tuple[float, float]:
    """(efficiency, ideal img/s): ideal = cores / sum of the stages' CPU seconds per image;
    efficiency = Darkroom's img/s / ideal."""
    total = sum(stage_cpu_s_per_image.values())
    ideal = cores / total
    return darkroom_img_s / ideal, ideal


def compute(result: dict, cores: int) -> dict:
    """Derived figures and the targets' verdicts for one model's measurements."""
    model = result.get("model")
    naive = _get(result, "naive", "img_s")
    ref = _get(result, "reference", "img_s")
    dk = _get(result, "darkroom", "img_s")
    out: dict[str, Any] = {"model": model, "cores": cores, "naive_img_s": naive, "reference_img_s": ref,
                           "darkroom_img_s": dk}
    out["darkroom_vs_naive"] = _ratio(dk, naive)
    out["darkroom_vs_reference"] = _ratio(dk, ref)
    out["reference_vs_naive"] = _ratio(ref, naive)

    stages = _get(result, "reference", "stages", default={}) or {}
    cpu = {s: v["cpu_s_per_image"] for s, v in stages.items()}
    out["stage_cpu_ms"] = {s: v * 1000 for s, v in cpu.items()}
    out["stage_wall_ms"] = {s: v["wall_s_per_image"] * 1000 for s, v in stages.items()}
    out["cpu_s_per_image"] = sum(cpu.values()) if cpu else None
    if cpu and dk is not None and sum(cpu.values()) > 0:
        out["cpu_efficiency"], out["ideal_img_s"] = cpu_efficiency(dk, cores, cpu)
    else:
        out["cpu_efficiency"] = out["ideal_img_s"] = None

    out["raw_classify_img_s"] = _get(result, "reference", "raw_classify_img_s")
    out["raw_classify_single_img_s"] = _get(result, "reference", "raw_classify_single_img_s")
    out["raw_classify_chunk_img_s"] = _get(result, "reference", "raw_classify_chunk_img_s")
    # The target's baseline: the model's best raw throughput in one process, in batches of the
    # reference's size or in Darkroom's forward passes, whichever is faster.
    measured_raw = [v for v in (out["raw_classify_img_s"], out["raw_classify_chunk_img_s"]) if v is not None]
    raw = max(measured_raw) if measured_raw else None
    out["raw_classify_best_img_s"] = raw
    # The classify stage inside the pipeline: Darkroom running the classify task alone over the corpus
    # when measured; else an estimate from the classify runs' busy time in the full run.
    alone = _get(result, "darkroom", "classify_only_img_s")
    estimate = _get(result, "darkroom", "classify_pipeline_img_s")
    out["classify_only_img_s"], out["classify_busy_estimate_img_s"] = alone, estimate
    out["classify_only_with_ingest_img_s"] = _get(result, "darkroom", "classify_only_with_ingest_img_s")
    out["pipeline_classify_img_s"] = alone if alone is not None else estimate
    out["classify_ratio"] = _ratio(out["pipeline_classify_img_s"], raw)

    out["naive_peak_rss_mb"] = sorted((_get(result, "naive", "peak_rss_mb", default={}) or {}).values())
    out["darkroom_peak_rss_mb"] = sorted((_get(result, "darkroom", "peak_rss_mb", default={}) or {}).values())

    # Latency of single drops against 1.5 x in-process compute + the batch flush interval.
    drops = _get(result, "darkroom", "latency", "drops", default=[]) or []
    compute_s = result.get("compute_s") or {}
    flush = float(result.get("flush_s") or 0.0)
    lat = [d["latency_s"] for d in drops]
    bounds = [LATENCY_FACTOR * compute_s[d["file"]] + flush for d in drops if d["file"] in compute_s]
    out["latency"] = None
    if lat:
        out["latency"] = {
            "drops": len(lat), "p50_s": percentile(lat, 50), "p95_s": percentile(lat, 95),
            "compute_p50_s": percentile([compute_s[d["file"]] for d in drops if d["file"] in compute_s], 50),
            "bound_p50_s": percentile(bounds, 50), "bound_p95_s": percentile(bounds, 95), "flush_s": flush,
            "registered_p50_s": percentile([d["registered_after_s"] for d in drops
                                            if d.get("registered_after_s") is not None], 50),
        }

    # Per-image cost as the work grows.
    scale = sorted(result.get("scale") or [], key=lambda s: s["n"])
    out["scale"] = [{"n": s["n"], "img_s": s["img_s"], "ms_per_image": 1000.0 / s["img_s"] if s["img_s"] else None,
                     "queue_depth_max": max((s.get("queue_depth_max") or {}).values(), default=None),
                     "queue_bound": s.get("queue_bound")} for s in scale]
    out["scale_ratio"] = None
    if len(out["scale"]) >= 2 and out["scale"][0]["ms_per_image"] and out["scale"][-1]["ms_per_image"]:
        out["scale_ratio"] = out["scale"][-1]["ms_per_image"] / out["scale"][0]["ms_per_image"]

    # CPU used by processes outside the benchmark while each system was timed (a shared machine).
    out["foreign_load"] = {name: _get(result, name, "foreign_load") for name in ("naive", "reference", "darkroom")}
    for row in scale:
        out["foreign_load"][f"darkroom-{row['n']}"] = row.get("foreign_load")
    busy = {k: v for k, v in out["foreign_load"].items() if v is not None and v > FOREIGN_LOAD_WARNING}
    out["warnings"] = [f"other processes used {v:.0%} of the machine's CPU while {k} was timed: its figures may be "
                       "low (they competed for the cores); run again on a quiet machine" for k, v in busy.items()]

    out["outputs"] = result.get("outputs") or {}
    out["same_top1_batched"] = _get(result, "reference", "same_top1")
    out["failures"] = list(_get(result, "darkroom", "failed", default=[]) or []) + \
        [f"naive: {e}" for e in (_get(result, "naive", "errors", default=[]) or [])]
    out["targets"] = targets(out)
    return out


def _verdict(value, ok) -> bool | None:
    return None if value is None else bool(ok)


def targets(m: dict) -> list[dict]:
    """One row per target: name, measured, wanted, met (True/False, None when not measured)."""
    rows = []
    want = SPEEDUP_TARGETS.get(m.get("model") or "")
    r = m.get("darkroom_vs_naive")
    rows.append({"target": "Darkroom vs naive peer", "measured": _x(r),
                 "wanted": f">= {want:g}x" if want else "(no target for this model)",
                 "met": _verdict(r if want else None, r is not None and want is not None and r >= want)})
    r = m.get("classify_ratio")
    rows.append({"target": "classify in pipeline vs raw batched (best)", "measured": _x(r),
                 "wanted": f">= {CLASSIFY_RATIO_TARGET:g}x", "met": _verdict(r, r is not None and r >= CLASSIFY_RATIO_TARGET)})
    e = m.get("cpu_efficiency")
    rows.append({"target": "CPU efficiency", "measured": _f(e, 2), "wanted": f">= {EFFICIENCY_TARGET:g}",
                 "met": _verdict(e, e is not None and e >= EFFICIENCY_TARGET)})
    lat = m.get("latency")
    if lat and lat.get("bound_p50_s") is not None:
        ok = lat["p50_s"] <= lat["bound_p50_s"] and lat["p95_s"] <= lat["bound_p95_s"]
        rows.append({"target": f"single-drop latency p50 / p95 ({lat['drops']} drops)",
                     "measured": f"{lat['p50_s']:.2f} / {lat['p95_s']:.2f} s",
                     "wanted": f"<= {lat['bound_p50_s']:.2f} / {lat['bound_p95_s']:.2f} s", "met": ok})
    else:
        rows.append({"target": "single-drop latency p50 / p95", "measured": "not measured", "wanted":
                     f"<= {LATENCY_FACTOR:g} x compute + flush", "met": None})
    s = m.get("scale_ratio")
    sizes = [row["n"] for row in m.get("scale") or []]
    rows.append({"target": "per-image cost, largest / smallest" + (f" ({sizes[-1]} / {sizes[0]})" if len(sizes) >= 2 else ""),
                 "measured": _x(s), "wanted": f"<= {SCALE_RATIO_TARGET:g}x",
                 "met": _verdict(s, s is not None and s <= SCALE_RATIO_TARGET)})
    big = (m.get("scale") or [None])[-1] if m.get("scale") else None
    if big and big.get("queue_depth_max") is not None and big.get("queue_bound"):
        rows.append({"target": f"queue depth during the {big['n']}-image ingest", "measured": str(big["queue_depth_max"]),
                     "wanted": f"< {big['queue_bound']} (bound)", "met": big["queue_depth_max"] < big["queue_bound"]})
    else:
        rows.append({"target": "queue depth under the bound", "measured": "not measured", "wanted": "< bound", "met": None})
    o = m.get("outputs") or {}
    if o.get("labels_checked"):
        ok = o["labels_identical"] == o["labels_checked"]
        rows.append({"target": "same top-1 labels as unbatched calls",
                     "measured": f"{o['labels_identical']}/{o['labels_checked']}",
                     "wanted": "all", "met": ok})
    else:
        b = m.get("same_top1_batched") or {}
        rows.append({"target": "same top-1 labels as unbatched calls", "measured":
                     f"{b['identical']}/{b['checked']} (reference only)" if b.get("checked") else "not measured",
                     "wanted": "all", "met": None if not b.get("checked") else b["identical"] == b["checked"]})
    if o.get("faces_checked"):
        ok = o["faces_identical"] == o["faces_checked"]
        rows.append({"target": f"same faces as MTCNN on the original (IoU >= {FACE_IOU:g})",
                     "measured": f"{o['faces_identical']}/{o['faces_checked']}", "wanted": "all, same count", "met": ok})
    else:
        rows.append({"target": "same faces as MTCNN on the original", "measured": "not measured", "wanted": "all", "met": None})
    return rows


def _x(v) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _f(v, digits=1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _mb(values: list[float]) -> str:
    return ", ".join(f"{v:,.0f}" for v in values) + " MiB" if values else "-"


def _pct(v) -> str:
    return "-" if v is None else f"{v:.0%}"


def _met(v: bool | None) -> str:
    return {True: "[green]yes[/]", False: "[red]no[/]", None: "[dim]n/a[/]"}[v]


def tables(m: dict, result: dict) -> list:
    """Rich renderables for one model: systems, stages, targets (and the scale runs)."""
    from rich.table import Table

    out = []
    model, n = m["model"], result.get("n")
    t = Table(title=f"{model}: {n} photos, {m['cores']} cores", title_justify="left")
    t.add_column("system")
    t.add_column("img/s", justify="right")
    t.add_column("peak RSS per worker", justify="right")
    t.add_column("other load", justify="right")
    t.add_column("notes")
    naive, ref, dk = result.get("naive"), result.get("reference"), result.get("darkroom")
    fl = m.get("foreign_load") or {}
    if naive:
        t.add_row("naive Celery peer", _f(m["naive_img_s"], 2), _mb(m["naive_peak_rss_mb"]), _pct(fl.get("naive")),
                  f"{naive.get('concurrency', 2)} prefork processes, model.predict per image, SQLite")
    if ref:
        t.add_row("in-process reference", _f(m["reference_img_s"], 2), "-", _pct(fl.get("reference")),
                  f"one process, classify in batches of {ref.get('batch_size')}")
    if dk:
        depth = max((dk.get("queue_depth_max") or {}).values(), default=None)
        flowing = dk.get("flowing_img_s")
        t.add_row("Darkroom", _f(m["darkroom_img_s"], 2), _mb(m["darkroom_peak_rss_mb"]), _pct(fl.get("darkroom")),
                  f"{dk.get('concurrency')} worker processes; ingest command {dk.get('ingest_s', 0):.1f} s; "
                  + (f"{flowing:.2f} img/s once flowing; " if flowing else "")
                  + f"queue max {depth} (bound {dk.get('queue_bound')})")
    t.add_section()
    t.add_row("Darkroom / naive", _x(m["darkroom_vs_naive"]), "", "", "")
    t.add_row("Darkroom / reference", _x(m["darkroom_vs_reference"]), "", "", "")
    t.add_row("reference / naive", _x(m["reference_vs_naive"]), "", "", "")
    out.append(t)

    if m["stage_cpu_ms"]:
        s = Table(title=f"{model}: cost of each stage (in-process reference, per image)", title_justify="left")
        s.add_column("stage")
        s.add_column("CPU ms", justify="right")
        s.add_column("wall ms", justify="right")
        s.add_column("Darkroom run ms (mean)", justify="right")
        s.add_column("naive task ms (mean)", justify="right")
        dk_ms = (dk or {}).get("task_ms") or {}
        nv_ms = (naive or {}).get("task_ms") or {}
        for stage, cpu in m["stage_cpu_ms"].items():
            s.add_row(stage, f"{cpu:.1f}", f"{m['stage_wall_ms'][stage]:.1f}", _f(dk_ms.get(stage)), _f(nv_ms.get(stage)))
        s.add_section()
        s.add_row("sum", f"{sum(m['stage_cpu_ms'].values()):.1f}", f"{sum(m['stage_wall_ms'].values()):.1f}", "", "")
        s.add_section()
        batch = (ref or {}).get("batch_size")
        s.add_row(f"raw classify, model alone, batch {batch}", f"{_f(m['raw_classify_img_s'], 2)} img/s", "", "", "")
        if m.get("raw_classify_chunk_img_s") is not None:
            s.add_row(f"raw classify, model alone, batch {(ref or {}).get('chunk')} (Darkroom's forward pass)",
                      f"{_f(m['raw_classify_chunk_img_s'], 2)} img/s", "", "", "")
        if m.get("raw_classify_single_img_s") is not None:
            s.add_row("raw classify, model alone, batch 1", f"{_f(m['raw_classify_single_img_s'], 2)} img/s", "", "", "")
        if m.get("classify_only_img_s") is not None:
            s.add_row("Darkroom, classify task only, from a pre-filled queue", f"{_f(m['classify_only_img_s'], 2)} img/s",
                      "", "", "")
        if m.get("classify_only_with_ingest_img_s") is not None:
            s.add_row("Darkroom, classify task only, ingest beside it", f"{_f(m['classify_only_with_ingest_img_s'], 2)} img/s",
                      "", "", "")
        s.add_row("Darkroom full run, classify busy-time estimate",
                  f"{_f(m['classify_busy_estimate_img_s'], 2)} img/s", "", "", "")
        if m["ideal_img_s"] is not None:
            s.add_row("ideal (cores / CPU s per image)", f"{m['ideal_img_s']:.2f} img/s", "", "", "")
        out.append(s)

    if m["scale"]:
        sc = Table(title=f"{model}: Darkroom as the work grows", title_justify="left")
        sc.add_column("images", justify="right")
        sc.add_column("img/s", justify="right")
        sc.add_column("ms per image", justify="right")
        sc.add_column("queue depth max / bound", justify="right")
        sc.add_column("other load", justify="right")
        for row in m["scale"]:
            sc.add_row(str(row["n"]), _f(row["img_s"], 2), _f(row["ms_per_image"]),
                       f"{row['queue_depth_max']} / {row['queue_bound']}", _pct(fl.get(f"darkroom-{row['n']}")))
        out.append(sc)

    if m["latency"]:
        lat = m["latency"]
        la = Table(title=f"{model}: one photo dropped into an idle system", title_justify="left")
        for col in ("drops", "p50", "p95", "compute p50", "registered p50", "flush"):
            la.add_column(col, justify="right")
        la.add_row(str(lat["drops"]), f"{lat['p50_s']:.2f} s", f"{lat['p95_s']:.2f} s",
                   _f(lat["compute_p50_s"], 2) + " s", _f(lat["registered_p50_s"], 2) + " s", f"{lat['flush_s']:.2f} s")
        out.append(la)

    tg = Table(title=f"{model}: targets", title_justify="left")
    for col in ("target", "measured", "wanted", "met"):
        tg.add_column(col)
    for row in m["targets"]:
        tg.add_row(row["target"], row["measured"], row["wanted"], _met(row["met"]))
    out.append(tg)
    return out


def machine_lines(machine: dict) -> list[str]:
    return [
        f"machine: {machine.get('cores')} cores ({machine.get('cpu')}), {machine.get('memory_gb')} GiB, "
        f"GPU: {', '.join(machine.get('gpus') or []) or 'none'}; {machine.get('platform')}",
        f"command: {machine.get('command')}",
    ]


def render_text(m: dict, result: dict, width: int = 140) -> str:
    """The tables of one model as plain text (tests, logs)."""
    import io

    from rich.console import Console

    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    for table in tables(m, result):
        console.print(table)
    return console.export_text()
