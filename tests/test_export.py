"""Trained weights (`search_space.weights`) and the ONNX export (`search_space.export`,
`python -m search_space export`): exact round trips, one-line refusals of the wrong
weights, and exports that onnxruntime runs like PyTorch at batch sizes 1 and 3."""
import dataclasses
import json
import random

import pytest
import torch

from search_space import export, weights, zoo
from search_space.__main__ import main
from search_space.errors import SpecError, WeightsError
from search_space.model import build
from search_space.space import SearchSpace

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
safetensors_torch = pytest.importorskip("safetensors.torch")


def realistic(model: torch.nn.Module, res: int, seed: int = 0) -> torch.nn.Module:
    """A built network whose outputs mean something: at the builder's init the eval-mode
    signal shrinks at every BatchNorm (unit running variance) to ~1e-13 at the logits, where
    any comparison passes. BatchNorm statistics are set from random batches, and the
    classifier scaled so the logits reach about 4, as trained logits do."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a plain average over the batches
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, 3, res, res, generator=gen))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = 0.01
        model.eval()
        top = model(torch.randn(4, 3, res, res, generator=gen)).abs().max()
        model.classifier.weight.mul_(4 / top)
        model.classifier.bias.zero_()
    return model


def sampled_spec(seed: int, res: int = 32, num_classes: int = 10):
    space = SearchSpace.default()
    return space.decode(space.sample(random.Random(seed)), num_classes=num_classes, resolution=res)


@pytest.fixture(scope="module")
def tiny():
    """(spec, model) of a network of the default space at 32x32 with 10 classes."""
    spec = sampled_spec(1)
    torch.manual_seed(0)
    return spec, realistic(build(spec), 32)


@pytest.fixture(scope="module")
def tiny_weights(tiny, tmp_path_factory):
    spec, model = tiny
    path = tmp_path_factory.mktemp("weights") / "best.safetensors"
    weights.save(model, spec, path)
    return path


def one_line_error(excinfo, path) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and str(path) in message, message
    return message


# -- weights -----------------------------------------------------------------------------------
def test_save_then_load_model_gives_the_same_outputs_exactly(tiny, tiny_weights):
    spec, model = tiny
    assert [p.name for p in tiny_weights.parent.iterdir()] == [tiny_weights.name]  # no temporary file left
    with safetensors_torch.safe_open(str(tiny_weights), framework="pt") as fh:
        meta = fh.metadata()
    assert (meta["format"], meta["version"]) == (weights.FORMAT, weights.VERSION)
    meta_spec, tensors = weights.read(tiny_weights)
    assert meta_spec == json.loads(spec.to_json()) and weights.read_spec(tiny_weights) == spec
    assert set(tensors) == set(model.state_dict())
    loaded = weights.load_model(spec, tiny_weights)
    assert not loaded.training
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_a_best_yaml_of_1000_classes_takes_the_10_classes_of_the_weights(tiny, tiny_weights, tmp_path):
    spec, model = tiny
    best = dataclasses.replace(spec, num_classes=1000, resolution=224, name="best")
    best.save(tmp_path / "best.yaml")
    loaded = weights.load_model(str(tmp_path / "best.yaml"), tiny_weights)
    assert (loaded.spec.num_classes, loaded.spec.resolution, loaded.spec.name) == (10, 224, "best")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def _rewrite(src, dst, drop=None, reshape=None, metadata=None):
    meta, tensors = weights.read(src)
    tensors = {k: v for k, v in tensors.items() if k != drop}
    if reshape:
        tensors[reshape] = torch.zeros(7)
    md = {"format": weights.FORMAT, "version": weights.VERSION, "spec": json.dumps(meta)}
    safetensors_torch.save_file(tensors, str(dst), metadata=md if metadata is None else metadata)
    return dst


@pytest.mark.parametrize("case,expected", [
    ("another architecture", "made for another network than efficientnet-b0 (blocks[0]:"),
    ("truncated", "not a safetensors file or a damaged one"),
    ("text file", "not a safetensors file or a damaged one"),
    ("pickle", "not a safetensors file or a damaged one"),
    ("missing tensor", "1 tensor missing: classifier.bias"),
    ("wrong shape", "1 tensor of the wrong shape: classifier.bias is [7], expected [10]"),
    ("other format", "not an effnas weights file (its metadata says format 'pt'"),
    ("no metadata", "not an effnas weights file (its metadata has no format"),
    ("other version", "format version '2' is not supported"),
    ("missing file", "no such file"),
])
def test_wrong_weights_are_refused_with_one_line_naming_the_file(tiny, tiny_weights, tmp_path, case, expected):
    spec, _ = tiny
    target, path = spec, tmp_path / "w.safetensors"
    data = tiny_weights.read_bytes()
    if case == "another architecture":
        target, path = "efficientnet-b0", tiny_weights
    elif case == "truncated":
        path.write_bytes(data[:-1000])
    elif case == "text file":
        path.write_text("weights, but in words\n")
    elif case == "pickle":
        torch.save({"x": torch.zeros(3)}, path)
    elif case == "missing tensor":
        _rewrite(tiny_weights, path, drop="classifier.bias")
    elif case == "wrong shape":
        _rewrite(tiny_weights, path, reshape="classifier.bias")
    elif case == "other format":
        _rewrite(tiny_weights, path, metadata={"format": "pt"})
    elif case == "no metadata":
        _rewrite(tiny_weights, path, metadata={})
    elif case == "other version":
        _rewrite(tiny_weights, path, metadata={"format": weights.FORMAT, "version": "2", "spec": "{}"})
    with pytest.raises(WeightsError) as excinfo:
        weights.load_model(target, path)
    assert isinstance(excinfo.value, SpecError)
    message = one_line_error(excinfo, path)
    assert message.startswith(f"weights {path}: ") and expected in message, message


def test_strict_false_allows_a_missing_tensor_but_never_a_wrong_shape(tiny, tiny_weights, tmp_path):
    spec, _ = tiny
    model = weights.load_model(spec, _rewrite(tiny_weights, tmp_path / "a.safetensors", drop="classifier.bias"),
                               strict=False)
    assert not model.training
    with pytest.raises(WeightsError, match="wrong shape"):
        weights.load_model(spec, _rewrite(tiny_weights, tmp_path / "b.safetensors", reshape="classifier.bias"),
                           strict=False)


def test_save_refuses_a_model_that_is_not_the_network_of_its_spec(tiny, tmp_path):
    spec, model = tiny
    with pytest.raises(WeightsError, match="not the network of its spec"):
        weights.save(model, dataclasses.replace(spec, num_classes=11), tmp_path / "w.safetensors")
    assert list(tmp_path.iterdir()) == []


# -- ONNX --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    """EfficientNet-B0 at 64x64 with 10 classes and the sampled network at 32x32, exported."""
    out = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    b0 = realistic(build(dataclasses.replace(zoo.get("efficientnet-b0"), num_classes=10, resolution=64)), 64)
    cases = {"efficientnet-b0": (b0, 64), "sampled": (tiny[1], 32)}
    for name, (model, res) in cases.items():
        export.export_onnx(model, res, out / f"{name}.onnx")
    return {name: (model, res, out / f"{name}.onnx") for name, (model, res) in cases.items()}


@pytest.mark.parametrize("name", ["efficientnet-b0", "sampled"])
def test_onnx_runs_like_pytorch_at_batch_sizes_1_and_3(exported, name):
    model, res, path = exported[name]
    diff, scale = export.compare(model, path, res, batches=(1, 3))
    assert scale > 1  # the outputs are not all but zero: the comparison means something
    assert diff < 1e-4
    assert export.check_onnx(model, path, res) == diff
    graph = onnx.load(str(path)).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, res, res]
    assert [d.dim_param or d.dim_value for d in graph.output[0].type.tensor_type.shape.dim] == ["batch", 10]


def test_the_exported_opset_is_the_stated_one(exported):
    for _, _, path in exported.values():
        opsets = {o.domain: o.version for o in onnx.load(str(path)).opset_import}
        assert opsets.get("", opsets.get("ai.onnx")) == export.OPSET == export.opset_of(path)
    assert export.MIN_OPSET <= export.OPSET <= onnx.defs.onnx_opset_version()


def test_an_opset_out_of_range_is_refused_before_any_work(tiny, tmp_path):
    with pytest.raises(SpecError, match="opset 12 is out of range"):
        export.export_onnx(tiny[1], 32, tmp_path / "m.onnx", opset=12)
    assert list(tmp_path.iterdir()) == []


# -- the CLI -----------------------------------------------------------------------------------
def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_exports_a_best_yaml_with_trained_weights(tiny, tiny_weights, tmp_path, capsys):
    spec, _ = tiny
    dataclasses.replace(spec, num_classes=1000, resolution=224, name="best").save(tmp_path / "best.yaml")
    out_file = tmp_path / "best.onnx"
    code, out, err = run(capsys, "export", tmp_path / "best.yaml", "--weights", tiny_weights, "--onnx", out_file,
                         "--resolution", 32)
    assert code == 0 and err == "" and len(out.splitlines()) == 1, (out, err)
    assert out.startswith(f"{out_file}: opset {export.OPSET}, input 'input' float32 [batch, 3, 32, 32] (batch dynamic), "
                          f"output 'logits' [batch, 10], weights {tiny_weights} (trained at 32x32); "
                          "max abs difference to PyTorch "), out
    diff = float(out.split("max abs difference to PyTorch ")[1].split()[0])
    assert diff < 1e-4
    assert export.opset_of(out_file) == export.OPSET
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.onnx", "best.yaml"]


@pytest.mark.parametrize("case,expected", [
    ("bad spec", "'no-such-net' is neither a zoo name"),
    ("missing weights", "weights {tmp}/none.safetensors: no such file"),
    ("mismatched weights", "made for another network than mnasnet-a1"),
    ("unwritable --onnx", "cannot write (folder {tmp}/missing does not exist)"),
    ("--onnx is a folder", "is a folder"),
    ("no onnxruntime", "needs the onnxruntime package, which is not installed: pip install 'effnas[export]'"),
    ("no --onnx", "the following arguments are required: --onnx"),
    ("check fails to run", "onnxruntime cannot load it"),
])
def test_cli_bad_input_is_one_line_exit_2_and_leaves_no_file(tiny_weights, tmp_path, capsys, monkeypatch,
                                                              case, expected):
    spec, target = "efficientnet-b0", tmp_path / "m.onnx"
    argv = ["export", spec, "--onnx", target, "--resolution", 32]
    if case == "bad spec":
        argv[1] = "no-such-net"
    elif case == "missing weights":
        argv += ["--weights", tmp_path / "none.safetensors"]
    elif case == "mismatched weights":
        argv[1] = "mnasnet-a1"
        argv += ["--weights", tiny_weights]
    elif case == "unwritable --onnx":
        argv[3] = target = tmp_path / "missing" / "m.onnx"
    elif case == "--onnx is a folder":
        argv[3] = target = tmp_path
    elif case == "no onnxruntime":
        real = export.importlib.util.find_spec
        monkeypatch.setattr(export.importlib.util, "find_spec", lambda n, *a: None if n == "onnxruntime" else real(n, *a))
    elif case == "no --onnx":
        argv = ["export", spec]
    elif case == "check fails to run":
        monkeypatch.setattr(export, "export_onnx", lambda model, res, path, **k: path.write_bytes(b"not onnx"))
    code, out, err = run(capsys, *argv)
    message = expected.format(tmp=tmp_path)
    assert code == 2 and out == "" and len(err.splitlines()) == 1, (code, out, err)
    assert err.startswith("export: error: ") and message in err, err
    assert target == tmp_path or not target.exists()
    assert not [p for p in tmp_path.rglob("*") if p.suffix in (".onnx", ".tmp")]
