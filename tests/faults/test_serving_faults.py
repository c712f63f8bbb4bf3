"""Inference faults (issue 11, items 4 and 8): bytes that are not an image, a 24-megapixel
photo, two files with one stem, and a TF Serving that is not there.

``serve_image_bytes`` refuses random bytes and an empty string with InvalidArgumentError (no
UnicodeDecodeError on the way out); ``predict`` draws every image of a folder holding a
6000x4000 photo with memory bounded by the model's resolution, and writes one overlay per
file; the REST client's connection error names the URL.
"""

from __future__ import annotations

import json
import os
import socket

import numpy as np
from PIL import Image

from tests.faults import runner

# Calls serve_image_bytes with each argv item ("random" or "empty") in a fresh process and
# prints one JSON line per call: the error's type and the head of its message.
_SERVE = """
import json, sys
import numpy as np
import tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
serve = loaded.signatures["serve_image_bytes"]
inputs = {"random": np.random.default_rng(0).bytes(64), "empty": b""}
for name in sys.argv[2:]:
    try:
        serve(image_bytes=tf.constant([inputs[name]]))
        print(json.dumps({"input": name, "error": None}))
    except Exception as error:
        message = getattr(error, "message", str(error))
        print(json.dumps({"input": name, "error": type(error).__name__, "message": message[-400:]}))
"""


def test_serve_image_bytes_refuses_non_images(saved_model, table):
    result = runner.run(runner.python_code(_SERVE, saved_model, "random", "empty"))
    assert result.returncode == 0, result.explain()
    calls = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [c["input"] for c in calls] == ["random", "empty"], result.explain()
    for call in calls:
        assert call["error"] == "InvalidArgumentError", call
        message = " ".join(call["message"].split()).split("assertion failed:")[-1]
        table.add(f"{call['input']} bytes", "-", "SavedModel serve_image_bytes", result, message)


def _photo(path, height=4000, width=6000):
    """A smooth 6000x4000 JPEG (a gradient with a disc: quick to write and to decode)."""
    y, x = np.mgrid[0:height, 0:width]
    red = (x * 255 // width).astype(np.uint8)
    disc = ((y - height / 2) ** 2 + (x - width / 2) ** 2 < (height / 4) ** 2).astype(np.uint8)
    image = np.stack([red, disc * 200, np.full_like(red, 90)], axis=-1)
    Image.fromarray(image).save(path, quality=90)


def test_predict_large_photo_among_small(tmp_path, split, model_dir, table):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in sorted(os.listdir(split.images))[:3]:
        (folder / name).write_bytes((split.images_path(name)).read_bytes())
    _photo(folder / "big.jpg")
    out = tmp_path / "predictions"
    args = runner.python_module(
        "solo_tf.predict",
        f"--model_dir={model_dir}",
        "--checkpoint=latest",
        f"--images={folder}",
        f"--output_dir={out}",
        "--draw_threshold=0",
    )
    result = runner.run(args)
    assert result.returncode == 0, result.explain()
    overlays = sorted(p for p in os.listdir(out) if p.endswith(".png"))
    assert len(overlays) == 4 and "big.png" in overlays, overlays
    with Image.open(out / "big.png") as overlay:
        assert max(overlay.size) == 2048, overlay.size
    with open(out / "results.json") as f:
        results = json.load(f)
    big = [r for r in results if r["file_name"] == "big.jpg"]
    assert big and big[0]["segmentation"]["size"] == [4000, 6000], big[:1]
    assert result.max_rss_mb is None or result.max_rss_mb < 3000, result.max_rss_mb
    table.add(
        "one 6000x4000 photo among 3 small ones",
        "-",
        "predict (folder)",
        result,
        f"exit 0, 4 overlays (big one 2048 px), {len(big)} detections on it at 6000x4000; "
        f"peak RSS {result.max_rss_mb:.0f} MB",
    )


def test_predict_same_stem_two_overlays(tmp_path, split, model_dir, table):
    folder = tmp_path / "photos"
    folder.mkdir()
    first, second = sorted(os.listdir(split.images))[:2]
    (folder / "good.png").write_bytes(split.images_path(first).read_bytes())
    Image.open(split.images_path(second)).convert("RGB").save(folder / "good.jpg")
    out = tmp_path / "predictions"
    args = runner.python_module(
        "solo_tf.predict",
        f"--model_dir={model_dir}",
        "--checkpoint=latest",
        f"--images={folder}",
        f"--output_dir={out}",
    )
    result = runner.run(args)
    assert result.returncode == 0, result.explain()
    overlays = sorted(p for p in os.listdir(out) if p.endswith(".png"))
    assert overlays == ["good.jpg.png", "good.png.png"], overlays
    table.add("good.png + good.jpg", "-", "predict (folder)", result, f"exit 0: {overlays}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_client_connection_refused_names_url(tmp_path, split, table):
    server = f"http://127.0.0.1:{_free_port()}"
    image = split.images_path(sorted(os.listdir(split.images))[0])
    args = runner.python_module("export.client", f"--server={server}", f"--images={image}")
    results = runner.run_repeated(args, runner.REFUSAL_REPEATS)
    for result in results:
        assert result.returncode == 1, result.explain()
        assert f"{server}/v1/models/solo:predict" in result.error_line, result.explain()
        assert "Traceback" not in result.stderr
    table.add("no TF Serving at the URL", "-", "export.client", results)
