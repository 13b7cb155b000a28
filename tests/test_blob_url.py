"""DARKROOM_BLOB_URL: originals (and artifacts) in an S3 bucket, against a real SeaweedFS.

The S3 store's put / read / exists and its sha256 check; a damaged object found; credentials never
shown; the whole pipeline with ``s3://`` (a real `darkroom ingest` and `darkroom worker`) leaving no
blob on the local disk; a missing object failed at once, naming the setting, never retried.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid

import pytest

from tests.harness import Darkroom, FakeTask, stop

SECRET = "s3cr3t-never-shown-" + uuid.uuid4().hex[:8]


def _bucket() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def _keys(seaweed, bucket: str) -> list[str]:
    listed = seaweed.client().list_objects_v2(Bucket=bucket)
    return sorted(item["Key"] for item in listed.get("Contents", []))


@pytest.fixture()
def aws_env(monkeypatch):
    """Credentials as a user sets them: the standard AWS_* variables (SeaweedFS lets anyone in)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "darkroom-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    return {"AWS_ACCESS_KEY_ID": "darkroom-test", "AWS_SECRET_ACCESS_KEY": SECRET}


def test_the_s3_store_puts_reads_and_checks_what_it_reads(seaweed, photos, aws_env):
    from storage.blobs import BlobCorrupt, BlobMissing
    from storage.s3 import S3BlobStore
    from storage.stores import open_store

    bucket = _bucket()
    store = open_store(seaweed.url(bucket, "darkroom/originals"))
    assert isinstance(store, S3BlobStore) and SECRET not in store.url
    original = photos["astronaut"].read_bytes()
    sha = hashlib.sha256(original).hexdigest()

    # The bucket is made by the first write; the object is named by the hash, the file store's layout
    assert store.put_file(photos["astronaut"]) == (sha, len(original))
    assert _keys(seaweed, bucket) == [f"darkroom/originals/{sha[:2]}/{sha[2:4]}/{sha}"]
    assert store.exists(sha) and store.read(sha) == original
    # Twice is harmless (skipped: the object exists), and store_file gives what it uploaded
    assert store.store_file(photos["astronaut"]) == (sha, len(original), original)
    assert store.put_bytes(b"an artifact") == hashlib.sha256(b"an artifact").hexdigest()
    assert len(_keys(seaweed, bucket)) == 2

    missing = hashlib.sha256(b"never stored").hexdigest()
    assert not store.exists(missing)
    with pytest.raises(BlobMissing, match="DARKROOM_BLOB_URL") as gone:
        store.read(missing)
    assert isinstance(gone.value, FileNotFoundError) and SECRET not in str(gone.value)

    # Other bytes under the name (damaged, or overwritten by hand): found by the hash, not returned
    seaweed.client().put_object(Bucket=bucket, Key=store.key_for(sha), Body=original[:-10] + b"0123456789")
    with pytest.raises(BlobCorrupt, match="does not hash to its name"):
        store.read(sha)

    # The cluster marks a worker's check reads
    cluster = uuid.uuid4().hex
    assert not store.has_cluster(cluster)
    store.mark_cluster(cluster)
    assert store.has_cluster(cluster)


def test_an_unreachable_store_is_trouble_that_passes_and_never_shows_a_secret(aws_env):
    from storage.blobs import BlobStoreUnavailable
    from storage.stores import open_store
    from tests.harness import free_port

    store = open_store(f"s3://nowhere/x?endpoint=http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    with pytest.raises(BlobStoreUnavailable, match="did not answer") as away:
        store.read("0" * 64)
    assert isinstance(away.value, ConnectionError)  # retried by the worker, as the database away is
    assert SECRET not in str(away.value) and time.monotonic() - started < 20


def test_the_blob_url_setting_is_checked_and_never_echoes_a_secret(monkeypatch, tmp_path):
    from pydantic import ValidationError

    from darkroom.settings import Settings, settings_error

    assert Settings(data_dir=tmp_path).blob_location == (tmp_path / "blobs").absolute().as_uri()
    good = "s3://photos/darkroom?endpoint=http://10.0.0.5:8333"
    assert Settings(data_dir=tmp_path, blob_url=good).blob_location == good
    assert Settings(data_dir=tmp_path, blob_url=good).masked()["blob_url"] == good
    for bad, says in ((f"s3://key:{SECRET}@photos/x", "AWS_ACCESS_KEY_ID"),
                      (f"s3://photos?endpoint=http://u:{SECRET}@host:1", "AWS_SECRET_ACCESS_KEY"),
                      ("ftp://host/x", "file:///path or s3://"), ("file://relative/x", "three slashes"),
                      ("s3://x?endpoint=http://h:1", "bucket name")):
        monkeypatch.setenv("DARKROOM_BLOB_URL", bad)
        with pytest.raises(ValidationError) as error:
            Settings(data_dir=tmp_path)
        line = settings_error(error.value)
        assert "DARKROOM_BLOB_URL" in line and says in line and SECRET not in line, line


# --- the whole pipeline ------------------------------------------------------------------------------


def test_the_pipeline_runs_on_an_s3_store_with_no_blob_on_the_local_disk(seaweed, photos, redis_url, tmp_path,
                                                                         aws_env):
    bucket = _bucket()
    url = seaweed.url(bucket, "originals")
    dr = Darkroom(tmp_path, redis_url, f"sqlite:///{tmp_path / 'ledger.db'}", tasks="normalize,phash",
                  blob_url=url, artifact_store="blobs")
    dr.env.update(aws_env)
    archive = tmp_path / "archive"
    archive.mkdir()
    for name in ("astronaut", "coffee", "chelsea"):
        (archive / f"{name}.jpg").write_bytes(photos[name].read_bytes())
    ingest = dr.run("ingest", str(archive))
    assert ingest.returncode == 0, ingest.stderr
    worker = dr.start("worker", "--concurrency", "1", name="worker")
    try:
        results = dr.wait_until_settled(3, worker, timeout=120)
    finally:
        assert stop(worker, sig=15) == 0
    assert {r["status"] for r in results} == {"done"} and all(r["phash"] for r in results)
    keys = _keys(seaweed, bucket)
    for name in ("astronaut", "coffee", "chelsea"):
        sha = hashlib.sha256(photos[name].read_bytes()).hexdigest()
        assert f"originals/{sha[:2]}/{sha[2:4]}/{sha}" in keys
    assert any(k.startswith("originals/clusters/") for k in keys)  # the producer marked its store
    # Nothing under the data folder but the ledger and the logs: no blob on this disk
    local = [p for p in dr.data.rglob("*") if p.is_file() and p.suffix not in (".db", ".db-wal", ".db-shm", ".log")
             and not p.name.endswith("migrate-lock")]
    assert local == [], local
    assert SECRET not in dr.log_tail() and SECRET not in ingest.stdout + ingest.stderr
    config = dr.run("config", "--json")
    assert json.loads(config.stdout)["blob_url"] == url and SECRET not in config.stdout


# --- a missing or damaged object: failed at once, naming the setting ----------------------------------


@pytest.fixture()
def s3_pipeline(seaweed, redis_url, tmp_path, aws_env):
    """A producer (Registrar) and a worker runtime in this process on one SQLite ledger and a bucket."""
    from darkroom.settings import Settings
    from producer.registrar import Registrar
    from storage.db import make_engine, migrate
    from worker.app import create_app
    from worker.runtime import Runtime

    settings = Settings(data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path / 'ledger.db'}",
                        broker_url=redis_url, tasks=["normalize", "phash"], blob_url=seaweed.url(_bucket(), "o"),
                        preload_models=False)
    engine = make_engine(settings.db_url)
    migrate(engine)
    engine.dispose()
    registrar = Registrar(settings=settings, app=create_app(settings), roots=[tmp_path])
    rt = Runtime.create(settings)
    from storage.stores import open_store

    rt.blobs = open_store(settings.blob_location)
    yield registrar, rt
    registrar.close()


def _runs_of(rt, sha: str) -> list:
    from sqlalchemy import select

    from storage.models import Image, TaskRun

    with rt.sessions() as s:
        return list(s.scalars(select(TaskRun).join(Image).where(Image.sha256 == sha).order_by(TaskRun.id)))


def _execute(rt, run_id: int) -> tuple[str, FakeTask]:
    from worker.pipeline import execute

    task = FakeTask()
    task.runtime, task.app = rt, None
    return execute(task, run_id), task


def test_a_missing_object_fails_its_runs_at_once_naming_the_setting(s3_pipeline, photos, tmp_path, seaweed):
    registrar, rt = s3_pipeline
    path = tmp_path / "coffee.jpg"
    path.write_bytes(photos["coffee"].read_bytes())
    registrar.register(path, send=False)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    seaweed.client().delete_object(Bucket=rt.blobs.bucket, Key=rt.blobs.key_for(sha))
    run = _runs_of(rt, sha)[0]
    state, task = _execute(rt, run.id)
    assert state == "failed" and task.retried == []  # not five retries
    (after, *_) = _runs_of(rt, sha)
    assert after.attempts == 1
    assert f"original {sha} is missing from the blob store {rt.blobs.url} (DARKROOM_BLOB_URL)" in after.error


def test_a_damaged_object_fails_its_runs_and_a_store_not_yet_marked_is_retried(s3_pipeline, photos, tmp_path,
                                                                                seaweed):
    from sqlalchemy import update

    from storage.db import transaction
    from storage.models import Cluster
    from tests.harness import Retry

    registrar, rt = s3_pipeline
    path = tmp_path / "rocket.jpg"
    path.write_bytes(photos["rocket"].read_bytes())
    registrar.register(path, send=False)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    seaweed.client().put_object(Bucket=rt.blobs.bucket, Key=rt.blobs.key_for(sha), Body=b"not the photo")
    first, second = _runs_of(rt, sha)
    state, task = _execute(rt, first.id)
    assert state == "failed" and task.retried == []
    # The photo's other run (taken with it: one read, one decode) shares its fate
    assert [r.status for r in _runs_of(rt, sha)] == ["failed", "failed"]
    assert all("does not hash to its name" in r.error for r in _runs_of(rt, sha))

    # A store that does not hold this cluster's mark may be a store away (a mount not there yet):
    # a missing blob there is retried, as before
    other = tmp_path / "chelsea.jpg"
    other.write_bytes(photos["chelsea"].read_bytes())
    registrar.register(other, send=False)
    other_sha = hashlib.sha256(other.read_bytes()).hexdigest()
    seaweed.client().delete_object(Bucket=rt.blobs.bucket, Key=rt.blobs.key_for(other_sha))
    with transaction(rt.sessions) as s:
        s.execute(update(Cluster).values(uuid=uuid.uuid4().hex))
    with pytest.raises(Retry):
        _execute(rt, _runs_of(rt, other_sha)[0].id)


def test_in_process_results_read_artifacts_from_the_bucket(s3_pipeline, photos, tmp_path):
    """DARKROOM_ARTIFACT_STORE=blobs with an S3 store: what a worker puts is what export reads."""
    from storage import results
    from storage.results import ArtifactData

    _registrar, rt = s3_pipeline
    art = ArtifactData(kind="contact_sheet", idx=0, mime="image/jpeg", width=1, height=1,
                       data=photos["coffee"].read_bytes()).in_blobs(rt.blobs)
    assert art.data is None and rt.blobs.exists(art.blob)

    class Row:  # what results.artifact_bytes reads of an artifacts row
        kind, idx, image_id, data, blob = art.kind, art.idx, 1, None, art.blob

    assert results.artifact_bytes(Row, rt.blobs) == photos["coffee"].read_bytes()
    Row.blob = hashlib.sha256(b"gone").hexdigest()
    with pytest.raises(FileNotFoundError, match="DARKROOM_BLOB_URL.*rerun"):
        results.artifact_bytes(Row, rt.blobs)


def test_compose_keeps_originals_in_its_seaweedfs_service():
    """docker-compose.yml: a seaweedfs service (weed server with its S3 gateway on 8333), and the
    producer and workers pointed at it by a DARKROOM_BLOB_URL the settings accept."""
    import yaml

    from storage.blobs import check_url
    from tests.harness import ROOT

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    weed = compose["services"]["seaweedfs"]
    assert weed["command"][0] == "server" and "-s3" in weed["command"] and "-s3.port=8333" in weed["command"]
    assert "healthcheck" in weed and any(v.endswith(":/data") for v in weed["volumes"])
    for name in ("producer", "worker-cpu", "worker-gpu"):
        svc = compose["services"][name]
        url = svc["environment"]["DARKROOM_BLOB_URL"]
        assert check_url(url) == url and "endpoint=http://seaweedfs:8333" in url
        assert svc["depends_on"]["seaweedfs"]["condition"] == "service_healthy"
