"""Weight conversion: parity with an independent implementation (Hugging Face transformers) through every
accepted source layout, safe loading, refusals that name the offending keys, and an exact round trip
MindSpore -> Hugging Face -> MindSpore.

The Hugging Face models are built offline from a SegformerConfig with every tensor randomised (LayerNorm
and BatchNorm affine parameters and BN running statistics included) so that each mapping is exercised and
the logits are O(1): a wrong or missing rename shows up far above the 1e-4 tolerance.
"""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import mindspore
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from transformers import SegformerConfig, SegformerForSemanticSegmentation

from segformer.convert.weights import ConversionError, expected_shapes, load_source, to_mindspore
from segformer.models import VARIANTS, build_model

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "workflow_scripts" / "convert_model.py"
TOL = 1e-4
SHAPES = {"b0": (1, 3, 64, 128), "b1": (1, 3, 64, 128)}  # b2-b5: small inputs, see small_shape()

_spec = importlib.util.spec_from_file_location("convert_model_script", SCRIPT)
convert_model = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(convert_model)


def small_shape(variant):
    """64x64 for b2-b5: every stage attends over 2x2 keys (keys_per_stage). At 32x32 each stage had a single
    key, whose softmax weight is 1 whatever the query and key weights: a conversion mixing them up would pass."""
    return SHAPES.get(variant, (1, 3, 64, 64))


def keys_per_stage(variant, shape):
    """Keys each stage's attention sees for an input of `shape`: the tokens after the overlapping patch
    embedding (kernel k, stride s, padding k//2), reduced by the sr x sr stride-sr conv."""
    cfg = VARIANTS[variant]
    height, width = shape[2:]
    keys = []
    for kernel, stride, sr in zip(cfg.patch_sizes, cfg.strides, cfg.sr_ratios):
        height = (height + 2 * (kernel // 2) - kernel) // stride + 1
        width = (width + 2 * (kernel // 2) - kernel) // stride + 1
        keys.append((height // sr) * (width // sr))
    return keys


def swap_query_and_key(model):
    """Exchange every block's query and key projections of a Hugging Face model in place; returns it."""
    with torch.no_grad():
        for stage in model.segformer.stages:
            for block in stage.blocks:
                for p in ("weight", "bias"):
                    query, key = getattr(block.attention.q_proj, p), getattr(block.attention.k_proj, p)
                    saved = query.clone()
                    query.copy_(key)
                    key.copy_(saved)
    return model


pytestmark = pytest.mark.usefixtures("pynative_cpu")


# ---------------------------------------------------------------------------------------------------------
# The independent implementation: a randomised Hugging Face model with the official LayerNorm eps.

def random_hf_model(variant, num_classes=19, seed=0):
    cfg = VARIANTS[variant]
    config = SegformerConfig(
        num_channels=3, num_encoder_blocks=4, depths=list(cfg.depths), sr_ratios=list(cfg.sr_ratios),
        hidden_sizes=list(cfg.embed_dims), patch_sizes=list(cfg.patch_sizes), strides=list(cfg.strides),
        num_attention_heads=list(cfg.num_heads), mlp_ratios=list(cfg.mlp_ratios),
        decoder_hidden_size=cfg.decoder_dim, num_labels=num_classes)
    torch.manual_seed(seed)
    model = SegformerForSemanticSegmentation(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim > 1:  # weights: unit-variance outputs
                p.normal_(0.0, 1.0 / math.sqrt(p[0].numel()))
            elif "norm" in name and name.endswith("weight"):
                p.uniform_(0.5, 1.5)
            else:  # biases, LayerNorm/BatchNorm betas
                p.normal_(0.0, 0.2)
        bn = model.decode_head.batch_norm
        bn.running_mean.normal_(0.0, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.num_batches_tracked.fill_(160000)
    # HF uses eps 1e-5 for every LayerNorm; the official blocks (norm1/norm2) and stage norms use 1e-6.
    for stage in model.segformer.stages:
        stage.layer_norm.eps = 1e-6
        for block in stage.blocks:
            block.layernorm_before.eps = 1e-6
            block.layernorm_after.eps = 1e-6
    return model.eval()


def hf_logits(model, x):
    with torch.no_grad():
        return model(pixel_values=torch.from_numpy(x)).logits.numpy()


def ms_logits(variant, params, x, num_classes=19):
    """Logits of our model with `params` loaded strictly (nothing missing, nothing left over)."""
    net = build_model(variant, num_classes=num_classes)
    ms_params = {k: mindspore.Parameter(mindspore.Tensor(v), name=k) for k, v in params.items()}
    not_loaded, unused = mindspore.load_param_into_net(net, ms_params, strict_load=True)
    assert not_loaded == [] and unused == []
    net.set_train(False)
    return net(mindspore.Tensor(x)).asnumpy()


def read_ckpt(path):
    return {k: v.asnumpy() for k, v in mindspore.load_checkpoint(str(path)).items()}


def assert_parity(reference, ours):
    assert ours.shape == reference.shape
    assert float(reference.std()) > 0.1, "logits too flat for the comparison to mean anything"
    diff = float(np.abs(ours - reference).max())
    assert diff <= TOL, f"max abs diff {diff}"


@pytest.fixture(scope="module")
def hf_b0(tmp_path_factory):
    """b0: the HF model, its saved folder, an input and the reference logits."""
    folder = tmp_path_factory.mktemp("hf_b0")
    model = random_hf_model("b0")
    model.save_pretrained(folder)
    x = np.random.default_rng(0).standard_normal(SHAPES["b0"]).astype(np.float32)
    return {"model": model, "dir": folder, "x": x, "logits": hf_logits(model, x),
            "file": load_file(folder / "model.safetensors")}


# ---------------------------------------------------------------------------------------------------------
# The authors' layouts, written by the test with the official key names (explicit loops, not the library's table).

def nvlabs_state(hf_file, variant):
    """NVlabs state dict (backbone./decode_head.) from a Hugging Face file's tensors."""
    cfg = VARIANTS[variant]
    t = {k: torch.from_numpy(v.copy()) for k, v in hf_file.items()}
    nv = {}
    for i in range(4):
        s, e = i + 1, "segformer.encoder"
        nv[f"backbone.patch_embed{s}.proj.weight"] = t[f"{e}.patch_embeddings.{i}.proj.weight"]
        nv[f"backbone.patch_embed{s}.proj.bias"] = t[f"{e}.patch_embeddings.{i}.proj.bias"]
        nv[f"backbone.patch_embed{s}.norm.weight"] = t[f"{e}.patch_embeddings.{i}.layer_norm.weight"]
        nv[f"backbone.patch_embed{s}.norm.bias"] = t[f"{e}.patch_embeddings.{i}.layer_norm.bias"]
        for j in range(cfg.depths[i]):
            h, n = f"{e}.block.{i}.{j}", f"backbone.block{s}.{j}"
            pairs = {"norm1": "layer_norm_1", "attn.q": "attention.self.query", "attn.proj": "attention.output.dense",
                     "norm2": "layer_norm_2", "mlp.fc1": "mlp.dense1", "mlp.dwconv.dwconv": "mlp.dwconv.dwconv",
                     "mlp.fc2": "mlp.dense2"}
            if cfg.sr_ratios[i] > 1:
                pairs |= {"attn.sr": "attention.self.sr", "attn.norm": "attention.self.layer_norm"}
            for ours, theirs in pairs.items():
                for p in ("weight", "bias"):
                    nv[f"{n}.{ours}.{p}"] = t[f"{h}.{theirs}.{p}"]
            for p in ("weight", "bias"):
                key, value = t[f"{h}.attention.self.key.{p}"], t[f"{h}.attention.self.value.{p}"]
                nv[f"{n}.attn.kv.{p}"] = torch.cat([key, value])
        nv[f"backbone.norm{s}.weight"] = t[f"{e}.layer_norm.{i}.weight"]
        nv[f"backbone.norm{s}.bias"] = t[f"{e}.layer_norm.{i}.bias"]
        nv[f"decode_head.linear_c{s}.proj.weight"] = t[f"decode_head.linear_c.{i}.proj.weight"]
        nv[f"decode_head.linear_c{s}.proj.bias"] = t[f"decode_head.linear_c.{i}.proj.bias"]
    nv["decode_head.linear_fuse.conv.weight"] = t["decode_head.linear_fuse.weight"]
    for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        nv[f"decode_head.linear_fuse.bn.{p}"] = t[f"decode_head.batch_norm.{p}"]
    nv["decode_head.linear_pred.weight"] = t["decode_head.classifier.weight"]
    nv["decode_head.linear_pred.bias"] = t["decode_head.classifier.bias"]
    return nv


CITY_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
                "bicycle")


def mmcv_checkpoint(state_dict):
    """A trained checkpoint as mmcv 1.x saves it: meta (with numpy values), state_dict, optimizer."""
    palette = [[128, 64, 128], [244, 35, 232], [70, 70, 70]] + [[i, i, i] for i in range(16)]
    meta = {
        "env_info": "sys.platform: linux\nPython: 3.7.10\nCUDA available: True\nPyTorch: 1.8.1\nMMCV: 1.3.0",
        "config": "norm_cfg = dict(type='SyncBN', requires_grad=True)\nmodel = dict(type='EncoderDecoder')\n",
        "seed": np.int64(1234),
        "exp_name": "segformer.b0.1024x1024.city.160k.py",
        "mmseg_version": "0.11.0+unknown",
        "CLASSES": CITY_CLASSES,
        "PALETTE": palette,
        "palette_array": np.array(palette, dtype=np.uint8),
        "dtype": np.dtype("float32"),
        "epoch": 1,
        "iter": 160000,
        "time": "Fri Jun 11 10:00:00 2021",
        "hook_msgs": {"best_score": np.float64(0.7621), "last_ckpt": "work_dirs/iter_160000.pth"},
    }
    state = dict(state_dict)
    c = state["decode_head.linear_pred.weight"].shape[1]
    state["decode_head.conv_seg.weight"] = torch.randn(19, c, 1, 1)
    state["decode_head.conv_seg.bias"] = torch.randn(19)
    optimizer = {
        "state": {0: {"step": torch.tensor(160000.0), "exp_avg": torch.zeros(3), "exp_avg_sq": torch.zeros(3)}},
        "param_groups": [{"lr": 6e-5, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01, "params": [0]}],
    }
    return {"meta": meta, "state_dict": state, "optimizer": optimizer}


def run_cli(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


# ---------------------------------------------------------------------------------------------------------
# Parity.

def test_hf_b0_via_cli_matches_reference(hf_b0, tmp_path):
    dst = tmp_path / "b0.ckpt"
    result = run_cli("--pt_model_path", hf_b0["dir"], "--ms_model_path", dst, "--variant", "b0")
    assert result.returncode == 0, result.stderr
    assert "variant b0" in result.stdout and "full model" in result.stdout
    params = read_ckpt(dst)
    assert set(params) == set(expected_shapes("b0"))
    assert_parity(hf_b0["logits"], ms_logits("b0", params, hf_b0["x"]))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary file left behind"


@pytest.mark.parametrize("variant", ["b1", "b2", "b3", "b4", "b5"])
def test_hf_variants_match_reference(variant, tmp_path):
    model = random_hf_model(variant, seed=1)
    model.save_pretrained(tmp_path)
    x = np.random.default_rng(1).standard_normal(small_shape(variant)).astype(np.float32)
    reference = hf_logits(model, x)
    # The comparison sees the attention: several keys per stage, so swapped query/key weights change the logits.
    assert min(keys_per_stage(variant, x.shape)) >= 4, keys_per_stage(variant, x.shape)
    moved = float(np.abs(hf_logits(swap_query_and_key(model), x) - reference).max())
    assert moved > 100 * TOL, f"query and key weights swapped, yet the logits moved by only {moved}"
    del model
    layout, state = load_source(tmp_path)
    assert layout == "hf"
    found, params, _ = to_mindspore(state, layout, variant, source=str(tmp_path))
    assert found == variant
    assert_parity(reference, ms_logits(variant, params, x))


def test_trained_nvlabs_checkpoint_with_numpy_meta(hf_b0, tmp_path, capsys):
    src, dst = tmp_path / "segformer.b0.1024x1024.city.160k.pth", tmp_path / "b0.ckpt"
    torch.save(mmcv_checkpoint(nvlabs_state(hf_b0["file"], "b0")), src)
    assert convert_model.main(["--pt_model_path", str(src), "--ms_model_path", str(dst)]) == 0
    out = capsys.readouterr().out
    assert "decode_head.conv_seg.bias, decode_head.conv_seg.weight" in out
    assert "decode_head.linear_fuse.bn.num_batches_tracked" in out
    assert_parity(hf_b0["logits"], ms_logits("b0", read_ckpt(dst), hf_b0["x"]))


def test_bare_nvlabs_state_dict(tmp_path):
    model = random_hf_model("b1", seed=2)
    model.save_pretrained(tmp_path / "hf")
    x = np.random.default_rng(2).standard_normal(SHAPES["b1"]).astype(np.float32)
    src = tmp_path / "b1_state.pth"
    torch.save(nvlabs_state(load_file(tmp_path / "hf" / "model.safetensors"), "b1"), src)
    layout, state = load_source(src)
    assert layout == "nvlabs"
    _, params, _ = to_mindspore(state, layout, "b1")
    assert_parity(hf_logits(model, x), ms_logits("b1", params, x))


def test_imagenet_backbone_converts_backbone_only(hf_b0, tmp_path, capsys):
    nv = nvlabs_state(hf_b0["file"], "b0")
    flat = {k.removeprefix("backbone."): v for k, v in nv.items() if k.startswith("backbone.")}
    flat["head.weight"], flat["head.bias"] = torch.randn(1000, 256), torch.randn(1000)
    src, dst = tmp_path / "mit_b0.pth", tmp_path / "mit_b0.ckpt"
    torch.save(flat, src)
    assert convert_model.main(["--pt_model_path", str(src), "--ms_model_path", str(dst), "--variant", "b0"]) == 0
    out = capsys.readouterr().out
    assert "head.bias, head.weight" in out and "ImageNet classifier" in out
    assert "decode head is not in the source and keeps its initialisation" in out
    params = read_ckpt(dst)
    assert len(params) == 176 and all(k.startswith("backbone.") for k in params)
    kv = "backbone.block1.0.attn.kv.weight"
    np.testing.assert_array_equal(params[kv], nv[kv].numpy())
    np.testing.assert_array_equal(params["backbone.norm4.gamma"], nv["backbone.norm4.weight"].numpy())
    net = build_model("b0")
    not_loaded, unused = mindspore.load_param_into_net(
        net, {k: mindspore.Parameter(mindspore.Tensor(v), name=k) for k, v in params.items()})
    assert unused == []
    assert sorted(not_loaded) == sorted(k for k in expected_shapes("b0") if k.startswith("decode_head."))


# ---------------------------------------------------------------------------------------------------------
# Refusals.

def test_variant_mismatch_refused(hf_b0, tmp_path):
    dst = tmp_path / "b1.ckpt"
    result = run_cli("--pt_model_path", hf_b0["dir"], "--ms_model_path", dst, "--variant", "b1")
    assert result.returncode != 0
    assert "SegFormer-b0" in result.stderr and "variant b1 was requested" in result.stderr
    assert not dst.exists() and list(tmp_path.iterdir()) == []


def test_bad_keys_listed_by_name(hf_b0, tmp_path, capsys):
    nv = nvlabs_state(hf_b0["file"], "b0")
    del nv["backbone.block1.0.attn.q.bias"], nv["backbone.block2.1.norm2.weight"]
    nv["backbone.block1.0.attn.extra.weight"] = torch.zeros(3)
    nv["decode_head.linear_c2.proj.weight"] = torch.zeros(256, 65)
    src, dst = tmp_path / "bad.pth", tmp_path / "bad.ckpt"
    torch.save({"state_dict": nv, "meta": {}}, src)
    assert convert_model.main(["--pt_model_path", str(src), "--ms_model_path", str(dst)]) == 1
    err = capsys.readouterr().err
    assert ("missing (2): backbone.block1.0.attn.q.bias, "
            "backbone.block2.1.norm2.gamma (source: backbone.block2.1.norm2.weight)") in err
    assert "unexpected (1): backbone.block1.0.attn.extra.weight" in err
    assert "decode_head.linear_c2.proj.weight: checkpoint (256, 65), model (256, 64)" in err
    assert not dst.exists()


def test_hf_half_of_kv_missing_is_named(hf_b0, tmp_path):
    state = dict(hf_b0["file"])
    del state["segformer.encoder.block.2.1.attention.self.value.bias"]
    with pytest.raises(ConversionError, match=r"segformer\.encoder\.block\.2\.1\.attention\.self\.value\.bias"):
        to_mindspore(state, "hf")


def test_num_classes_mismatch_refused(hf_b0):
    with pytest.raises(ConversionError, match="19 classes, but num_classes 150"):
        to_mindspore(hf_b0["file"], "hf", num_classes=150)


class _Payload:
    """Unpickling this object opens (creates) a marker file: stands for any code a checkpoint could run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_pickled_code_refused_without_running(tmp_path, capsys):
    state = {"patch_embed1.proj.weight": torch.zeros(32, 3, 7, 7)}
    control_marker, marker = tmp_path / "control_ran", tmp_path / "payload_ran"
    control, src, dst = tmp_path / "control.pth", tmp_path / "evil.pth", tmp_path / "evil.ckpt"
    torch.save({"state_dict": state, "meta": {"x": _Payload(control_marker)}}, control)
    torch.save({"state_dict": state, "meta": {"x": _Payload(marker)}}, src)
    torch.load(control, weights_only=False)  # the payload is real: an unsafe load runs it
    assert control_marker.exists()
    assert convert_model.main(["--pt_model_path", str(src), "--ms_model_path", str(dst)]) == 1
    err = capsys.readouterr().err
    assert "refused" in err and "io.open" in err and "none of its code ran" in err
    assert not marker.exists() and not dst.exists()


def test_library_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None; "
            "import segformer.convert.weights as w; assert w.expected_shapes('b0'); print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


# ---------------------------------------------------------------------------------------------------------
# The way back.

def test_round_trip_mindspore_hf_mindspore_is_exact(hf_b0, tmp_path, capsys):
    ckpt, hf_dir, back = tmp_path / "b0.ckpt", tmp_path / "hf", tmp_path / "back.ckpt"
    assert convert_model.main(["--pt_model_path", str(hf_b0["dir"]), "--ms_model_path", str(ckpt)]) == 0
    assert convert_model.main(["--pt_model_path", str(ckpt), "--ms_model_path", str(hf_dir), "--to", "hf"]) == 0
    assert "eps 1e-5" in capsys.readouterr().out
    assert sorted(p.name for p in hf_dir.iterdir()) == ["config.json", "model.safetensors"]
    assert convert_model.main(["--pt_model_path", str(hf_dir), "--ms_model_path", str(back)]) == 0
    original, returned = read_ckpt(ckpt), read_ckpt(back)
    assert original.keys() == returned.keys()
    for k in original:
        assert original[k].dtype == returned[k].dtype and original[k].tobytes() == returned[k].tobytes(), k

    written = load_file(hf_dir / "model.safetensors")  # the same tensors as the original HF file
    assert written.keys() == hf_b0["file"].keys()
    for k, v in hf_b0["file"].items():
        if not k.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(written[k], v, err_msg=k)

    config = json.loads((hf_dir / "config.json").read_text())
    assert config["id2label"]["0"] == "road" and config["id2label"]["18"] == "bicycle"
    assert config["label2id"]["traffic light"] == 6 and config["num_labels"] == 19
    model, info = SegformerForSemanticSegmentation.from_pretrained(hf_dir, output_loading_info=True)
    assert not info["missing_keys"]
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    # HF runs its LayerNorms with eps 1e-5: with the official 1e-6 restored, the logits are the reference's.
    for stage in model.segformer.stages:
        stage.layer_norm.eps = 1e-6
        for block in stage.blocks:
            block.layernorm_before.eps = block.layernorm_after.eps = 1e-6
    np.testing.assert_array_equal(hf_logits(model.eval(), hf_b0["x"]), hf_b0["logits"])


def test_mindspore_source_drops_optimizer_state(hf_b0):
    _, params, _ = to_mindspore(hf_b0["file"], "hf")
    state = dict(params, **{"adamw_m.backbone.norm1.gamma": np.zeros(32, np.float32),
                            "adamw_v.backbone.norm1.gamma": np.zeros(32, np.float32), "adamw_step": np.zeros(1)})
    _, again, notes = to_mindspore(state, "mindspore", "b0")
    assert again.keys() == params.keys()
    assert any("optimizer state" in n and "adamw_step" in n for n in notes)
    with pytest.raises(ConversionError, match=r"unexpected \(1\): iteration"):
        to_mindspore(dict(params, iteration=np.zeros(1)), "mindspore")


def test_backbone_only_to_hf_refused(hf_b0, tmp_path):
    nv = nvlabs_state(hf_b0["file"], "b0")
    flat = {k.removeprefix("backbone."): v for k, v in nv.items() if k.startswith("backbone.")}
    src = tmp_path / "mit_b0.pth"
    torch.save(flat, src)
    assert convert_model.main(["--pt_model_path", str(src), "--ms_model_path", str(tmp_path / "hf"), "--to", "hf"]) == 1
    assert not (tmp_path / "hf").exists()
