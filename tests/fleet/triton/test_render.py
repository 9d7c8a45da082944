"""`edgecv triton render`: config.pbtxt from the manifest, the artifact copied only when its sha256 matches."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from fleet.cli import main
from fleet.repo import REPO_ROOT
from fleet.spec.manifest import load_manifest
from fleet.triton.render import PYTHON_MODEL, RenderError, render

MANIFEST = REPO_ROOT / "models" / "nanodet-m" / "manifest.yaml"


@pytest.fixture(scope="module")
def manifest():
    return load_manifest(MANIFEST)


def read_config(model_dir: Path) -> mc.ModelConfig:
    return text_format.Parse((model_dir / "config.pbtxt").read_text(), mc.ModelConfig())


def test_onnxruntime_config_follows_the_manifest(manifest, tmp_path):
    model_dir = render(manifest, tmp_path, "onnxruntime")
    assert model_dir == tmp_path / "nanodet-m"
    cfg = read_config(model_dir)
    assert cfg.name == "nanodet-m" and cfg.backend == "onnxruntime"
    assert cfg.max_batch_size == manifest.triton.max_batch_size == 8
    (inp,) = cfg.input
    assert inp.name == "input_1:0" and list(inp.dims) == [3, 416, 416] and inp.data_type == mc.TYPE_FP32
    assert [(o.name, list(o.dims)) for o in cfg.output] == [(o.name, o.shape) for o in manifest.outputs]
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 8]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == manifest.triton.dynamic_batching.max_queue_delay_us
    (group,) = cfg.instance_group
    assert group.count == manifest.triton.instances.count and group.kind == mc.ModelInstanceGroup.KIND_GPU
    assert cfg.parameters["manifest"].string_value == "nanodet-m@1.0.0"
    assert (model_dir / "1" / "model.onnx").read_bytes() == manifest.artifact.local_path(REPO_ROOT).read_bytes()
    assert not (model_dir / "1" / "model.py").exists()


def test_python_backend_serves_the_same_onnx_on_the_cpu(manifest, tmp_path):
    model_dir = render(manifest, tmp_path, "python")
    cfg = read_config(model_dir)
    assert cfg.backend == "python"
    assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    assert cfg.parameters["onnx_file"].string_value == "model.onnx"
    assert (model_dir / "1" / "model.py").read_bytes() == PYTHON_MODEL.read_bytes()
    assert (model_dir / "1" / "model.onnx").stat().st_size == manifest.artifact.size
    # Rendering again for the onnxruntime backend leaves no python model behind.
    render(manifest, tmp_path, "onnxruntime")
    assert not (model_dir / "1" / "model.py").exists()
    assert read_config(model_dir).backend == "onnxruntime"


def test_wrong_sha256_is_refused_and_nothing_is_replaced(manifest, tmp_path):
    model_dir = render(manifest, tmp_path, "python")
    before = {p: p.read_bytes() for p in model_dir.rglob("*") if p.is_file()}
    bad = manifest.model_copy(
        update={
            "artifact": manifest.artifact.model_copy(update={"sha256": "0" * 64}),
            "triton": manifest.triton.model_copy(update={"max_batch_size": 4}),
        }
    )
    with pytest.raises(RenderError, match="does not match the manifest.*nothing was replaced"):
        render(bad, tmp_path, "onnxruntime")
    after = {p: p.read_bytes() for p in model_dir.rglob("*") if p.is_file()}
    assert after == before  # same files (no temp files left), same bytes, config untouched


def test_a_changed_artifact_is_refused(manifest, tmp_path):
    tampered = tmp_path / "model.onnx"
    shutil.copy(manifest.artifact.local_path(REPO_ROOT), tampered)
    with tampered.open("r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02")
    with pytest.raises(RenderError, match="sha256"):
        render(manifest, tmp_path / "repo", artifact=tampered)
    assert not (tmp_path / "repo" / "nanodet-m" / "1" / "model.onnx").exists()
    assert not (tmp_path / "repo" / "nanodet-m" / "config.pbtxt").exists()


def test_missing_or_remote_artifacts_and_unknown_backends(manifest, tmp_path):
    with pytest.raises(RenderError, match="artifact not found"):
        render(manifest, tmp_path, artifact=tmp_path / "nope.onnx")
    remote = manifest.model_copy(update={"artifact": manifest.artifact.model_copy(update={"uri": "s3://b/k.onnx"})})
    with pytest.raises(RenderError, match="not local"):
        render(remote, tmp_path)
    with pytest.raises(RenderError, match="unknown backend"):
        render(manifest, tmp_path, "tensorflow")


def test_cli_renders_and_reports_bad_manifests(tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["triton", "render", str(MANIFEST), "--out", str(tmp_path / "repo"), "--backend", "python"])
    assert res.exit_code == 0, res.output
    assert "nanodet-m@1.0.0" in res.output
    assert (tmp_path / "repo" / "nanodet-m" / "1" / "model.py").is_file()

    bad_dir = tmp_path / "models" / "nanodet-m"
    bad_dir.mkdir(parents=True)
    data = yaml.safe_load(MANIFEST.read_text())
    data["triton"]["max_batch_size"] = 0
    (bad_dir / "manifest.yaml").write_text(yaml.safe_dump(data))
    res = runner.invoke(main, ["triton", "render", str(bad_dir / "manifest.yaml"), "--out", str(tmp_path / "r2")])
    assert res.exit_code == 1
    assert "manifest.yaml" in res.output and "triton.max_batch_size" in res.output
    assert not (tmp_path / "r2").exists()


def test_fused_render_serves_uint8_in_and_fixed_detections_out_and_keeps_the_artifact(manifest, tmp_path):
    import hashlib

    from tests.support.triton_fixtures import serving

    m = serving(manifest, fused_preprocess=True, server_decode=True)
    model_dir = render(m, tmp_path, "onnxruntime")
    cfg = read_config(model_dir)
    (inp,) = cfg.input
    assert (inp.name, list(inp.dims), inp.data_type) == ("image_u8", [416, 416, 3], mc.TYPE_UINT8)
    assert [(o.name, list(o.dims)) for o in cfg.output] == [("detections", [100, 6])]
    assert cfg.parameters["artifact_sha256"].string_value == manifest.artifact.sha256
    served = (model_dir / "1" / "model.onnx").read_bytes()
    assert hashlib.sha256(served).hexdigest() != manifest.artifact.sha256  # the generated wrapper...
    source = manifest.artifact.local_path(REPO_ROOT)
    assert hashlib.sha256(source.read_bytes()).hexdigest() == manifest.artifact.sha256  # ...the artifact untouched


def test_a_wrong_artifact_is_refused_before_fusing(manifest, tmp_path):
    from tests.support.triton_fixtures import serving

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"x" * manifest.artifact.size)
    with pytest.raises(RenderError, match="does not match the manifest"):
        render(serving(manifest, fused_preprocess=True), tmp_path / "out", artifact=bad)


def test_gpu_instances_get_tensorrt_fp16_with_an_engine_cache_unless_turned_off(manifest):
    from fleet.triton.render import model_config
    from tests.support.triton_fixtures import serving

    (acc,) = model_config(manifest, "onnxruntime").optimization.execution_accelerators.gpu_execution_accelerator
    assert acc.name == "tensorrt" and acc.parameters["precision_mode"] == "FP16"
    assert acc.parameters["trt_engine_cache_enable"] == "1"
    assert acc.parameters["trt_engine_cache_path"] == "/var/cache/edgecv/trt-engines/nanodet-m/1.0.0"
    off = serving(manifest, tensorrt=manifest.triton.tensorrt.model_copy(update={"enabled": False}))
    fp32 = serving(manifest, tensorrt=manifest.triton.tensorrt.model_copy(update={"precision": "FP32"}))
    cpu = serving(manifest, instances=manifest.triton.instances.model_copy(update={"kind": "KIND_CPU"}))
    assert not model_config(off, "onnxruntime").HasField("optimization")
    assert not model_config(cpu, "onnxruntime").HasField("optimization")
    assert not model_config(manifest, "python").HasField("optimization")  # the python backend runs on the CPU
    (acc,) = model_config(fp32, "onnxruntime").optimization.execution_accelerators.gpu_execution_accelerator
    assert acc.parameters["precision_mode"] == "FP32"


def test_server_decode_needs_the_nanodet_decoder():
    from fleet.spec.manifest import parse_manifest
    from tests.support.manifests import manifest_dict

    doc = manifest_dict("file://models/tiny/tiny.onnx")
    doc["triton"] = {"server_decode": True}
    with pytest.raises(ValueError, match="triton.server_decode needs the nanodet decoder"):
        parse_manifest(doc)
    doc["triton"] = {"tensorrt": {"engine_cache_dir": "relative/dir"}}
    with pytest.raises(ValueError, match="engine_cache_dir"):
        parse_manifest(doc)
