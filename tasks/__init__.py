"""What train.fit() trains. A task supplies only what differs between trainings; fit() owns the loop.

A task is an object with:
    kind                    "clip", "captioner" or "composed": --resume=latest only looks at runs of the same kind
    select_metric           the validation metric that picks best.pt and drives early stopping
    setup(dev, rank, world, ckpt)
                            builds the model (with the weights of ckpt, a checkpoint being resumed, or None) and the
                            data; checks every split it needs, so a run fails before training, not after an epoch;
                            sets `module` (an nn.Module whose forward(*batch) returns {"loss": scalar tensor, other
                            named scalars logged as train/<name>}) and `label` (how outputs name the model)
    trains()                False when nothing trains (zero-shot): fit() then validates once
    uses_ddp                False when the module is not wrapped in DistributedDataParallel (fit() then averages
                            the gradients itself)
    param_groups(weight_decay), steps_per_epoch(), batches(epoch) (tuples on the device, the same for the same
    seed and epoch on every run), after_step() (after each optimizer step), validate() -> {metric: float},
    checkpoint(best) -> the task's part of a checkpoint (at least "model"), extra_results (a dict for
    results.json), provenance (what the model was built from: config.json, results.json, checkpoints), and
    optionally datasets (whose n_unreadable / n_bad_lines fit() reports at the end) and optim_args (AdamW
    keyword arguments beyond lr and weight decay; torch's defaults otherwise).

Tasks: text2shape.Text2Shape (CLIP on render/caption pairs, full or linear probe), photo2shape.Photo2Shape
(metric learning over photos and renders), captioner.Captioner (the generative captioner on a frozen CLIP),
composed.ComposedStage1 / ComposedStage2 (composed retrieval: CLIP on reference + text -> target, then a Combiner
on the frozen CLIP's cached features; train_composed.py).
"""
