"""The list of server addresses a client may use, and which one it is using now.

Several replicas of ``turnq serve`` can front one database. A client keeps going on its current server and moves
to the next one only when that one refuses a connection or drops a stream, so all of a client's requests
normally land on one replica while any replica can take over.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

URL_ENV = "TURNQ_URL"
KEY_ENV = "TURNQ_API_KEY"


def split_urls(urls: str | Sequence[str] | None) -> list[str]:
    """Server URLs from a string (comma-separated allowed) or a list, without trailing slashes."""
    if urls is None:
        return []
    items = urls.split(",") if isinstance(urls, str) else list(urls)
    out = []
    for item in items:
        url = item.strip().rstrip("/")
        if not url:
            continue
        if "://" not in url:
            url = "http://" + url
        out.append(url)
    return out


def urls_from_env(urls: str | Sequence[str] | None) -> list[str]:
    """The given URLs, else ``TURNQ_URL``."""
    found = split_urls(urls)
    return found if found else split_urls(os.environ.get(URL_ENV))


def key_from_env(api_key: str | None) -> str | None:
    """The given key, else ``TURNQ_API_KEY``; an empty value counts as none."""
    key = api_key if api_key is not None else os.environ.get(KEY_ENV)
    return key or None


class Endpoints:
    """A ring of server URLs with a current position, safe to share between threads and tasks."""

    def __init__(self, urls: str | Sequence[str]) -> None:
        self.urls = split_urls(urls)
        if not self.urls:
            raise ValueError("at least one server URL is needed")
        self._index = 0
        self._lock = threading.Lock()

    @property
    def current(self) -> str:
        return self.urls[self._index]

    def failed(self, url: str) -> str:
        """Move past ``url`` if it is still the current one; returns the URL to use next.

        Comparing first means many requests failing on the same server at once advance the ring only once.
        """
        with self._lock:
            if self.urls[self._index] == url:
                self._index = (self._index + 1) % len(self.urls)
            return self.urls[self._index]

    def __len__(self) -> int:
        return len(self.urls)
