"""infer.py on photographs as people have them: every PNG colour type and bit depth, JPEG (EXIF-rotated,
upper-case names), odd sizes, an image under the network's minimum, one file given as --images, and
broken files.

The images are made here (numpy / OpenCV / PIL), tiny so that each run stays short; the model is a b0
with its initial (seeded) weights saved as a checkpoint: what is checked is reading, sizes and drawing,
not the predictions' quality. Expected pixels come from the source arrays (or, for JPEG, from a decode
that ignores the EXIF orientation, rotated by numpy), so the colour conversion is checked end to end
through the overlay (0.5 image + 0.5 class colour).

Three infer.py runs, started side by side: a folder of every good image (whole-image mode, the config's
default), one small image as --images (slide + multi-scale + flip, so windows under the minimum are
padded), and a folder with broken files (fails before the model is loaded).
"""

import io
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
INFER = ROOT / "workflow_scripts" / "infer.py"
SMALL_IMAGE_SETTINGS = '{"mode":"slide","crop_size":[24,40],"stride":[16,16],"ratios":[0.75,1.0],"flip":true}'
EXIF_ORIENTATION = 0x0112


def smooth_rgb(rng, height, width) -> np.ndarray:
    """A smooth random RGB uint8 picture (JPEG keeps it close to itself)."""
    small = rng.integers(0, 256, (max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def jpeg_displayed_rgb(path: Path, rotate_clockwise: bool = False) -> np.ndarray:
    """The JPEG decoded without its EXIF orientation, turned as a viewer shows orientation 6 (numpy)."""
    stored = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)[:, :, ::-1]
    return np.rot90(stored, k=-1) if rotate_clockwise else stored


def make_good_images(folder: Path) -> dict[str, np.ndarray]:
    """Write one image per form people have; returns {stem: the RGB uint8 image as it should be read}."""
    rng = np.random.default_rng(7)
    folder.mkdir(parents=True)
    (folder / "holiday").mkdir()
    expected = {}

    rgb = smooth_rgb(rng, 45, 70)  # landscape, not a multiple of 32
    assert cv2.imwrite(str(folder / "rgb8.png"), rgb[:, :, ::-1])
    expected["rgb8"] = rgb

    portrait = smooth_rgb(rng, 70, 45)
    assert cv2.imwrite(str(folder / "holiday" / "portrait.jpg"), portrait[:, :, ::-1])
    expected["portrait"] = jpeg_displayed_rgb(folder / "holiday" / "portrait.jpg")

    strip = smooth_rgb(rng, 33, 97)  # upper-case extension
    assert cv2.imwrite(str(folder / "CAMERA.JPG"), strip[:, :, ::-1])
    expected["CAMERA"] = jpeg_displayed_rgb(folder / "CAMERA.JPG")

    # Stored 45 x 70 with EXIF orientation 6 (rotate 90 clockwise to display): read and drawn 70 x 45.
    stored = Image.fromarray(smooth_rgb(rng, 45, 70))
    exif = stored.getexif()
    exif[EXIF_ORIENTATION] = 6
    stored.save(folder / "rotated.JPEG", exif=exif.tobytes(), quality=95)
    expected["rotated"] = jpeg_displayed_rgb(folder / "rotated.JPEG", rotate_clockwise=True)

    tiny = smooth_rgb(rng, 20, 20)  # under the network's 29 x 29 minimum
    assert cv2.imwrite(str(folder / "tiny.png"), tiny[:, :, ::-1])
    expected["tiny"] = tiny

    deep = rng.integers(0, 65536, (45, 70, 3), dtype=np.uint16)  # 16-bit RGB: the high byte is kept
    assert cv2.imwrite(str(folder / "deep16.png"), deep[:, :, ::-1])
    expected["deep16"] = (deep >> 8).astype(np.uint8)

    gray16 = rng.integers(0, 65536, (33, 97), dtype=np.uint16)
    assert cv2.imwrite(str(folder / "gray16.png"), gray16)
    expected["gray16"] = np.repeat((gray16 >> 8).astype(np.uint8)[:, :, None], 3, axis=2)

    gray = smooth_rgb(rng, 70, 45)[:, :, 0]
    assert cv2.imwrite(str(folder / "gray.png"), gray)
    expected["gray"] = np.repeat(gray[:, :, None], 3, axis=2)

    palette = Image.fromarray(smooth_rgb(rng, 45, 70)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.save(folder / "palette.png")
    expected["palette"] = np.asarray(palette.convert("RGB"))

    rgba = np.concatenate([smooth_rgb(rng, 70, 45), rng.integers(0, 256, (70, 45, 1), dtype=np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(folder / "Transparent.PNG")  # alpha dropped, colours kept
    expected["Transparent"] = rgba[:, :, :3]

    assert cv2.imwrite(str(folder / ".hidden.png"), rgb)  # skipped: hidden
    (folder / "notes.txt").write_text("not an image\n")  # skipped: not png/jpg/jpeg
    return expected


def make_bad_folder(folder: Path) -> list[Path]:
    """A folder with one good image and the broken ones; returns the broken ones."""
    rng = np.random.default_rng(3)
    folder.mkdir(parents=True)
    assert cv2.imwrite(str(folder / "fine.png"), smooth_rgb(rng, 45, 70))
    png = cv2.imencode(".png", smooth_rgb(rng, 45, 70))[1].tobytes()
    jpeg = cv2.imencode(".jpg", smooth_rgb(rng, 45, 70))[1].tobytes()
    broken = {"cut.png": png[: len(png) // 2], "half.jpg": jpeg[: len(jpeg) * 2 // 3], "x.png": b"a text file\n",
              "empty.jpeg": b""}
    for name, data in broken.items():
        (folder / name).write_bytes(data)
    return [folder / name for name in broken]


def infer_command(checkpoint: Path, images: Path, out_dir: Path, *extra) -> list[str]:
    return [sys.executable, str(INFER), "--variant", "b0", "--ckpt", str(checkpoint), "--images", str(images),
            "--out_dir", str(out_dir), "--device", "CPU", *extra]


def output_of(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-5000:]}"


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def rendered_names(stems) -> set[str]:
    names = {f"{stem}_{kind}.png" for stem in stems for kind in ("gray", "color", "overlap")}
    return names | {f"labelIds/{stem}_labelIds.png" for stem in stems}


def colours_bgr() -> np.ndarray:
    from cityscapesscripts.helpers.labels import trainId2label

    return np.array([trainId2label[t].color[::-1] for t in range(19)], np.uint8)


def read_unchanged(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, f"{path}: unreadable"
    return image


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The three infer.py runs, side by side: {'good', 'single', 'bad'} -> (CompletedProcess, out_dir),
    with 'expected' (stem -> RGB image) and 'broken' (the bad files)."""
    import mindspore as ms

    from segformer.models import build_model

    work = tmp_path_factory.mktemp("infer_images")
    ms.set_seed(0)
    checkpoint = work / "b0.ckpt"
    ms.save_checkpoint(build_model("b0"), str(checkpoint))
    expected = make_good_images(work / "photos")
    broken = make_bad_folder(work / "bad")
    commands = {
        "good": infer_command(checkpoint, work / "photos", work / "out_good"),
        "single": infer_command(checkpoint, work / "photos" / "tiny.png", work / "out_single",
                                "--settings", SMALL_IMAGE_SETTINGS),
        "bad": infer_command(checkpoint, work / "bad", work / "out_bad"),
    }
    started = {key: subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
               for key, command in commands.items()}
    results = {}
    for key, process in started.items():
        stdout, stderr = process.communicate(timeout=600)
        results[key] = (subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr),
                        work / f"out_{key}")
    return {**results, "expected": expected, "broken": broken}


def test_every_form_of_image_renders_at_its_own_size(runs):
    result, out_dir = runs["good"]
    expected = runs["expected"]
    assert result.returncode == 0, output_of(result)
    assert files_under(out_dir) == rendered_names(expected), output_of(result)
    assert f"{len(expected)} images" in result.stderr, output_of(result)
    colours = colours_bgr()
    for stem, image in expected.items():
        gray = read_unchanged(out_dir / f"{stem}_gray.png")
        assert gray.shape == image.shape[:2] and gray.dtype == np.uint8 and gray.max() <= 18, (stem, gray.shape)
        np.testing.assert_array_equal(read_unchanged(out_dir / f"{stem}_color.png"), colours[gray], err_msg=stem)
        assert read_unchanged(out_dir / f"labelIds/{stem}_labelIds.png").shape == gray.shape
        # The overlay is 0.5 image + 0.5 colour: the image the network saw, as read, colour by colour.
        overlap = read_unchanged(out_dir / f"{stem}_overlap.png").astype(np.int32)
        wanted = (image[:, :, ::-1].astype(np.int32) + colours[gray]) / 2.0
        assert overlap.shape == wanted.shape, (stem, overlap.shape, wanted.shape)
        assert np.abs(overlap - wanted).max() <= 1, stem


def test_an_image_under_the_network_minimum_renders_alone_with_slide_and_multi_scale(runs):
    result, out_dir = runs["single"]
    assert result.returncode == 0, output_of(result)
    assert "1 images" in result.stderr and "slide 24x40" in result.stderr, output_of(result)
    assert files_under(out_dir) == rendered_names(["tiny"])
    gray = read_unchanged(out_dir / "tiny_gray.png")
    assert gray.shape == (20, 20) and gray.max() <= 18
    assert read_unchanged(out_dir / "tiny_overlap.png").shape == (20, 20, 3)


def test_broken_files_are_all_named_and_nothing_is_rendered(runs):
    result, out_dir = runs["bad"]
    assert result.returncode == 1, output_of(result)
    for path in runs["broken"]:
        assert str(path) in result.stderr, (path, output_of(result))
    assert f"{len(runs['broken'])} of {len(runs['broken']) + 1} images cannot be read" in result.stderr
    assert "truncated or corrupt JPEG" in result.stderr and "Traceback" not in result.stderr, output_of(result)
    assert not out_dir.exists()
    assert sorted(p.name for p in out_dir.parent.glob(".out_bad*")) == []


# ---------------------------------------------------------------------------------------------------------
# In-process checks of the pieces (cheap: no model).

def test_every_truncation_of_a_jpeg_is_refused_and_trailing_bytes_are_not():
    from segformer.io import jpeg_reaches_its_end

    rng = np.random.default_rng(5)
    picture = Image.fromarray(smooth_rgb(rng, 48, 64))
    exif = picture.getexif()
    exif[EXIF_ORIENTATION] = 3
    for options in ({}, {"progressive": True}, {"exif": exif.tobytes()}):
        buffer = io.BytesIO()
        picture.save(buffer, "JPEG", **options)
        data = buffer.getvalue()
        assert jpeg_reaches_its_end(data) and jpeg_reaches_its_end(data + b"camera trailer \xff\xd8"), options
        assert not [cut for cut in range(2, len(data)) if jpeg_reaches_its_end(data[:cut])], options
    restarts = cv2.imencode(".jpg", smooth_rgb(rng, 48, 64), [cv2.IMWRITE_JPEG_RST_INTERVAL, 2])[1].tobytes()
    assert jpeg_reaches_its_end(restarts) and not jpeg_reaches_its_end(restarts[:-2])


def test_images_to_render_takes_one_image_a_folder_in_any_case_or_refuses_a_binary_list(tmp_path):
    from segformer.engine.render import images_to_render

    rng = np.random.default_rng(0)
    for name in ("a.PNG", "b.Jpg", "c.jpeg", "d.bmp"):
        (tmp_path / name).write_bytes(cv2.imencode(Path(name).suffix.lower(), smooth_rgb(rng, 8, 8))[1].tobytes())
    assert [p.name for p in images_to_render(tmp_path)] == ["a.PNG", "b.Jpg", "c.jpeg"]
    assert images_to_render(tmp_path / "b.Jpg") == [tmp_path / "b.Jpg"]
    with pytest.raises(ValueError, match="neither a png/jpg image"):
        images_to_render(tmp_path / "d.bmp")
