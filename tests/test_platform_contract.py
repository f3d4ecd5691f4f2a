"""Contract: every MindSpore operation the Ascend build of the model runs is documented for Ascend.

The project targets Ascend NPUs, where the model is built in the "conv" formulation, but CI has only CPUs.
So this test compiles (on CPU, in GRAPH_MODE, without running anything) what Ascend would run at a tiny
size, collects every primitive of the compiled frontend graphs and checks that the installed MindSpore
documents each one for Ascend ("Supported Platforms: ``Ascend`` ..." in its docstring). How primitives are
collected and matched to their documentation, and how gradient kernels and graph-internal nodes are
treated: tests/platform_ops.py.

Graphs (one compile each, b0 at 64 x 64, batch 1):
- train_step: model in train mode with drop path and head dropout on (the official 0.1 / 0.1, their keep
  masks as inputs), loss (segformer/engine/loss.py, default options), autodiff, AdamW update
  (segformer/engine/optim.py): segformer.engine.step.TrainStep as the training loop
  (segformer/engine/train.py) builds it for fp32 without accumulation;
- accumulated_update: the update after gradient accumulation, with the mixed-precision overflow check
  (unscale, finiteness check, conditional AdamW step; a graph with branches);
- inference: the cell Segmenter (segformer/engine/inference.py) compiles: model in eval mode, then the
  bilinear resize of the logits to the input size (in the model's formulation). Segmenter.scores resizes once
  more in PyNative with the same cell (the same primitive); its softmax is numpy, not MindSpore;
  The loss is built in the conv formulation as the training loop builds it for a conv model
  (`formulation=net.formulation`);
- loss_avg_non_ignore: the loss option `avg_non_ignore: true` (another branch of its graph), with its
  gradient.

What this cannot see: code that picks its ops by the device it traces on (here CPU): mindspore.amp.all_finite
compiles to IsFinite/ReduceAll here but to NPUGetFloatStatusV2/NPUClearFloatStatusV2 (documented Ascend) or
AllFinite (no documented platforms) on Ascend; and the float16 micro-step of mixed precision (amp only adds
Casts to the train_step graph's ops; left out to keep this file's compile time down). To follow an API
change, edit the factories only.
"""

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn, ops

from platform_ops import cell_classes, collect_primitives, document_all, format_table, where_used

ms.set_device("CPU")

VARIANT = "b0"
NUM_CLASSES = 19
BATCH = 1
SIZE = 64           # tiny (the stride-32 stage and the attention's 8x8 reduction need at least 29 x 29)


# ---------------------------------------------------------------------------------------------------
# Factories: what Ascend runs, built as the project builds it. Repoint these when the API changes.


def ascend_model(train: bool):
    """SegFormer as built for Ascend: the "conv" formulation, default drop path (0.1) and head dropout (0.1)."""
    from segformer.models import build_model

    net = build_model(VARIANT, NUM_CLASSES, formulation="conv")
    net.set_train(train)
    return net


def train_inputs(net):
    """The train step's inputs for one tiny batch: loss scale, image, label and the model's training masks
    (drawn outside the graph, as the training loop draws them)."""
    from segformer.models.stochastic import draw_masks

    image = ms.Tensor(np.zeros((BATCH, 3, SIZE, SIZE), np.float32))
    label = ms.Tensor(np.zeros((BATCH, SIZE, SIZE), np.int32))
    path_keep, channel_keep = draw_masks(net.mask_layout, BATCH, seed=0, rank=0, iteration=0)
    return ms.Tensor(1.0, ms.float32), image, label, ms.Tensor(path_keep), ms.Tensor(channel_keep)


def train_step_cell(net):
    """One optimizer step as the training loop builds it (fp32, one device, no accumulation)."""
    from segformer.engine.loss import SegCrossEntropyLoss
    from segformer.engine.optim import AdamW, build_param_groups
    from segformer.engine.step import TrainStep

    optimizer = AdamW(build_param_groups(net, 6e-5, 0.01), 6e-5)
    step = TrainStep(net, SegCrossEntropyLoss(formulation="conv"), optimizer)
    step.set_train(True)
    return step


def accumulated_update_cell(net):
    """The update after gradient accumulation with the overflow check of mixed precision (its own graph,
    TrainStep.apply_accumulated): the unscaling, the finiteness check, the conditional AdamW step."""
    from segformer.engine.loss import SegCrossEntropyLoss
    from segformer.engine.optim import AdamW, build_param_groups
    from segformer.engine.step import TrainStep

    optimizer = AdamW(build_param_groups(net, 6e-5, 0.01), 6e-5)
    step = TrainStep(net, SegCrossEntropyLoss(formulation="conv"), optimizer, grad_accum=2, check_overflow=True)
    return step.apply_sums, (ms.Tensor(1024.0, ms.float32),)


def inference_cell(net):
    """The cell Segmenter compiles (with jit=False, Segmenter keeps that cell itself as `_forward`)."""
    from segformer.engine.inference import Segmenter

    return Segmenter(net, jit=False)._forward


def inference_inputs():
    return (ms.Tensor(np.zeros((BATCH, 3, SIZE, SIZE), np.float32)),)


class _LossAndGradient(nn.Cell):
    """A loss and its gradient with respect to the logits (for loss options the train step does not use)."""

    def __init__(self, loss_fn):
        super().__init__()
        self.loss_fn = loss_fn
        self.value_and_grad = ops.value_and_grad(loss_fn)

    def construct(self, logits, labels):
        return self.value_and_grad(logits, labels)


def loss_option_cell():
    from segformer.engine.loss import SegCrossEntropyLoss

    return _LossAndGradient(SegCrossEntropyLoss(avg_non_ignore=True, formulation="conv"))


def loss_option_inputs():
    logits = ms.Tensor(np.zeros((BATCH, NUM_CLASSES, SIZE // 4, SIZE // 4), np.float32))
    return logits, ms.Tensor(np.zeros((BATCH, SIZE, SIZE), np.int32))


GRAPHS = ("train_step", "accumulated_update", "inference", "loss_avg_non_ignore")


def build_graphs():
    """{graph name: (cell, inputs)} of everything checked (the names of GRAPHS)."""
    train_net = ascend_model(train=True)
    return {
        "train_step": (train_step_cell(train_net), train_inputs(train_net)),
        "accumulated_update": accumulated_update_cell(ascend_model(train=True)),
        "inference": (inference_cell(ascend_model(train=False)), inference_inputs()),
        "loss_avg_non_ignore": (loss_option_cell(), loss_option_inputs()),
    }


# ---------------------------------------------------------------------------------------------------


class _DrawsInTheGraph(nn.Cell):
    """Drop path as it was before the masks became inputs (a Bernoulli draw, documented for GPU/CPU only),
    inside a branch on a tensor: a subgraph of its own, which the collector must see into."""

    def construct(self, x):
        if x.sum() > 0:
            x = x * ops.bernoulli(ops.zeros((x.shape[0], 1), ms.float32), p=0.9)
        return x * 2.0


def test_checker_flags_an_op_not_documented_for_ascend():
    """The checker itself, on a tiny graph: Bernoulli in a branch subgraph is found and flagged, the other
    operations pass."""
    primitives = collect_primitives(_DrawsInTheGraph(), ms.Tensor(np.ones((2, 3), np.float32)))
    reports = {report.name: report for report in document_all(primitives)}
    assert {"Bernoulli", "Mul", "Muls", "Switch"} <= set(reports), sorted(reports)
    # MindSpore 2.10 documents ops.bernoulli / ops.Bernoulli for GPU and CPU only (if a later version adds
    # Ascend, use another op documented without Ascend here)
    assert reports["Bernoulli"].platforms == ("GPU", "CPU") and not reports["Bernoulli"].ascend
    assert [name for name, report in reports.items() if not report.ascend] == ["Bernoulli"], \
        format_table(list(reports.values()), "tiny graph")


@pytest.fixture(scope="module")
def compiled():
    """{graph name: ({primitive: scopes}, {cell class name: where it is defined})}, each graph compiled once."""
    graphs = build_graphs()
    assert set(graphs) == set(GRAPHS), sorted(graphs)
    return {name: (collect_primitives(cell, *inputs), cell_classes(cell)) for name, (cell, inputs) in graphs.items()}


@pytest.fixture(scope="module")
def collected(compiled):
    """{graph name: {primitive: scopes}}."""
    return {name: primitives for name, (primitives, _) in compiled.items()}


def test_collector_sees_the_ascend_graphs(collected):
    """The collection is what the contract is about: the conv formulation (Conv2D, no im2col), autodiff
    (gradient kernels), the AdamW update and the loss in the train step; eval mode and the resize in
    inference. Guards the contract test against passing on a graph that is empty or the wrong one."""
    train = collected["train_step"]
    assert {"Conv2D", "Conv2DBackpropFilter", "LayerNormGrad", "LogSoftmax", "AdamWeightDecay"} <= set(train), \
        sorted(train)
    assert not {"Im2Col", "Unfold"} & set(train), "the train step was not built in the conv formulation"
    assert all("AdamW" in scope for scope in train["AdamWeightDecay"]), train["AdamWeightDecay"]
    assert any(scope.startswith("Gradients/") for scopes in train.values() for scope in scopes)
    inference = collected["inference"]
    assert {"Conv2D", "ResizeBilinearV2", "BatchNorm"} <= set(inference), sorted(inference)
    assert not any(scope.startswith("Gradients/") for scopes in inference.values() for scope in scopes)


@pytest.mark.parametrize("graph", GRAPHS)
def test_every_operation_is_documented_for_ascend(compiled, graph):
    primitives, classes = compiled[graph]
    reports = document_all(primitives)
    table = format_table(reports, f"{graph}: primitives of the Ascend ('conv') build, compiled on CPU, with "
                                  f"the platforms MindSpore {ms.__version__} documents ('!': not Ascend)")
    print("\n" + table)
    missing = [report for report in reports if not report.ascend]
    if missing:
        pytest.fail(
            f"{graph}: {len(missing)} operation(s) that MindSpore {ms.__version__} does not document for Ascend:\n"
            + "".join(f"  {r.name}: documented for {r.status} ({r.source}); {where_used(r, classes)}\n"
                      for r in missing)
            + "(scopes: MindSpore reuses the graph of identical cells, which then report their first instance)\n\n"
            + table, pytrace=False)
