"""Time of one SegFormer TRAINING step (forward, loss, backward, AdamW update) in MindSpore (our training
step: build_model + SegCrossEntropyLoss + TrainStep + AdamW, graph mode, masks drawn per step) against Hugging Face
PyTorch (SegformerForSemanticSegmentation built offline, random weights, the same loss and parameter groups
with torch.optim.AdamW).

As in bench_inference.py: each framework runs in its own subprocess of this one invocation, with the same
thread count pinned for both and OMP_WAIT_POLICY=PASSIVE; both train on the same random batch (fixed seed,
labels 0..C-1 with some 255). The first step (MindSpore: with the graph compile) is reported apart from the
steady state, the median of the timed steps after warm-up; MindSpore / PyTorch as a ratio (> 1: MindSpore is
slower); peak RSS of each worker process. Not a test: run it on an otherwise idle machine.

    python benchmarks/bench_train_step.py                    # b0, batch 2 x 3 x 256 x 512, 2 threads
    python benchmarks/bench_train_step.py --variant b2 --runs 3
    python benchmarks/bench_train_step.py --demo             # MindSpore only: the demo's b0, batch 4, 128x128
"""

import argparse
import json
import statistics
import sys
import time

from bench_inference import HF_SHAPES, timed_runs   # same directory: on sys.path when run as a script
from workers import peak_rss_mib, run_worker

from segformer.data.cityscapes import IGNORE_INDEX

BASE_LR, WEIGHT_DECAY, HEAD_LR_MULT = 6e-5, 0.01, 10.0   # the official recipe
DEMO = dict(variant="b0", batch=4, height=128, width=128)   # the demo training (config.yaml defaults)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="b0", choices=sorted(HF_SHAPES))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--num-classes", type=int, default=19)
    parser.add_argument("--threads", type=int, default=2, help="threads for both frameworks")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after the first one")
    parser.add_argument("--runs", type=int, default=5, help="timed steps; the median is reported")
    parser.add_argument("--omp-wait-policy", default="PASSIVE", choices=["PASSIVE", "ACTIVE", "unset"],
                        help="OMP_WAIT_POLICY for both workers (see bench_inference.py)")
    parser.add_argument("--demo", action="store_true",
                        help="MindSpore only, the demo training's shape (b0, batch 4, 128x128): images/s")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--framework", choices=["mindspore", "torch"], help=argparse.SUPPRESS)   # worker mode
    args = parser.parse_args(argv)
    if args.demo:
        vars(args).update(DEMO)
    return args


def random_batch(args):
    """Images N(0, 1) and labels in [0, C) with about 10% ignored pixels, the same for both frameworks."""
    import numpy as np
    rng = np.random.RandomState(0)
    image = rng.randn(args.batch, 3, args.height, args.width).astype(np.float32)
    label = rng.randint(0, args.num_classes, size=(args.batch, args.height, args.width)).astype(np.int32)
    label[rng.rand(*label.shape) < 0.1] = IGNORE_INDEX
    return image, label


def measure(step_once, args):
    """First step (compile included) apart, then warm-up and the timed steps; plus the worker's peak RSS."""
    start = time.perf_counter()
    first_loss = step_once()
    first_step = time.perf_counter() - start
    seconds = timed_runs(step_once, args.warmup, args.runs)
    return {"first_step_s": first_step, "runs_s": seconds, "first_loss": first_loss, "peak_rss_mib": peak_rss_mib()}


def mindspore_worker(args):
    import mindspore as ms
    from segformer.devices import use_device
    use_device("CPU")   # as training sets it up (the memory pool's reservation included)
    ms.device_context.cpu.op_tuning.threads_num(args.threads)
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(0)
    from segformer.engine.loss import SegCrossEntropyLoss
    from segformer.engine.optim import AdamW, build_param_groups
    from segformer.engine.step import TrainStep
    from segformer.models import build_model
    from segformer.models.stochastic import draw_masks

    net = build_model(args.variant, args.num_classes)
    net.set_train(True)
    groups = build_param_groups(net, BASE_LR, WEIGHT_DECAY, head_lr_mult=HEAD_LR_MULT)
    step = TrainStep(net, SegCrossEntropyLoss(ignore_index=IGNORE_INDEX), AdamW(groups, BASE_LR))
    image, label = (ms.Tensor(array) for array in random_batch(args))
    one = ms.Tensor(1.0, ms.float32)
    iteration = iter(range(10 ** 9))

    def step_once():   # the masks are drawn every step, as training does (their cost is part of the step)
        masks = draw_masks(net.mask_layout, args.batch, seed=0, rank=0, iteration=next(iteration))
        return float(step(one, image, label, *(ms.Tensor(mask) for mask in masks))[0].asnumpy())

    results = measure(step_once, args)
    results["framework"] = f"MindSpore {ms.__version__}, graph mode, formulation {net.formulation}"
    return results


def torch_param_groups(model):
    """The recipe's groups on Hugging Face names: decode_head.* lr x10 (with decay), other names containing
    'norm' without decay, the rest base lr and decay (biases included), as build_param_groups does."""
    head, norm, default = [], [], []
    for name, param in model.named_parameters():
        (head if "head" in name else norm if "norm" in name else default).append(param)
    return [{"params": head, "lr": BASE_LR * HEAD_LR_MULT, "weight_decay": WEIGHT_DECAY},
            {"params": norm, "lr": BASE_LR, "weight_decay": 0.0},
            {"params": default, "lr": BASE_LR, "weight_decay": WEIGHT_DECAY}]


def torch_worker(args):
    import torch
    import torch.nn.functional as F
    from transformers import SegformerConfig, SegformerForSemanticSegmentation
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = SegformerConfig(num_labels=args.num_classes, **HF_SHAPES[args.variant])
    model = SegformerForSemanticSegmentation(config).train()
    optimizer = torch.optim.AdamW(torch_param_groups(model), lr=BASE_LR)
    image, label = random_batch(args)
    image, label = torch.from_numpy(image), torch.from_numpy(label).long()

    def step_once():
        optimizer.zero_grad(set_to_none=True)
        logits = model(pixel_values=image).logits
        logits = F.interpolate(logits, size=label.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, label, ignore_index=IGNORE_INDEX, reduction="none").mean()
        loss.backward()
        optimizer.step()
        return loss.item()

    results = measure(step_once, args)
    results["framework"] = f"PyTorch {torch.__version__}, Hugging Face SegformerForSemanticSegmentation"
    return results


def report(args, results):
    print(f"SegFormer-{args.variant} training step, batch {args.batch} x 3 x {args.height} x {args.width}, "
          f"{args.threads} threads (OMP_WAIT_POLICY {args.omp_wait_policy}), median of {args.runs} steps after "
          f"the first and {args.warmup} warm-up")
    print(f"{'framework':>10}  {'median s':>8}  {'first step s':>12}  {'peak RSS MiB':>12}  {'first loss':>10}")
    for framework, figures in results.items():
        figures["median_s"] = statistics.median(figures["runs_s"])
        print(f"{framework:>10}  {figures['median_s']:>8.3f}  {figures['first_step_s']:>12.1f}  "
              f"{figures['peak_rss_mib']:>12.0f}  {figures['first_loss']:>10.4f}   ({figures['framework']})")
    if "torch" in results:
        ratio = results["mindspore"]["median_s"] / results["torch"]["median_s"]
        print(f"ratio MindSpore / PyTorch (median step): {ratio:.2f}")
    if args.demo:
        print(f"demo training speed: {args.batch / results['mindspore']['median_s']:.1f} images/s")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.framework:
        worker = mindspore_worker if args.framework == "mindspore" else torch_worker
        print(json.dumps(worker(args)))
        return
    frameworks = ["mindspore"] if args.demo else ["mindspore", "torch"]
    results = {framework: run_worker(__file__, framework, argv, args.threads, args.omp_wait_policy) for framework in frameworks}
    report(args, results)
    if args.json:
        from segformer.io import write_json
        write_json(args.json, {"variant": args.variant, "batch": args.batch, "height": args.height,
                               "width": args.width, "threads": args.threads, "results": results})


if __name__ == "__main__":
    main()
