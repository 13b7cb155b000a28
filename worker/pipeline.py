"""The four Celery tasks. Each is a thin wrapper in the manner of a web view: it reads the run from
SQL, loads the original from the blob store, calls the pure function in ``tasks/``, and writes the
result and the run's new state in one transaction.

Failure policy:
- the image itself is unusable (``BadImage``)     -> run ``rejected`` (and the image), never retried;
- the model cannot be had (``ModelUnavailable``)  -> run ``failed`` with the way to fix it;
- the database or the blob store hiccups          -> retried with exponential backoff, then ``failed``;
- anything else                                   -> ``failed`` with the error, for `darkroom retry`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import DBAPIError, OperationalError

from darkroom.settings import BATCH_TASKS
from darkroom.work import parse_classifier_key
from storage import repo
from storage.db import read_only, transaction
from storage.models import DONE, FAILED, REJECTED
from worker.app import app, task_name
from worker.runtime import Runtime, get_runtime, serves, wait_for_preload

log = logging.getLogger(__name__)

TRANSIENT = (OperationalError, DBAPIError, FileNotFoundError, ConnectionError, TimeoutError)


def _normalize(rt: Runtime, claim: repo.Claim, image) -> Callable:
    from tasks.normalize import normalize_many

    reports = [r.to_dict() for r in normalize_many(image, normalize_modes(rt.settings))]
    return lambda s: repo.save_normalization(s, claim.image_id, reports)


def normalize_modes(settings) -> list[tuple[str, bool]]:
    """The (mode, per_channel) reports to store: scale first (the results' ``normalize``), then
    every mode of ``DARKROOM_NORMALIZE_MODES``."""
    from tasks.normalize import parse_mode

    modes = [("scale", False)]
    for text in settings.normalize_modes:
        mode = parse_mode(text)
        if mode not in modes:
            modes.append(mode)
    return modes


def _classify(rt: Runtime, claims: list[repo.Claim], images: list) -> Callable:
    """The whole batch classified together (all claims share the task and model), in forward
    passes of the classifier's chunk."""
    model, weights = parse_classifier_key(claims[0].model)
    classifier = rt.classifier(model, weights)
    labels = [[lab.to_dict() for lab in labs] for labs in classifier.predict(images, top=rt.settings.classifier_top_k)]

    def write(s):
        repo.save_many_labels(s, claims[0].model, {claim.image_id: labs for claim, labs in zip(claims, labels)})

    return write


def _augment(rt: Runtime, claim: repo.Claim, image) -> Callable:
    from tasks.augment import augment, contact_sheet

    images = augment(image, augment_spec(rt.settings))
    sheet = contact_sheet(images)
    arts = [_jpeg("augmented", i, img) for i, img in enumerate(images)]
    arts.append(_jpeg("contact_sheet", 0, sheet))
    return lambda s: repo.save_artifacts(s, claim.image_id, "augment", arts)


def augment_spec(settings):
    """The augmentation the settings ask for: the ``AUGMENT_*`` values, then ``DARKROOM_AUGMENT``'s
    ``key=value`` pairs over them."""
    from tasks.augment import AugmentSpec, parse_spec

    base = AugmentSpec(flip=settings.augment_flip, rotation=settings.augment_rotation, count=settings.augment_count,
                       seed=settings.augment_seed, size=settings.augment_size)
    return parse_spec(settings.augment, base)


def _faces(rt: Runtime, claim: repo.Claim, image) -> Callable:
    from tasks.draw import draw_boxes
    from tasks.faces import crop

    cfg = rt.settings
    detector = rt.face_detector(cfg.face_min_confidence, cfg.face_min_size, cfg.face_max_side or None)
    faces = detector.detect(image)
    found = [f.to_dict() for f in faces]
    arts = []
    if cfg.store_boxed(bool(faces)):
        # The lesson's boxes around every face (its bonus), with dots on the five landmarks.
        boxed = draw_boxes(image, [f.box for f in faces], [f.keypoints for f in faces])
        arts.append(_jpeg("faces_boxed", 0, boxed))
    if cfg.face_crops:
        # One crop per face, its artifact idx the face's index (results: faces[i]["crop"]).
        arts += [_jpeg("face_crop", i, crop(image, face)) for i, face in enumerate(faces)]

    def write(s):
        repo.save_faces(s, claim.image_id, claim.model, found)
        repo.save_artifacts(s, claim.image_id, "faces", arts)

    return write


def _jpeg(kind: str, idx: int, pixels) -> repo.ArtifactData:
    from tasks.imaging import encode

    return repo.ArtifactData(kind=kind, idx=idx, mime="image/jpeg", width=int(pixels.shape[1]),
                             height=int(pixels.shape[0]), data=encode(pixels, "JPEG", quality=90))


HANDLERS: dict[str, Callable[[Runtime, repo.Claim, Any], Callable]] = {
    "normalize": _normalize,
    "augment": _augment,
    "faces": _faces,
}
#: Tasks whose model runs on many images at once: a worker takes pending runs into one batch.
BATCH_HANDLERS: dict[str, Callable[[Runtime, list[repo.Claim], list], Callable]] = {
    "classify": _classify,
}
assert set(BATCH_HANDLERS) == set(BATCH_TASKS), "darkroom.settings.BATCH_TASKS must name the batch handlers"
#: The smallest (width, height) a task's images may be decoded at (DARKROOM_FAST_DECODE); tasks
#: not listed get every pixel.
DECODE_SIZE: dict[str, Callable[[Runtime, repo.Claim], tuple[int, int]]] = {
    "classify": lambda rt, claim: rt.classifier(*parse_classifier_key(claim.model)).decode_size,
    "augment": lambda rt, claim: augment_spec(rt.settings).decode_size,
}


def _decode_size(rt: Runtime, claim: repo.Claim) -> tuple[int, int] | None:
    """``decode``'s ``at_least`` for ``claim``'s task: None (every pixel) unless fast decode is on."""
    size = DECODE_SIZE.get(claim.task)
    return size(rt, claim) if size is not None and rt.settings.fast_decode else None


def execute(task: Task, run_id: int, takeover: bool = False, run_ids: list[int] | None = None) -> str:
    """Run one message's task runs to stored results; returns the (first) run's final state.

    A message carries one run, or a group of runs of a batch task (``run_ids``, which the producer
    sends for a whole chunk of images at once) that share its fate.

    Transient trouble anywhere — claiming, reading the original, writing — is retried with
    exponential backoff by a new message for the same runs; runs whose retries are spent are
    recorded ``failed`` when the database lets us, and otherwise left to the reconciler's lease.
    """
    wait_for_preload()
    rt = get_runtime(app.darkroom_settings)
    ids = list(dict.fromkeys([run_id, *(run_ids or [])]))
    try:
        return _execute(rt, ids, takeover)
    except TRANSIENT as exc:
        ids = list(dict.fromkeys([*ids, *getattr(exc, "darkroom_runs", [])]))  # members it could not give back
        retries = task.request.retries
        if retries < rt.settings.task_max_retries:
            delay = min(60, 2 ** retries)
            try:
                with transaction(rt.sessions) as s:
                    for i in ids:
                        repo.note_retry(s, i, _one_line(exc))
            except TRANSIENT:
                pass  # the database itself is away: the retry message still carries the runs
            log.warning("run %s: %s; retry %d in %s s", _ids_text(ids), _one_line(exc), retries + 1, delay)
            # The retry is these runs' continuation: it may take them over even though the process
            # that gave them up (and perhaps could not record that) is still alive.
            kwargs: dict[str, Any] = {"run_id": ids[0], "takeover": True}
            if len(ids) > 1:
                kwargs["run_ids"] = ids
            raise task.retry(exc=exc, countdown=delay, kwargs=kwargs) from None
        states = [_finish(rt, i, FAILED, f"gave up after {retries} retries: {_one_line(exc)}") for i in ids]
        return states[0]


def _execute(rt: Runtime, run_ids: list[int], takeover: bool = False) -> str:
    holder_alive = (lambda _holder: False) if takeover else rt.holder_alive
    with read_only(rt.sessions) as s:
        claimable = repo.claimable(s, run_ids, holder_alive)
    claims: list[repo.Claim] = []
    if claimable:
        with transaction(rt.sessions) as s:
            claims = repo.claim_runs(s, claimable, rt.identity, holder_alive)
    if not claims:
        log.info("run %s: nothing to do (finished, or in another worker's batch)", _ids_text(run_ids))
        return "skipped"
    if claims[0].task in BATCH_HANDLERS:
        return _execute_batch(rt, claims)
    # Groups are sent for batch tasks, and retries carry the runs a group could not give back;
    # such runs go in turn (none taking another of the message's as its companion).
    mine = [c.run_id for c in claims]
    return [_execute_one(rt, claim, mine) for claim in claims][0]


#: Tasks that read every pixel of the original. A process doing one of them for an image also
#: takes that image's other pending runs of them (in the queues it serves): the photo is read and
#: decoded once, and the results are stored in one transaction.
SHARED_DECODE = ("normalize", "faces")


def _execute_one(rt: Runtime, claim: repo.Claim, message_runs: list[int] | None = None) -> str:
    """``claim`` (and, for a full-pixel task, its image's other pending full-pixel runs) to stored
    results. Only ``claim`` shares its message's fate: on a transient error the others are given
    back and sent again."""
    from tasks.classify import ModelUnavailable
    from tasks.imaging import BadImage, decode

    companions: list[repo.Claim] = []
    if claim.task in SHARED_DECODE:
        tasks = [t for t in SHARED_DECODE if t != claim.task and serves(t)]
        if tasks:
            with transaction(rt.sessions) as s:
                companions = repo.claim_companions(s, image_id=claim.image_id, tasks=tasks, worker=rt.identity,
                                                   exclude=message_runs or [claim.run_id],
                                                   holder_alive=rt.holder_alive)
    group = [claim, *companions]
    started = time.perf_counter()
    states: dict[int, str] = {}
    writes: list[tuple[repo.Claim, Callable]] = []
    try:
        try:
            data = rt.blobs.read(claim.sha256)
            image = decode(data, max_pixels=rt.settings.max_image_pixels, at_least=_decode_size(rt, claim))
        except BadImage as exc:
            for c in group:
                states[c.run_id] = _finish(rt, c.run_id, REJECTED, f"{_where(rt, c)}: {exc}")
            return states[claim.run_id]
        for c in group:
            try:
                writes.append((c, HANDLERS[c.task](rt, c, image)))
            except ModelUnavailable as exc:
                states[c.run_id] = _finish(rt, c.run_id, FAILED, str(exc))
            except BadImage as exc:
                states[c.run_id] = _finish(rt, c.run_id, REJECTED, f"{_where(rt, c)}: {exc}")
            except SoftTimeLimitExceeded:
                for late in group:
                    if late.run_id not in states:
                        states[late.run_id] = _finish(rt, late.run_id, FAILED, _too_long(rt, late))
                return states[claim.run_id]
            except TRANSIENT:
                raise
            except Exception as exc:  # a bug or an unforeseen input: record it, keep the worker going
                log.exception("run %s %s failed", c.run_id, c.task)
                states[c.run_id] = _finish(rt, c.run_id, FAILED, f"{_where(rt, c)}: {type(exc).__name__}: {_one_line(exc)}")
        if writes:
            with transaction(rt.sessions) as s:
                for _c, write in writes:
                    write(s)
                repo.finish_runs(s, [c.run_id for c, _w in writes], status=DONE)
    except BaseException as exc:
        _release(rt, [c.run_id for c in companions if c.run_id not in states], exc)
        raise
    for c, _w in writes:
        states[c.run_id] = DONE
    log.info("run %s %s %s done in %.0f ms%s", claim.run_id, claim.task, claim.sha256[:12],
             (time.perf_counter() - started) * 1000,
             "".join(f" (with {c.task} run {c.run_id}: {states[c.run_id]})" for c in companions))
    return states[claim.run_id]


def _execute_batch(rt: Runtime, own: list[repo.Claim]) -> str:
    """The message's own runs and up to batch-size minus that many other pending runs of their
    model, classified together.

    Each extra run's own message later finds it finished and is skipped. If anything goes wrong
    the extra runs are given back and sent again, so only the message's own runs share its fate.
    """
    from tasks.classify import ModelUnavailable
    from tasks.imaging import BadImage, decode

    claim = own[0]
    with transaction(rt.sessions) as s:
        extras = repo.claim_batch(s, task=claim.task, model=claim.model, worker=rt.identity,
                                  limit=rt.settings.classify_batch_size - len(own), exclude=[c.run_id for c in own],
                                  holder_alive=rt.holder_alive)
    started = time.perf_counter()
    try:
        at_least = _decode_size(rt, claim)
        claims, images = [], []
        for c in [*own, *extras]:
            try:
                images.append(decode(rt.blobs.read(c.sha256), max_pixels=rt.settings.max_image_pixels,
                                     at_least=at_least))
                claims.append(c)
            except BadImage as exc:
                _finish(rt, c.run_id, REJECTED, f"{_where(rt, c)}: {exc}")
            except FileNotFoundError:
                if c in own:
                    raise
                _finish(rt, c.run_id, FAILED, f"{_where(rt, c)}: the original is missing from the blob store")
        if not claims:
            return REJECTED
        decoded = time.perf_counter()
        write = BATCH_HANDLERS[claim.task](rt, claims, images)
        computed = time.perf_counter()
        with transaction(rt.sessions) as s:
            write(s)
            repo.finish_runs(s, [c.run_id for c in claims], status=DONE)
    except ModelUnavailable as exc:
        for c in [*own, *extras]:
            _finish(rt, c.run_id, FAILED, str(exc))
        return FAILED
    except BaseException as exc:
        _release(rt, [c.run_id for c in extras], exc)
        if isinstance(exc, SoftTimeLimitExceeded):
            return [_finish(rt, c.run_id, FAILED, _too_long(rt, c)) for c in own][0]
        if isinstance(exc, TRANSIENT) or not isinstance(exc, Exception):
            raise
        log.exception("runs %s %s failed", _ids_text([c.run_id for c in own]), claim.task)
        return [_finish(rt, c.run_id, FAILED, f"{_where(rt, c)}: {type(exc).__name__}: {_one_line(exc)}")
                for c in own][0]
    now = time.perf_counter()
    log.info("runs %s %s done in one batch of %d in %.0f ms (decode %.0f, model %.0f, store %.0f)",
             [c.run_id for c in claims], claim.task, len(claims), (now - started) * 1000, (decoded - started) * 1000,
             (computed - decoded) * 1000, (now - computed) * 1000)
    return DONE


def _too_long(rt: Runtime, claim: repo.Claim) -> str:
    return (f"{_where(rt, claim)}: {claim.task} took longer than {rt.settings.task_time_limit} s "
            "(DARKROOM_TASK_TIME_LIMIT)")


def _ids_text(ids: list[int]) -> str:
    return str(ids[0]) if len(ids) == 1 else f"{ids[0]} (+{len(ids) - 1} in its group)"


def _release(rt: Runtime, run_ids: list[int], exc: BaseException | None = None) -> None:
    """Give batch or group members back and send them again (their own messages may be gone
    already). If that cannot be done (the database is away), they go with ``exc``: the message's
    retry carries them and takes them over (see :func:`execute`)."""
    from worker.queues import send_run

    if not run_ids:
        return
    try:
        with transaction(rt.sessions) as s:
            refs = repo.release_runs(s, run_ids)
        for ref in refs:
            send_run(app, ref)
        with transaction(rt.sessions) as s:
            repo.mark_enqueued(s, [ref.id for ref in refs])
    except Exception:  # noqa: BLE001 - the retry (or the reconciler's lease) brings them back
        log.warning("could not give back runs %s; the message's retry takes them", run_ids, exc_info=True)
        if exc is not None:
            try:
                exc.darkroom_runs = [*getattr(exc, "darkroom_runs", []), *run_ids]
            except AttributeError:  # an exception type without a __dict__
                log.error("runs %s are left to the reconciler", run_ids)


def _finish(rt: Runtime, run_id: int, status: str, error: str) -> str:
    with transaction(rt.sessions) as s:
        repo.finish_run(s, run_id, status=status, error=error)
    log.warning("run %s %s: %s", run_id, status, error)
    return status


def _where(rt: Runtime, claim: repo.Claim) -> str:
    """The file a person knows the image by (its first path), else its hash."""
    try:
        with rt.sessions() as s:
            from sqlalchemy import func, select

            from storage.models import SourceFile

            path = s.scalar(select(func.min(SourceFile.path)).where(SourceFile.image_id == claim.image_id))
        return path or claim.sha256
    except Exception:  # noqa: BLE001 - the message must not fail for want of a name
        return claim.sha256


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:500] if text else type(exc).__name__


def _int_list(values: Any) -> list[int] | None:
    """A message's ``run_ids``: a list of whole numbers, or nothing."""
    if values is None:
        return None
    if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        # Not from a Darkroom producer; the runs it meant are still queued in the ledger, where
        # the reconciler finds and resends them.
        log.warning("ignoring a message's malformed run_ids: %.200r", values)
        return None
    return values


# One Celery task per vision task, each with its own name and route (see worker.app). Messages carry
# run ids only (one, or a group for a batch task); extra keyword arguments from newer producers are
# ignored, not fatal. Retries are counted against DARKROOM_TASK_MAX_RETRIES by ``execute``, which
# then records the runs failed: Celery's own limit (3 by default) is off, or past it ``retry``
# would raise the error instead, leaving the runs queued with no message to carry them.


@app.task(name=task_name("normalize"), bind=True, max_retries=None)
def normalize(self: Task, run_id: int, takeover: bool = False, run_ids: list[int] | None = None,
         **_params: Any) -> str:
    return execute(self, int(run_id), takeover=bool(takeover), run_ids=_int_list(run_ids))


@app.task(name=task_name("classify"), bind=True, max_retries=None)
def classify(self: Task, run_id: int, takeover: bool = False, run_ids: list[int] | None = None,
         **_params: Any) -> str:
    return execute(self, int(run_id), takeover=bool(takeover), run_ids=_int_list(run_ids))


@app.task(name=task_name("augment"), bind=True, max_retries=None)
def augment(self: Task, run_id: int, takeover: bool = False, run_ids: list[int] | None = None,
         **_params: Any) -> str:
    return execute(self, int(run_id), takeover=bool(takeover), run_ids=_int_list(run_ids))


@app.task(name=task_name("faces"), bind=True, max_retries=None)
def faces(self: Task, run_id: int, takeover: bool = False, run_ids: list[int] | None = None,
         **_params: Any) -> str:
    return execute(self, int(run_id), takeover=bool(takeover), run_ids=_int_list(run_ids))
