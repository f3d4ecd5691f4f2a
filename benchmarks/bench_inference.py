"""Inference latency of SegFormer in MindSpore (our build_model, graph mode, eval) against Hugging Face
PyTorch (SegformerForSemanticSegmentation built offline from a SegformerConfig, random weights).

Each framework runs in its own subprocess of this one invocation, with the same thread count pinned for
both (MindSpore op threads, torch intra-op threads, OMP/MKL env, OMP_WAIT_POLICY), the same input shape and the same number
of warm-up and timed runs; the median of the timed runs is reported, and MindSpore / PyTorch as a ratio
(> 1: MindSpore is slower). Not a test: run it on an otherwise idle machine.

    python benchmarks/bench_inference.py                      # b0, 512x1024, batch 1 and 2, 2 threads
    python benchmarks/bench_inference.py --rounds 2 --runs 5         # alternate the workers, pool the runs
    python benchmarks/bench_inference.py --variant b2 --batches 1 --json results/bench_b2.json
"""

import argparse
import json
import statistics
import sys
import time

from workers import peak_rss_mib, run_worker   # same directory: on sys.path when run as a script

# HF config of each variant (retyped from the variant table; num_labels set per run).
HF_SHAPES = {
    "b0": dict(hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], decoder_hidden_size=256),
    "b1": dict(hidden_sizes=[64, 128, 320, 512], depths=[2, 2, 2, 2], decoder_hidden_size=256),
    "b2": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 6, 3], decoder_hidden_size=768),
    "b3": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 18, 3], decoder_hidden_size=768),
    "b4": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 8, 27, 3], decoder_hidden_size=768),
    "b5": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 6, 40, 3], decoder_hidden_size=768),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="b0", choices=sorted(HF_SHAPES))
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--num-classes", type=int, default=19)
    parser.add_argument("--threads", type=int, default=2, help="threads for both frameworks")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per batch size (after compiling)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per batch size; the median is reported")
    parser.add_argument("--rounds", type=int, default=1,
                        help="start each framework's worker this many times, alternating which goes first, and pool "
                             "the timed runs (evens out a machine whose load changes)")
    parser.add_argument("--omp-wait-policy", default="PASSIVE", choices=["PASSIVE", "ACTIVE", "unset"],
                        help="OMP_WAIT_POLICY for both workers. PASSIVE by default: with OpenMP's spinning waits, "
                             "PyTorch on a 2-core machine shared with other processes took 0.02-1.5 s for the same "
                             "small forward")
    parser.add_argument("--formulation", default="auto", help="MindSpore strided-conv formulation: auto, conv, matmul")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--framework", choices=["mindspore", "torch"], help=argparse.SUPPRESS)   # worker mode
    return parser.parse_args(argv)


def timed_runs(run_once, warmup: int, runs: int):
    for _ in range(warmup):
        run_once()
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        run_once()
        seconds.append(time.perf_counter() - start)
    return seconds


def mindspore_worker(args):
    import mindspore as ms
    import numpy as np
    ms.set_device("CPU")
    ms.device_context.cpu.op_tuning.threads_num(args.threads)
    ms.set_context(mode=ms.GRAPH_MODE)
    from segformer.models import build_model

    net = build_model(args.variant, args.num_classes, formulation=args.formulation)
    net.set_train(False)
    results = {"formulation": net.formulation}
    for batch in args.batches:
        image = ms.Tensor(np.random.RandomState(0).randn(batch, 3, args.height, args.width).astype(np.float32))
        start = time.perf_counter()
        logits = net(image).asnumpy()
        first_call = time.perf_counter() - start   # includes the graph compile for this input shape
        seconds = timed_runs(lambda: net(image).asnumpy(), args.warmup, args.runs)
        results[str(batch)] = {"first_call_s": first_call, "runs_s": seconds, "output_shape": list(logits.shape)}
    return results


def torch_worker(args):
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = SegformerConfig(num_labels=args.num_classes, **HF_SHAPES[args.variant])
    model = SegformerForSemanticSegmentation(config).eval()
    results = {"torch": torch.__version__}
    for batch in args.batches:
        image = torch.randn(batch, 3, args.height, args.width)

        def run_once():
            with torch.inference_mode():
                return model(pixel_values=image).logits

        start = time.perf_counter()
        logits = run_once()
        first_call = time.perf_counter() - start
        seconds = timed_runs(run_once, args.warmup, args.runs)
        results[str(batch)] = {"first_call_s": first_call, "runs_s": seconds, "output_shape": list(logits.shape)}
    return results


def pool_runs(pooled, framework, results):
    """Add one worker's timed runs to the pool of its framework (first-call times: from the first worker)."""
    if framework not in pooled:
        pooled[framework] = results
        return
    pooled[framework]["peak_rss_mib"] = max(pooled[framework]["peak_rss_mib"], results["peak_rss_mib"])
    for batch, figures in results.items():
        if isinstance(figures, dict):
            pooled[framework][batch]["runs_s"] += figures["runs_s"]


def report(args, mindspore_results, torch_results):
    rows = []
    print(f"SegFormer-{args.variant} inference, {args.height}x{args.width}, {args.threads} threads "
          f"(OMP_WAIT_POLICY {args.omp_wait_policy}), "
          f"median of {args.rounds} x {args.runs} runs after {args.warmup} warm-up (MindSpore graph mode, "
          f"formulation {mindspore_results['formulation']}; PyTorch {torch_results['torch']}, Hugging Face)")
    print(f"{'batch':>5}  {'MindSpore s':>11}  {'PyTorch s':>9}  {'ratio MS/PT':>11}  {'MS compile+1st s':>16}")
    for batch in args.batches:
        ms_run, pt_run = mindspore_results[str(batch)], torch_results[str(batch)]
        if ms_run["output_shape"] != pt_run["output_shape"]:
            raise SystemExit(f"output shapes differ at batch {batch}: MindSpore {ms_run['output_shape']}, "
                             f"PyTorch {pt_run['output_shape']}")
        ms_median, pt_median = statistics.median(ms_run["runs_s"]), statistics.median(pt_run["runs_s"])
        rows.append({"batch": batch, "mindspore_s": ms_median, "pytorch_s": pt_median, "ratio": ms_median / pt_median,
                     "mindspore_first_call_s": ms_run["first_call_s"], "mindspore_runs_s": ms_run["runs_s"],
                     "pytorch_runs_s": pt_run["runs_s"]})
        print(f"{batch:>5}  {ms_median:>11.3f}  {pt_median:>9.3f}  {ms_median / pt_median:>11.2f}  "
              f"{ms_run['first_call_s']:>16.1f}")
    print(f"peak RSS of the worker process: MindSpore {mindspore_results['peak_rss_mib']:.0f} MiB, "
          f"PyTorch {torch_results['peak_rss_mib']:.0f} MiB")
    return rows


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.framework:
        worker = mindspore_worker if args.framework == "mindspore" else torch_worker
        results = worker(args)
        results["peak_rss_mib"] = peak_rss_mib()
        print(json.dumps(results))
        return
    pooled = {}
    for round_index in range(args.rounds):
        order = ("mindspore", "torch") if round_index % 2 == 0 else ("torch", "mindspore")
        for framework in order:
            pool_runs(pooled, framework, run_worker(__file__, framework, argv, args.threads, args.omp_wait_policy))
    rows = report(args, pooled["mindspore"], pooled["torch"])
    if args.json:
        from segformer.io import write_json
        write_json(args.json, {"variant": args.variant, "height": args.height, "width": args.width,
                               "threads": args.threads, "rounds": args.rounds, "rows": rows})


if __name__ == "__main__":
    main()
