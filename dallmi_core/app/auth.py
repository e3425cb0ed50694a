"""The optional password gate of a shared server: salted scrypt hashes compared in constant time.

Only the hash is ever configured (env var DALLMI_PASSWORD_HASH, or `password_hash` in Streamlit's
secrets), so the password itself is stored nowhere. Format: `scrypt$n$r$p$salt_b64$hash_b64`
(standard library only). A malformed configured hash is a ConfigError: the app then shows that
error and nothing else (it fails closed, never open).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping

from dallmi_core.errors import ConfigError

HASH_ENV = "DALLMI_PASSWORD_HASH"
SECRET_KEY = "password_hash"
N, R, P = 2**14, 8, 1  # about 16 MiB and 50 ms per check: slow to guess, quick enough to log in
_MAX_N = 2**17  # a configured hash cannot make each login attempt take gigabytes


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, size: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=size, maxmem=256 * n * r * p)


def hash_password(password: str, *, n: int = N, r: int = R, p: int = P) -> str:
    """A new random salt each call, so equal passwords give different hashes."""
    if not password:
        raise ConfigError("the password is empty. Choose a non-empty password.")
    salt = secrets.token_bytes(16)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(_scrypt(password, salt, n, r, p, 32))}"


def parse_hash(stored: str) -> tuple[int, int, int, bytes, bytes]:
    """(n, r, p, salt, key) of a stored hash; a ConfigError says what is wrong with it."""
    parts = str(stored).strip().split("$")
    fix = "Make a new one with `dallmi hash-password`."
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ConfigError(f"the password hash is not in the form scrypt$n$r$p$salt$hash. {fix}")
    try:
        n, r, p = (int(x) for x in parts[1:4])
        salt, key = base64.b64decode(parts[4], validate=True), base64.b64decode(parts[5], validate=True)
    except (ValueError, binascii.Error) as exc:
        raise ConfigError(f"the password hash cannot be read ({exc}). {fix}") from exc
    if not (1 < n <= _MAX_N and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16 and salt and len(key) >= 16):
        raise ConfigError(f"the password hash has unusable scrypt settings (n={n}, r={r}, p={p}). {fix}")
    return n, r, p, salt, key


def verify_password(password: str, stored: str) -> bool:
    """True when `password` matches; constant-time comparison of the derived keys."""
    n, r, p, salt, key = parse_hash(stored)
    if not isinstance(password, str) or not password:
        return False
    return hmac.compare_digest(_scrypt(password, salt, n, r, p, len(key)), key)


def configured_hash(secrets_: Mapping | None = None, environ: Mapping[str, str] = os.environ) -> str | None:
    """The hash the deployment configured ($DALLMI_PASSWORD_HASH first, then secrets["password_hash"]),
    checked for form; None when no password is configured (a single-user machine)."""
    stored = (environ.get(HASH_ENV) or "").strip() or str((secrets_ or {}).get(SECRET_KEY) or "").strip()
    if not stored:
        return None
    parse_hash(stored)
    return stored
