"""Convert SegFormer weights to a MindSpore checkpoint (or a MindSpore checkpoint to Hugging Face files).

    python workflow_scripts/convert_model.py --src mit_b0.pth --dst mit_b0.ckpt [--variant b0]
    python workflow_scripts/convert_model.py --src model.ckpt --dst hf_dir --to hf

Sources (recognised from their keys): the authors' ImageNet backbones mit_bX.pth (-> backbone-only
checkpoint; the decode head keeps its initialisation), their trained segmentation checkpoints (state_dict +
meta), Hugging Face files (a folder, model.safetensors or pytorch_model.bin) and, for --to hf, this
project's MindSpore checkpoints. The result is checked against the built model: any missing, unexpected or
mis-shaped key is named, the exit status is 1 and nothing is written.
"""

from __future__ import annotations

import argparse
import sys

from segformer.convert.weights import (
    load_source,
    ms_to_hf,
    num_classes_of,
    save_mindspore,
    to_mindspore,
    write_hf,
)
from segformer.extras import MissingExtra
from segformer.io import OutputError
from segformer.models.checkpoint import CheckpointMismatch, check_fits_model


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", "--pt_model_path", dest="src", required=True,
                        help="source: mit_bX.pth, a trained NVlabs .pth, a Hugging Face folder/file, or a .ckpt "
                             "(--pt_model_path: the seed's name, still accepted)")
    parser.add_argument("--dst", "--ms_model_path", dest="dst", required=True,
                        help="destination: a .ckpt file (--to ms) or a folder (--to hf) (--ms_model_path: the "
                             "seed's name, still accepted)")
    parser.add_argument("--variant", default=None,
                        help="expected variant b0..b5; a source of another variant is refused (default: any)")
    parser.add_argument("--num_classes", type=int, default=None,
                        help="classes of the decode head (default: from the source's classifier, else 19)")
    parser.add_argument("--to", choices=("ms", "hf"), default="ms",
                        help="ms: MindSpore checkpoint (default); hf: Hugging Face model.safetensors + config.json")
    return parser.parse_args(argv)


def convert(args) -> list[str]:
    from segformer.models import build_model

    source = args.src
    layout, state = load_source(source)
    variant, params, notes = to_mindspore(state, layout, args.variant, args.num_classes, source=source)
    num_classes = num_classes_of(params) or args.num_classes or 19
    check_fits_model(params, build_model(variant, num_classes=num_classes), source, head_required=False)
    if args.to == "hf":
        hf_state, config = ms_to_hf(params, variant, source=source)
        write_hf(args.dst, hf_state, config)
        notes.append(f"wrote {args.dst}/model.safetensors and config.json ({len(hf_state)} tensors); "
                     f"note: Hugging Face runs every LayerNorm with eps 1e-5 "
                     f"(official: 1e-6 in blocks and stage norms)")
    else:
        save_mindspore(params, args.dst)
        notes.append(f"wrote {args.dst} ({len(params)} parameters)")
    return notes


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        notes = convert(args)
    except (CheckpointMismatch, MissingExtra, OutputError) as e:  # ConversionError is one; MissingExtra names the pip line
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("\n".join(notes))
    return 0


if __name__ == "__main__":
    import mindspore

    # Host work only (numpy, checkpoint files): pinned to the CPU, before any MindSpore work, so that
    # import_trained never takes an accelerator (unset, it is whatever the installed MindSpore defaults to).
    # Only as a script: mindspore.set_device refuses once a kernel has run in the process
    # (mindspore/device_manager.py set_device: "The runtime has been initialized").
    mindspore.set_device("CPU")
    sys.exit(main())
