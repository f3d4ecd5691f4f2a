"""Export a trained SegFormer as a MindSpore graph (the export stage), like the seed's export.py.

    python workflow_scripts/export.py --variant b0 --ckpt results/b0/model.ckpt \
        --out results/b0/segformer_b0.mindir --height 1024 --width 2048 \
        [--device Ascend --air results/b0/segformer_b0.air]

Input: one normalised RGB image [1, 3, height, width]; output: logits [1, classes, height/4, width/4].
The MINDIR file is loaded back and must reproduce the checkpoint model's logits on a sample input to
max |diff| <= atol + rtol * max |logit| (defaults per device: segformer.engine.export.EXPORT_TOLERANCE;
CPU: exact in practice, bound 1e-5); otherwise the exit status is 1 and no file is left. AIR (deprecated
in MindSpore 2.10, opt-in) needs an Ascend device (MindSpore writes it only there). The device is checked
and chosen first (segformer.devices.use_device: DEVICE_ID, else a free device slot of this node).
"""

import argparse
import logging
import sys
import time

from segformer.io import OutputError
from segformer.models.variants import VARIANTS

log = logging.getLogger("export")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", required=True, choices=list(VARIANTS))
    parser.add_argument("--ckpt", "--ckpt_file", dest="ckpt", required=True,
                        help="MindSpore checkpoint of the whole model (--ckpt_file: the seed's name)")
    parser.add_argument("--out", required=True, help="the .mindir file to write")
    parser.add_argument("--air", default=None,
                        help="also write this .air file (Ascend only; AIR is deprecated in MindSpore 2.10)")
    parser.add_argument("--height", type=int, required=True)
    parser.add_argument("--width", type=int, required=True)
    parser.add_argument("--num_classes", type=int, default=19)
    parser.add_argument("--device", default="CPU", choices=["CPU", "GPU", "Ascend"])
    parser.add_argument("--rtol", type=float, default=None,
                        help="reload check, relative to max |logit| (default: per device)")
    parser.add_argument("--atol", type=float, default=None, help="reload check, absolute part (default: per device)")
    args = parser.parse_args(argv)
    if args.air and args.device != "Ascend":
        parser.error("--air needs --device Ascend (MindSpore writes AIR files only on Ascend)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from segformer.devices import DeviceError, describe_device, use_device
    from segformer.engine.export import ExportCheckFailed, export_model, export_tolerance
    from segformer.engine.inference import load_model
    from segformer.logs import configure_logging

    configure_logging()
    start = time.perf_counter()
    try:
        log.info("%s", describe_device(use_device(args.device)))
        default_rtol, default_atol = export_tolerance(args.device)
        rtol = default_rtol if args.rtol is None else args.rtol
        atol = default_atol if args.atol is None else args.atol
        net = load_model(args.variant, args.ckpt, args.num_classes)
        diff = export_model(net, args.out, (args.height, args.width), "MINDIR", rtol=rtol, atol=atol)
        log.info("wrote %s (input 1x3x%dx%d); reloaded graph vs model: max |diff| %.3g "
                 "(allowed: %g + %g x max |logit|)", args.out, args.height, args.width, diff, atol, rtol)
        if args.air:
            export_model(net, args.air, (args.height, args.width), "AIR")
            log.info("wrote %s", args.air)
    except (ValueError, DeviceError, ExportCheckFailed, RuntimeError, OutputError) as error:
        log.error("%s", error)
        print(f"error: {error}", file=sys.stderr)
        return 1
    log.info("export done in %.1f s", time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
