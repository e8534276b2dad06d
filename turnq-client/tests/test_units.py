"""Pure functions: durations, the protocol's request shapes and error decoding, channel directory names."""

from __future__ import annotations

import pytest
from turnq.client import ErrorCode, parse_duration, parse_duration_ms, protocol
from turnq.client.durations import format_duration
from turnq.client.endpoints import Endpoints, split_urls
from turnq.client.local import channel_dir_name
from turnq.client.turn import describe_failure


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("60s", 60), ("5m", 300), ("1h30m", 5400), ("1.5s", 1.5), ("30", 30), (" 2M ", 120)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "5x", "-1s", "5 s", "1m-2s", "nan", "inf"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_duration_helpers() -> None:
    assert parse_duration_ms("60s") == 60_000
    assert [format_duration(x) for x in (0.5, 5, 90, 3600, 5400)] == ["500ms", "5s", "1m30s", "1h", "1h30m"]


def test_channel_names_are_escaped_as_one_path_segment() -> None:
    assert protocol.channel_path("a/b c?", "enqueue") == "/channels/a%2Fb%20c%3F/enqueue"
    assert protocol.enqueue("é/x", "c").path == "/channels/%C3%A9%2Fx/enqueue"


def test_error_decoding() -> None:
    err = protocol.error_from_response(409, b'{"code":"ALREADY_QUEUED","message":"twice"}')
    assert (err.code, err.message) == (ErrorCode.ALREADY_QUEUED, "twice")
    unknown = protocol.error_from_response(418, b'{"code":"TEAPOT","message":"short"}')
    assert unknown.code is ErrorCode.INTERNAL_ERROR and "TEAPOT" in unknown.message
    proxy = protocol.error_from_response(502, b"<html>Bad gateway</html>")
    assert proxy.code is ErrorCode.BACKEND_UNAVAILABLE and "502" in proxy.message


def test_request_bodies_leave_out_unset_fields() -> None:
    assert protocol.create_channel("c", lease_ms=5).json == {"name": "c", "leaseMs": 5}
    assert protocol.abort("c", "id").json == {"clientId": "id"}
    release = protocol.release("c", "id", "r", success=False, error="x")
    assert release.json == {"clientId": "id", "requestId": "r", "result": {"success": False, "error": "x"}}


def test_failure_text_fits_the_protocol() -> None:
    assert describe_failure(ValueError("a\nb\tc")) == "a b c"
    assert describe_failure(KeyboardInterrupt()) == "KeyboardInterrupt"
    assert len(describe_failure(RuntimeError("x" * 10_000))) == 4000


def test_channel_directories_are_safe_and_distinct() -> None:
    names = ["deploy/prod", "deploy-prod", "deploy prod", "../etc", "", "ü" * 300]
    dirs = [channel_dir_name(n) for n in names]
    assert len(set(dirs)) == len(dirs)
    for d in dirs:
        assert "/" not in d and not d.startswith(".") and len(d) < 100
    assert channel_dir_name("deploy/prod").startswith("deploy-prod-")


def test_url_lists_and_rotation() -> None:
    assert split_urls("a:1, http://b:2/ ,") == ["http://a:1", "http://b:2"]
    ring = Endpoints(["http://a", "http://b"])
    assert ring.failed("http://a") == "http://b"
    assert ring.failed("http://a") == "http://b"  # a stale failure does not move the ring again
    assert ring.failed("http://b") == "http://a"


def test_entry_point_registers_the_commands() -> None:
    import argparse

    from turnq.core.plugins import get_plugin_manager

    pm = get_plugin_manager()
    assert pm.get_plugin("client_cli") is not None
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    pm.get_plugin("client_cli").turnq_register_commands(subparsers=sub)
    for command in ("run", "channels", "create", "queue", "watch", "release"):
        assert command in sub.choices
    args = parser.parse_args(["run", "deploy", "--", "echo", "--", "--flag"])
    assert (args.channel, args.argv) == ("deploy", ["echo", "--", "--flag"])
