"""The password gate's hashes: salted scrypt, constant-time comparison, malformed hashes refused."""

from __future__ import annotations

import base64
import hmac
import subprocess
import sys

import pytest

from dallmi_core.app import auth
from dallmi_core.app.auth import configured_hash, hash_password, parse_hash, verify_password
from dallmi_core.errors import ConfigError


def test_hash_format_salt_and_verification():
    first, second = hash_password("correct horse"), hash_password("correct horse")
    kind, n, r, p, salt, key = first.split("$")
    assert (kind, int(n), int(r), int(p)) == ("scrypt", auth.N, auth.R, auth.P)
    assert len(base64.b64decode(salt)) == 16 and len(base64.b64decode(key)) == 32
    assert first != second  # a fresh salt every time
    assert verify_password("correct horse", first) and verify_password("correct horse", second)
    for wrong in ("correct horse ", "Correct horse", "", "x" * 1000):
        assert not verify_password(wrong, first)


def test_verification_compares_in_constant_time(monkeypatch):
    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    stored = hash_password("pw", n=2**4)
    assert verify_password("pw", stored) and not verify_password("pv", stored)
    assert len(calls) == 2 and all(isinstance(a, bytes) and len(a) == len(b) == 32 for a, b in calls)


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "md5$abc",
        "scrypt$16384$8$1$salt",
        "scrypt$x$8$1$c2FsdA==$a2V5a2V5a2V5a2V5a2V5a2V5",
        "scrypt$16384$8$1$not base64!$a2V5a2V5a2V5a2V5a2V5a2V5",
        "scrypt$1000$8$1$c2FsdA==$a2V5a2V5a2V5a2V5a2V5a2V5",  # n not a power of two
        f"scrypt${2**24}$8$1$c2FsdA==$a2V5a2V5a2V5a2V5a2V5a2V5",  # would cost 16 GiB per attempt
        "scrypt$16384$8$1$c2FsdA==$a2V5",  # a 3-byte key
    ],
)
def test_malformed_hashes_are_config_errors(stored):
    with pytest.raises(ConfigError, match="dallmi hash-password"):
        parse_hash(stored)
    with pytest.raises(ConfigError):
        verify_password("anything", stored)


def test_the_configured_hash_comes_from_the_environment_then_the_secrets():
    env_hash, secret_hash = hash_password("a", n=2**4), hash_password("b", n=2**4)
    assert configured_hash({}, {}) is None and configured_hash(None, {auth.HASH_ENV: "  "}) is None
    assert configured_hash({"password_hash": secret_hash}, {}) == secret_hash
    assert configured_hash({"password_hash": secret_hash}, {auth.HASH_ENV: env_hash}) == env_hash
    with pytest.raises(ConfigError):
        configured_hash({}, {auth.HASH_ENV: "plaintext-password"})  # fails closed, never open


def test_empty_passwords_cannot_be_hashed():
    with pytest.raises(ConfigError, match="empty"):
        hash_password("")


def test_cli_hash_password_reads_stdin_and_prints_a_verifiable_hash():
    cmd = [sys.executable, "-m", "dallmi_core.cli.main", "hash-password"]
    done = subprocess.run(cmd, input="s3cret pass\n", capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    stored = done.stdout.strip()
    assert verify_password("s3cret pass", stored) and not verify_password("s3cret pass\n", stored)
    assert auth.HASH_ENV in done.stderr and "s3cret" not in done.stdout + done.stderr
    empty = subprocess.run(cmd, input="\n", capture_output=True, text=True, timeout=120)
    assert empty.returncode == 2 and "empty" in empty.stderr and "Traceback" not in empty.stderr
