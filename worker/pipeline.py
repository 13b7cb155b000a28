"""One message's runs, from the ledger to stored results — the same way for every task in the catalog.

A message carries run ids (one, or a group). The worker claims them; a batched task's message also
claims other pending runs of its model to fill a batch, and a run on every pixel of a photo takes
the photo's other pending full-pixel runs (in the queues this process serves), so the photo is
read and decoded once. Each photo is read (from the blob store, or where it lies: see
:mod:`worker.originals`) and decoded once, at the size its runs need; each (task, model) step runs
on its images (a batch at once, or one image a call); every result and the runs' new states are
written in one transaction.

The outcome policy, one for every run (:func:`outcome`):

- the image itself is unusable (``BadImage``)     -> ``rejected`` (and the image), never retried;
- the model cannot be had (``ModelUnavailable``)  -> ``failed`` with the way to fix it;
- an original held by reference is gone or edited -> ``failed`` naming the file (``OriginalGone``), never retried;
- the time limit ran out                          -> ``failed``, naming DARKROOM_TASK_TIME_LIMIT;
- the database or the blob store hiccups          -> retried with exponential backoff, then ``failed``;
- anything else                                   -> ``failed`` with the error, for `darkroom retry`.

Only a message's own runs share its fate: runs it gathered (batch and decode companions) are given
back and sent again when the trouble is not theirs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from celery import Celery, Task
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, OperationalError

from darkroom import catalog
from storage import cluster, ledger
from storage.db import read_only, transaction
from storage.models import DONE, FAILED, REJECTED, Artifact
from storage.results import THUMB, ArtifactData, save_artifacts, save_thumbnails
from tasks.base import ModelUnavailable, one_line
from tasks.imaging import BadImage, decode
from worker.cluster import UnknownRuns
from worker.originals import OriginalGone, read_original
from worker.queues import send_run
from worker.runtime import Runtime, Step

log = logging.getLogger(__name__)

#: Seconds before a message whose runs this worker's database does not know is sent again.
UNKNOWN_RUN_RETRY = 30

#: Trouble that passes: the database or the blob store away for a moment.
TRANSIENT = (OperationalError, DBAPIError, FileNotFoundError, ConnectionError, TimeoutError)


def outcome(exc: Exception, where: str, task: str, time_limit: int) -> tuple[str, str]:
    """The state and the error to record for a run that raised ``exc`` (not a transient one).
    ``where``: the file a person knows the photo by."""
    if isinstance(exc, BadImage):
        return REJECTED, f"{where}: {exc}"
    if isinstance(exc, (ModelUnavailable, OriginalGone)):
        return FAILED, str(exc)
    if isinstance(exc, SoftTimeLimitExceeded):
        return FAILED, f"{where}: {task} took longer than {time_limit} s (DARKROOM_TASK_TIME_LIMIT)"
    return FAILED, f"{where}: {type(exc).__name__}: {one_line(exc)}"


def execute(task: Task, run_id: int, takeover: bool = False, run_ids: list[int] | None = None) -> str:
    """Run one message's task runs to stored results; returns the (first) run's final state.

    Transient trouble anywhere — claiming, reading the original, writing — is retried with
    exponential backoff by a new message for the same runs; runs whose retries are spent are
    recorded ``failed`` when the database lets us, and otherwise left to the reconciler's lease.
    """
    rt: Runtime = task.runtime
    rt.wait_until_ready()
    ids = list(dict.fromkeys([run_id, *(run_ids or [])]))
    try:
        return Message(rt, task.app, ids, takeover).run()
    except UnknownRuns as exc:
        # Never acknowledged as done: sent again for a worker whose database knows the runs (this
        # one's is not the producer's; `darkroom worker` refuses to start so, see worker.cluster).
        log.error("%s; the message is sent again in %d s", exc, UNKNOWN_RUN_RETRY)
        kwargs = {"run_id": ids[0], "takeover": takeover, **({"run_ids": ids} if len(ids) > 1 else {})}
        raise task.retry(exc=exc, countdown=UNKNOWN_RUN_RETRY, kwargs=kwargs) from None
    except TRANSIENT as exc:
        ids = list(dict.fromkeys([*ids, *getattr(exc, "darkroom_runs", [])]))  # members it could not give back
        retries = task.request.retries
        if retries < rt.settings.task_max_retries:
            delay = min(60, 2 ** retries)
            try:
                with transaction(rt.sessions) as s:
                    for i in ids:
                        ledger.note_retry(s, i, one_line(exc))
            except TRANSIENT:
                pass  # the database itself is away: the retry message still carries the runs
            log.warning("run %s: %s; retry %d in %s s", _ids_text(ids), one_line(exc), retries + 1, delay)
            # The retry is these runs' continuation: it may take them over even though the process
            # that gave them up (and perhaps could not record that) is still alive.
            kwargs: dict[str, Any] = {"run_id": ids[0], "takeover": True}
            if len(ids) > 1:
                kwargs["run_ids"] = ids
            raise task.retry(exc=exc, countdown=delay, kwargs=kwargs) from None
        states = [_finish(rt, i, FAILED, f"gave up after {retries} retries: {one_line(exc)}") for i in ids]
        return states[0]


@dataclass
class Message:
    """One message's work: its own runs and those it gathers, to stored results."""

    rt: Runtime
    app: Celery
    run_ids: list[int]
    takeover: bool = False
    own: list[ledger.Claim] = field(default_factory=list)
    extras: list[ledger.Claim] = field(default_factory=list)
    #: Each run's final state once decided ("released": given back to be sent again).
    states: dict[int, str] = field(default_factory=dict)
    #: Thumbnails made for photos that had none (image id -> artifact), stored with the results.
    thumbs: dict[int, ArtifactData] = field(default_factory=dict)
    #: Seconds spent decoding, in the steps and storing (for the log).
    spent: dict[str, float] = field(default_factory=lambda: {"decode": 0.0, "model": 0.0, "store": 0.0})

    def run(self) -> str:
        rt = self.rt
        holder_alive = (lambda _holder: False) if self.takeover else rt.holder_alive
        with read_only(rt.sessions) as s:
            claimable = ledger.claimable(s, self.run_ids, holder_alive)
        if claimable:
            with transaction(rt.sessions) as s:
                self.own = ledger.claim_runs(s, claimable, rt.identity, holder_alive)
        if not self.own:
            with read_only(rt.sessions) as s:
                unknown = cluster.unknown_runs(s, self.run_ids)
            if unknown:
                raise UnknownRuns(unknown, rt.settings)
            log.info("run %s: nothing to do (finished, or in another worker's batch)", _ids_text(self.run_ids))
            return "skipped"
        started = time.perf_counter()
        try:
            self.extras = self._gather()
            self._work()
        except BaseException as exc:
            self._release([c for c in self.extras if c.run_id not in self.states], exc)
            if isinstance(exc, SoftTimeLimitExceeded):
                for c in self.own:
                    if c.run_id not in self.states:
                        self._record(c, *outcome(exc, self._where(c), c.task, rt.settings.task_time_limit))
                return self.states[self.own[0].run_id]
            raise
        self._log(started)
        return self.states[self.own[0].run_id]

    # --- gathering ---------------------------------------------------------------------------------

    def _gather(self) -> list[ledger.Claim]:
        """A batched task's message fills its batch with pending runs of the same model; a run on
        every pixel of a photo takes the photo's other full-pixel runs this process serves."""
        rt, first = self.rt, self.own[0]
        task = catalog.get(first.task)
        mine = [c.run_id for c in self.own]
        if task.batched:
            room = task.batch_size(rt.settings) - len(self.own)
            if room <= 0:
                return []
            with transaction(rt.sessions) as s:
                return ledger.claim_batch(s, task=first.task, model=first.model, worker=rt.identity, limit=room,
                                          exclude=mine, holder_alive=rt.holder_alive)
        others = [t.name for t in catalog.TASKS if t.full_pixels and not t.batched and rt.serves(t.name)]
        extras: list[ledger.Claim] = []
        for image_id in dict.fromkeys(c.image_id for c in self.own if catalog.get(c.task).full_pixels):
            tasks = [t for t in others if t not in {c.task for c in self.own if c.image_id == image_id}]
            if tasks:
                with transaction(rt.sessions) as s:
                    extras += ledger.claim_companions(s, image_id=image_id, tasks=tasks, worker=rt.identity,
                                                      exclude=mine, holder_alive=rt.holder_alive)
        return extras

    # --- the work ----------------------------------------------------------------------------------

    def _work(self) -> None:
        rt = self.rt
        claims = [*self.own, *self.extras]
        steps: dict[tuple[str, str], Step | Exception] = {}
        for c in claims:
            if (c.task, c.model) not in steps:
                try:
                    steps[c.task, c.model] = rt.step(catalog.get(c.task), c.model)
                except TRANSIENT:
                    raise
                except Exception as exc:  # noqa: BLE001 - the model cannot be had: every run of it says so
                    steps[c.task, c.model] = exc
        for c in claims:
            step = steps[c.task, c.model]
            if isinstance(step, Exception):
                self._fail(c, step)
        started = time.perf_counter()
        images = self._decode([c for c in claims if c.run_id not in self.states], steps)
        self.spent["decode"] = time.perf_counter() - started
        results: list[tuple[Step, list[ledger.Claim], list[Any]]] = []
        for (task_name, key), step in steps.items():
            if isinstance(step, Exception):
                continue
            todo = [c for c in claims if (c.task, c.model) == (task_name, key) and c.run_id not in self.states]
            for group in ([todo] if step.task.batched else [[c] for c in todo]):
                if not group:
                    continue
                try:
                    started = time.perf_counter()
                    results.append((step, group, step([images[c.image_id] for c in group])))
                    self.spent["model"] += time.perf_counter() - started
                except (*TRANSIENT, SoftTimeLimitExceeded):
                    raise
                except Exception as exc:  # a bug or an unforeseen input: record it, keep the worker going
                    log.exception("run %s %s failed", _ids_text([c.run_id for c in group]), task_name)
                    for c in group:
                        self._fail(c, exc)
        if results:
            started = time.perf_counter()
            self._store(results)
            self.spent["store"] = time.perf_counter() - started

    def _decode(self, claims: Sequence[ledger.Claim], steps: dict) -> dict[int, Any]:
        """Each photo read and decoded once, at the largest size its runs need (every pixel when
        one of them needs every pixel, or DARKROOM_FAST_DECODE is off). A camera RAW is read from its
        embedded preview or demosaiced as DARKROOM_RAW and the configured tasks say: the same way for
        every run of the photo."""
        rt = self.rt
        raw = catalog.raw_options(rt.settings)
        by_image: dict[int, list[ledger.Claim]] = {}
        for c in claims:
            by_image.setdefault(c.image_id, []).append(c)
        images: dict[int, Any] = {}
        with read_only(rt.sessions) as s:  # the photos without a thumbnail get one (the first message to decode them)
            have_thumb = set(s.scalars(select(Artifact.image_id).where(Artifact.image_id.in_(list(by_image)),
                                                                       Artifact.kind == THUMB)))
        for image_id, group in by_image.items():
            sizes = [steps[c.task, c.model].decode_size for c in group] if rt.settings.fast_decode else [None]
            at_least = None if None in sizes else (max(w for w, _ in sizes), max(h for _, h in sizes))
            original = self._read(image_id, group)
            if original is None:
                continue
            try:
                images[image_id] = decode(original, max_pixels=rt.settings.max_image_pixels, at_least=at_least, **raw)
                if image_id not in have_thumb:
                    self._thumb(image_id, original, images[image_id])
            except BadImage as exc:
                for c in group:
                    self._fail(c, exc)
        return images

    def _thumb(self, image_id: int, original: bytes, pixels: Any) -> None:
        """The photo's thumbnail (``catalog.thumbnail``); a photo it cannot be made of has none."""
        try:
            thumb = catalog.thumbnail(original, pixels, self.rt.settings)
            if self.rt.settings.artifact_store == "blobs":
                thumb = thumb.in_blobs(self.rt.blobs)
            self.thumbs[image_id] = thumb
        except Exception:  # noqa: BLE001 - a thumbnail is never worth a run
            log.warning("image %s: no thumbnail made", image_id, exc_info=True)

    def _read(self, image_id: int, group: list[ledger.Claim]) -> bytes | None:
        """The photo's original, or None when it cannot be had now. For a photo of the message's
        own runs, trouble for good (an original gone, a blob missing from the cluster's store) fails
        them and the photo's other runs taken with them, and trouble that passes is retried. A photo
        the message only gathered (another photo's runs filling a batch) is given back whatever the
        trouble, never failed for it: its own message tries again, maybe on a worker that can read it."""
        mine = any(c in self.own for c in group)
        try:
            return read_original(self.rt, self.app, image_id, group[0].sha256, give_up=mine)
        except OriginalGone as exc:
            if not mine:
                self._release(group)
                return None
            for c in group:
                self._fail(c, exc)
        except TRANSIENT:
            if mine:
                raise
            self._release(group)
        except Exception as exc:  # noqa: BLE001 - e.g. the store refused us: recorded, with what it said
            log.exception("image %s: its original could not be read", image_id)
            for c in group:
                self._fail(c, exc)  # a gathered run is given back (the trouble may not be its own)
        return None

    def _store(self, results: list[tuple[Step, list[ledger.Claim], list[Any]]]) -> None:
        """Every result and the runs' ``done`` in one transaction (artifacts encoded first)."""
        writes = []
        in_blobs = self.rt.settings.artifact_store == "blobs"
        for step, group, outputs in results:
            arts = {c.image_id: step.artifacts(out) for c, out in zip(group, outputs)}
            if in_blobs:  # written before the transaction, so that it stays short
                arts = {i: [art.in_blobs(self.rt.blobs) for art in mine] for i, mine in arts.items()}
            writes.append((step, group, outputs, arts))
        with transaction(self.rt.sessions) as s:
            for step, group, outputs, arts in writes:
                step.task.results.save(s, step.key, [(c.image_id, out.data) for c, out in zip(group, outputs)])
                kinds = step.task.results.artifact_kinds
                if kinds:
                    for c in group:
                        save_artifacts(s, c.image_id, kinds, arts[c.image_id])
            ledger.finish_runs(s, [c.run_id for _step, group, _o, _a in writes for c in group], status=DONE)
            save_thumbnails(s, self.thumbs)
        for _step, group, _o, _a in writes:
            for c in group:
                self.states[c.run_id] = DONE

    # --- outcomes ----------------------------------------------------------------------------------

    def _fail(self, claim: ledger.Claim, exc: Exception) -> None:
        """Record ``exc``'s outcome for ``claim``. A gathered run is given back instead when the
        trouble may not be its own (anything but a bad photo, an original gone, or a model that cannot
        be had)."""
        if claim not in self.own and not isinstance(exc, (BadImage, ModelUnavailable, OriginalGone)):
            self._release([claim])
            return
        self._record(claim, *outcome(exc, self._where(claim), claim.task, self.rt.settings.task_time_limit))

    def _record(self, claim: ledger.Claim, status: str, error: str) -> None:
        self.states[claim.run_id] = _finish(self.rt, claim.run_id, status, error)

    def _release(self, claims: Sequence[ledger.Claim], exc: BaseException | None = None) -> None:
        """Give gathered runs back and send them again (their own messages may be gone already). If
        that cannot be done (the database is away), they go with ``exc``: the message's retry carries
        them and takes them over (see :func:`execute`)."""
        ids = [c.run_id for c in claims]
        if not ids:
            return
        for i in ids:
            self.states[i] = "released"
        try:
            with transaction(self.rt.sessions) as s:
                refs = ledger.release_runs(s, ids)
            for ref in refs:
                send_run(self.app, ref)
            with transaction(self.rt.sessions) as s:
                ledger.mark_enqueued(s, [ref.id for ref in refs])
        except Exception:  # noqa: BLE001 - the retry (or the reconciler's lease) brings them back
            log.warning("could not give back runs %s; the message's retry takes them", ids, exc_info=True)
            if exc is not None:
                try:
                    exc.darkroom_runs = [*getattr(exc, "darkroom_runs", []), *ids]
                except AttributeError:  # an exception type without a __dict__
                    log.error("runs %s are left to the reconciler", ids)

    def _where(self, claim: ledger.Claim) -> str:
        """The file a person knows the image by (its first path), else its hash."""
        try:
            with read_only(self.rt.sessions) as s:
                return ledger.first_path(s, claim.image_id) or claim.sha256
        except Exception:  # noqa: BLE001 - the message must not fail for want of a name
            return claim.sha256

    def _log(self, started: float) -> None:
        first = self.own[0]
        others = [*self.own[1:], *self.extras]
        if catalog.get(first.task).batched:
            done = [c for c in [*self.own, *self.extras] if self.states.get(c.run_id) == DONE]
            log.info("runs %s %s %s in one batch of %d in %.0f ms (decode %.0f, model %.0f, store %.0f)",
                     [c.run_id for c in self.own], first.task, self.states[first.run_id], len(done),
                     (time.perf_counter() - started) * 1000,
                     *(self.spent[k] * 1000 for k in ("decode", "model", "store")))
            return
        log.info("run %s %s %s %s in %.0f ms%s", first.run_id, first.task, first.sha256[:12],
                 self.states[first.run_id], (time.perf_counter() - started) * 1000,
                 f" (with {len(others)} more: " + ", ".join(
                     f"{c.task} {c.run_id} {self.states.get(c.run_id, '?')}" for c in others[:8])
                 + (", ..." if len(others) > 8 else "") + ")" if others else "")


def _finish(rt: Runtime, run_id: int, status: str, error: str) -> str:
    with transaction(rt.sessions) as s:
        ledger.finish_run(s, run_id, status=status, error=error)
    log.warning("run %s %s: %s", run_id, status, error)
    return status


def _ids_text(ids: list[int]) -> str:
    return str(ids[0]) if len(ids) == 1 else f"{ids[0]} (+{len(ids) - 1} in its group)"


def int_list(values: Any) -> list[int] | None:
    """A message's ``run_ids``: a list of whole numbers, or nothing."""
    if values is None:
        return None
    if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        # Not from a Darkroom producer; the runs it meant are still queued in the ledger, where
        # the reconciler finds and resends them.
        log.warning("ignoring a message's malformed run_ids: %.200r", values)
        return None
    return values


__all__ = ["TRANSIENT", "Message", "execute", "int_list", "outcome"]
