"""A small REST client for the SOLO SavedModel served by TF Serving.

    python -m export.client --server http://localhost:8501 --model solo --images a.jpg b.png

Sends the encoded files as base64 to the ``serve_image_bytes`` signature (images may differ
in size) and prints, for each image, its detections (class id and name, score, box, mask
area). Needs only the standard library and numpy: no TensorFlow on the client.

Request (TF Serving's row format, one instance per image)::

    {"signature_name": "serve_image_bytes",
     "instances": [{"image_bytes": {"b64": "<base64 of the JPEG/PNG file>"}}, ...]}

Response: ``{"predictions": [{"num_detections": n, "detection_scores": [K],
"detection_classes": [K], "detection_boxes": [K][4], "detection_masks": [K][Ho][Wo],
"image_info": [[h0, w0], ...]}, ...]}``; ``parse_response`` keeps the ``n`` valid rows and
crops each image's masks to its own (h0, w0).
"""

from __future__ import annotations

import argparse
import base64
import glob
import json
import os
import sys
import urllib.error
import urllib.request

import numpy as np

SIGNATURE = "serve_image_bytes"
INPUT_NAME = "image_bytes"


def build_request(images: list[bytes], signature_name: str = SIGNATURE) -> dict:
    """The JSON body (a dict) of a predict request for encoded images."""
    if not images:
        raise ValueError("no image to send")
    instances = [{INPUT_NAME: {"b64": base64.b64encode(data).decode("ascii")}} for data in images]
    return {"signature_name": signature_name, "instances": instances}


def _rows(response: dict) -> list[dict]:
    """Per-image dicts from the row (``predictions``) or columnar (``outputs``) format."""
    if "error" in response:
        raise RuntimeError(f"server error: {response['error']}")
    if "predictions" in response:
        return list(response["predictions"])
    if "outputs" in response:
        outputs = response["outputs"]
        count = len(outputs["num_detections"])
        return [{key: value[b] for key, value in outputs.items()} for b in range(count)]
    raise ValueError(f"not a TF Serving predict response: keys {sorted(response)}")


def parse_response(response: dict) -> list[dict[str, np.ndarray]]:
    """Per image: ``detection_scores`` [n], ``detection_classes`` [n], ``detection_boxes``
    [n, 4] and ``detection_masks`` uint8 [n, h0, w0] (cropped to the image)."""
    results = []
    for row in _rows(response):
        count = int(np.asarray(row["num_detections"]).reshape(-1)[0])
        height, width = (int(round(v)) for v in np.asarray(row["image_info"])[0])
        masks = np.asarray(row["detection_masks"], np.uint8)  # [K, Ho, Wo]
        results.append(
            {
                "detection_scores": np.asarray(row["detection_scores"], np.float32)[:count],
                "detection_classes": np.asarray(row["detection_classes"], np.int64)[:count],
                "detection_boxes": np.asarray(row["detection_boxes"], np.float32).reshape(-1, 4)[
                    :count
                ],
                "detection_masks": masks[:count, :height, :width],
                "image_size": np.array([height, width]),
            }
        )
    return results


def predict_url(server: str, model: str, version: int | None = None) -> str:
    path = f"/v1/models/{model}" + (f"/versions/{version}" if version else "")
    return server.rstrip("/") + path + ":predict"


def predict(
    server: str,
    model: str,
    images: list[bytes],
    version: int | None = None,
    signature_name: str = SIGNATURE,
    timeout: float = 60.0,
) -> list[dict[str, np.ndarray]]:
    """POSTs the images to TF Serving's REST API and returns ``parse_response``'s list."""
    body = json.dumps(build_request(images, signature_name)).encode("utf-8")
    url = predict_url(server, model, version)
    request = urllib.request.Request(
        url,
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            response = json.loads(reply.read().decode("utf-8"))
    except urllib.error.HTTPError as error:
        detail = error.read().decode("utf-8", "replace")
        try:
            detail = json.loads(detail).get("error", detail)
        except json.JSONDecodeError:
            pass
        raise RuntimeError(f"{error.code} from {error.url}: {detail}") from None
    except (urllib.error.URLError, OSError) as error:  # refused, unknown host, timeout
        reason = getattr(error, "reason", error)
        raise ConnectionError(f"cannot reach TF Serving at {url}: {reason}") from None
    return parse_response(response)


def summarize(path: str, dets: dict, names: dict[int, str]) -> dict:
    """A JSON-friendly summary of one image's detections (no masks, their areas)."""
    return {
        "image": path,
        "size": [int(s) for s in dets["image_size"]],
        "detections": [
            {
                "class_id": int(c),
                "name": names.get(int(c), str(int(c))),
                "score": round(float(s), 4),
                "box_yxyx": [round(float(v), 1) for v in b],
                "mask_area": int(m.sum()),
            }
            for s, c, b, m in zip(
                dets["detection_scores"],
                dets["detection_classes"],
                dets["detection_boxes"],
                dets["detection_masks"],
                strict=True,
            )
        ],
    }


def expand_paths(specs: list[str]) -> list[str]:
    """Files named by paths or globs, in order; a spec that names nothing raises."""
    paths = []
    for spec in specs:
        found = [spec] if os.path.isfile(spec) else sorted(glob.glob(spec))
        if not found:
            raise FileNotFoundError(f"--images {spec!r} names no file")
        paths += found
    return paths


def load_names(label_map: str) -> dict[int, str]:
    """id -> name from a ``label_map.json`` (the SavedModel's ``assets/label_map.json``)."""
    if not label_map:
        return {}
    with open(label_map) as f:
        return {int(c["id"]): str(c["name"]) for c in json.load(f)["categories"]}


def main(argv=None) -> int:
    """The command line; an error ends it with exit code 1 and one line on stderr."""
    try:
        return _main(argv)
    except (OSError, RuntimeError, ValueError) as error:  # ConnectionError is an OSError
        sys.stderr.write(f"client: error: {error}\n")
        return 1


def _main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="http://localhost:8501")
    parser.add_argument("--model", default="solo")
    parser.add_argument("--version", type=int, default=None)
    parser.add_argument("--images", nargs="+", required=True, help="files or globs")
    parser.add_argument("--label_map", default="", help="label_map.json for class names")
    parser.add_argument("--batch_size", type=int, default=8, help="images per request")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    paths = expand_paths(args.images)
    names = load_names(args.label_map)
    summaries = []
    for start in range(0, len(paths), args.batch_size):
        chunk = paths[start : start + args.batch_size]
        data = []
        for path in chunk:
            with open(path, "rb") as f:
                data.append(f.read())
        results = predict(args.server, args.model, data, args.version, timeout=args.timeout)
        summaries += [summarize(p, d, names) for p, d in zip(chunk, results, strict=True)]
    json.dump(summaries, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
