"""No secret reaches anything a job writes: planted sentinel credentials, searched for everywhere."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import ROOT, make_rows, write_samples
from ray_head import clean_env
from tribunal.cluster.redact import REDACTED, environment, is_secret_key, ray_submission_id, redact, scrub, scrub_url, secret_values

SENTINELS = {
    "AWS_ACCESS_KEY_ID": "AKIASENTINEL0KEYID77",
    "AWS_SECRET_ACCESS_KEY": "sentinel-aws-secret-7f3a9c",
    "AWS_SESSION_TOKEN": "sentinel-session-token-19bd",
    "HF_TOKEN": "hf_sentinel_hftoken_4242",
    "WANDB_API_KEY": "sentinel-wandb-key-8e8e",
}
STORAGE_SENTINEL = "sentinel-storage-opt-token-55c1"


@pytest.mark.parametrize(
    ("key", "secret"),
    [("max_tokens", False), ("prompt_tokens", False), ("duplicate_keys", False), ("k", False), ("top_p", False),
     ("session_token", True), ("HF_TOKEN", True), ("AWS_SECRET_ACCESS_KEY", True), ("aws_access_key_id", True),
     ("password", True), ("apiKey", True), ("x-amz-signature", True), ("client_secret", True), ("credentials", True),
     ("PWD", False), ("OLDPWD", False), ("MYSQL_PWD", True), ("DB_PASSWORD", True), ("GITHUB_TOKEN", True), ("WANDB_API_KEY", True),
     ("SSH_AUTH_SOCK", False), ("AWS_SHARED_CREDENTIALS_FILE", False), ("RAY_AUTH_TOKEN_PATH", False), ("SSL_CERT_DIR", False)],
)  # fmt: skip
def test_secret_key_names(key, secret):
    assert is_secret_key(key) is secret


def test_redact_keys_urls_and_values():
    env = {"HF_TOKEN": "hf_abcdefgh", "PATH": "/usr/bin", "TRIBUNAL_STORAGE_OPTIONS": json.dumps({"client_kwargs": {"aws_secret_access_key": "nested-secret"}})}
    record = {
        "config": {"model": "m", "max_tokens": 8, "storage_options": {"key": "AKIA1234", "secret": "s3cr3t!!", "endpoint_url": "http://u:pw@minio:9000/?a=b"}},
        "address": "ray://admin:hunter22@head:10001",
        "presigned": "https://bucket.s3.amazonaws.com/obj?X-Amz-Signature=deadbeef&X-Amz-Credential=AKIA",
        "log": "failed with token hf_abcdefgh and nested-secret",
        "counts": {"prompt_tokens": 12},
    }
    out = redact(record, env)
    text = json.dumps(out)
    for bad in ("AKIA1234", "s3cr3t!!", "hunter22", "admin:", "deadbeef", "hf_abcdefgh", "nested-secret", "pw@"):
        assert bad not in text, bad
    assert out["config"]["storage_options"]["secret"] == REDACTED
    assert out["config"]["storage_options"]["endpoint_url"] == "http://minio:9000/"
    assert out["address"] == "ray://head:10001"
    assert out["counts"] == {"prompt_tokens": 12} and out["config"]["max_tokens"] == 8
    assert scrub("see http://a:b@h/x?sig=1 now", env) == "see http://h/x now"
    assert scrub_url("s3://bucket/key") == "s3://bucket/key"


def test_directories_and_paths_are_not_secrets(tmp_path):
    cwd = str(tmp_path / "a-rather-long-working-directory")
    cert = tmp_path / "ca.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----")
    env = {"PWD": cwd, "OLDPWD": str(tmp_path), "HOME": "/home/someone", "PIP_CERT": str(cert),
           "SSH_AUTH_SOCK": "/tmp/ssh-XXXXabcd/agent.1234", "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
           "MYSQL_PWD": "hunter2hunter2"}  # fmt: skip
    assert secret_values(env) == ["wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "hunter2hunter2"]
    line = f"input not found: {cwd}/nosuch.parquet (cert {cert}); key wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY, hunter2hunter2"
    assert scrub(line, env) == f"input not found: {cwd}/nosuch.parquet (cert {cert}); key {REDACTED}, {REDACTED}"
    record = redact({"output": f"{cwd}/traj", "model": f"{cwd}/models/m", "secret": "x" * 12}, env)
    assert record == {"output": f"{cwd}/traj", "model": f"{cwd}/models/m", "secret": REDACTED}


def test_a_run_from_a_long_cwd_shows_its_real_paths(tmp_path):
    """The CLI as a user runs it from a shell (PWD set to a long directory): errors and the
    manifest name the real paths; a secret value in the same line is still scrubbed."""
    cwd = tmp_path / "my-project-with-a-long-name" / "experiments"
    cwd.mkdir(parents=True)
    (cwd / "rb.jsonl").write_text(json.dumps({"prompt": "2+2?", "chosen": "4", "rejected": "5", "id": 1}) + "\n")
    env = clean_env(PWD=str(cwd), OLDPWD=str(tmp_path), AWS_SECRET_ACCESS_KEY=SENTINELS["AWS_SECRET_ACCESS_KEY"])

    def tribunal(*args):
        return subprocess.run([sys.executable, "-m", "tribunal.jobs.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)

    r = tribunal("vote", "--input", "nosuch.parquet", "--output", "votes")
    assert r.returncode == 2 and r.stderr.strip() == f"tribunal vote: error: trajectories not found: {cwd}/nosuch.parquet", r.stderr
    r = tribunal("vote", "--input", f"{SENTINELS['AWS_SECRET_ACCESS_KEY']}.parquet", "--output", "votes")
    assert r.stderr.strip() == f"tribunal vote: error: trajectories not found: {cwd}/{REDACTED}.parquet", r.stderr
    r = tribunal("import", "--input", "rb.jsonl", "--output", "samples")
    assert r.returncode == 0, r.stderr
    assert REDACTED not in r.stderr and f"{cwd}/samples" in r.stderr
    manifest = json.loads((cwd / "samples" / "_manifest.json").read_text())
    assert manifest["output"] == f"{cwd}/samples" and REDACTED not in json.dumps(manifest)


def test_environment_is_an_allowlist():
    env = {"RAY_ADDRESS": "ray://u:p@head:10001", "AWS_REGION": "eu-west-1", "HF_TOKEN": "hf_xxxxxxxx", "HOME": "/root"}
    assert environment(env) == {"RAY_ADDRESS": "ray://head:10001", "AWS_REGION": "eu-west-1"}
    meta = {"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps({"runtime_env": {}, "metadata": {"job_submission_id": "label-1"}})}
    assert ray_submission_id(meta) == "label-1" and ray_submission_id({}) is None


def strings_in(path: Path) -> str:
    """Everything readable in a file: Parquet decoded (values and metadata), other files as bytes."""
    data = path.read_bytes()
    if data[:4] == b"PAR1":
        f = pq.ParquetFile(path)
        meta = f.schema_arrow.metadata or {}
        return json.dumps(f.read().to_pylist(), default=str) + repr(meta) + data.decode("latin-1")
    return data.decode("latin-1")


def test_sentinels_are_found_nowhere(s3_server, tiny_model, tmp_path):
    import s3fs

    raydir = tempfile.mkdtemp(prefix="trs", dir="/tmp")  # short: Ray's socket paths
    try:
        env = clean_env(
            **SENTINELS,
            AWS_ENDPOINT_URL=s3_server,
            AWS_DEFAULT_REGION="us-east-1",
            TRIBUNAL_STORAGE_OPTIONS=json.dumps({"token": STORAGE_SENTINEL}),
            RAY_TMPDIR=raydir,
        )
        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server}, key="k", secret="s")
        fs.mkdir("secrets-test")
        samples = write_samples(tmp_path / "in" / "samples.parquet", make_rows(3))
        cmd = [sys.executable, "-m", "tribunal.jobs.cli", "label", "--input", str(samples), "--output", "s3://secrets-test/out",
               "--model", tiny_model, "--k", "2", "--max-tokens", "8", "--batch-size", "2", "--num-cpus-per-actor", "0.5"]  # fmt: skip
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
        assert r.returncode == 0, r.stderr[-3000:]
        # Every object the job wrote, downloaded, plus its console output and Ray's session logs.
        local = tmp_path / "written"
        fs.invalidate_cache()
        fs.get("secrets-test/out", str(local), recursive=True)
        files = [p for p in local.rglob("*") if p.is_file()]
        assert any(p.name == "_manifest.json" for p in files) and any(p.suffix == ".parquet" for p in files)
        ray_logs = [p for p in Path(raydir).rglob("*") if p.is_file() and not p.is_socket()]
        assert ray_logs
        haystacks = {str(p): strings_in(p) for p in files + ray_logs}
        haystacks["stdout"], haystacks["stderr"] = r.stdout, r.stderr
        # The search works: things that are meant to be there are found the same way.
        ids = [row["id"] for row in make_rows(3)]
        assert all(any(i in h for n, h in haystacks.items() if n.endswith(".parquet")) for i in ids)
        assert any(str(samples) in h for name, h in haystacks.items() if name.endswith("_manifest.json"))
        for needle in [*SENTINELS.values(), STORAGE_SENTINEL]:
            found = [name for name, h in haystacks.items() if needle in h]
            assert not found, f"{needle} found in {found}"
        manifest = json.loads((local / "trajectories" / "_manifest.json").read_text())
        assert manifest["run"]["environment"]["AWS_ENDPOINT_URL"] == s3_server
        assert "HF_TOKEN" not in json.dumps(manifest["run"])
    finally:
        shutil.rmtree(raydir, ignore_errors=True)


def test_the_search_sees_inside_compressed_parquet(tmp_path):
    import pyarrow as pa

    from tribunal.cluster.storage import PARQUET_OPTIONS

    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"t": ["prefix " + SENTINELS["HF_TOKEN"] * 3]}), path, **PARQUET_OPTIONS)
    assert SENTINELS["HF_TOKEN"] in strings_in(path)


def test_an_endpoint_key_is_sent_and_found_nowhere_else(tmp_path):
    """--engine openai --api-key-env: the key goes to the endpoint as the Authorization header and
    nowhere else, even when the endpoint fails every request and the job stops on its retry budget
    (the error lines, the actor's traceback in Ray's logs, the output's records). The variable's
    name is not secret-looking, so no scrubbing by value can hide a leak."""
    from openai_proxy import FaultProxy

    secret = "sk-sentinel-endpoint-key-6d2e0b7a"
    raydir = tempfile.mkdtemp(prefix="trs", dir="/tmp")
    proxy = FaultProxy(upstream_port=None)  # lists one model, answers 503 to the rest
    try:
        env = clean_env(TRIBUNAL_LLM_CRED=secret, RAY_TMPDIR=raydir)
        samples = write_samples(tmp_path / "in" / "samples.parquet", make_rows(2))
        out = tmp_path / "out"
        cmd = [sys.executable, "-m", "tribunal.jobs.cli", "label", "--input", str(samples), "--output", str(out), "--engine", "openai",
               "--api", "chat", "--base-url", proxy.base_url, "--served-model", "m", "--api-key-env", "TRIBUNAL_LLM_CRED",
               "--k", "2", "--max-tokens", "8", "--batch-size", "2", "--num-cpus-per-actor", "0.5", "--max-retries", "1",
               "--retry-backoff-s", "0.05"]  # fmt: skip
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
        assert r.returncode == 2, r.stderr[-3000:]
        assert f"the endpoint http://127.0.0.1:{proxy.port}/v1/chat/completions failed a generation request 2 times" in r.stderr.splitlines()[-1]
        assert proxy.seen and all(h.get("authorization") == f"Bearer {secret}" for _, _, h in proxy.seen)
        files = [p for p in out.rglob("*") if p.is_file()]
        ray_logs = [p for p in Path(raydir).rglob("*") if p.is_file() and not p.is_socket()]
        assert any(p.name == "_run.json" for p in files) and ray_logs
        haystacks = {str(p): strings_in(p) for p in files + ray_logs}
        haystacks["stdout"], haystacks["stderr"] = r.stdout, r.stderr
        assert any("503" in h for n, h in haystacks.items() if n not in ("stdout", "stderr"))  # the search sees the actor's error
        found = [name for name, h in haystacks.items() if secret in h]
        assert not found, f"the key found in {found}"
    finally:
        proxy.close()
        shutil.rmtree(raydir, ignore_errors=True)
