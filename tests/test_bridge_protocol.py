"""The wire format on its own: validation, line splitting, responses (no sockets)."""

import json

import pytest

from mateperf.bridge.protocol import (
    MAX_BATCH_COMMANDS,
    AvatarState,
    LineBuffer,
    ProtocolError,
    decode_request,
    encode_request,
    greeting,
    response,
)


def line(obj) -> bytes:
    return json.dumps(obj).encode()


def test_desktop_mate_request_without_id_is_valid():
    req = decode_request(line({"command": "set_expression", "data": {"name": "joy", "value": 1}}))
    assert (req.id, req.command, req.data) == (None, "set_expression", {"name": "joy", "value": 1})


def test_id_and_missing_data():
    req = decode_request(line({"command": "reset_expressions", "id": "a-1"}))
    assert (req.id, req.data) == ("a-1", {})


@pytest.mark.parametrize(
    "obj, fragment",
    [
        ({"command": "dance"}, "unknown command 'dance'"),
        ({"command": 3}, "command: expected string"),
        ({"data": {}}, "command: expected string"),
        ({"command": "set_expression", "data": {"name": "a", "value": "1"}}, "expected number"),
        ({"command": "set_expression", "data": {"name": "a", "value": 1.5}}, "above 1"),
        ({"command": "set_expression", "data": {"name": "", "value": 1}}, "must not be empty"),
        ({"command": "set_expression", "data": {"value": 1}}, "name: missing"),
        ({"command": "set_auto_blink", "data": {"enabled": 1}}, "expected bool"),
        ({"command": "set_transition_speed", "data": {"speed": True}}, "expected number"),
        ({"command": "set_auto_head_movement", "data": []}, "data: expected object"),
        (
            {
                "command": "set_auto_head_movement",
                "data": {"enabled": True, "min_interval": 5, "max_interval": 1},
            },
            "min_interval is above max_interval",
        ),
        ({"command": "batch", "data": {"commands": []}}, "must not be empty"),
        ({"command": "batch", "data": {"commands": [{"command": "batch"}]}}, "do not nest"),
        ({"command": "batch", "data": {"commands": [{"command": "stats"}]}}, "cannot be batched"),
        (
            {"command": "batch", "data": {"commands": [{"command": "set_auto_blink"}]}},
            "batch.commands[0]: set_auto_blink.enabled: missing",
        ),
        ({"command": "stats", "id": 1.5}, "id: expected integer or string"),
        ([1, 2], "expected object"),
    ],
)
def test_validation_names_the_bad_field(obj, fragment):
    with pytest.raises(ProtocolError, match=None) as info:
        decode_request(line(obj))
    assert fragment in str(info.value)


def test_bad_fields_keep_the_request_id():
    with pytest.raises(ProtocolError) as info:
        decode_request(line({"command": "set_auto_blink", "id": 7, "data": {"enabled": "yes"}}))
    assert (info.value.request_id, info.value.command) == (7, "set_auto_blink")


def test_malformed_json_and_bad_utf8():
    for raw in (b'{"command": "stats"', b"\xff\xfe{}", b"not json"):
        with pytest.raises(ProtocolError, match="malformed JSON"):
            decode_request(raw)


def test_batch_size_limit():
    sub = {"command": "reset_expressions"}
    with pytest.raises(ProtocolError, match="more than"):
        decode_request(line({"command": "batch", "data": {"commands": [sub] * 1001}}))
    ok = decode_request(
        line({"command": "batch", "data": {"commands": [sub] * MAX_BATCH_COMMANDS}})
    )
    assert len(ok.data["commands"]) == MAX_BATCH_COMMANDS


def test_line_buffer_splits_across_chunks():
    buf = LineBuffer(100)
    assert buf.feed(b'{"a":') == []
    assert buf.feed(b'1}\n{"b":2}\n{"c"') == [b'{"a":1}', b'{"b":2}']
    assert buf.feed(b":3}\n") == [b'{"c":3}']


def test_line_buffer_reports_an_oversized_line_once_and_recovers():
    buf = LineBuffer(10)
    assert buf.feed(b"x" * 8) == []
    assert buf.feed(b"x" * 8) == [None]  # reported as soon as the limit is crossed
    assert buf.feed(b"x" * 50) == []
    assert buf.feed(b"xx\nok\n") == [b"ok"]
    assert buf.feed(b"y" * 11 + b"\nfine\n") == [None, b"fine"]


def test_legacy_response_has_only_desktop_mate_fields():
    legacy = response("set_expression", "success", "ok", 5, legacy=True, frame=3)
    assert set(legacy) == {"type", "command", "status", "message"}
    modern = response("set_expression", "success", "ok", 5, frame=3)
    assert modern["id"] == 5 and modern["frame"] == 3
    assert "protocol" not in greeting(legacy=True, peer="x")
    assert "protocol" in greeting(legacy=False, peer="x")


def test_encode_request_is_one_compact_line():
    raw = encode_request("set_auto_blink", {"enabled": True}, 9)
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1
    assert json.loads(raw) == {"command": "set_auto_blink", "data": {"enabled": True}, "id": 9}


def test_avatar_state_applies_every_command():
    avatar = AvatarState()
    avatar.apply("load_model", {"path": "m.vrm"})
    avatar.apply("set_expression", {"name": "joy", "value": 0.5})
    avatar.apply("set_transition_speed", {"speed": 3})
    avatar.apply("set_auto_blink", {"enabled": False})
    avatar.apply("set_auto_head_movement", {"enabled": True, "max_angle": 20})
    avatar.apply("echo", {"payload": "abc"})
    snap = avatar.snapshot()
    assert snap["model"] == "m.vrm" and snap["expressions"] == {"joy": 0.5}
    assert snap["transition_speed"] == 3 and snap["auto_blink"] is False
    assert snap["head_movement_enabled"] is True and snap["echo_bytes"] == 3
    avatar.apply("reset_expressions", {})
    avatar.apply("unload_model", {})
    assert avatar.snapshot()["model"] is None and avatar.commands_applied == 8
