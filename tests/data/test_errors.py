"""The one-line summary of what the skip policy left out (``errors.skip_summary``)."""

import collections

from solo_tf.data import errors


def test_summary_counts_images_and_annotations_by_reason():
    counts = collections.Counter(
        {errors.MISSING_FILE: 2, errors.UNDECODABLE_IMAGE: 1, errors.DEGENERATE_POLYGON: 3}
    )
    assert errors.skip_summary(counts, 3, 10) == (
        "3 of 10 images skipped (missing_file: 2, undecodable_image: 1); "
        "3 annotations dropped, their images kept (degenerate_polygon: 3)"
    )


def test_summary_of_nothing_skipped():
    assert errors.skip_summary(collections.Counter(), 0, 10) == "0 of 10 images skipped (none)"


def test_summary_of_tfrecords_names_the_cut_shard():
    assert errors.skip_summary(None, 0, 8, {"/d/s-00000-of-00002.tfrecord": 3}) == (
        "8 records readable; examples that fail to decode are dropped and logged by tf.data, "
        "not counted; the tail of /d/s-00000-of-00002.tfrecord could not be read "
        "(3 records read)"
    )
