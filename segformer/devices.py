"""Which device a stage runs on: availability check, one device per job, float32 kept float32.

`use_device(target, precision=...)` is the one call every MindSpore stage makes before any other
MindSpore work (and before `mindspore.communication.init`):

1. `check_device_available(target)`: `device: Ascend` (or GPU) on a machine whose MindSpore cannot
   use it fails at once, naming the device and what this MindSpore can use.
2. The device id: `DEVICE_ID` when set (msrun sets it to the worker's local rank, rank-table scripts
   to their device); otherwise, on Ascend/GPU, the first free *device slot* of this node: an exclusive,
   non-blocking `fcntl.flock` on `<slot_dir>/device_<i>.lock`, held until the process exits, so that
   concurrent Snakemake jobs (`--resources npu=8`) each get their own device. No free slot: an error.
   On CPU there is no id and no lock.
3. `mindspore.set_device(target, device_id)`, then the operator precision modes of `precision`
   (`precision_calls`): on Ascend CANN's precision_mode and HF32 switches, on GPU the TF32 switches,
   so that fp32 means float32 there too. On CPU nothing is called: it computes float32 as written.

It returns the effective settings (`describe_device` makes them one line for a log header).

For data-parallel training on one node, the launcher reserves `devices` slots with
`reserve_devices` and hands them to msrun through `visible_devices_env` (ASCEND_RT_VISIBLE_DEVICES /
CUDA_VISIBLE_DEVICES); msrun's workers then get DEVICE_ID = local rank, an index into that list.

MindSpore is imported inside the functions: the slot functions work without it (the launcher).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
from pathlib import Path

TARGETS = ("CPU", "GPU", "Ascend")
PRECISIONS = ("fp32", "mixed")

# Where the slot lock files live; one folder per node (it must be node-local, not on a shared disk).
SLOT_DIR_ENV = "SEGFORMER_DEVICE_SLOT_DIR"
DEFAULT_SLOT_DIR = "/tmp/segformer-device-slots"

# The runtimes' variables that restrict the devices a process sees. CANN: "ASCEND_RT_VISIBLE_DEVICES
# ... Device ID indicates the logical ID ... Setting ASCEND_RT_VISIBLE_DEVICES to 1,2,3: the current
# process can use only the devices 1, 2, 3 ... their index values are 0, 1, 2" (CANN environment
# variable reference, envref_07_0028); entries after an invalid one are ignored. MindSpore reads it the
# same way: mindspore/runtime/thread_bind_core.py, _get_physical_device_id (logical index -> listed id).
VISIBLE_DEVICES_ENV = {"Ascend": "ASCEND_RT_VISIBLE_DEVICES", "GPU": "CUDA_VISIBLE_DEVICES"}

# Operator precision per (target, precision): (module, function, value), called in this order after
# mindspore.set_device (their guard, mindspore/device_context/{ascend,gpu}/device.py _is_supported,
# reads the context's device_target) and before the first kernel runs (the runtime initialises then).
#
# Ascend, mindspore/device_context/ascend/op_precision.py (MindSpore 2.10):
#   precision_mode(mode): mode in supported_modes ("force_fp16", "allow_fp32_to_fp16",
#     "allow_mix_precision", "must_keep_origin_dtype", "force_fp32", ...); "must_keep_origin_dtype:
#     Maintain the original precision". The 2.10 docstring says the framework default is
#     must_keep_origin_dtype and that this default "is an experimental parameter, and may change";
#     earlier releases (2.5 docs) defaulted Atlas training series (910A) to allow_fp32_to_fp16 (matrix
#     operators in float16). Set explicitly, whatever the default of the day.
#   matmul_allow_hf32(value), value in [True, False]: "CANN disables FP32 to HF32 for Matmul by default".
#   conv_allow_hf32(value), value in [True, False]: "CANN enables FP32 to HF32 for Conv by default"
#     (HF32 exists on Atlas A2, 910B: float32 convolutions with a 10-bit mantissa).
#   Each may be set once per process ("can not be set repeatedly"; the same value again is a no-op).
# GPU, mindspore/device_context/gpu/op_precision.py: matmul_allow_tf32(bool) (default False),
#   conv_allow_tf32(bool) (default True: cuDNN convolutions in TF32 on Ampere and later).
#
# mixed (amp O2, see segformer.engine.train): the graph itself casts to float16; the same settings keep
# what amp leaves in float32 (LayerNorm, BatchNorm, the attention softmax, the loss) in float32 and stop
# CANN from lowering anything further.
_ASCEND_OP_PRECISION = "mindspore.device_context.ascend.op_precision"
_GPU_OP_PRECISION = "mindspore.device_context.gpu.op_precision"
_KEEP_FLOAT32 = {
    "Ascend": ((_ASCEND_OP_PRECISION, "precision_mode", "must_keep_origin_dtype"),
               (_ASCEND_OP_PRECISION, "matmul_allow_hf32", False),
               (_ASCEND_OP_PRECISION, "conv_allow_hf32", False)),
    "GPU": ((_GPU_OP_PRECISION, "matmul_allow_tf32", False),
            (_GPU_OP_PRECISION, "conv_allow_tf32", False)),
    "CPU": (),
}


class DeviceError(ValueError):
    """A device that cannot be used: not in this MindSpore, no free slot, a bad DEVICE_ID."""


_held_slots: dict[int, int] = {}  # device id -> open file descriptor holding its lock
_in_use: dict | None = None  # what use_device set in this process


def _check_target(target: str) -> None:
    if target not in TARGETS:
        raise DeviceError(f"device {target!r}: expected one of {', '.join(TARGETS)}")


def available_targets() -> list[str]:
    """The targets this MindSpore can use here. mindspore.device_context.<target>.is_available() is
    what MindSpore records when `import mindspore` loads its device plugins
    (mindspore/device_context/ascend/device.py is_available: MSContext.is_pkg_support_device)."""
    import mindspore as ms

    return [t for t in TARGETS if getattr(ms.device_context, t.lower()).is_available()]


def check_device_available(target: str) -> None:
    """Raise DeviceError, naming `target` and the targets that work, unless MindSpore can use `target`."""
    _check_target(target)
    import mindspore as ms

    if getattr(ms.device_context, target.lower()).is_available():
        return
    # On a CPU-only machine the Ascend build of 2.10 says e.g. "Load dynamic library:
    # libmindspore_ascend.so.2 failed. libge_runner.so: cannot open shared object file" (no CANN).
    from mindspore._c_expression import MSContext

    reason = MSContext.get_instance().load_plugin_error().strip().splitlines()
    raise DeviceError(
        f"device: {target} was asked for, but MindSpore {ms.__version__} cannot use {target} on this machine"
        f"{' (' + reason[0] + ')' if reason else ''}; available here: {', '.join(available_targets())}. "
        f"Run with device=CPU, or on a machine with {target} and MindSpore's {target} build"
        f"{' for its CANN version' if target == 'Ascend' else ''}.")


def visible_devices(target: str, environ=None) -> list[int] | None:
    """The device ids listed in the target's visibility variable (None: unset, all devices), read as
    CANN reads ASCEND_RT_VISIBLE_DEVICES: comma-separated, stopping at the first invalid entry."""
    name = VISIBLE_DEVICES_ENV.get(target)
    value = (os.environ if environ is None else environ).get(name or "", "").strip()
    if not name or not value:
        return None
    ids = []
    for item in value.split(","):
        if not item.isdigit():
            break
        ids.append(int(item))
    return ids


def device_count(target: str) -> int:
    """Devices of `target` on this node as MindSpore reports them
    (mindspore.device_context.{ascend,gpu}.device_count; the CPU counts as one)."""
    _check_target(target)
    if target == "CPU":
        return 1
    import mindspore as ms

    return int(getattr(ms.device_context, target.lower()).device_count())


def slot_dir_of(slot_dir: str | os.PathLike | None = None, environ=None) -> Path:
    environ = os.environ if environ is None else environ
    return Path(slot_dir or environ.get(SLOT_DIR_ENV) or DEFAULT_SLOT_DIR)


def reserve_devices(target: str, number: int, *, slot_dir: str | os.PathLike | None = None,
                    count: int | None = None, environ=None) -> list[int]:
    """Lock `number` free device slots of this node and return their device ids (ascending).

    Candidates: the ids in the visibility variable when it is set, else range(count) (count: MindSpore's
    device count unless given). Each slot is an exclusive non-blocking flock on
    `<slot_dir>/device_<id>.lock`, held by this process until it exits (the descriptor is not inherited
    by children: os.open makes it non-inheritable). Too few free slots: DeviceError, nothing held.
    """
    _check_target(target)
    if number < 1:
        raise DeviceError(f"cannot reserve {number} devices")
    candidates = visible_devices(target, environ)
    if candidates is not None:
        source = f"{VISIBLE_DEVICES_ENV[target]}={','.join(map(str, candidates))}"
    else:
        count = device_count(target) if count is None else count
        candidates, source = list(range(count)), f"{count} {target} device(s) on this node"
    folder = slot_dir_of(slot_dir, environ)
    folder.mkdir(parents=True, exist_ok=True)
    taken: list[int] = []
    for device_id in candidates:
        if len(taken) == number:
            break
        if device_id in _held_slots:
            continue  # this process holds it already (flock would let us lock it again)
        fd = os.open(folder / f"device_{device_id}.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        _held_slots[device_id] = fd
        taken.append(device_id)
    if len(taken) < number:
        release_devices(taken)
        raise DeviceError(
            f"no free {target} device: {number} wanted, {len(taken)} free among {source} (slot locks in "
            f"{folder}). Run fewer device jobs at once: snakemake --resources npu=N with N the devices of "
            f"this node; or set DEVICE_ID to choose one by hand.")
    return taken


def release_devices(device_ids=None) -> None:
    """Give back slots this process holds (all by default); the process exit does it too."""
    for device_id in list(_held_slots if device_ids is None else device_ids):
        fd = _held_slots.pop(device_id, None)
        if fd is not None:
            os.close(fd)  # closing the only descriptor of the lock releases it


def visible_devices_env(target: str, number: int, *, slot_dir=None, count=None, environ=None) -> dict:
    """For a launcher (msrun): reserve `number` slots and return the environment that shows only them
    to the workers, e.g. {"ASCEND_RT_VISIBLE_DEVICES": "2,3"}; {} on CPU."""
    if target == "CPU":
        return {}
    ids = reserve_devices(target, number, slot_dir=slot_dir, count=count, environ=environ)
    return {VISIBLE_DEVICES_ENV[target]: ",".join(map(str, ids))}


def select_device_id(target: str, *, slot_dir=None, count=None, environ=None) -> tuple[int | None, str]:
    """(device id to pass to mindspore.set_device, where it came from) for one process."""
    _check_target(target)
    environ = os.environ if environ is None else environ
    if target == "CPU":
        return None, "CPU (no device id)"
    if environ.get("DEVICE_ID", "").strip():
        value = environ["DEVICE_ID"].strip()
        if not value.isdigit():
            raise DeviceError(f"DEVICE_ID={value!r}: expected a device number (0, 1, ...)")
        return int(value), f"DEVICE_ID={value}"
    device_id = reserve_devices(target, 1, slot_dir=slot_dir, count=count, environ=environ)[0]
    visible = visible_devices(target, environ)
    lock = slot_dir_of(slot_dir, environ) / f"device_{device_id}.lock"
    if visible:  # set_device takes the index into the visible list (CANN semantics above)
        return visible.index(device_id), f"slot {lock} ({VISIBLE_DEVICES_ENV[target]} index {visible.index(device_id)})"
    return device_id, f"slot {lock}"


def precision_calls(target: str, precision: str) -> tuple[tuple[str, str, object], ...]:
    """The (module, function, value) calls that `use_device` makes for `precision` on `target`."""
    _check_target(target)
    if precision not in PRECISIONS:
        raise DeviceError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    return _KEEP_FLOAT32[target]


def apply_precision(target: str, precision: str) -> dict:
    """Make the precision_calls (after mindspore.set_device, before any kernel); {function: value}."""
    import importlib

    applied = {}
    for module, function, value in precision_calls(target, precision):
        getattr(importlib.import_module(module), function)(value)
        applied[function] = value
    return applied


def use_device(target: str, *, precision: str = "fp32", slot_dir=None, count=None, environ=None) -> dict:
    """Check, pick and set the device of this process, and its operator precision; call it before any
    other MindSpore work (and before mindspore.communication.init). Returns the effective settings:
    {"device": target, "device_id": int or None, "device_id_from": str, "precision": precision,
    "op_precision": {function: value}}. A second call in the same process returns the first result
    (same target and precision) instead of taking a second slot."""
    global _in_use
    precision_calls(target, precision)  # validates both before anything else
    if _in_use is not None:
        if (_in_use["device"], _in_use["precision"]) != (target, precision):
            raise DeviceError(f"this process already uses {_in_use['device']} ({_in_use['precision']}); "
                              f"cannot switch to {target} ({precision})")
        return dict(_in_use)
    check_device_available(target)
    device_id, source = select_device_id(target, slot_dir=slot_dir, count=count, environ=environ)
    import mindspore as ms

    if device_id is None:
        ms.set_device(target)
    else:
        ms.set_device(target, device_id)
    applied = apply_precision(target, precision)
    if target == "CPU":
        reserve_cpu_memory_pool()
    # mindspore.get_current_device (mindspore/device_manager.py), not the deprecated get_context("device_target")
    current = ms.get_current_device()
    _in_use = {"device": current.device_target, "device_id": device_id, "device_id_from": source,
               "precision": precision, "op_precision": applied}
    return dict(_in_use)


def reserve_cpu_memory_pool() -> str:
    """Give MindSpore's CPU memory pool its address space up front, as much as the machine's memory.

    Why: by default the pool grows in 1 GiB blocks, and tensors of a few hundred MiB (the attention scores
    at 1024x1024) leave part of each block unusable: b0 training at 1024x1024 touched 4.0 GiB of pool for a
    3.3 GiB peak of live tensors; with the space reserved at once, 3.36 GiB. Reserving costs nothing: only
    the pages a tensor touches take memory (mindspore.runtime.set_memory, init_size). Returns the size."""
    import mindspore as ms

    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    size = f"{max(2, physical // 2 ** 30)}GB"
    ms.runtime.set_memory(init_size=size)
    return size


def release_freed_heap() -> bool:
    """Return the heap pages the C allocator holds free to the system (glibc `malloc_trim(0)`, which since
    glibc 2.8 releases free pages anywhere in the heap, not only at its top): called between the train
    step's graph compile and its first run, it took 82 MiB off b0's peak at 1024x1024. False where there
    is no malloc_trim (not glibc): nothing done."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim(0)
    return True


def describe_device(settings: dict) -> str:
    """One line for a log or the header of train_log.csv."""
    where = (settings["device"] if settings["device_id"] is None
             else f"{settings['device']}:{settings['device_id']} ({settings['device_id_from']})")
    ops = ", ".join(f"{k}={v}" for k, v in settings["op_precision"].items()) or "none set (CPU computes as written)"
    return f"device {where}; precision {settings['precision']}; op precision: {ops}"
