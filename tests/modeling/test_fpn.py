"""FPN: level shapes, and the exact top-down sum with identity convs."""

import numpy as np

from solo_tf.modeling.fpn import FPN

RNG = np.random.default_rng(0)


def _features(height, width, channels):
    return {
        f"P{k}": RNG.normal(size=(1, height >> k, width >> k, channels)).astype(np.float32)
        for k in range(2, 6)
    }


def test_shapes_non_square():
    fpn = FPN(channels=8)
    out = fpn(_features(64, 128, 4))
    assert sorted(out, key=lambda n: int(n[1:])) == ["P2", "P3", "P4", "P5", "P6"]
    for k in range(2, 7):
        assert out[f"P{k}"].shape == (1, 64 >> k, 128 >> k, 8)


def test_identity_convs_give_top_down_sums():
    """With 1x1 laterals = 1 and 3x3 outputs = centre tap 1 (no bias), P_k = sum of the
    nearest-upsampled inputs at and above k, and P6 = P5[::2, ::2]."""
    feats = _features(64, 64, 1)  # P2 16x16 ... P5 2x2
    fpn = FPN(channels=1)
    fpn(feats)
    for conv in fpn.lateral_convs:
        conv.set_weights([np.ones((1, 1, 1, 1), np.float32), np.zeros(1, np.float32)])
    centre = np.zeros((3, 3, 1, 1), np.float32)
    centre[1, 1] = 1.0
    for conv in fpn.output_convs:
        conv.set_weights([centre, np.zeros(1, np.float32)])
    out = fpn(feats)
    up = lambda x: x.repeat(2, axis=1).repeat(2, axis=2)
    expected = {"P5": feats["P5"]}
    for k in (4, 3, 2):
        expected[f"P{k}"] = feats[f"P{k}"] + up(expected[f"P{k + 1}"])
    for name, value in expected.items():
        np.testing.assert_allclose(out[name], value, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["P6"], expected["P5"][:, ::2, ::2], rtol=1e-6)


def test_config_round_trip():
    fpn = FPN(channels=32, name="fpn")
    clone = FPN.from_config(fpn.get_config())
    assert (clone.channels, clone.min_level, clone.max_level, clone.num_extra_levels) == (
        32,
        2,
        5,
        1,
    )
