"""Runs the whole benchmark for ``darkroom bench``: per model, the reference, the naive peer and
Darkroom over the same corpus, one after another on this machine, then the report."""

from __future__ import annotations

import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import procs

SYSTEMS = ("naive", "reference", "darkroom")


@dataclass
class Options:
    n: int = 200
    models: list[str] = field(default_factory=lambda: ["vgg16", "mobilenet_v2"])
    systems: tuple[str, ...] = SYSTEMS
    latency: bool = True
    latency_drops: int = 20
    scale: list[int] = field(default_factory=lambda: [200, 1000, 5000])
    json_path: Path | None = None
    seed: int = 0
    sizes: tuple[int, int] = (480, 1600)
    cache_dir: Path = field(
        default_factory=lambda: Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "darkroom-bench")
    redis_url: str = "redis://127.0.0.1:6379"
    naive_db: int = 15
    darkroom_db: int = 14
    concurrency: int = 2
    batch_size: int = 16
    weights: str = "seeded"
    check_images: int = 24
    classify_only: bool = True
    keep: bool = False


def machine_info(command: list[str]) -> dict:
    info = {
        "cores": procs.cores(), "cpu": procs.cpu_model(), "memory_gb": procs.memory_gb(),
        "platform": f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
        "command": " ".join(shlex.quote(a) for a in command),
    }
    try:
        import keras
        import tensorflow as tf

        info["platform"] += f", TensorFlow {tf.__version__}, Keras {keras.__version__}"
    except ImportError:
        pass
    info["gpus"] = procs.gpus()
    return info


def run(opts: Options, log=print, show=None) -> dict:
    """Run everything; returns {"machine", "results", "metrics"}. ``show(machine, metrics, result)``
    is called as each model's figures are ready."""
    from bench import report
    from bench.corpus import build_corpus, describe

    for system in opts.systems:
        if system not in SYSTEMS:
            raise ValueError(f"unknown system {system!r}: choose from {', '.join(SYSTEMS)}")
    naive_url = procs.redis_db_url(opts.redis_url, opts.naive_db)
    darkroom_url = procs.redis_db_url(opts.redis_url, opts.darkroom_db)
    if opts.naive_db == opts.darkroom_db:
        raise ValueError("the naive peer and Darkroom need different Redis databases")

    cache = Path(opts.cache_dir)
    log(f"corpus: {opts.n} photos (cache {cache})")
    files = build_corpus(cache, opts.n, opts.seed, opts.sizes)
    warm = build_corpus(cache, 12, opts.seed + 1000, opts.sizes)
    drops = build_corpus(cache, opts.latency_drops + 1, opts.seed + 2000, opts.sizes) if opts.latency else []
    machine = machine_info(sys.argv)
    machine["corpus"] = describe(files)
    work = Path(tempfile.mkdtemp(prefix="darkroom-bench-"))
    log(f"working in {work}")
    results, metrics = [], []
    try:
        for model in opts.models:
            result = _run_model(opts, model, files, warm, drops, cache, work / model, naive_url, darkroom_url, log)
            m = report.compute(result, machine["cores"])
            results.append(result)
            metrics.append(m)
            if show:
                show(machine, m, result)
            if opts.json_path:
                _write_json(opts.json_path, machine, results, metrics)
    finally:
        if opts.keep:
            log(f"kept the working folder {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    out = {"machine": machine, "results": results, "metrics": metrics}
    if opts.json_path:
        _write_json(opts.json_path, machine, results, metrics)
    return out


def _write_json(path: Path, machine, results, metrics) -> None:
    Path(path).write_text(json.dumps({"machine": machine, "results": results, "metrics": metrics}, indent=2, default=str))


def _run_model(opts: Options, model: str, files, warm, drops, cache: Path, work: Path, naive_url: str,
               darkroom_url: str, log) -> dict:
    from bench.corpus import build_corpus, corpus_dir
    from bench.darkroom_run import flush_interval, run_darkroom
    from bench.naive import run_naive
    from bench.outputs import check
    from bench.reference import Pipeline, compute_times, run_reference
    from bench.weights import make_weights

    started = time.time()
    result: dict = {"model": model, "n": len(files)}
    weights = opts.weights
    if weights == "seeded":
        calibration = build_corpus(cache, 8, opts.seed + 3000, opts.sizes)
        log(f"[{model}] seeded random weights, shared by every process (made once, cached)")
        weights = str(make_weights(model, cache / "weights" / f"{model}-seed{opts.seed}.weights.h5",
                                   [c.path for c in calibration], seed=opts.seed))
    result["weights"] = weights
    paths = [f.path for f in files]

    pipe = None
    if "reference" in opts.systems or ("darkroom" in opts.systems and (opts.latency or opts.check_images)):
        pipe = Pipeline(model, weights)
    if "reference" in opts.systems:
        log(f"[{model}] in-process reference over {len(files)} photos")
        ref, pipe = run_reference(paths, model, weights, batch_size=opts.batch_size, pipeline=pipe, log=log)
        result["reference"] = ref.to_dict()
        log(f"  {ref.img_s:.2f} img/s; raw batched classify {ref.raw_classify_img_s:.1f} img/s")
    if "darkroom" in opts.systems and opts.latency and drops:
        result["compute_s"] = compute_times(pipe, [d.path for d in drops[1:]])

    if "naive" in opts.systems:
        log(f"[{model}] naive Celery peer over {len(files)} photos")
        nv = run_naive(paths, model, work / "naive", naive_url, [w.path for w in warm],
                       concurrency=opts.concurrency, log=log)
        result["naive"] = nv.to_dict()
        log(f"  {nv.img_s:.2f} img/s")

    if "darkroom" in opts.systems:
        log(f"[{model}] Darkroom over {len(files)} photos")
        face_files = [f for f in files if f.has_faces]
        checked = {f.sha256: f for f in [*files[: opts.check_images], *face_files]}
        dk = run_darkroom(corpus_dir(cache, len(files), opts.seed, opts.sizes), len(files), model, weights,
                          work / "darkroom", darkroom_url, [w.path for w in warm], concurrency=opts.concurrency,
                          latency_files=[d.path for d in drops] if opts.latency else None,
                          check_shas=list(checked), log=log)
        result["darkroom"] = dk.to_dict()
        result["flush_s"], result["flush_keys"] = flush_interval(dk.config)
        log(f"  {dk.img_s:.2f} img/s" + (f"; {len(dk.failed)} failed run(s): {dk.failed[0]}" if dk.failed else ""))
        if checked and pipe is not None:
            log(f"  checking outputs: {len(checked)} photos against unbatched calls and plain MTCNN")
            keys = {k for out in dk.outputs.values() for k in out.get("labels", {})}
            label_key = next(iter(keys)) if weights != "none" and len(keys) == 1 else None
            result["outputs"] = check(pipe, [(f.path, dk.outputs.get(sha, {})) for sha, f in checked.items()],
                                      label_model_key=label_key, face_items={str(f.path) for f in face_files},
                                      min_confidence=float(dk.config.get("face_min_confidence", 0.9)))
        if opts.classify_only:
            log(f"[{model}] Darkroom with the classify task only, over the same {len(files)} photos")
            # The classify stage: the workers from a queue the ingest filled beforehand, to stored labels.
            alone = run_darkroom(corpus_dir(cache, len(files), opts.seed, opts.sizes), len(files), model, weights,
                                 work / "darkroom-classify", darkroom_url, [w.path for w in warm],
                                 concurrency=opts.concurrency, settings={"tasks": "classify"}, prefill=True, log=log)
            result["darkroom"]["classify_only_img_s"] = alone.img_s
            result["darkroom"]["classify_only_failed"] = alone.failed
            result["darkroom"]["classify_only_peak_rss_mb"] = {str(k): v for k, v in alone.peak_rss_mb.items()}
            log(f"  {alone.img_s:.2f} img/s from a pre-filled queue")
            # And with the ingest running beside it on the same cores, as a user sees it.
            beside = run_darkroom(corpus_dir(cache, len(files), opts.seed, opts.sizes), len(files), model, weights,
                                  work / "darkroom-classify-ingest", darkroom_url, [w.path for w in warm],
                                  concurrency=opts.concurrency, settings={"tasks": "classify"}, log=log)
            result["darkroom"]["classify_only_with_ingest_img_s"] = beside.img_s
            result["darkroom"]["classify_only_with_ingest_flowing_img_s"] = beside.flowing_img_s
            result["darkroom"]["classify_only_failed"] += beside.failed
            log(f"  {beside.img_s:.2f} img/s with the ingest beside it ({beside.flowing_img_s or 0:.2f} once flowing)")
        scale = []
        for size in opts.scale:
            if size == len(files):
                scale.append({"n": size, "img_s": dk.img_s, "queue_depth_max": dk.queue_depth_max,
                              "queue_bound": dk.queue_bound, "failed": len(dk.failed), "foreign_load": dk.foreign_load})
                continue
            log(f"[{model}] Darkroom over {size} photos (scale)")
            grown = build_corpus(cache, size, opts.seed, opts.sizes)
            run = run_darkroom(corpus_dir(cache, size, opts.seed, opts.sizes), len(grown), model, weights,
                               work / f"darkroom-{size}", darkroom_url, [w.path for w in warm],
                               concurrency=opts.concurrency, log=log)
            scale.append({"n": size, "img_s": run.img_s, "queue_depth_max": run.queue_depth_max,
                          "queue_bound": run.queue_bound, "failed": len(run.failed), "foreign_load": run.foreign_load})
            log(f"  {run.img_s:.2f} img/s")
        result["scale"] = scale
    result["elapsed_s"] = round(time.time() - started, 1)
    return result
