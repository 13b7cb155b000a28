"""`darkroom bench`: Darkroom's throughput against a naive Celery peer and an in-process reference.

Registered into the ``darkroom`` app by :func:`register`. The work is in the ``bench`` package at
the repository's root; it (and TensorFlow with it) is imported only when the command runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from darkroom.cli.common import fail

console = Console(stderr=True)
out = Console()
if not out.is_terminal or out.width < 120:
    out = Console(width=120)  # the tables need the room; piped output would get 80 columns


def _import_bench():
    """The bench package (and TensorFlow with it), when the command runs; its corpus needs the
    ``bench`` extra's packages."""
    for module in ("skimage", "sklearn"):
        try:
            __import__(module)
        except ImportError:
            raise fail(f"`darkroom bench` needs {module} for its photos: pip install 'darkroom[bench]' "
                       "(from a checkout: pip install -e '.[bench]')") from None
    from bench import report, runner

    return report, runner


def _stores_and_sizes(db: str, images: str) -> tuple[list[str], list[int]]:
    """The databases `--db` names and the sizes `--images` lists, or a one-line usage error."""
    backends = {"postgres": ["postgresql"], "postgresql": ["postgresql"], "sqlite": ["sqlite"],
                "both": ["postgresql", "sqlite"]}
    if db not in backends:
        raise fail(f"--db takes postgres, sqlite or both; got {db!r}")
    sizes = _ints(images, "--images")
    if not sizes:
        raise fail("--images needs at least one size")
    return backends[db], sizes


def _ints(text: str, what: str) -> list[int]:
    if text.strip().lower() in ("", "none", "0"):
        return []
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise fail(f"{what} must be comma-separated whole numbers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise fail(f"{what} must be positive, got {text!r}")
    return values


def bench_command(
    ctx: typer.Context,
    n: Annotated[int, typer.Option("--n", min=1, help="Photos in the corpus.")] = 200,
    model: Annotated[list[str] | None, typer.Option(
        "--model", help="Classifier to benchmark; repeat for several. Default: vgg16 and mobilenet_v2.",
        show_default=False)] = None,
    systems: Annotated[str, typer.Option(help="Comma-separated: naive,reference,darkroom.")] = "naive,reference,darkroom",
    latency: Annotated[bool, typer.Option("--latency/--no-latency", help="Measure single drops into an idle system.")] = True,
    scale: Annotated[str, typer.Option(help="Corpus sizes for Darkroom's per-image cost as the work grows "
                                            "(comma-separated; 'none' to skip).")] = "200,1000,5000",
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write every measurement here.",
                                                      show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="Corpus (and seeded weights) seed.")] = 0,
    weights: Annotated[str, typer.Option(
        help="'seeded' (random weights made once and shared by every process, so outputs can be compared), "
             "'none' (each process its own random weights), or a weights file.")] = "seeded",
    concurrency: Annotated[int, typer.Option(min=1, help="Worker processes of the naive peer and of Darkroom.")] = 2,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="The reference's classification batch.")] = 16,
    drops: Annotated[int, typer.Option(min=1, help="Single drops for the latency measurement.")] = 20,
    cache_dir: Annotated[Path | None, typer.Option(help="Where corpora and seeded weights are cached "
                                                           "(default ~/.cache/darkroom-bench).", show_default=False)] = None,
    redis_url: Annotated[str, typer.Option(help="Redis server (its databases below are flushed; never 0).")] = "redis://127.0.0.1:6379",
    naive_db: Annotated[int, typer.Option(min=1, max=15, help="Redis database of the naive peer.")] = 15,
    darkroom_db: Annotated[int, typer.Option(min=1, max=15, help="Redis database of Darkroom.")] = 14,
    classify_only: Annotated[bool, typer.Option(
        "--classify-only/--no-classify-only",
        help="Also run Darkroom with the classify task alone (the classify stage's throughput inside the pipeline).")] = True,
    keep: Annotated[bool, typer.Option(help="Keep the working folder (logs, stores).")] = False,
) -> None:
    """Benchmark Darkroom against a naive Celery peer and an in-process reference, on real photos
    (`darkroom bench duplicates`: the near-duplicate grouping against comparing all pairs;
    `darkroom bench ledger`: the ledger's commands at 10,000 to 1,000,000 photos; `darkroom bench web`:
    `darkroom serve`'s pages and thumbnails over the same archives)."""
    if ctx.invoked_subcommand is not None:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    report, runner = _import_bench()
    chosen = tuple(s.strip() for s in systems.split(",") if s.strip())
    bad = [s for s in chosen if s not in runner.SYSTEMS]
    if bad or not chosen:
        raise fail(f"--systems takes some of {', '.join(runner.SYSTEMS)}; got {systems!r}")
    from tasks.classify import REGISTRY

    models = model or ["vgg16", "mobilenet_v2"]
    unknown = [m for m in models if m not in REGISTRY]
    if unknown:
        raise fail(f"unknown model(s) {', '.join(unknown)}: choose from {', '.join(REGISTRY)}")
    if weights not in ("seeded", "none") and not Path(weights).is_file():
        raise fail(f"--weights must be 'seeded', 'none' or an existing weights file; got {weights!r}")
    opts = runner.Options(
        n=n, models=models, systems=chosen, latency=latency, latency_drops=drops, scale=_ints(scale, "--scale"),
        json_path=json_path, seed=seed, concurrency=concurrency, batch_size=batch_size, weights=weights,
        redis_url=redis_url, naive_db=naive_db, darkroom_db=darkroom_db, keep=keep, classify_only=classify_only,
    )
    if cache_dir is not None:
        opts.cache_dir = cache_dir

    header_done = []

    def show(machine: dict, metrics: dict, result: dict) -> None:
        if not header_done:
            for line in report.machine_lines(machine):
                out.print(line, highlight=False, soft_wrap=True)
            header_done.append(True)
        out.print()
        for table in report.tables(metrics, result):
            out.print(table)
        for warning in metrics.get("warnings", []):
            out.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
        for failure in metrics["failures"][:10]:
            out.print(f"[red]failure:[/] {failure}", highlight=False, soft_wrap=True)

    try:
        runner.run(opts, log=lambda msg: console.print(msg, highlight=False, soft_wrap=True, markup=False), show=show)
    except (RuntimeError, TimeoutError, ValueError, OSError) as exc:
        raise fail(str(exc)) from None
    if json_path:
        console.print(f"measurements written to {json_path}", highlight=False)


def duplicates_command(
    sizes: Annotated[str, typer.Option(help="Numbers of hashes to group (comma-separated).")] = "10000,100000,1000000",
    distance: Annotated[int, typer.Option(min=0, max=32, help="Bits within which hashes are near-duplicates.")] = 8,
    clusters: Annotated[int | None, typer.Option(
        help="Planted clusters of near-duplicates per size (default: n/200, at most 5000).", show_default=False)] = None,
    all_pairs_max: Annotated[int, typer.Option(
        help="Largest size at which all pairs are compared; beyond it the time is extrapolated (n squared).")] = 100_000,
    seed: Annotated[int, typer.Option(help="Seed of the random hashes.")] = 0,
) -> None:
    """Near-duplicate grouping (the phash task's index) against comparing all pairs, on random 64-bit
    hashes with planted clusters: seconds, groups, planted clusters recovered, peak memory, speed-up."""
    from bench import near_duplicates  # numpy only; no corpus needed

    out.print(near_duplicates.table(near_duplicates.run(_ints(sizes, "--sizes"), distance, clusters, all_pairs_max,
                                                        seed)), highlight=False, markup=False)


def ledger_command(
    images: Annotated[str, typer.Option(help="Sizes of the synthetic archive, in images (comma-separated); "
                                             "1000000 takes a PostgreSQL fill of several minutes.")] = "10000,100000",
    db: Annotated[str, typer.Option(help="postgres, sqlite or both.")] = "both",
    files: Annotated[int, typer.Option(min=0, help="Real 2-4 MB JPEGs registered at each size, against sha256sum "
                                                   "over the same files (0: skip).")] = 60,
    postgres_url: Annotated[str, typer.Option(
        help="A PostgreSQL database to connect to as an administrator: the bench creates its scratch database "
             "(darkroom_bench_<pid>) beside it and drops it at the end.")] = "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    stream_seconds: Annotated[float, typer.Option(min=1, help="The full stream stops after this long "
                                                              "(its images/s are measured over what it read).")] = 30.0,
    lookups: Annotated[int, typer.Option(min=1, help="Photos looked up one by one (by path, and by sha256).")] = 20,
    repeat: Annotated[int, typer.Option(min=1, help="Timed calls of status and of each page (the median is "
                                                     "printed), after one to warm up.")] = 3,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic archive.")] = 0,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write every measurement here.",
                                                      show_default=False)] = None,
) -> None:
    """The ledger's commands on synthetic archives of each size, on PostgreSQL and SQLite: status, one
    photo, a filtered page of 100, the full stream, the reconciler after the broker lost everything,
    rerun, and registering real files against sha256sum. Prints seconds, the cost per 1,000 images
    and its growth with the size, the targets, and each table's rows and bytes."""
    dbs, sizes = _stores_and_sizes(db, images)
    if files:
        for module in ("skimage", "sklearn"):
            try:
                __import__(module)
            except ImportError:
                raise fail(f"`darkroom bench ledger --files N` needs {module} for its photos: pip install "
                           "'darkroom[bench]' (or --files 0)") from None
    from bench import ledger

    opts = ledger.Options(sizes=sizes, dbs=dbs, postgres_url=postgres_url, files=files,
                          stream_seconds=stream_seconds, lookups=lookups, repeat=repeat, seed=seed, json_path=json_path)
    try:
        data = ledger.run(opts, log=lambda msg: console.print(msg, highlight=False, soft_wrap=True, markup=False))
    except (RuntimeError, OSError, ValueError) as exc:
        raise fail(str(exc)) from None
    out.print(ledger.report(data), highlight=False, markup=False, soft_wrap=True)
    if json_path:
        console.print(f"measurements written to {json_path}", highlight=False)


def formats_command(
    sizes: Annotated[str, typer.Option(help="Photo sizes, WIDTHxHEIGHT (comma-separated).")] = "1024x768,4032x3024",
    repeat: Annotated[int, typer.Option(min=1, help="Timed rounds (the median is printed), after one to warm up.")] = 3,
) -> None:
    """Decode time per photo of each format (HEIC, AVIF, WebP, a JPEG with an Adobe RGB profile, a DNG
    demosaiced whole and at half size, the test data's camera RAW both ways) against a JPEG of the same
    photos and size, and the decoder each takes."""
    try:
        parsed = [tuple(int(v) for v in s.lower().split("x")) for s in sizes.split(",") if s.strip()]
    except ValueError:
        raise fail(f"--sizes takes WIDTHxHEIGHT,...; got {sizes!r}") from None
    if not parsed or any(len(s) != 2 or min(s) < 1 for s in parsed):
        raise fail(f"--sizes takes WIDTHxHEIGHT,...; got {sizes!r}")
    try:
        __import__("skimage")
    except ImportError:
        raise fail("`darkroom bench formats` needs scikit-image for its photos: pip install -e '.[bench]'") from None
    from bench import formats

    rows = formats.run(parsed, repeat, log=lambda msg: console.print(msg, highlight=False, markup=False))
    out.print(formats.report(rows), highlight=False, markup=False, soft_wrap=True)


def web_command(
    images: Annotated[str, typer.Option(help="Sizes of the synthetic archive, in images (comma-separated); "
                                             "1000000 takes a fill of several minutes on PostgreSQL.")] = "100000",
    db: Annotated[str, typer.Option(help="postgres, sqlite or both.")] = "postgres",
    postgres_url: Annotated[str, typer.Option(
        help="A PostgreSQL database to connect to as an administrator: the scratch database (darkroom_bench_<pid>) "
             "is made beside it and dropped at the end.")] = "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    repeat: Annotated[int, typer.Option(min=1, help="Timed calls of each page (the median is printed), after one "
                                                     "to warm up.")] = 3,
    thumbs: Annotated[int, typer.Option(min=1, help="Photos given a real thumbnail, served in turn.")] = 2000,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic archive.")] = 0,
) -> None:
    """`darkroom serve` over the synthetic archive of `bench ledger`: the server time of a gallery page and an
    API page of 100 (first, deep in the archive, filtered by a label) and thumbnails served per second."""
    dbs, sizes = _stores_and_sizes(db, images)
    try:
        __import__("skimage")
    except ImportError:
        raise fail("`darkroom bench web` needs scikit-image for its thumbnail: pip install -e '.[bench]'") from None
    from bench import web

    opts = web.Options(sizes=sizes, dbs=dbs, postgres_url=postgres_url, repeat=repeat, thumbs=thumbs,
                       seed=seed)
    try:
        rows = web.run(opts, log=lambda msg: console.print(msg, highlight=False, soft_wrap=True, markup=False))
    except (RuntimeError, OSError, ValueError) as exc:
        raise fail(str(exc)) from None
    out.print(web.report(rows), highlight=False, markup=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add `darkroom bench` (and `darkroom bench duplicates`, `darkroom bench ledger`) to the ``darkroom`` app."""
    group = typer.Typer(invoke_without_command=True, no_args_is_help=False)
    group.callback()(bench_command)
    group.command("duplicates")(duplicates_command)
    group.command("formats")(formats_command)
    group.command("ledger")(ledger_command)
    group.command("web")(web_command)
    app.add_typer(group, name="bench")
