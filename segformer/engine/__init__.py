"""Training and evaluation machinery.

Recipe building blocks (import the submodule you need; this package imports nothing heavy itself):
- ``segformer.engine.optim``: ``build_param_groups`` (mmcv paramwise rule), ``AdamW`` (torch.optim.AdamW's
  update as a MindSpore Cell), ``describe_param_groups``.
- ``segformer.engine.schedule``: ``lr_at`` / ``PolySchedule`` (mmcv 1.x poly + linear warmup).
- ``segformer.engine.loss``: ``SegCrossEntropyLoss`` (mmseg 0.x cross-entropy, ignore 255).
Metrics live in ``segformer.metrics``.
"""
