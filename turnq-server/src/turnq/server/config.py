"""Server settings from command-line flags, environment variables and ``turnq.toml``, in that precedence."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from turnq.core import backend_schemes

from .auth import ApiKey, Role

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 3000
DEFAULT_MAX_BODY_BYTES = 64 * 1024
DEFAULT_KEEPALIVE_S = 15.0
DEFAULT_POSITION_REFRESH_S = 2.0


class ConfigError(ValueError):
    """A setting that cannot work; ``turnq serve`` prints it and exits."""


def default_database_path() -> Path:
    """Where ``turnq serve`` keeps its SQLite file when no database URL is given."""
    base = os.environ.get("TURNQ_DATA_DIR") or os.path.join(
        os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share"), "turnq"
    )
    return Path(base) / "turnq.db"


def default_database_url() -> str:
    if "sqlite" in backend_schemes():
        return f"sqlite:///{default_database_path()}"
    return "memory://"


@dataclass(slots=True)
class ServerConfig:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    database_url: str = ""
    keys: list[ApiKey] = field(default_factory=list)
    insecure_no_auth: bool = False
    channel_defaults: dict[str, Any] = field(default_factory=dict)
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    keepalive_s: float = DEFAULT_KEEPALIVE_S
    position_refresh_s: float = DEFAULT_POSITION_REFRESH_S
    access_log: bool = False
    log_level: str = "INFO"

    def check(self) -> None:
        if not self.keys and not self.insecure_no_auth:
            raise ConfigError(
                "no API key configured: pass --api-key KEY (or set TURNQ_API_KEY, or keys in turnq.toml); "
                "to run without authentication on a trusted network, pass --insecure-no-auth"
            )
        if not self.database_url:
            self.database_url = default_database_url()


_DEFAULT_KEYS = {
    "lease_ms": "leaseMs",
    "max_depth": "maxDepth",
    "max_wait_ms": "maxWaitMs",
    "grace_ms": "graceMs",
}


def load_toml(path: str | Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {str(path)!r} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from exc


def keys_from_toml(entries: Any) -> list[ApiKey]:
    if not isinstance(entries, list):
        raise ConfigError("'keys' in the config file must be an array of tables ([[keys]])")
    keys = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ConfigError(f"keys[{i}] must be a table")
        secret = entry.get("key")
        if secret is None and "key_env" in entry:
            secret = os.environ.get(str(entry["key_env"]))
            if not secret:
                raise ConfigError(f"keys[{i}]: environment variable {entry['key_env']!r} is not set")
        if not isinstance(secret, str) or not secret:
            raise ConfigError(f"keys[{i}] needs a non-empty 'key' (or 'key_env')")
        try:
            role = Role(entry.get("role", "admin"))
        except ValueError as exc:
            raise ConfigError(f"keys[{i}].role must be 'admin' or 'client'") from exc
        channels = entry.get("channels", [])
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            raise ConfigError(f"keys[{i}].channels must be a list of channel-name patterns")
        keys.append(ApiKey(secret, role, tuple(channels), str(entry.get("name", f"keys[{i}]"))))
    return keys


def channel_defaults_from_toml(table: Any) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError("[channel_defaults] must be a table")
    out = {}
    for key, value in table.items():
        if key not in _DEFAULT_KEYS:
            raise ConfigError(
                f"[channel_defaults] has unknown setting {key!r}; known: {', '.join(_DEFAULT_KEYS)}"
            )
        out[_DEFAULT_KEYS[key]] = value
    return out


def build_config(
    *,
    config_file: str | None,
    host: str | None,
    port: int | None,
    api_keys: list[str] | None,
    database_url: str | None,
    insecure_no_auth: bool,
    access_log: bool | None = None,
    log_level: str | None = None,
    environ: dict[str, str] | None = None,
) -> ServerConfig:
    """Flags win over environment variables, which win over the config file."""
    env = os.environ if environ is None else environ
    file: dict[str, Any] = load_toml(config_file) if config_file else {}
    cfg = ServerConfig()
    cfg.host = host or str(file.get("host", DEFAULT_HOST))
    try:
        cfg.port = int(port if port is not None else file.get("port", DEFAULT_PORT))
    except (TypeError, ValueError) as exc:
        raise ConfigError("port must be an integer") from exc
    cfg.database_url = database_url or env.get("TURNQ_DATABASE_URL") or str(file.get("database_url", ""))
    cfg.keys = keys_from_toml(file.get("keys", []))
    flag_keys = list(api_keys or [])
    if not flag_keys and env.get("TURNQ_API_KEY"):
        flag_keys = [k for k in env["TURNQ_API_KEY"].split(",") if k]
    cfg.keys.extend(ApiKey(k, Role.ADMIN, (), f"flag[{i}]") for i, k in enumerate(flag_keys))
    cfg.insecure_no_auth = insecure_no_auth or bool(file.get("insecure_no_auth", False))
    cfg.channel_defaults = channel_defaults_from_toml(file.get("channel_defaults", {}))
    cfg.max_body_bytes = int(file.get("max_body_bytes", DEFAULT_MAX_BODY_BYTES))
    cfg.keepalive_s = float(file.get("keepalive_seconds", DEFAULT_KEEPALIVE_S))
    cfg.position_refresh_s = float(file.get("position_refresh_seconds", DEFAULT_POSITION_REFRESH_S))
    cfg.access_log = bool(file.get("access_log", False)) if access_log is None else access_log
    cfg.log_level = (log_level or str(file.get("log_level", "INFO"))).upper()
    cfg.check()
    return cfg
