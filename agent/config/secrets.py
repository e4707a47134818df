"""Secrets: read from a file or an environment variable, never written into the config.

A config file gets copied into tickets, chat and version control. A password inside it,
even inside a URL, leaks with it; so URLs with credentials are refused with a pointer to
the keys that keep the secret elsewhere (a mounted file, systemd ``LoadCredential=``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

_KEYWORD_PASSWORD = re.compile(r"(^|\s)password\s*=", re.IGNORECASE)


def read_secret(file: Path | None, env: str | None) -> str:
    """A secret from a file (stripped) or else an environment variable; raises OSError/KeyError."""
    if file is not None:
        return file.read_text(encoding="utf-8").strip()
    assert env is not None
    try:
        return os.environ[env]
    except KeyError:
        raise KeyError(f"environment variable {env} is not set") from None


def refuse_url_credentials(
    url: str, keys: str = "username + password_file/password_env", allow_user: bool = False
) -> str:
    """The URL unchanged, or a ValueError naming the keys to use instead.

    ``allow_user`` keeps a user name without a password (a libpq DSN's user is no secret);
    the error never repeats the URL: it holds the secret.
    """
    parts = urlsplit(url)
    if parts.password is not None or (parts.username is not None and not allow_user):
        scheme = f"{parts.scheme}://" if parts.scheme else ""
        host = parts.hostname or "host"
        raise ValueError(
            f"credentials in the url are refused ({scheme}***@{host}...): "
            f"give them as {keys}, so the file holds no secret"
        )
    if _KEYWORD_PASSWORD.search(url):
        raise ValueError(f"a password in the connection string is refused: use {keys}")
    return url
