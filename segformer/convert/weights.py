"""Weight conversion: the authors' PyTorch checkpoints and Hugging Face files <-> MindSpore.

Three naming schemes describe the same tensors:
- NVlabs (the authors' mmseg code): `backbone.block1.0.attn.kv.weight`, `decode_head.linear_fuse.bn.running_mean`;
  the ImageNet files `mit_bX.pth` hold the backbone keys without the `backbone.` prefix.
- MindSpore (this project, docs/model_contract.md): the NVlabs module paths with MindSpore's norm
  parameter names (`gamma`, `beta`, `moving_mean`, `moving_variance`).
- Hugging Face transformers files: `segformer.encoder.block.0.0.attention.self.key.weight`, ...; HF splits the
  NVlabs `kv` Linear into `key` and `value` (kv's weight rows 0:C are the key, C:2C the value).
`MODULES` below is the one table of renames; everything else is generic code around it.

Reading is safe: PyTorch files go through `torch.load(weights_only=True)` with only numpy's plain data types
allow-listed (mmcv writes numpy values into `meta`), so a file carrying pickled code is refused unread.
torch, safetensors and mindspore are imported inside the functions that need them: the module itself imports
with numpy only.
"""

from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from segformer.data.cityscapes import IGNORE_INDEX, train_classes
from segformer.extras import require
from segformer.io import atomic_path, write_json
from segformer.models.checkpoint import CheckpointMismatch, check_fit, has_head
from segformer.models.variants import VARIANTS, variant_config


class ConversionError(CheckpointMismatch):
    """A checkpoint that cannot be converted; the message names the file, the keys and the problem."""


# ---------------------------------------------------------------------------------------------------------
# The rename table. One row per module: (kind, NVlabs == MindSpore module path, Hugging Face module path).
# Placeholders: {s} stage 1..4 (HF counts stages from 0: {s0} = s - 1), {b} block index from 0,
# {kv} is `key` or `value` (the two halves of the NVlabs kv Linear).
MODULES = (
    ("conv", "backbone.patch_embed{s}.proj", "segformer.encoder.patch_embeddings.{s0}.proj"),
    ("ln", "backbone.patch_embed{s}.norm", "segformer.encoder.patch_embeddings.{s0}.layer_norm"),
    ("ln", "backbone.block{s}.{b}.norm1", "segformer.encoder.block.{s0}.{b}.layer_norm_1"),
    ("linear", "backbone.block{s}.{b}.attn.q", "segformer.encoder.block.{s0}.{b}.attention.self.query"),
    ("kv", "backbone.block{s}.{b}.attn.kv", "segformer.encoder.block.{s0}.{b}.attention.self.{kv}"),
    ("conv", "backbone.block{s}.{b}.attn.sr", "segformer.encoder.block.{s0}.{b}.attention.self.sr"),
    ("ln", "backbone.block{s}.{b}.attn.norm", "segformer.encoder.block.{s0}.{b}.attention.self.layer_norm"),
    ("linear", "backbone.block{s}.{b}.attn.proj", "segformer.encoder.block.{s0}.{b}.attention.output.dense"),
    ("ln", "backbone.block{s}.{b}.norm2", "segformer.encoder.block.{s0}.{b}.layer_norm_2"),
    ("linear", "backbone.block{s}.{b}.mlp.fc1", "segformer.encoder.block.{s0}.{b}.mlp.dense1"),
    ("conv", "backbone.block{s}.{b}.mlp.dwconv.dwconv", "segformer.encoder.block.{s0}.{b}.mlp.dwconv.dwconv"),
    ("linear", "backbone.block{s}.{b}.mlp.fc2", "segformer.encoder.block.{s0}.{b}.mlp.dense2"),
    ("ln", "backbone.norm{s}", "segformer.encoder.layer_norm.{s0}"),
    ("linear", "decode_head.linear_c{s}.proj", "decode_head.linear_c.{s0}.proj"),
    ("conv", "decode_head.linear_fuse.conv", "decode_head.linear_fuse"),
    ("bn", "decode_head.linear_fuse.bn", "decode_head.batch_norm"),
    ("conv", "decode_head.linear_pred", "decode_head.classifier"),
)

# Parameter names inside a module: PyTorch (NVlabs and HF alike) -> MindSpore.
PARAMS = {
    "linear": {"weight": "weight", "bias": "bias"},
    "conv": {"weight": "weight", "bias": "bias"},
    "kv": {"weight": "weight", "bias": "bias"},
    "ln": {"weight": "gamma", "bias": "beta"},
    "bn": {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"},
}

# Source keys that are deliberately not converted, with the reason reported to the user.
DROPPED = (
    (r"^head\.(weight|bias)$", "the ImageNet classifier of the authors' backbone file"),
    (r"^classifier\.(weight|bias)$", "the image-classification head of a Hugging Face backbone"),
    (r"^decode_head\.conv_seg\.", "an unused leftover of the mmseg decode head"),
    (r"\.num_batches_tracked$", "BatchNorm's step counter (MindSpore keeps none)"),
    (r"^adamw_(m\.|v\.|step$|lr$)", "optimizer state of a training checkpoint (segformer.engine.optim)"),
)

LAYOUTS = {
    "nvlabs_imagenet": "the authors' ImageNet backbone file (mit_bX.pth layout)",
    "nvlabs": "the authors' segmentation checkpoint (state_dict with backbone.* / decode_head.*)",
    "hf": "Hugging Face transformers SegFormer weights",
    "mindspore": "a MindSpore checkpoint in this project's layout",
}


# ---------------------------------------------------------------------------------------------------------
# Key codecs compiled from the table.

_PLACEHOLDER = re.compile(r"\{(s0|s|b|kv)\}")
_FIELD_PATTERN = {"s": r"(?P<s>[1-9])", "s0": r"(?P<s0>[0-8])", "b": r"(?P<b>\d+)", "kv": r"(?P<kv>key|value)"}


def _template_regex(template: str) -> re.Pattern:
    parts, pos = [], 0
    for m in _PLACEHOLDER.finditer(template):
        parts += [re.escape(template[pos:m.start()]), _FIELD_PATTERN[m.group(1)]]
        pos = m.end()
    parts.append(re.escape(template[pos:]))
    return re.compile("^" + "".join(parts) + "$")


@dataclass(frozen=True)
class _Codec:
    """One parameter of one table row, spelled in the three schemes."""

    kind: str
    nvlabs: str  # template of the full NVlabs key
    ms: str
    hf: str

    def parse(self, key: str, scheme: str) -> dict | None:
        m = _REGEX[(self, scheme)].match(key)
        if m is None:
            return None
        fields = m.groupdict()
        if "s0" in fields:
            fields["s"] = str(int(fields.pop("s0")) + 1)
        return fields

    def render(self, scheme: str, fields: Mapping[str, str], kv: str | None = None) -> str:
        values = dict(fields, s0=str(int(fields["s"]) - 1) if "s" in fields else None, kv=kv)
        return _PLACEHOLDER.sub(lambda m: values[m.group(1)], getattr(self, scheme))


_CODECS = tuple(
    _Codec(kind, f"{nv}.{pt}", f"{nv}.{ms}", f"{hf}.{pt}")
    for kind, nv, hf in MODULES
    for pt, ms in PARAMS[kind].items()
)
_REGEX = {(c, scheme): _template_regex(getattr(c, scheme)) for c in _CODECS for scheme in ("nvlabs", "ms", "hf")}


def _parse(key: str, scheme: str):
    for codec in _CODECS:
        fields = codec.parse(key, scheme)
        if fields is not None:
            return codec, fields
    return None, None


def _drop_reason(key: str) -> str | None:
    for pattern, reason in DROPPED:
        if re.search(pattern, key):
            return reason
    return None


# ---------------------------------------------------------------------------------------------------------
# Reading sources.

def _numpy_safe_globals() -> list:
    """The numpy callables/types that mmcv's `meta` needs; nothing that can run arbitrary code."""
    from numpy.core import multiarray

    allowed = [multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype]
    # numpy >= 2 pickles the same functions under numpy._core.
    allowed += [(multiarray._reconstruct, "numpy._core.multiarray._reconstruct"),
                (multiarray.scalar, "numpy._core.multiarray.scalar")]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += sorted({c for c in vars(dtypes).values() if isinstance(c, type) and issubclass(c, np.dtype)},
                          key=lambda c: c.__name__)
    return allowed


def _torch_load(path: Path):
    """torch.load restricted to tensors, plain containers and numpy data; a clear refusal otherwise."""
    torch = require("torch", "convert", what=str(path))
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found:
            raise ConversionError(
                f"{path}: refused: the checkpoint carries pickled objects other than tensors and plain data "
                f"(it names {found.group(1)}). It was not loaded and none of its code ran. If you trust its "
                f"origin, re-save its state_dict with plain tensors and convert that."
            ) from None
        detail = re.findall(r"^(Unsupported [^\n]*|Trying to [^\n]*)$", str(e), flags=re.M)
        raise ConversionError(
            f"{path}: refused: not a checkpoint that can be read safely (torch's restricted reader says: "
            f"{detail[0] if detail else type(e).__name__}); nothing in it was run"
        ) from None
    except Exception as e:  # a truncated or foreign file: torch raises many kinds
        raise ConversionError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from None


def _tensor_to_numpy(value):
    torch = require("torch", "convert")

    if value.dtype in (torch.bfloat16, torch.float16):
        value = value.float()
    return value.detach().cpu().contiguous().numpy()


def _plain_state(obj: Mapping, path: Path, where: str) -> dict[str, np.ndarray]:
    torch = require("torch", "convert", what=str(path))

    state = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise ConversionError(f"{path}: {where}[{key!r}] is a {type(value).__name__}, not a tensor")
        state[str(key)] = _tensor_to_numpy(value)
    return state


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    load_file = require("safetensors.numpy", "convert", what=str(path)).load_file

    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types
        raise ConversionError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from None


def _read_mindspore(path: Path) -> dict[str, np.ndarray]:
    import mindspore

    try:
        params = mindspore.load_checkpoint(str(path))
    except (RuntimeError, ValueError, OSError) as e:
        raise ConversionError(f"{path}: not a readable MindSpore checkpoint ({e})") from None
    return {name: p.asnumpy() for name, p in params.items()}


def _hf_file_in(folder: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    raise ConversionError(f"{folder}: a folder source must hold model.safetensors or pytorch_model.bin")


def _classify_keys(keys: Iterable[str], path: Path) -> str:
    keys = list(keys)
    if any(k.startswith(("segformer.", "encoder.patch_embeddings.", "decode_head.linear_c.0.")) for k in keys):
        return "hf"
    if any(k.startswith("backbone.patch_embed") for k in keys):
        return "nvlabs"
    if any(k.startswith("patch_embed1.") for k in keys):
        return "nvlabs_imagenet"
    if any(re.match(r"^(backbone\.)?layers\.\d+\.", k) for k in keys):
        raise ConversionError(
            f"{path}: this looks like the mmsegmentation re-hosted MiT layout (layers.N.*), which is not "
            f"supported; use the authors' mit_bX.pth or a Hugging Face file"
        )
    shown = ", ".join(sorted(keys)[:8]) or "(no keys)"
    raise ConversionError(f"{path}: not a SegFormer checkpoint of a known layout; first keys: {shown}")


def load_source(path: str | os.PathLike) -> tuple[str, dict[str, np.ndarray]]:
    """Read any accepted checkpoint: (layout, flat {key: array}) in the file's own naming.

    Layouts: 'nvlabs_imagenet' (mit_bX.pth), 'nvlabs' (trained: the `state_dict` of a dict beside `meta`,
    or a bare state dict with backbone./decode_head. keys), 'hf' (folder, model.safetensors or
    pytorch_model.bin), 'mindspore' (.ckpt in this project's layout).
    """
    path = Path(path)
    if not path.exists():
        raise ConversionError(f"{path}: no such file or folder")
    file = _hf_file_in(path) if path.is_dir() else path
    if file.suffix == ".ckpt":
        return "mindspore", _read_mindspore(file)
    if file.suffix == ".safetensors":
        state = _read_safetensors(file)
        return _classify_keys(state, file), state
    obj = _torch_load(file)
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{file}: holds a {type(obj).__name__}, not a state dict")
    if isinstance(obj.get("state_dict"), Mapping):
        state = _plain_state(obj["state_dict"], file, "state_dict")
    else:
        state = _plain_state(obj, file, "checkpoint")
    return _classify_keys(state, file), state


def _peek_keys(file: Path) -> list[str]:
    """The tensor names of a checkpoint file, reading as little as possible (safetensors: the header;
    PyTorch zip files: memory-mapped, tensors not read; MindSpore: the whole file)."""
    if file.suffix == ".ckpt":
        return list(_read_mindspore(file))
    if file.suffix == ".safetensors":
        safe_open = require("safetensors", "convert", what=str(file)).safe_open

        try:
            with safe_open(str(file), "np") as opened:
                return list(opened.keys())
        except Exception as e:  # safetensors raises its own error types
            raise ConversionError(f"{file}: not a readable safetensors file ({type(e).__name__}: {e})") from None
    torch = require("torch", "convert", what=str(file))

    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            obj = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # an old (non-zip) file cannot be memory-mapped; the full reader explains refusals
        obj = _torch_load(file)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{file}: holds a {type(obj).__name__}, not a state dict")
    return [str(key) for key in obj]


def holds_decode_head(path: str | os.PathLike) -> bool:
    """Whether a checkpoint of any accepted layout is a trained segmentation model (it has decode head
    weights) rather than an ImageNet backbone: the workflow then evaluates it instead of training."""
    path = Path(path)
    if not path.exists():
        raise ConversionError(f"{path}: no such file or folder")
    keys = _peek_keys(_hf_file_in(path) if path.is_dir() else path)
    return any(key.startswith("decode_head.") for key in keys)


# ---------------------------------------------------------------------------------------------------------
# Renaming between schemes.

def _to_ms_names(state: Mapping[str, np.ndarray], layout: str, notes: list[str]):
    """Rename a source's keys to MindSpore names: ({name: array}, [absent HF key/value halves]).

    Unknown keys keep their name, so that the check reports them as unexpected.
    """
    scheme = "hf" if layout == "hf" else "nvlabs"
    dropped: dict[str, list[str]] = {}
    kv_halves: dict[str, dict[str, np.ndarray]] = {}
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        reason = _drop_reason(key)
        if reason is not None:
            dropped.setdefault(reason, []).append(key)
            continue
        if layout == "mindspore":
            out[key] = value
            continue
        if layout == "nvlabs_imagenet":
            key = "backbone." + key
        elif layout == "hf" and key.startswith("encoder."):  # a bare SegformerModel file
            key = "segformer." + key
        codec, fields = _parse(key, scheme)
        if codec is None:
            out[key] = value
        elif codec.kind == "kv" and scheme == "hf":
            kv_halves.setdefault(codec.render("ms", fields), {})[fields["kv"]] = value
        else:
            out[codec.render("ms", fields)] = value
    absent = []
    for name, halves in kv_halves.items():
        if set(halves) == {"key", "value"}:
            out[name] = np.concatenate([halves["key"], halves["value"]], axis=0)  # key rows first, as NVlabs
        else:
            codec, fields = _parse(name, "ms")
            absent += [codec.render("hf", fields, kv=half) for half in {"key", "value"} - set(halves)]
    for reason, keys in dropped.items():
        listed = ", ".join(sorted(keys)) if len(keys) <= 4 else f"{len(keys)} keys"
        notes.append(f"dropped {listed}: {reason}")
    return out, absent


def ms_to_hf_names(params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """MindSpore names -> Hugging Face file keys (kv split into key and value). Unknown names are an error."""
    out: dict[str, np.ndarray] = {}
    unknown = []
    for name, value in params.items():
        codec, fields = _parse(name, "ms")
        if codec is None:
            unknown.append(name)
        elif codec.kind == "kv":
            half = value.shape[0] // 2
            out[codec.render("hf", fields, kv="key")] = np.asarray(value[:half], order="C")
            out[codec.render("hf", fields, kv="value")] = np.asarray(value[half:], order="C")
        else:
            out[codec.render("hf", fields)] = value
    if unknown:
        raise ConversionError(f"no Hugging Face name for: {', '.join(sorted(unknown))}")
    return out


# ---------------------------------------------------------------------------------------------------------
# Variant recognition and the expected parameter set.

def _stage_shape(params: Mapping[str, np.ndarray]) -> tuple[tuple, tuple]:
    dims = tuple(
        params[f"backbone.patch_embed{s}.proj.weight"].shape[0]
        if f"backbone.patch_embed{s}.proj.weight" in params else None
        for s in range(1, 5)
    )
    depths = []
    for s in range(1, 5):
        blocks = {int(m.group(1)) for k in params if (m := re.match(rf"^backbone\.block{s}\.(\d+)\.", k))}
        depths.append(max(blocks) + 1 if blocks else 0)
    return dims, tuple(depths)


def detect_variant(params: Mapping[str, np.ndarray], source: str = "checkpoint") -> str:
    """The variant ('b0' ... 'b5') whose embed dims and depths the (MindSpore-named) tensors have."""
    dims, depths = _stage_shape(params)
    for name, cfg in VARIANTS.items():
        if tuple(cfg.embed_dims) == dims and tuple(cfg.depths) == depths:
            return name
    table = "; ".join(f"{n}: {tuple(c.embed_dims)}/{tuple(c.depths)}" for n, c in VARIANTS.items())
    raise ConversionError(
        f"{source}: embed dims {dims} and depths {depths} match no SegFormer variant (dims/depths: {table})"
    )


def expected_shapes(variant: str, num_classes: int = 19, with_head: bool = True) -> dict[str, tuple]:
    """Every MindSpore parameter name of `variant` with its shape, from the variant table (the contract)."""
    cfg = variant_config(variant)
    shapes: dict[str, tuple] = {}
    c_in = cfg.in_channels
    for s, (c, depth, sr, k, ratio) in enumerate(
            zip(cfg.embed_dims, cfg.depths, cfg.sr_ratios, cfg.patch_sizes, cfg.mlp_ratios), start=1):
        pe = f"backbone.patch_embed{s}"
        shapes |= {f"{pe}.proj.weight": (c, c_in, k, k), f"{pe}.proj.bias": (c,),
                   f"{pe}.norm.gamma": (c,), f"{pe}.norm.beta": (c,)}
        hidden = c * ratio
        for b in range(depth):
            p = f"backbone.block{s}.{b}"
            shapes |= {f"{p}.norm1.gamma": (c,), f"{p}.norm1.beta": (c,),
                       f"{p}.attn.q.weight": (c, c), f"{p}.attn.q.bias": (c,),
                       f"{p}.attn.kv.weight": (2 * c, c), f"{p}.attn.kv.bias": (2 * c,)}
            if sr > 1:
                shapes |= {f"{p}.attn.sr.weight": (c, c, sr, sr), f"{p}.attn.sr.bias": (c,),
                           f"{p}.attn.norm.gamma": (c,), f"{p}.attn.norm.beta": (c,)}
            shapes |= {f"{p}.attn.proj.weight": (c, c), f"{p}.attn.proj.bias": (c,),
                       f"{p}.norm2.gamma": (c,), f"{p}.norm2.beta": (c,),
                       f"{p}.mlp.fc1.weight": (hidden, c), f"{p}.mlp.fc1.bias": (hidden,),
                       f"{p}.mlp.dwconv.dwconv.weight": (hidden, 1, 3, 3), f"{p}.mlp.dwconv.dwconv.bias": (hidden,),
                       f"{p}.mlp.fc2.weight": (c, hidden), f"{p}.mlp.fc2.bias": (c,)}
        shapes |= {f"backbone.norm{s}.gamma": (c,), f"backbone.norm{s}.beta": (c,)}
        c_in = c
    if with_head:
        e = cfg.decoder_dim
        for s, c in enumerate(cfg.embed_dims, start=1):
            shapes |= {f"decode_head.linear_c{s}.proj.weight": (e, c), f"decode_head.linear_c{s}.proj.bias": (e,)}
        shapes["decode_head.linear_fuse.conv.weight"] = (e, 4 * e, 1, 1)
        for p in ("gamma", "beta", "moving_mean", "moving_variance"):
            shapes[f"decode_head.linear_fuse.bn.{p}"] = (e,)
        shapes["decode_head.linear_pred.weight"] = (num_classes, e, 1, 1)
        shapes["decode_head.linear_pred.bias"] = (num_classes,)
    return shapes


def _variant_name(variant: str) -> str:
    variant_config(variant)  # refuses an unknown name
    return str(variant).lower().removeprefix("mit_")


def source_key(name: str, layout: str) -> str:
    """How a MindSpore parameter name is spelled in a source of `layout` (for messages)."""
    codec, fields = _parse(name, "ms")
    if codec is None or layout == "mindspore":
        return name
    if layout == "hf":
        if codec.kind == "kv":
            return " + ".join(codec.render("hf", fields, kv=half) for half in ("key", "value"))
        return codec.render("hf", fields)
    key = codec.render("nvlabs", fields)
    return key.removeprefix("backbone.") if layout == "nvlabs_imagenet" else key


def check_shapes(params: Mapping[str, np.ndarray], expected: Mapping[str, tuple], source: str = "checkpoint",
                 absent: Iterable[str] = (), layout: str = "mindspore") -> None:
    """segformer.models.checkpoint.check_fit with the source's own spelling of each name in the message."""
    try:
        check_fit(params, expected, source, absent=absent, spell=lambda key: source_key(key, layout))
    except CheckpointMismatch as error:
        raise ConversionError(str(error)) from None


# ---------------------------------------------------------------------------------------------------------
# Conversion entry points.

def to_mindspore(state: Mapping[str, np.ndarray], layout: str, variant: str | None = None,
                 num_classes: int | None = None, source: str = "checkpoint"):
    """Rename a loaded source to MindSpore names and check it against the variant table.

    Returns (variant, {name: float32 array}, notes); notes are human-readable lines about what was dropped,
    recognised or left out. Raises ConversionError (naming `source`) on a variant mismatch or on missing,
    unexpected or mis-shaped keys.
    """
    if layout not in LAYOUTS:
        raise ConversionError(f"{source}: unknown layout {layout!r} (one of {sorted(LAYOUTS)})")
    notes = [f"{source}: {LAYOUTS[layout]}"]
    params, absent_halves = _to_ms_names(state, layout, notes)
    found = detect_variant(params, source)
    if variant is not None and _variant_name(variant) != found:
        raise ConversionError(f"{source}: holds a SegFormer-{found} checkpoint, but variant {variant} was requested")
    notes.append(f"variant {found} (embed dims {VARIANTS[found].embed_dims}, depths {VARIANTS[found].depths})")
    head = has_head(params)
    if head and "decode_head.linear_pred.weight" in params:
        found_classes = int(params["decode_head.linear_pred.weight"].shape[0])
        if num_classes is not None and num_classes != found_classes:
            raise ConversionError(
                f"{source}: its classifier has {found_classes} classes, but num_classes {num_classes} was requested")
        num_classes = found_classes
    num_classes = 19 if num_classes is None else num_classes
    expected = expected_shapes(found, num_classes, with_head=head)
    check_shapes(params, expected, source, absent=absent_halves, layout=layout)
    converted = {name: np.asarray(params[name], dtype=np.float32, order="C") for name in expected}  # model order
    cast = sorted({str(params[name].dtype) for name in expected} - {"float32"})
    if cast:
        notes.append(f"tensors stored as {', '.join(cast)} converted to float32")
    if head:
        notes.append(f"full model: backbone + decode head, {num_classes} classes")
    else:
        notes.append("backbone only: the decode head is not in the source and keeps its initialisation "
                     "when this checkpoint is loaded into a model")
    return found, converted, notes


def num_classes_of(params: Mapping[str, np.ndarray]) -> int | None:
    weight = params.get("decode_head.linear_pred.weight")
    return None if weight is None else int(weight.shape[0])


def save_mindspore(params: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
    """Write {name: array} as a MindSpore checkpoint, atomically (complete file or none)."""
    import mindspore

    items = [{"name": name, "data": mindspore.Tensor(value)} for name, value in params.items()]
    with atomic_path(path, suffix=".ckpt") as tmp:
        mindspore.save_checkpoint(items, str(tmp))


# ---------------------------------------------------------------------------------------------------------
# The way back: MindSpore -> Hugging Face.

def _class_names(num_classes: int) -> list[str]:
    if num_classes == 19:
        return [label.name for label in train_classes()]
    return [f"LABEL_{i}" for i in range(num_classes)]


def hf_config(variant: str, num_classes: int = 19) -> dict:
    """A SegformerConfig (as config.json content) describing `variant` with `num_classes` labels."""
    cfg = variant_config(variant)
    names = _class_names(num_classes)
    return {
        "architectures": ["SegformerForSemanticSegmentation"],
        "model_type": "segformer",
        "num_channels": cfg.in_channels,
        "num_encoder_blocks": len(cfg.depths),
        "depths": list(cfg.depths),
        "sr_ratios": list(cfg.sr_ratios),
        "hidden_sizes": list(cfg.embed_dims),
        "patch_sizes": list(cfg.patch_sizes),
        "strides": list(cfg.strides),
        "num_attention_heads": list(cfg.num_heads),
        "mlp_ratios": list(cfg.mlp_ratios),
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "classifier_dropout_prob": 0.1,
        "initializer_range": 0.02,
        "drop_path_rate": cfg.drop_path_rate,
        "layer_norm_eps": 1e-6,
        "decoder_hidden_size": cfg.decoder_dim,
        "semantic_loss_ignore_index": IGNORE_INDEX,
        "reshape_last_stage": True,
        "num_labels": num_classes,
        "id2label": {str(i): n for i, n in enumerate(names)},
        "label2id": {n: i for i, n in enumerate(names)},
    }


def ms_to_hf(params: Mapping[str, np.ndarray], variant: str | None = None, source: str = "checkpoint"):
    """A full MindSpore parameter set -> (Hugging Face file state, config dict)."""
    found, params, _ = to_mindspore(params, "mindspore", variant, source=source)
    if not has_head(params):
        raise ConversionError(f"{source}: holds only the backbone; a Hugging Face SegformerForSemanticSegmentation "
                              f"needs the decode head too")
    num_classes = num_classes_of(params)
    state = ms_to_hf_names(params)
    state["decode_head.batch_norm.num_batches_tracked"] = np.zeros((), dtype=np.int64)  # a buffer HF expects
    return state, hf_config(found, num_classes)


def write_hf(folder: str | os.PathLike, state: Mapping[str, np.ndarray], config: Mapping) -> None:
    """Write model.safetensors + config.json into `folder`; each file atomically, the config last."""
    save_file = require("safetensors.numpy", "convert", what=str(folder)).save_file

    folder = Path(folder)
    with atomic_path(folder / "model.safetensors") as tmp:
        save_file({k: np.asarray(v, order="C") for k, v in state.items()}, str(tmp), metadata={"format": "pt"})
    write_json(folder / "config.json", dict(config))
