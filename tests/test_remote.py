"""Sharing results through a DVC remote on a real S3 API (moto's server on 127.0.0.1).

The tiny curriculum is pushed with `just push`; a fresh clone gets it with `just pull` and then has nothing to
reproduce. An unreachable remote and a corrupted object in the bucket fail clearly and leave the workspace as
it was.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from tests.conftest import free_port, run

BUCKET, PREFIX = "lab", "llm-lab"
# AWS_MAX_ATTEMPTS: botocore's default retries with backoff make the unreachable case take minutes
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_MAX_ATTEMPTS": "1"}
SHARED = ("data", "models", "metrics", "plots")  # what a teammate's pull must reproduce byte for byte


def digest(ws: Path) -> dict[str, str]:
    return {str(p.relative_to(ws)): hashlib.md5(p.read_bytes()).hexdigest()
            for top in SHARED for p in sorted((ws / top).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def s3():
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")
    client.create_bucket(Bucket=BUCKET)
    yield endpoint, client
    server.stop()


@pytest.fixture(scope="module")
def origin(built, s3, tmp_path_factory) -> Path:
    """A copy of the built tiny project, committed to git and pushed to the bucket."""
    endpoint, _ = s3
    ws = Path(shutil.copytree(built, tmp_path_factory.mktemp("remote") / "origin", symlinks=True))
    run(["just", "remote", f"s3://{BUCKET}/{PREFIX}", endpoint], cwd=ws)
    # record the workspace as it is (a LAB_TEST_BUILT workspace may have been re-run by hand since DVC ran it)
    run(["dvc", "commit", "--force", "--quiet"], cwd=ws)
    assert "Data and pipelines are up to date." in run(["dvc", "status"], cwd=ws).stdout
    run(["git", "add", "-A"], cwd=ws)
    run(["git", "-c", "user.name=test", "-c", "user.email=test@localhost", "commit", "-qm", "curriculum"], cwd=ws)
    run(["just", "push"], cwd=ws, env=CREDENTIALS, timeout=600)
    return ws


def clone(origin: Path, dest: Path) -> Path:
    run(["git", "clone", "-q", str(origin), str(dest)], cwd=origin.parent)
    return dest


def test_pull_in_a_fresh_clone_leaves_nothing_to_reproduce(origin, tmp_path):
    ws = clone(origin, tmp_path / "teammate")
    assert not (ws / "models" / "sft").exists()
    run(["just", "pull"], cwd=ws, env=CREDENTIALS, timeout=600)
    assert "Data and pipelines are up to date." in run(["dvc", "status"], cwd=ws).stdout
    repro = run(["dvc", "repro"], cwd=ws, timeout=600).stdout
    assert "Running stage" not in repro, repro
    pulled, pushed = digest(ws), digest(origin)
    assert pulled == pushed  # every model, dataset, metric and plot, byte for byte
    assert any(name.startswith("models/sft/") for name in pulled) and "metrics/evaluate.json" in pulled


def test_unreachable_remote_is_a_clear_error_and_changes_nothing(origin, tmp_path):
    ws = clone(origin, tmp_path / "offline")
    run(["dvc", "remote", "modify", "storage", "endpointurl", f"http://127.0.0.1:{free_port()}"], cwd=ws)
    tracked = run(["git", "status", "--porcelain"], cwd=ws).stdout
    proc = run(["just", "pull"], cwd=ws, env=CREDENTIALS, check=False, timeout=600)
    assert proc.returncode != 0
    assert "ERROR" in proc.stdout + proc.stderr and "127.0.0.1" in proc.stdout + proc.stderr, proc.stdout[-2000:]
    assert not (ws / "models" / "sft").exists() and run(["git", "status", "--porcelain"], cwd=ws).stdout == tracked


def test_corrupted_object_in_the_remote_is_refused_and_named(origin, s3, tmp_path):
    _, client = s3
    weights = origin / "models" / "sft" / "model.safetensors"
    md5 = hashlib.md5(weights.read_bytes()).hexdigest()
    key = f"{PREFIX}/files/md5/{md5[:2]}/{md5[2:]}"
    original = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    client.put_object(Bucket=BUCKET, Key=key, Body=original[:-64] + b"\0" * 64)  # same size, other bytes
    try:
        ws = clone(origin, tmp_path / "corrupt")
        proc = run(["just", "pull"], cwd=ws, env=CREDENTIALS, check=False, timeout=600)
    finally:
        client.put_object(Bucket=BUCKET, Key=key, Body=original)
    assert proc.returncode != 0
    assert f"error: corrupted cache file '{ws}/.dvc/cache/files/md5/{md5[:2]}/{md5[2:]}'" in proc.stderr, proc.stderr
    assert f"error: failed to create '{ws}/models/sft/model.safetensors'" in proc.stderr
    assert not (ws / "models" / "sft" / "model.safetensors").exists(), "a corrupted file was checked out"
    assert not (ws / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]).exists()
