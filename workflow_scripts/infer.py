"""Render a model's predictions (the inference rendering stage), like the seed's infer.py.

    python workflow_scripts/infer.py --variant b0 --ckpt results/b0/model.ckpt \
        --images results/data/val.txt --out_dir results/b0/infer
    python workflow_scripts/infer.py --variant b0 --ckpt model.ckpt --images my_photos/ --out_dir out/

--images is one image, a split list (IMAGE<TAB>LABEL) or any folder of png/jpg/jpeg images (any case,
searched recursively): 8- or 16-bit, RGB, RGBA, gray or palette, any size (see segformer.io.read_image_rgb
for the colour conversion and segformer.engine.inference for images smaller than the network's minimum).
For each image STEM: STEM_gray.png (train ids), STEM_color.png (Cityscapes palette), STEM_overlap.png
(colours over the image, alpha 0.5) and labelIds/STEM_labelIds.png (the test-server format). The
inference mode (whole, slide, multi-scale + flip) is the config's `evaluate` section, as in evaluation.
Every image is decoded once before the model loads: unreadable ones (truncated, not an image) are named
together and nothing is rendered. The output folder appears only when every image is drawn; an existing
non-empty one is refused.
"""

import argparse
import json
import logging
import sys
import time

from segformer.models.variants import VARIANTS

log = logging.getLogger("infer")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", required=True, choices=list(VARIANTS))
    parser.add_argument("--ckpt", required=True, help="MindSpore checkpoint of the whole model")
    parser.add_argument("--images", required=True, help="an image, a split list or a folder of images")
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--preview", default=None, help="also write a PNG of the first overlays and a legend")
    parser.add_argument("--limit", type=int, default=0, help="only the first N images (sorted); 0: all")
    parser.add_argument("--config_path", action="append", default=[],
                        help="workflow config YAML (repeatable); its `evaluate` section sets the inference mode")
    parser.add_argument("--settings", default=None, help="JSON merged over the config's `evaluate` section")
    parser.add_argument("--num_classes", type=int, default=None, help="default: the config's train.num_classes")
    parser.add_argument("--device", default=None, choices=["CPU", "GPU", "Ascend"])
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from segformer.devices import describe_device, use_device
    from segformer.engine.inference import InferenceSettings, Segmenter, load_model
    from segformer.engine.render import check_images, images_to_render, render_images, write_preview
    from segformer.logs import configure_logging
    from segformer.settings import deep_merge, load_config

    configure_logging()
    try:
        config = load_config(args.config_path)
        log.info("%s", describe_device(use_device(args.device or config["device"])))  # DeviceError: a ValueError
        override = json.loads(args.settings) if args.settings else {}
        settings = InferenceSettings.from_config(deep_merge(config["evaluate"], override))
        images = images_to_render(args.images, args.limit)
        check_images(images)
        net = load_model(args.variant, args.ckpt, args.num_classes or config["train"]["num_classes"])
        log.info("SegFormer-%s from %s; inference: %s; %d images -> %s", args.variant, args.ckpt,
                 settings.describe(), len(images), args.out_dir)
        start = time.perf_counter()
        render_images(Segmenter(net, settings), images, args.out_dir)
        if args.preview:
            write_preview(args.out_dir, images, args.preview)
    except (ValueError, OSError) as error:  # json, conversion, image and output-folder errors
        log.error("%s", error)
        print(f"error: {error}", file=sys.stderr)
        return 1
    log.info("rendered %d images in %.1f s", len(images), time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
