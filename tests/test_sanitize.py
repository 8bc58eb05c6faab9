"""The bulk path's screened ``sanitize_attributes`` (pipeline/sanitize.py) returns what MLflow's returns.

MLflow's function decides, per span attribute, whether a value was JSON-encoded twice and strips one layer;
the writer's translation of every span runs it. The screened one skips parsing where the answer is known:
it must give MLflow's answer for every input MLflow's accepts, key order included.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spanline.pipeline import bulkstore, sanitize

# Restates one MLflow version's function: every matrix session checks it. MLflow 3.18 no longer runs
# sanitize_attributes when it stores a span (only on spans received over OTLP), so there is nothing to screen.
pytestmark = [
    pytest.mark.compat,
    pytest.mark.skipif(sanitize._original is None,
                       reason="this MLflow's translation runs no sanitize_attributes when storing (3.18+)"),
]

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_padding = st.sampled_from(["", " ", "\n\t ", "\r"])


@st.composite
def _value(draw: st.DrawFn) -> object:
    """A span attribute as spanline, MLflow or an OTLP sender leaves it: JSON once or twice, padded JSON,
    plain text, numbers as text, or no str at all."""
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return json.dumps(draw(_json))
    if kind == 1:  # encoded twice, as a span read back from OTLP leaves a value
        return json.dumps(json.dumps(draw(_json)))
    if kind == 2:
        return draw(_padding) + json.dumps(draw(_json)) + draw(_padding)
    if kind == 3:
        return json.dumps(draw(_padding) + draw(st.sampled_from(["", "-", "1", "tru", "{", '"x"', "[1]", "9e9"]))
                          + draw(st.text(max_size=6)))
    if kind == 4:
        return draw(st.text(max_size=20))
    return draw(st.none() | st.booleans() | st.integers() | st.floats() | st.binary(max_size=8)
                | st.lists(st.integers(), max_size=3))


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.text(max_size=12), _value(), max_size=8))
def test_screened_sanitize_equals_mlflows(attributes: dict[str, object]) -> None:
    try:
        expected = sanitize._original(dict(attributes))
    except Exception as exc:  # e.g. bytes that are not UTF-8: MLflow's raises, and so must the screened one
        with pytest.raises(type(exc)):
            sanitize.screened(dict(attributes))
        return
    got = sanitize.screened(dict(attributes))
    assert got == expected
    assert list(got) == list(expected)  # MLflow's key order: the stored span's JSON keeps it


def test_a_value_encoded_twice_is_unwrapped_and_inputs_are_kept() -> None:
    inputs = json.dumps({"messages": [{"role": "user", "content": "héllo"}]})
    twice = json.dumps(json.dumps({"a": 1}))
    out = sanitize.screened({"mlflow.spanInputs": inputs, "x": twice, "n": "8", "t": '"CHAT_MODEL"'})
    assert out == {"mlflow.spanInputs": inputs, "x": '{"a": 1}', "n": "8", "t": '"CHAT_MODEL"'}


def test_a_number_too_long_for_python_fails_as_in_mlflow() -> None:
    """Python refuses to parse an integer of over 4,300 digits; MLflow's function lets that raise (the span is
    not stored by log_spans either), and so does the screened one for a number outside an object."""
    huge = json.dumps("1" * 5000)
    with pytest.raises(ValueError):
        sanitize._original({"k": huge})
    with pytest.raises(ValueError):
        sanitize.screened({"k": huge})


def test_installed_only_with_a_verified_pair(tmp_path, monkeypatch) -> None:
    import mlflow.tracing.otel.translation as translation
    from mlflow.tracking._tracking_service.utils import _get_store

    # The function in force before, given back after: stores whose gate passed earlier in the session keep it.
    monkeypatch.setattr(translation, "sanitize_attributes", sanitize._original)
    store = _get_store(f"sqlite:///{tmp_path}/a.db")
    with monkeypatch.context() as unverified:
        unverified.setattr(bulkstore, "VERIFIED", frozenset())
        assert not bulkstore.gate(store).bulk
    assert translation.sanitize_attributes is sanitize._original
    gate = bulkstore.gate(_get_store(f"sqlite:///{tmp_path}/b.db"))
    if not gate.bulk:
        pytest.skip(f"this MLflow is not a verified pair: {gate.reason}")
    assert translation.sanitize_attributes is sanitize.screened
