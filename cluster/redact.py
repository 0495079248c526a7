"""Keep secrets out of everything tribunal writes: manifests, run records, logs, progress lines.

Three layers, each cheap:

- ``redact(obj)``: a copy of a JSON-like value where every value whose *key* names a secret
  (``secret``, ``token``, ``password``, ``key``, ``credential``, ``signature``, ``HF_TOKEN``,
  ``AWS_SECRET_ACCESS_KEY``, ...) is replaced by ``REDACTED``, and every URL in a string loses
  its user info and its query string (pre-signed URLs carry their signature there);
- ``scrub(text)``: the same URL rule for free text, plus the literal values of the secret-named
  environment variables of this process (a credential that slipped into an error message is
  caught by value, not only by name);
- ``environment()``: the few environment facts a run records, through an allowlist (never a
  dump of ``os.environ``).

Key names are split into words (``max_tokens`` is ``max`` + ``tokens``: not a secret;
``session_token`` is ``session`` + ``token``: a secret), so counters and settings survive.

Secrets are credentials, never places: ``PWD``/``OLDPWD`` (the shell's directories, which the
word ``pwd`` would otherwise catch), names that say they hold a location (``*_FILE``, ``*_PATH``,
``*_DIR``, ``SSH_AUTH_SOCK``: where a secret is, not the secret) and values that are paths on
this machine (``PIP_CERT=/etc/ssl/ca.pem``) are kept: scrubbed by value, such a path would turn
every path under it into ``<redacted>`` in every error and manifest.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

REDACTED = "<redacted>"

SECRET_WORDS = frozenset(
    {
        "secret", "secrets", "token", "password", "passwd", "passphrase", "pwd", "key", "apikey",
        "credential", "credentials", "signature", "sig", "auth", "authorization", "cookie",
        "private", "privatekey", "sas", "bearer", "jwt", "dsn", "cert", "pem",
    }
)  # fmt: skip

_URL = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+)")
_WORDS = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")

ENV_ALLOWLIST = (
    "RAY_ADDRESS",  # where the driver attached (scrubbed as a URL)
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "HF_HUB_OFFLINE",
    "CUDA_VISIBLE_DEVICES",
)
"""Environment variables a run may record (values scrubbed). Nothing else of the environment is
written anywhere."""

MIN_SECRET_LEN = 8  # shorter values ("true", "testing") would scrub ordinary text by accident; real keys are longer

NOT_SECRETS = frozenset({"pwd", "oldpwd"})
"""Names that look like secrets but are not: the shell's current and previous directory (a real
password may still be called ``MYSQL_PWD`` or ``DB_PWD``)."""

LOCATION_WORDS = frozenset({"path", "paths", "file", "filename", "filepath", "dir", "dirs", "directory", "sock", "socket", "home"})
"""A name with one of these words holds where something is (``AWS_SHARED_CREDENTIALS_FILE``,
``RAY_AUTH_TOKEN_PATH``, ``SSH_AUTH_SOCK``), not a secret."""


def is_secret_key(name: Any) -> bool:
    """Whether a key (config field, storage option, environment variable) names a secret."""
    if str(name).lower() in NOT_SECRETS:
        return False
    words = [w.lower() for w in _WORDS.findall(str(name))]
    if any(w in LOCATION_WORDS for w in words):
        return False
    if any(w in SECRET_WORDS for w in words):
        return True
    joined = "".join(words)
    return any(s in joined for s in ("secretaccess", "accesskey", "sessiontoken", "apikey", "hftoken", "privatekey"))


def scrub_url(url: str) -> str:
    """``url`` without user info, query string or fragment; other strings unchanged."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if not parts.scheme or not parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def is_local_path(value: str) -> bool:
    """Whether ``value`` is an absolute path that exists here (a certificate bundle, a key file's
    location): a place, shown as it is, never a credential."""
    if not value.startswith(("/", "~")):
        return False
    try:
        return os.path.exists(os.path.expanduser(value))
    except (OSError, ValueError):  # a NUL byte, a name too long
        return False


def secret_values(environ: dict[str, str] | None = None) -> list[str]:
    """Values of the secret-named variables of the environment (and of TRIBUNAL_STORAGE_OPTIONS),
    longest first, so that ``scrub`` can remove them by value."""
    env = os.environ if environ is None else environ
    values = {v for k, v in env.items() if is_secret_key(k) and len(v) >= MIN_SECRET_LEN and not is_local_path(v)}
    extra = env.get("TRIBUNAL_STORAGE_OPTIONS")
    if extra:
        try:
            values.update(_secret_leaves(json.loads(extra)))
        except ValueError:
            values.add(extra)  # unparseable: treat the whole string as sensitive
    return sorted(values, key=len, reverse=True)


def _secret_leaves(obj: Any, secret: bool = False) -> set[str]:
    out: set[str] = set()
    if isinstance(obj, dict):
        for k, v in obj.items():
            out |= _secret_leaves(v, secret or is_secret_key(k))
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            out |= _secret_leaves(v, secret)
    elif secret and obj is not None and len(str(obj)) >= MIN_SECRET_LEN:
        out.add(str(obj))
    return out


def scrub(text: str, environ: dict[str, str] | None = None) -> str:
    """Free text with URLs scrubbed and the environment's secret values replaced."""
    text = _URL.sub(lambda m: scrub_url(m.group(1)), text)
    for value in secret_values(environ):
        text = text.replace(value, REDACTED)
    return text


def redact(obj: Any, environ: dict[str, str] | None = None) -> Any:
    """A copy of a JSON-like value safe to write: secret-named keys redacted, strings scrubbed."""
    values = secret_values(environ)

    def walk(o: Any) -> Any:
        if isinstance(o, dict):
            return {k: (REDACTED if is_secret_key(k) and o[k] not in (None, "", {}, []) else walk(v)) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [walk(v) for v in o]
        if isinstance(o, str):
            s = _URL.sub(lambda m: scrub_url(m.group(1)), o)
            for value in values:
                s = s.replace(value, REDACTED)
            return s
        return o

    return walk(obj)


def environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The allowlisted environment facts of this run, scrubbed."""
    env = os.environ if environ is None else environ
    return {k: scrub(env[k], env) for k in ENV_ALLOWLIST if env.get(k)}


def ray_submission_id(environ: dict[str, str] | None = None) -> str | None:
    """The ``ray job submit --submission-id`` of the job this driver runs in, if any."""
    env = os.environ if environ is None else environ
    raw = env.get("RAY_JOB_CONFIG_JSON_ENV_VAR")  # set by Ray's job supervisor for the entrypoint
    if not raw:
        return None
    try:
        return (json.loads(raw).get("metadata") or {}).get("job_submission_id")
    except (ValueError, AttributeError):
        return None
