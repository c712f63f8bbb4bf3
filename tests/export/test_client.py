"""The REST client against the SavedModel's signatures.

No TF Serving binary exists here, so ``serve_rest`` stands in for it: it decodes a REST
predict body the way TF Serving's row format does (``{"b64": ...}`` -> bytes, one instance
per batch row), calls the loaded signature in process and answers with TF Serving's
``{"predictions": [...]}`` or ``{"error": ...}``. A local HTTP server wraps it for the
client's network path and its command line.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import tensorflow as tf

from export import client
from tests.export import fixtures

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def serve_rest(loaded, body: dict) -> tuple[int, dict]:
    """(HTTP status, JSON reply) of a TF Serving REST predict call on ``loaded``."""
    signature = loaded.signatures[body.get("signature_name", "serving_default")]
    names = list(signature.structured_input_signature[1])
    rows = body["instances"]

    def value(row, name):
        item = row[name] if isinstance(row, dict) and name in row else row
        return base64.b64decode(item["b64"]) if isinstance(item, dict) else item

    inputs = {name: tf.constant([value(row, name) for row in rows]) for name in names}
    try:
        outputs = signature(**inputs)
    except tf.errors.InvalidArgumentError as error:
        return 400, {"error": error.message}
    outputs = {k: v.numpy().tolist() for k, v in outputs.items()}
    return 200, {"predictions": [{k: v[b] for k, v in outputs.items()} for b in range(len(rows))]}


@pytest.fixture(scope="module")
def server(loaded):
    """A local HTTP server answering ``/v1/models/solo[/versions/1]:predict``."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - the http.server API
            if self.path not in ("/v1/models/solo:predict", "/v1/models/solo/versions/1:predict"):
                status, reply = 404, {"error": f"no model at {self.path}"}
            else:
                length = int(self.headers["Content-Length"])
                status, reply = serve_rest(loaded, json.loads(self.rfile.read(length)))
            data = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_request_is_tf_serving_json_with_b64():
    request = client.build_request([b"\x89PNG...", b"\xff\xd8\xff..."])
    decoded = json.loads(json.dumps(request))
    assert decoded["signature_name"] == "serve_image_bytes"
    assert [base64.b64decode(i["image_bytes"]["b64"]) for i in decoded["instances"]] == [
        b"\x89PNG...",
        b"\xff\xd8\xff...",
    ]
    assert client.predict_url("http://h:8501/", "solo") == "http://h:8501/v1/models/solo:predict"
    assert client.predict_url("http://h:8501", "solo", 3).endswith("/solo/versions/3:predict")
    with pytest.raises(ValueError):
        client.build_request([])


@pytest.mark.slow
def test_request_through_the_signature_and_parsed_back(loaded, images):
    encoded = [fixtures.encode(image) for image in images[:3]]
    request = json.loads(json.dumps(client.build_request(encoded)))
    status, reply = serve_rest(loaded, request)
    assert status == 200
    results = client.parse_response(json.loads(json.dumps(reply)))
    direct = loaded.signatures["serve_image_bytes"](image_bytes=tf.constant(encoded))
    direct = {k: v.numpy() for k, v in direct.items()}
    assert len(results) == 3
    for b, (result, image) in enumerate(zip(results, images, strict=False)):
        want = fixtures.one_image(direct, b, image.shape[:2])
        assert result["detection_masks"].shape[1:] == image.shape[:2]
        np.testing.assert_array_equal(result["image_size"], image.shape[:2])
        for key, value in want.items():
            np.testing.assert_allclose(result[key], value, atol=1e-6, err_msg=key)


@pytest.mark.slow
def test_columnar_response_is_parsed_too(loaded, images):
    encoded = [fixtures.encode(images[2])]
    outputs = loaded.signatures["serve_image_bytes"](image_bytes=tf.constant(encoded))
    columnar = {"outputs": {k: v.numpy().tolist() for k, v in outputs.items()}}
    (result,) = client.parse_response(columnar)
    assert len(result["detection_scores"]) == int(outputs["num_detections"][0])


@pytest.mark.slow
def test_predict_over_http_and_errors(server, images):
    encoded = [fixtures.encode(images[0]), fixtures.encode(images[1], "JPEG")]
    results = client.predict(server, "solo", encoded, version=1)
    assert [r["detection_masks"].shape[1:] for r in results] == [
        images[0].shape[:2],
        images[1].shape[:2],
    ]
    assert all(len(r["detection_scores"]) > 0 for r in results)
    with pytest.raises(RuntimeError, match="not a JPEG, PNG"):
        client.predict(server, "solo", [b"plain text"])
    with pytest.raises(RuntimeError, match="404"):
        client.predict(server, "other", encoded)
    assert client.predict(server, "solo", encoded[:1])  # the server goes on


@pytest.mark.slow
def test_command_line(server, images, saved_model_dir, tmp_path):
    for k, image in enumerate(images[:2]):
        (tmp_path / f"{k}.png").write_bytes(fixtures.encode(image))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "export.client",
            "--server",
            server,
            "--model",
            "solo",
            "--images",
            str(tmp_path / "*.png"),
            "--label_map",
            os.path.join(saved_model_dir, "assets", "label_map.json"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,  # a hang guard only
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summaries = json.loads(proc.stdout)
    assert [s["size"] for s in summaries] == [list(i.shape[:2]) for i in images[:2]]
    names = {d["name"] for s in summaries for d in s["detections"]}
    assert names and names <= {"circle", "square", "triangle"}
