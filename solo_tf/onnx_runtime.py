"""Runs an ONNX file of ``export.onnx`` in ONNX Runtime, like ``exported.TFLitePredictor``.

``ONNXPredictor(path).predict(image uint8 [H0, W0, 3]) -> (detections, names)``: the app-side
letterbox to the file's fixed input, one ONNX Runtime call, then the masks (in input pixels)
cropped to the scaled image and resized (nearest) to H0 x W0, and boxes from the masks. The
steps are those of ``TFLitePredictor.predict``, which this class reuses as it is: both take
the same padded input and return the same outputs. ``run`` is the raw call.

Needs the optional extra ``onnx`` (``pip install solo-tf[onnx]``): onnxruntime is imported
when a predictor is made, so importing this module costs nothing without it.
"""

from __future__ import annotations

import numpy as np

from solo_tf import exported
from solo_tf.data.label_map import LabelMap
from solo_tf.images import to_input_dtype

# ONNX Runtime's element type names -> numpy dtypes (the ones the export uses).
ORT_DTYPES = {
    "tensor(uint8)": np.uint8,
    "tensor(float)": np.float32,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
}


class ONNXPredictor:
    """An ONNX file of ``export.onnx`` in an ONNX Runtime ``InferenceSession``.

    Labels and the pad colour come from ``model_info.json`` next to the file (``label_map``
    overrides its labels).
    ``providers`` defaults to the CPU; ``num_threads`` sets the intra-op thread pool.
    """

    def __init__(
        self,
        path: str,
        label_map: LabelMap | None = None,
        num_threads: int = 2,
        providers=("CPUExecutionProvider",),
    ):
        import onnxruntime  # optional extra (solo-tf[onnx]): imported when used

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
        self.path = path
        self._session = onnxruntime.InferenceSession(path, options, providers=list(providers))
        (image,) = self._session.get_inputs()
        self._input_name = image.name
        self.input_size = tuple(int(s) for s in image.shape[1:3])
        self.input_dtype = np.dtype(ORT_DTYPES[image.type])
        self._output_names = [o.name for o in self._session.get_outputs()]
        self.label_map, self.pad_colour = exported.app_side(path, label_map)
        self.names = self.label_map.names_by_id() if self.label_map is not None else {}

    def run(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """The raw outputs for one padded input [1, H, W, 3] (cast to the input dtype)."""
        pixels = to_input_dtype(np.asarray(image), self.input_dtype)
        values = self._session.run(self._output_names, {self._input_name: pixels})
        return dict(zip(self._output_names, values, strict=True))

    # letterbox -> run -> masks back to the original size: the TFLite steps, shared.
    predict = exported.TFLitePredictor.predict
    __call__ = predict

    def signature_details(self) -> dict:
        """Name, shape and dtype of the inputs and outputs (as in ``model_info.json``)."""

        def describe(args) -> dict:
            return {
                a.name: {
                    "name": a.name,
                    "shape": [int(s) for s in a.shape],
                    "dtype": np.dtype(ORT_DTYPES[a.type]).name,
                }
                for a in args
            }

        return {
            "inputs": describe(self._session.get_inputs()),
            "outputs": describe(self._session.get_outputs()),
        }
