import numpy as np
import pytest

import models
from protocol import ProtocolError, decode_delta, encode_delta, encode_tensors

TEMPLATE = models.model_state(models.build_model("cnn-digits", seed=0))


def _delta(scale: float = 0.01, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: (rng.standard_normal(a.shape) * scale).astype(a.dtype) if a.dtype.kind == "f"
            else np.array(7, dtype=a.dtype).reshape(a.shape) for n, a in TEMPLATE.items()}  # fmt: skip


@pytest.mark.parametrize(("codec", "max_share", "levels"), [("int8", 0.27, 127), ("int4", 0.15, 7)])
def test_low_bit_codecs_are_small_and_within_half_a_step(codec: str, max_share: float, levels: int) -> None:
    delta = _delta()
    encoded = encode_delta(delta, codec)
    decoded = decode_delta(encoded, codec, TEMPLATE)
    assert len(encode_tensors(encoded)) <= max_share * len(encode_tensors(delta))
    for name, value in delta.items():
        if value.dtype.kind != "f":
            np.testing.assert_array_equal(decoded[name], value)  # counters travel exactly
            continue
        rows = value.reshape(value.shape[0] if value.ndim >= 2 else 1, -1)
        step = np.abs(rows).max(axis=1) / levels
        error = np.abs((decoded[name] - value).reshape(rows.shape)).max(axis=1)
        assert (error <= step / 2 + 1e-7).all(), name


def test_error_feedback_removes_the_bias_of_repeated_rounding() -> None:
    # The same small delta every round: without feedback the rounding error adds up, with it it stays bounded.
    true = _delta(0.001, seed=1)
    residual = {n: np.zeros_like(a) for n, a in true.items() if a.dtype.kind == "f"}
    sent_sum = {n: np.zeros(a.shape, np.float64) for n, a in residual.items()}
    plain_sum = {n: np.zeros(a.shape, np.float64) for n, a in residual.items()}
    for _ in range(50):
        corrected = {n: (a + residual[n]) if n in residual else a for n, a in true.items()}
        sent = decode_delta(encode_delta(corrected, "int4"), "int4", TEMPLATE)
        plain = decode_delta(encode_delta(true, "int4"), "int4", TEMPLATE)
        for n in residual:
            residual[n] = corrected[n] - sent[n]
            sent_sum[n] += sent[n]
            plain_sum[n] += plain[n]
    name = "features.1.0.weight"
    target = 50 * true[name].astype(np.float64)
    assert np.abs(sent_sum[name] - target).max() < np.abs(plain_sum[name] - target).max() / 5


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda e: {**e, "scales": e["scales"] * np.float32("nan")}, "bad-scale"),
        (lambda e: {**e, "scales": np.zeros_like(e["scales"])}, "bad-scale"),
        (lambda e: {**e, "q": e["q"][:-3]}, "bad-shape"),
        (lambda e: {**e, "q": e["q"].astype(np.int16)}, "bad-codec"),
        (lambda e: {**e, "q": np.full_like(e["q"], -128)}, "bad-codec"),
        (lambda e: {"q": e["q"], "scales": e["scales"]}, "bad-codec"),
    ],
)
def test_hostile_payloads_are_rejected(change, reason: str) -> None:  # type: ignore[no-untyped-def]
    encoded = encode_delta(_delta(), "int8")
    with pytest.raises(ProtocolError) as info:
        decode_delta(change(encoded), "int8", TEMPLATE)
    assert info.value.reason == reason
