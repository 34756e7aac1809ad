"""Hugging Face hub names: tell them from local paths, and fail in seconds with one line when offline.

Everything runs offline by default; a hub id (``org/name``) is only fetched when the user names one.
Before fetching, :func:`require_hub` checks ``HF_HUB_OFFLINE`` and opens one TCP connection to the hub
(or to the https proxy) with a short timeout, so an offline machine gets one line at once instead of
transformers' or datasets' retries (about 40 s for a dataset).
"""

from __future__ import annotations

import os
import re
import socket
from urllib.parse import urlparse

from softpick.errors import UserError

CONNECT_TIMEOUT_S = 3.0
"""Seconds the connectivity check waits for the TCP handshake."""

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def looks_like_repo_id(name: str) -> bool:
    """``org/name`` or ``name`` (hub syntax) that is not an existing path and does not look like a file path."""
    if os.path.exists(name) or name.startswith((".", "/", "~")) or name.endswith((".json", ".toml")):
        return False
    return bool(_REPO_ID.match(name)) and ".." not in name


def _endpoint() -> tuple[str, int]:
    """(host, port) the check connects to: the https proxy if one is set, else HF_ENDPOINT's host."""
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlparse(proxy or os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)


def offline_reason() -> str | None:
    """Why the hub cannot be used right now (one clause), or None when a connection opens."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    host, port = _endpoint()
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        return f"{host}:{port} cannot be reached ({err.__class__.__name__})"
    return None


def require_hub(flag: str, name: str) -> None:
    """Raise UserError naming ``flag`` and ``name`` when the hub is unusable (offline, or HF_HUB_OFFLINE)."""
    reason = offline_reason()
    if reason is not None:
        raise UserError(f"{flag} {name!r} is not a local path and names a hub repository, but {reason}; "
                        "give a local folder, or connect to the network.")


def hub_error_line(flag: str, name: str, error: BaseException) -> str:
    """One line for a failed hub download (not found, gated, no such file)."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return f"{flag} {name!r}: cannot load it from the hub: {first[:200]}"


__all__ = ["looks_like_repo_id", "offline_reason", "require_hub"]
