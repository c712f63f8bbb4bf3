"""The SavedModel's per-image post-processing and the bfloat16 export (``--compute_dtype``)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from export import saved_model, serving_module
from solo_tf import exported
from solo_tf.detector import DETECTION_KEYS, Detector
from tests.export import fixtures


def _assert_same_detections(got, want, key):
    """Classes, counts and masks equal; float scores and boxes to float32 rounding: the batched
    and per-image graphs reduce over other shapes, which may move the last bit (seen on an
    AVX2-only CPU with mean-colour padding: one score 6e-8 apart)."""
    if np.issubdtype(want.dtype, np.floating):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=key)
    else:
        np.testing.assert_array_equal(got, want, err_msg=key)


def _padded_batch(images, detector):
    """The three first test images preprocessed as the serving graph does (mixed sizes)."""
    padded, infos = [], []
    for image in images[:3]:
        image, info = serving_module.preprocess_image(tf.constant(image), detector)
        padded.append(image)
        infos.append(info)
    return tf.stack(padded), tf.stack(infos)


def test_per_image_postprocess_equals_batched(source, images):
    padded, info = _padded_batch(images, source)
    batched = source.detect(padded, info, per_image=False)
    one_by_one = source.detect(padded, info, per_image=True)
    assert int(tf.reduce_sum(batched["num_detections"])) > 0
    for key in DETECTION_KEYS:
        want, got = batched[key].numpy(), one_by_one[key].numpy()
        assert got.shape == want.shape, key
        _assert_same_detections(got, want, key)


def test_per_image_postprocess_with_a_static_output_size(source, images):
    padded, info = _padded_batch(images, source)
    kwargs = {"output_size": (100, 90)}
    batched = source.detect(padded, info, per_image=False, **kwargs)
    one_by_one = source.detect(padded, info, per_image=True, **kwargs)
    assert one_by_one["detection_masks"].shape[2:] == (100, 90)
    for key in DETECTION_KEYS:
        _assert_same_detections(one_by_one[key].numpy(), batched[key].numpy(), key)


@pytest.fixture(scope="module")
def bf16_source(model_dir):
    return Detector.from_model_dir(model_dir, "latest", "bfloat16")


def test_bfloat16_network_computes_in_bfloat16_with_float32_weights(bf16_source, source, images):
    outputs = bf16_source.model(tf.zeros([1, 128, 128, 3]), training=False)
    assert {v.dtype for v in outputs.values()} == {tf.bfloat16}
    assert {w.dtype for w in bf16_source.model.weights} == {"float32"}
    # The same checkpoint: every weight equal to the float32 model's.
    for a, b in zip(bf16_source.model.weights, source.model.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a.value), np.asarray(b.value))
    # Building it left the global policy alone.
    assert tf.keras.mixed_precision.global_policy().name == "float32"


def test_bfloat16_logits_close_to_float32(bf16_source, source, images):
    padded, _ = _padded_batch(images, source)
    want = source.model(padded, training=False)
    got = bf16_source.model(padded, training=False)
    for key, value in want.items():
        value = value.numpy()
        diff = np.abs(tf.cast(got[key], tf.float32).numpy() - value)
        # bfloat16 keeps 8 significant bits: a few percent of the logits' spread.
        assert diff.max() <= 0.05 * (value.max() - value.min()) + 1e-3, key


def _assert_close_detections(got: dict, want: dict, margin=0.15, score_tol=0.05, min_iou=0.9):
    """bfloat16 parity: every detection scored clearly above the update threshold (0.3) on
    one side has a partner on the other side (same class, score within ``score_tol``, mask
    IoU >= ``min_iou``). Detections near the threshold may fall on either side of it. Seen on
    an AVX2-only CPU (no native bfloat16): a partner 0.032 apart in score at mask IoU 0.994."""
    for a, b in ((got, want), (want, got)):
        for k, score in enumerate(a["detection_scores"]):
            if score < 0.3 + margin:
                continue
            partners = [
                fixtures.mask_iou(a["detection_masks"][k], b["detection_masks"][j])
                for j in range(len(b["detection_scores"]))
                if b["detection_classes"][j] == a["detection_classes"][k]
                and abs(b["detection_scores"][j] - score) <= score_tol
            ]
            assert partners and max(partners) >= min_iou, (k, score, partners)


@pytest.mark.slow
def test_bfloat16_saved_model_matches_the_float32_model(
    bf16_source, keras_detect, images, tmp_path
):
    # The exported graph fuses ops (conv + bias + activation) that Keras runs one by one, so
    # bfloat16 roundings differ from the Keras bfloat16 model's too: compare with tolerances,
    # against the float32 model (the accuracy that matters).
    path = saved_model.export_saved_model(bf16_source, str(tmp_path / "solo" / "1"))
    predictor = exported.SavedModelPredictor(path)
    total = 0
    for image in images:
        got, _ = predictor(image)
        want = keras_detect(image)
        _assert_close_detections(got, want)
        total += int(np.sum(want["detection_scores"] >= 0.45))
    assert total >= 5


def test_unknown_compute_dtype_is_refused(model_dir):
    with pytest.raises(ValueError, match="compute_dtype"):
        Detector.from_model_dir(model_dir, "latest", "float16")


def test_lazy_mask_outputs_reproduce_the_mask_logits(source, images):
    padded, _ = _padded_batch(images, source)
    full = source.model(padded, training=False)
    lazy = source.model(padded, training=False, lazy_masks=True)
    for level in range(len(fixtures.GRIDS)):
        assert f"mask_logits_{level}" not in lazy
        features = lazy[f"mask_features_{level}"].numpy()
        kernel, bias = lazy[f"mask_kernel_{level}"].numpy(), lazy[f"mask_bias_{level}"].numpy()
        want = full[f"mask_logits_{level}"].numpy()
        got = np.einsum("bhwf,fk->bhwk", features, kernel) + bias
        np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())
        np.testing.assert_array_equal(lazy[f"cate_logits_{level}"], full[f"cate_logits_{level}"])


@pytest.mark.parametrize("per_image", [False, True])
def test_lazy_detections_equal_the_plain_path(source, images, per_image):
    plain = source.detect_fn(per_image=False, lazy_masks=False)
    lazy = source.detect_fn(per_image=per_image)
    padded, info = _padded_batch(images, source)
    want, got = plain(padded, info), lazy(padded, info)
    assert int(tf.reduce_sum(want["num_detections"])) > 0
    for b in range(3):
        fixtures.assert_same_detections(fixtures.one_image(got, b), fixtures.one_image(want, b))
