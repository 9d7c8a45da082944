"""Triton python-backend model: serves an ONNX file through onnxruntime with the ONNX model's own tensor names.

`edgecv triton render --backend python` copies this file to `<model>/1/model.py` with the ONNX beside it. It
runs inside Triton's python-backend stub (the local server from the nvidia-pytriton wheel, which carries only
the python backend); production on Jetson uses the onnxruntime backend on the same ONNX and the same names.

Tensors cross the stub boundary through DLPack, not `as_numpy()` / `pb_utils.Tensor(name, array)`: the
wheel's stub is built with a pybind11 that reads numpy 1.x's dtype layout, so under numpy 2 `as_numpy()`
returns arrays with zero strides (every element equal to the first) and `Tensor(name, array)` sends zero
bytes. DLPack carries dtype, shape and pointer itself and works under numpy 1 and 2.
"""

import ctypes
import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

_set_capsule_destructor = ctypes.pythonapi.PyCapsule_SetDestructor
_set_capsule_destructor.argtypes = [ctypes.py_object, ctypes.c_void_p]
_set_capsule_destructor.restype = ctypes.c_int


def input_array(request, name):
    """The request's input as a numpy array (a view of Triton's shared memory, valid during execute)."""
    return np.from_dlpack(pb_utils.get_input_tensor_by_name(request, name))


def output_tensor(name, array):
    """A Triton output from a numpy array, handed over as a DLPack capsule.

    The backend takes ownership of the DLManagedTensor and renames the capsule 'used_dlpack', a name numpy's
    capsule destructor does not know (it would print a traceback per tensor): drop that destructor first.
    """
    capsule = np.ascontiguousarray(array).__dlpack__()
    _set_capsule_destructor(capsule, None)
    return pb_utils.Tensor.from_dlpack(name, capsule)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        path = os.path.join(args["model_repository"], args["model_version"], params.get("onnx_file", "model.onnx"))
        options = ort.SessionOptions()
        threads = int(params.get("intra_op_threads", "0"))
        if threads > 0:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]

    def execute(self, requests):
        # Dynamic batching hands over several requests at once: run them as one batch, split the answers.
        try:
            feeds = {n: [input_array(r, n) for r in requests] for n in self.inputs}
            sizes = [a.shape[0] for a in feeds[self.inputs[0]]]
            batch = {n: arrs[0] if len(arrs) == 1 else np.concatenate(arrs) for n, arrs in feeds.items()}
            results = self.session.run(self.outputs, batch)
        except Exception as exc:  # a bad request must not take the model down: answer each with the error
            error = pb_utils.TritonError(f"inference failed: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses, start = [], 0
        for n in sizes:
            tensors = [output_tensor(name, out[start : start + n]) for name, out in zip(self.outputs, results, strict=True)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += n
        return responses

    def finalize(self):
        self.session = None
