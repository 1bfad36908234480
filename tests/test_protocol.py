"""The wire format: every message round-trips; anything else is refused with a reason."""

from __future__ import annotations

import json
import typing

import pytest

from engine import protocol as p

STATS = p.GenerationStats(0.1, 1.0, 10, 10.0, 5, 2.0, 2.5, 2, 20, 4)
SAMPLES = [
    p.Hello("r1", p.PROTOCOL_VERSION, "canvas-chat"),
    p.LoadModel("r2", "google/diffusiongemma-26B-A4B-it", "cuda", "nf4", False, "main"),
    p.Generate("r3", [p.ChatMessage("user", "Hi ✨"), p.ChatMessage("assistant", "Hello")], "c1", "Be brief",
               p.GenerationSettings(128, 24, 0.2, 0.4, 0.8, 7)),
    p.RewriteSpan("r8", [p.ChatMessage("user", "Capital?")], [5, 6, 7, 1], 1, 3, "Shorter", "Be brief",
                  p.GenerationSettings(None, 8, 0.1, 0.4, 0.8, 3)),
    p.Cancel("r4", "r3"),
    p.Unload("r5"),
    p.Shutdown("r6"),
    p.ProbeHardware("r7"),
    p.Ready("r1", 1, "0.1.0", 1234),
    p.LoadProgress("r2", "weights", "Loading", 0.5, 10, 20, 1, 2),
    p.ModelLoaded("r2", "m", "/m", "cpu", "none", 16, 1000, 1.5, True),
    p.Draft("r3", 0, 1, 8, "Hel", ["Hel", "lo"], [True, False], [0, 3]),
    p.CanvasCommitted("r3", 0, "Hello", "Hello", 2, 4),
    p.Done("r3", "eos", "Hello", [5, 6, 1], STATS),
    p.SpanDraft("r8", 0, 2, 8, 1, 3, "Paris", [" Par", "is"], [True, False], [0, 2]),
    p.SpanRewritten("r8", "rewritten", "It is Paris", [5, 6, 7, 1], 1, 3, [2, 11], [[0, 2]], STATS),
    p.Error("r3", "out_of_memory", "The GPU ran out of memory.", True, "trace"),
    p.HardwareReport("r7", {"gpus": []}),
    p.Unloaded("r5"),
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: m.TYPE)
def test_every_message_round_trips_through_one_json_line(message):
    line = p.encode(message)
    assert "\n" not in line
    assert json.loads(line)["type"] == message.TYPE
    assert p.decode(line) == message


def test_requests_and_events_are_told_apart():
    with pytest.raises(p.ProtocolError, match="unknown message type 'ready'"):
        p.decode(p.encode(next(m for m in SAMPLES if isinstance(m, p.Ready))), p.REQUEST_TYPES)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("{", "not JSON"),
        ('"hello"', "JSON object"),
        ('{"request_id": "x"}', "unknown message type None"),
        ('{"type": "hello", "request_id": "x"}', "missing field(s) protocol_version"),
        ('{"type": "hello", "request_id": "x", "protocol_version": "1"}', "expected an integer"),
        ('{"type": "hello", "request_id": "x", "protocol_version": true}', "expected an integer"),
        ('{"type": "cancel", "request_id": 5, "target_request_id": "y"}', "expected a string"),
        ('{"type": "load_model", "request_id": "x", "model": "m", "device": "tpu"}', "is not one of"),
    ],
)
def test_malformed_lines_are_refused_with_a_reason(line, reason):
    with pytest.raises(p.ProtocolError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        p.decode(line)


def test_unknown_fields_from_a_newer_minor_revision_are_ignored():
    line = '{"type": "unload", "request_id": "x", "added_later": 1}'
    assert p.decode(line) == p.Unload("x")


def test_request_id_is_recovered_from_a_bad_line_when_possible():
    assert p.request_id_of('{"type": "nope", "request_id": "abc"}') == "abc"
    assert p.request_id_of("garbage") == ""


def test_settings_problems_are_plain_sentences():
    assert p.GenerationSettings().problems() == []
    problems = p.GenerationSettings(max_new_tokens=0, t_min=0.8, t_max=0.4).problems()
    assert problems == [
        "max new tokens must be a whole number from 1 to 131,072 (got 0)",
    ]
    assert p.GenerationSettings(t_min=0.8, t_max=0.4).problems() == [
        "t_max must be greater than t_min (got t_min=0.8, t_max=0.4)",
    ]


def test_protocol_reference_names_every_message_and_field():
    from tests.conftest import REPO_ROOT
    import dataclasses

    reference = (REPO_ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    for type_tag, cls in p.MESSAGE_TYPES.items():
        assert f"`{type_tag}`" in reference, f"docs/protocol.md does not describe {type_tag}"
        for field in dataclasses.fields(cls):
            if field.name != "request_id":
                assert f"`{field.name}`" in reference, f"docs/protocol.md misses {type_tag}.{field.name}"


def _codes_passed_to(names: set[str], code_position: int, folders: tuple[str, ...]) -> dict[str, str]:
    """{code: where} for every literal code given to a call of one of `names` (by position or code=)."""
    import ast

    from tests.conftest import REPO_ROOT

    found = {}
    for folder in folders:
        for path in (REPO_ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not isinstance(node, ast.Call):
                    continue
                callee = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if callee not in names:
                    continue
                argument = node.args[code_position] if len(node.args) > code_position else None
                argument = next((k.value for k in node.keywords if k.arg == "code"), argument)
                if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                    found[argument.value] = f"{path.relative_to(REPO_ROOT)}:{node.lineno}"
    return found


def test_every_error_code_the_engine_and_the_gui_send_is_one_of_the_protocols():
    known = set(typing.get_args(p.ErrorCode))
    used = {**_codes_passed_to({"EngineError"}, 0, ("engine", "app")), **_codes_passed_to({"Error"}, 1, ("engine", "app"))}
    assert used, "the scan found no error codes at all"
    unknown = {code: where for code, where in used.items() if code not in known}
    assert not unknown, f"add these to engine.protocol.ErrorCode: {unknown}"
    assert p.MODEL_SETUP_ERROR_CODES <= p.MODEL_LOAD_ERROR_CODES <= known


def test_the_error_codes_docs_protocol_lists_are_the_protocols():
    # The GUI refuses an error event whose code it does not know, so a code the worker sends
    # (however it builds it) must be listed in both places.
    import re

    from tests.conftest import REPO_ROOT

    text = (REPO_ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    listed = text.split("Error codes:", 1)[1].split("\n\n", 1)[0]
    documented = set(re.findall(r"`([a-z_]+)`", listed))
    assert documented == set(typing.get_args(p.ErrorCode)) - {"engine_stopped"}


def test_every_download_error_code_is_one_of_the_download_events():
    from app.setup.download_events import DownloadErrorCode

    known = set(typing.get_args(DownloadErrorCode))
    used = _codes_passed_to({"DownloadError", "DownloadFailed"}, 0, ("app",))
    assert used
    unknown = {code: where for code, where in used.items() if code not in known}
    assert not unknown, f"add these to app.setup.download_events.DownloadErrorCode: {unknown}"


# ---------------------------------------------------------------------------- v4: image parts


def test_a_text_only_message_stays_one_string_on_the_wire():
    line = p.encode(p.Generate("g1", [p.ChatMessage("user", "Hello")]))
    assert '"messages":[{"role":"user","content":"Hello"}]' in line


def test_image_parts_round_trip_and_keep_their_order():
    message = p.ChatMessage(
        "user", [p.TextPart("Compare"), p.ImagePart("/data/images/c/1.png", "image/png"), p.TextPart("with this")]
    )
    decoded = p.decode(p.encode(p.Generate("g2", [message])))
    assert decoded.messages == [message]
    assert decoded.messages[0].text == "Compare\n\nwith this"
    assert [part.path for part in decoded.messages[0].images] == ["/data/images/c/1.png"]


def test_a_v3_line_with_string_content_still_decodes():
    line = '{"type":"generate","request_id":"g3","messages":[{"role":"user","content":"Hi"}]}'
    assert p.decode(line).messages[0].content == "Hi"


def test_an_unknown_content_part_is_refused():
    line = '{"type":"generate","request_id":"g4","messages":[{"role":"user","content":[{"type":"audio","data":"x"}]}]}'
    with pytest.raises(p.ProtocolError, match="matches none"):
        p.decode(line)
