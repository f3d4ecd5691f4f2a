"""segformer.devices (availability, one device per job, float32 kept float32) and the export tolerance.

No accelerator here: Ascend/GPU paths run with MindSpore's device calls replaced by recorders, and the
values we pass are checked against the accepted lists read from the installed MindSpore's own source.
What these tests cannot show (nothing here has an NPU): that CANN honours the modes, and the size of the
graph-vs-model difference on Ascend.
"""

import ast
import importlib
import importlib.util
import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from segformer import devices
from segformer.devices import DeviceError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """No device chosen yet in this process, no slot held, slots in a private folder, no DEVICE_ID."""
    monkeypatch.setattr(devices, "_in_use", None)
    for name in ("DEVICE_ID", "ASCEND_RT_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(devices.SLOT_DIR_ENV, str(tmp_path / "slots"))
    yield tmp_path / "slots"
    devices.release_devices()


# ---------------------------------------------------------------------------------------------------------
# Availability.

def test_ascend_on_this_machine_is_a_clear_error_naming_it_and_cpu():
    import mindspore as ms

    if ms.device_context.ascend.is_available():
        pytest.skip("this machine has Ascend")
    with pytest.raises(ValueError) as error:  # DeviceError is a ValueError: the scripts report it and exit 1
        devices.check_device_available("Ascend")
    message = str(error.value)
    assert "device: Ascend" in message and "available here: CPU" in message, message
    assert devices.available_targets() == ["CPU"]
    devices.check_device_available("CPU")  # no error


def test_unknown_target_is_refused():
    with pytest.raises(DeviceError, match="NPU"):
        devices.check_device_available("NPU")


# ---------------------------------------------------------------------------------------------------------
# Operator precision: what we call exists in the installed MindSpore, with values it accepts.

def _accepted_values(function) -> list:
    """The list literal assigned to `supported_modes` in the function's source (MindSpore's own check)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "supported_modes" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{function.__qualname__}: no supported_modes list in its source")


@pytest.mark.parametrize("precision", devices.PRECISIONS)
def test_ascend_precision_calls_exist_and_pass_accepted_values(precision):
    calls = devices.precision_calls("Ascend", precision)
    assert [(f, v) for _, f, v in calls] == [("precision_mode", "must_keep_origin_dtype"),
                                             ("matmul_allow_hf32", False), ("conv_allow_hf32", False)]
    for module, function, value in calls:
        fn = getattr(importlib.import_module(module), function)
        assert list(inspect.signature(fn).parameters) in (["mode"], ["value"]), (function, inspect.signature(fn))
        accepted = _accepted_values(fn)
        assert value in accepted and type(value) in {type(a) for a in accepted}, (function, value, accepted)


@pytest.mark.parametrize("precision", devices.PRECISIONS)
def test_gpu_precision_calls_exist_and_pass_booleans(precision):
    calls = devices.precision_calls("GPU", precision)
    assert [(f, v) for _, f, v in calls] == [("matmul_allow_tf32", False), ("conv_allow_tf32", False)]
    for module, function, value in calls:
        fn = getattr(importlib.import_module(module), function)
        assert list(inspect.signature(fn).parameters) == ["value"]
        # mindspore/device_context/gpu/op_precision.py: @args_type_check(value=bool)
        assert "@args_type_check(value=bool)" in inspect.getsource(fn) and isinstance(value, bool)


def test_cpu_sets_no_operator_precision_and_bad_precision_is_refused():
    assert devices.precision_calls("CPU", "fp32") == devices.precision_calls("CPU", "mixed") == ()
    with pytest.raises(DeviceError, match="bf16"):
        devices.precision_calls("Ascend", "bf16")


def test_use_device_on_cpu_calls_nothing_ignores_device_id_and_takes_no_lock(fresh, monkeypatch):
    for module, function, _ in devices.precision_calls("Ascend", "fp32") + devices.precision_calls("GPU", "fp32"):
        monkeypatch.setattr(importlib.import_module(module), function,
                            lambda *a, _f=function: pytest.fail(f"{_f} called on CPU"))
    monkeypatch.setenv("DEVICE_ID", "3")
    settings = devices.use_device("CPU", precision="fp32")
    assert settings == {"device": "CPU", "device_id": None, "device_id_from": "CPU (no device id)",
                        "precision": "fp32", "op_precision": {}}
    import mindspore as ms

    assert ms.get_current_device().device_target == "CPU"
    assert not fresh.exists() or not any(fresh.iterdir())
    assert devices.use_device("CPU") == settings  # a second call: the same, nothing more
    assert devices.describe_device(settings) == "device CPU; precision fp32; op precision: none set (CPU computes as written)"


# ---------------------------------------------------------------------------------------------------------
# The Ascend path with MindSpore's device calls recorded (no NPU here).

@pytest.fixture
def fake_ascend(fresh, monkeypatch):
    import mindspore as ms

    calls = []
    monkeypatch.setattr(devices, "check_device_available", lambda target: calls.append(("check", target)))
    monkeypatch.setattr(devices, "device_count", lambda target: 2)
    monkeypatch.setattr(ms, "set_device", lambda *args: calls.append(("set_device", *args)))
    monkeypatch.setattr(ms, "get_current_device", lambda: type("Info", (), {"device_target": "Ascend"})())
    for module, function, _ in devices.precision_calls("Ascend", "fp32"):
        monkeypatch.setattr(importlib.import_module(module), function,
                            lambda value, _f=function: calls.append((_f, value)))
    return calls


def test_ascend_job_checks_then_takes_a_free_slot_then_sets_precision(fake_ascend, fresh):
    settings = devices.use_device("Ascend", precision="fp32")
    assert fake_ascend == [("check", "Ascend"), ("set_device", "Ascend", 0),
                           ("precision_mode", "must_keep_origin_dtype"), ("matmul_allow_hf32", False),
                           ("conv_allow_hf32", False)]
    assert settings["device_id"] == 0 and settings["op_precision"] == {
        "precision_mode": "must_keep_origin_dtype", "matmul_allow_hf32": False, "conv_allow_hf32": False}
    assert (fresh / "device_0.lock").is_file()
    line = devices.describe_device(settings)
    assert line == (f"device Ascend:0 (slot {fresh / 'device_0.lock'}); precision fp32; op precision: "
                    "precision_mode=must_keep_origin_dtype, matmul_allow_hf32=False, conv_allow_hf32=False")
    with pytest.raises(DeviceError, match="already uses Ascend"):
        devices.use_device("Ascend", precision="mixed")


def test_device_id_from_the_environment_wins_without_a_lock(fake_ascend, fresh, monkeypatch):
    monkeypatch.setenv("DEVICE_ID", "5")  # msrun's workers, rank-table scripts
    settings = devices.use_device("Ascend", precision="mixed")
    assert ("set_device", "Ascend", 5) in fake_ascend and settings["device_id_from"] == "DEVICE_ID=5"
    assert not fresh.exists() or not any(fresh.iterdir())
    monkeypatch.setattr(devices, "_in_use", None)
    monkeypatch.setenv("DEVICE_ID", "one")
    with pytest.raises(DeviceError, match="DEVICE_ID"):
        devices.use_device("Ascend")


# ---------------------------------------------------------------------------------------------------------
# Slots.

def test_concurrent_jobs_get_distinct_slots_until_none_is_left(fresh):
    assert devices.reserve_devices("Ascend", 1, count=3) == [0]
    assert devices.reserve_devices("Ascend", 1, count=3) == [1]
    assert devices.reserve_devices("Ascend", 1, count=3) == [2]
    with pytest.raises(DeviceError, match="no free Ascend device.*npu=N"):
        devices.reserve_devices("Ascend", 1, count=3)
    devices.release_devices([1])
    assert devices.reserve_devices("Ascend", 1, count=3) == [1]


def test_a_slot_is_held_by_another_process_until_it_exits(fresh):
    holder = subprocess.Popen(
        [sys.executable, "-c", "from segformer import devices; import sys; "
         "print(devices.reserve_devices('Ascend', 2, count=4), flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "[0, 1]"
        assert devices.reserve_devices("Ascend", 2, count=4) == [2, 3]
        with pytest.raises(DeviceError, match="0 free"):
            devices.reserve_devices("Ascend", 1, count=4)
    finally:
        holder.communicate("", timeout=30)
    devices.release_devices()
    assert devices.reserve_devices("Ascend", 4, count=4) == [0, 1, 2, 3]  # its exit released its locks


def test_visible_devices_restrict_the_slots_and_set_device_takes_the_index(fresh, monkeypatch):
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "4,6")
    assert devices.select_device_id("Ascend")[0] == 0 and (fresh / "device_4.lock").is_file()
    device_id, source = devices.select_device_id("Ascend")
    assert device_id == 1 and "device_6.lock" in source
    with pytest.raises(DeviceError, match="ASCEND_RT_VISIBLE_DEVICES=4,6"):
        devices.select_device_id("Ascend")
    # CANN reads the list up to the first invalid entry ("1, 2,3" is device 1 only).
    assert devices.visible_devices("Ascend", {"ASCEND_RT_VISIBLE_DEVICES": "1, 2,3"}) == [1]
    assert devices.visible_devices("CPU", {"ASCEND_RT_VISIBLE_DEVICES": "1"}) is None


def test_launcher_reserves_its_devices_and_shows_msrun_only_those(fresh, monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location("launch_train_script", ROOT / "workflow_scripts/launch_train.py")
    launch_train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launch_train)
    devices.reserve_devices("Ascend", 1, count=4)  # another job holds device 0
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "0,1,2,3")
    started = {}

    def start(command, env=None, **_):  # instead of starting msrun (or python for one device)
        started.update(command=command, env=env)
        return 0

    monkeypatch.setattr(launch_train.subprocess, "call", start)
    if hasattr(launch_train, "run_msrun"):
        monkeypatch.setattr(launch_train, "run_msrun", start)
    assert launch_train.main(["--devices", "2", "--log_dir", str(tmp_path / "msrun"), "--",
                              "--variant", "b0", "--device", "Ascend"]) == 0
    assert started["command"][0] == "msrun"
    assert started["env"]["ASCEND_RT_VISIBLE_DEVICES"] == "1,2"
    assert devices.visible_devices_env("CPU", 8) == {}
    started.clear()  # on CPU the environment is left alone
    assert launch_train.main(["--devices", "2", "--log_dir", str(tmp_path / "msrun"), "--", "--device", "CPU"]) == 0
    assert started["env"] is None


# ---------------------------------------------------------------------------------------------------------
# Export: the reload tolerance, and AIR deprecated in the installed MindSpore.

def test_export_tolerance_is_tight_on_cpu_and_relative_on_devices():
    from segformer.engine.export import ExportCheckFailed, check_close, export_tolerance

    assert export_tolerance("CPU") == (0.0, 1e-5)
    expected = np.full((1, 19, 4, 4), 20.0, np.float32)
    # Ascend: 1e-3 of the largest logit (20) plus 1e-5.
    assert check_close(expected + 0.019, expected, *export_tolerance("Ascend")) == pytest.approx(0.019, rel=1e-3)
    with pytest.raises(ExportCheckFailed, match="differs"):
        check_close(expected + 0.03, expected, *export_tolerance("Ascend"))
    with pytest.raises(ExportCheckFailed):  # CPU keeps the absolute bound, whatever the logits' size
        check_close(expected + 2e-5, expected, *export_tolerance("CPU"))
    with pytest.raises(ExportCheckFailed):  # NaN never passes
        check_close(expected * np.nan, expected, *export_tolerance("Ascend"))
    with pytest.raises(ExportCheckFailed, match="shape"):
        check_close(expected[:, :3], expected, *export_tolerance("CPU"))


def test_air_is_deprecated_in_the_installed_mindspore():
    import mindspore

    assert "AIR format is deprecated" in inspect.getsource(mindspore.export)


# ---------------------------------------------------------------------------------------------------------
# The workflow: resources and the AIR switch (dry runs).

def _dry_run(*config):
    return subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "--forceall", "results/b0/miou.csv",
                           "results/b0/segformer_b0.mindir", "--config", *config],
                          cwd=ROOT, capture_output=True, text=True)


def test_device_jobs_declare_npus_on_ascend_and_none_on_cpu():
    ascend = _dry_run("device=Ascend", "devices=4", "export={air: true}")
    assert ascend.returncode == 0, ascend.stdout + ascend.stderr
    jobs = {block.split(":", 1)[0]: block for block in ascend.stdout.split("\nrule ")[1:]}
    assert "npu=4" in jobs["train"]
    for rule in ("evaluate", "export"):
        assert "npu=1" in jobs[rule], jobs[rule]
    assert "--air results/b0/segformer_b0.air" in jobs["export"]
    cpu = _dry_run("device=CPU")
    assert cpu.returncode == 0, cpu.stdout + cpu.stderr
    assert "npu=0" in cpu.stdout and "npu=1" not in cpu.stdout and "--air" not in cpu.stdout


def test_air_needs_ascend():
    result = _dry_run("export={air: true}")
    assert result.returncode != 0
    assert "export.air: true needs device: Ascend" in result.stdout + result.stderr


def test_release_freed_heap_returns_freed_small_blocks_to_the_system():
    """What the train step does between its compile and its first run: 256 MiB of 1 KiB blocks (below
    glibc's mmap threshold, so on the heap, like the graph compiler's scratch), all freed; glibc keeps
    them in the process until release_freed_heap hands them back. Run in a child: a clean heap."""
    child = textwrap.dedent("""
        import ctypes
        from segformer.devices import release_freed_heap

        def rss_mib():
            return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2 ** 20

        libc = ctypes.CDLL(None)
        libc.malloc.restype = ctypes.c_void_p
        libc.free.argtypes = [ctypes.c_void_p]
        blocks = [libc.malloc(1024) for _ in range(256 * 1024)]
        for block in blocks:
            ctypes.memset(block, 1, 1024)
        ctypes.memset(libc.malloc(65536), 1, 65536)  # from the heap's top: the freed blocks are not the top
        for block in blocks:
            libc.free(block)
        kept = rss_mib()
        assert release_freed_heap()
        print(kept, rss_mib())
    """)
    result = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    kept, released = map(float, result.stdout.split())
    assert kept - released > 200, f"RSS {kept:.0f} MiB with the blocks freed, {released:.0f} MiB after the release"
