"""``max_content_bytes`` counts bytes (UTF-8, as stored), not characters: with CJK (3 bytes) and emoji (4 bytes),
a field of exactly the bound is stored whole, one byte more becomes the truncation marker, and a field whose
characters fit but whose bytes do not (2,000 CJK characters: 6,002 bytes as a JSON string) is truncated; the
preview is a prefix of the field, cut on a character boundary, within the bound."""

from __future__ import annotations

import json

import pytest
from helpers import traces_in
from hypothesis import example, given
from hypothesis import strategies as st
from spanline.pipeline import convert

import spanline

LIMIT = 4096
CJK, EMOJI = "漢", "😀"


def _stored_field(span, key: str) -> str:
    return span.to_dict()["attributes"][key]


def _assert_marker(field: str, original: str, limit: int) -> None:
    marker = json.loads(field)
    assert marker["__spanline_truncated__"] is True
    assert marker["original_bytes"] == len(original.encode())
    preview = marker["preview"]
    assert original.startswith(preview), "the preview is a prefix, no character split or replaced"
    # Cut on a character boundary: at most one character's bytes (3 or 4) short of the bound, never over.
    assert limit - 4 < len(preview.encode()) <= limit, len(preview.encode())


@given(text=st.text(alphabet=st.sampled_from(["a", "é", CJK, EMOJI, "\n", '"']), min_size=20, max_size=200),
       limit=st.integers(64, 160))
@example(text=CJK * 30, limit=64)  # 30 characters, 90 bytes
def test_bounded_compares_bytes(text, limit):
    out = convert.bounded(text, limit)
    if len(text.encode()) <= limit:
        assert out == text
    else:
        _assert_marker(out, text, limit)


def _user_span_fields(experiment: str, payload: str) -> tuple[str, str]:
    @spanline.trace(name="echo")
    def echo(text):
        return text

    assert echo(payload) == payload
    assert spanline.flush(60)
    (trace,) = traces_in(experiment)
    (span,) = trace.data.spans
    return _stored_field(span, "mlflow.spanInputs"), _stored_field(span, "mlflow.spanOutputs")


# The output field is the payload as a JSON string: 2 bytes of quotes around its UTF-8 bytes.
def _of_output_bytes(n: int, char: str) -> str:
    body = n - 2
    count, rest = divmod(body, len(char.encode()))
    return char * count + "a" * rest


@pytest.mark.parametrize("char", [CJK, EMOJI])
@pytest.mark.parametrize("delta", [-1, 0, 1])
def test_a_field_at_the_bound_is_whole_and_one_byte_over_is_truncated(traced, restore_options, char, delta):
    spanline.configure(max_content_bytes=LIMIT)
    payload = _of_output_bytes(LIMIT + delta, char)
    assert len(payload) < LIMIT // 2, "far fewer characters than bytes"
    inputs, outputs = _user_span_fields(traced, payload)
    if delta <= 0:
        assert len(outputs.encode()) == LIMIT + delta
        assert json.loads(outputs) == payload
    else:
        _assert_marker(outputs, json.dumps(payload, ensure_ascii=False), LIMIT)
    # The inputs field ({"text": ...}) is 10 bytes longer: over the bound in all three cases.
    _assert_marker(inputs, json.dumps({"text": payload}, ensure_ascii=False), LIMIT)


def test_two_thousand_cjk_characters_are_six_thousand_bytes_over_a_4096_byte_bound(traced, restore_options):
    spanline.configure(max_content_bytes=LIMIT)
    payload = CJK * 2000
    _, outputs = _user_span_fields(traced, payload)
    marker = json.loads(outputs)
    assert marker["original_bytes"] == 6002
    _assert_marker(outputs, json.dumps(payload, ensure_ascii=False), LIMIT)


def test_an_sdk_calls_multibyte_prompt_is_bounded_in_bytes(traced, fake, restore_options):
    spanline.configure(max_content_bytes=LIMIT)
    prompt = EMOJI * 1100  # 4,400 bytes in 1,100 characters
    fake.client().messages.create(model="claude-fake-1", max_tokens=8, messages=[{"role": "user", "content": prompt}])
    assert spanline.flush(60)
    (trace,) = traces_in(traced)
    field = _stored_field(trace.data.spans[0], "mlflow.spanInputs")
    marker = json.loads(field)
    assert marker["__spanline_truncated__"] is True and marker["original_bytes"] > LIMIT
    assert LIMIT - 4 < len(marker["preview"].encode()) <= LIMIT
