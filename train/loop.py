"""The training loop: data, model, state, jitted steps, eval, checkpoints, export.

`train_and_evaluate(config)` runs (or resumes) one training run in `config.workdir`:

  WORKDIR/config.json       the resolved config
  WORKDIR/class_names.json  class index -> name (index order of the labels)
  WORKDIR/checkpoints/N/    orbax checkpoints (state, data iterator position, meta)
  WORKDIR/metrics.jsonl     train and eval metrics, one JSON object per line
  WORKDIR/tb/               TensorBoard event files
  WORKDIR/export/           final weights for `load_pretrained` / the predictor
  WORKDIR/summary.json      best/last accuracy, wall time, paths

Steps are `jax.jit`-compiled with `NamedSharding`s over a 1-D `data` mesh of all devices:
the batch sharded, the state replicated and donated. No pmap.

What differs between classification and detection is a task object (`task_for(config)`):
`ClassificationTask` here, `flax_effnet.train.detection.DetectionTask` for `--task detection`.
It supplies the data, the model, the per-record transforms, the batch layout, the loss of a
step and the eval; everything else (schedule, optimizer, EMA, checkpoints and exact resume,
sharding, multi-host, metrics, export) is this one loop for both.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from flax_effnet.images import ImageLoadError
from flax import linen as nn

from flax_effnet.model import EfficientNet
from flax_effnet.registry import create_model, find_model_name, get_family, model_entry, module_fields
from flax_effnet.preprocessing import Preprocessing
from flax_effnet.pretrained import load_pretrained_full, save_pretrained
from flax_effnet.train import config as config_lib
from flax_effnet.train import default_dataset, distributed, input_pipeline, optim, sharding, sources, state as state_lib, steps
from flax_effnet.train.checkpoint import Checkpointer, PreemptionFlag
from flax_effnet.train.metrics import MetricWriter

# Config fields that may change between a run and its resumption without changing the run.
_RESUME_FREE_FIELDS = {"num_workers", "progress_bar", "log_every_steps", "eval_every_steps",
                       "max_unreadable_fraction",
                       "eval_batch_size", "checkpoint_every_steps", "keep_checkpoints", "workdir",
                       "distributed", "coordinator_address", "num_processes", "process_id"}


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the run stops without saving."""


class UnreadableDataError(ValueError):
    """More training images than `max_unreadable_fraction` cannot be read; the run stops."""


class UnreadableImages:
    """The images that could not be read: named in a warning once each, counted for the summary.

    In training each one was replaced by the next readable record (`sources.DecodedSource`); the
    count of replaced examples comes from the train step's metrics, summed over the global
    batch, so with several processes every process takes the same decision to stop.
    """

    def __init__(self, saved: dict | None = None):
        saved = saved or {}
        self.names = {split: list(saved.get(split, [])) for split in ("train", "val")}
        self.replaced_examples = int(saved.get("replaced_examples", 0))

    def note(self, split: str, name: str) -> None:
        if name not in self.names[split]:
            self.names[split].append(name)
            # Every process warns of its own: each reads only its rows of a batch.
            tqdm.write(f"WARNING: skipped unreadable {split} image {name}", file=sys.stderr)

    def check(self, step: int, batch_size: int, num_train: int, max_fraction: float) -> None:
        """Stop once more than `max_fraction` of the training images turn out unreadable:
        in the first epoch each file is read once, so this counts files; later, examples."""
        seen = max(step * batch_size, num_train)
        if self.replaced_examples > max_fraction * seen:
            listed = ", ".join(self.names["train"][:10]) + (" ..." if len(self.names["train"]) > 10 else "")
            raise UnreadableDataError(
                f"{self.replaced_examples} of the {step * batch_size} training images read by step {step} "
                f"could not be read, more than --max-unreadable-fraction {max_fraction:g} of the "
                f"{num_train} images; for example {listed}. Fix or remove them and rerun (the run "
                "resumes from its last checkpoint)."
            )

    def to_dict(self) -> dict:
        return {**self.names, "replaced_examples": self.replaced_examples}


@dataclasses.dataclass
class RunSetup:
    """What the loop derives from the config and the dataset once."""

    model: nn.Module
    prep: Preprocessing
    crop: input_pipeline.CropSpec
    pretrained_variables: dict | None
    pretrained_note: str
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    peak_lr: float
    eval_every: int


def _is_main() -> bool:
    return jax.process_index() == 0


def log(msg: str) -> None:
    if _is_main():
        tqdm.write(msg)


def compute_dtype(name: str):
    """'auto': bfloat16 compute where the backend is made for it (GPU/TPU), float32 on CPU."""
    if name == "auto":
        return jnp.bfloat16 if jax.default_backend() in ("gpu", "tpu") else jnp.float32
    if name not in ("float32", "bfloat16"):
        raise ValueError(f"compute_dtype must be auto, float32 or bfloat16, got {name!r}")
    return jnp.dtype(name)


def _training_fields(cls, config: config_lib.Config, num_classes: int, dtype) -> dict:
    """The module fields a run sets: classes, compute dtype, and the regularisation the
    config asks for where the family has it (MobileNetV1 and ReXNet-lite have no shortcuts,
    so no stochastic depth)."""
    fields = dict(num_classes=num_classes, dtype=dtype)
    if config.dropout_rate >= 0:
        fields["dropout_rate"] = config.dropout_rate
    if "drop_path_rate" in module_fields(cls):
        fields["drop_path_rate"] = config.drop_path_rate
    return fields


def describe(model: nn.Module) -> str:
    """'EfficientNet b0 (preset)', 'MobileNetV2 mobilenetv2_100', 'ReXNet (width 0.8)' ..."""
    if isinstance(model, EfficientNet):
        v = model.variant
        return f"EfficientNet {getattr(v, 'name', v)} ({'custom ' + str(v) if not isinstance(v, str) else 'preset'})"
    name = find_model_name(model)
    if name:
        return f"{type(model).__name__} {name}"
    return f"{type(model).__name__} (width {getattr(model, 'width', '?')})"


def build_model(config: config_lib.Config, num_classes: int):
    """(model, preprocessing, pretrained variables or None, note) for this run.

    Fine-tuning takes the architecture (family, variant or width, padding, BN epsilon and
    momentum) and the normalisation (mean, std, interpolation, crop_pct) from the pretrained
    directory: they describe how those weights were trained. Resolution and dropout stay the
    config's. `--model` builds a registered model with the config's BN momentum.
    """
    dtype = compute_dtype(config.compute_dtype)
    if config.pretrained:
        loaded = load_pretrained_full(config.pretrained)
        base, p = loaded.model, loaded.preprocessing
        size = config.image_size or p.input_size
        model = base.clone(**_training_fields(type(base), config, num_classes, dtype))
        prep = Preprocessing(size, config.crop_pct or p.crop_pct, p.interpolation, p.mean, p.std)
        old = base.num_classes
        note = (f"fine-tuning from {config.pretrained} ({describe(base)}, "
                f"{old} classes" + (f"; classifier re-initialised for {num_classes})" if old != num_classes else ")"))
        return model, prep, loaded.variables, note
    if config.model:
        model = create_model(config.model, bn_momentum=config.bn_momentum,
                             **_training_fields(get_family(model_entry(config.model).family).module,
                                                config, num_classes, dtype))
    else:
        spec = config_lib.resolved_variant(config)
        model = EfficientNet(
            variant=spec if spec.name not in config_lib.VARIANTS else spec.name,
            num_classes=num_classes, padding=config.padding,
            bn_epsilon=config.bn_epsilon, bn_momentum=config.bn_momentum,
            dropout_rate=None if config.dropout_rate < 0 else config.dropout_rate,
            drop_path_rate=config.drop_path_rate, dtype=dtype,
        )
    prep = Preprocessing(config_lib.image_size(config), config_lib.crop_pct(config),
                         config.interpolation, tuple(config.mean), tuple(config.std))
    return model, prep, None, "training from scratch"


def plan(config: config_lib.Config, num_train: int, num_classes: int, task=None) -> RunSetup:
    """Model, preprocessing, and every duration converted to steps."""
    model, prep, pretrained, note = (task or ClassificationTask(config)).build_model(num_classes)
    steps_per_epoch = num_train // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{num_train} training images are fewer than one batch of {config.batch_size}")
    total = config.num_steps or max(1, math.ceil(config.num_epochs * steps_per_epoch))
    return RunSetup(
        model=model,
        prep=prep,
        crop=input_pipeline.CropSpec((config.crop_area_min, config.crop_area_max),
                                     (config.crop_aspect_min, config.crop_aspect_max), config.hflip),
        pretrained_variables=pretrained,
        pretrained_note=note,
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        warmup_steps=round(config.warmup_epochs * steps_per_epoch),
        peak_lr=optim.peak_learning_rate(config.learning_rate, config.batch_size),
        eval_every=config.eval_every_steps or steps_per_epoch,
    )


def _check_resume_config(workdir: Path, config: config_lib.Config) -> None:
    """A resumed run should be the same run: say loudly which fields changed."""
    path = workdir / "config.json"
    if not path.exists():
        return
    saved = json.loads(path.read_text())
    now = config_lib.to_dict(config)
    changed = {k: (saved.get(k), v) for k, v in now.items()
               if k not in _RESUME_FREE_FIELDS and json.loads(json.dumps(v)) != saved.get(k)}
    if changed:
        log(f"WARNING: resuming {workdir} with a changed config: "
            + ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items()))


def evaluate(eval_fn, params, batch_stats, eval_data, mesh) -> dict[str, float]:
    """top1, top5 (fractions) and mean loss over the whole eval set."""
    total = None
    for local in eval_data:
        batch = sharding.global_batch({k: local[k] for k in ("image", "label", "mask")}, mesh)
        sums = eval_fn(params, batch_stats, batch)
        total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    total = jax.device_get(total)
    n = max(float(total["count"]), 1.0)
    return {"top1": float(total["top1"]) / n, "top5": float(total["top5"]) / n,
            "loss": float(total["loss"]) / n, "count": n}


class ClassificationTask:
    """The classifier's parts of a run: image-folder / TFDS data with integer labels, the
    Inception-crop pipeline, cross-entropy, top-1/top-5 eval."""

    name = "classification"
    train_metrics = ("accuracy",)  # batch metrics besides the loss, averaged between logs
    primary = "top1"  # the eval figure that picks the best step and the exported weights
    default_data = default_dataset.NAME
    reinit_prefix = ("params", "classifier")  # fine-tuning: fresh where the class count differs

    def __init__(self, config: config_lib.Config):
        self.config = config

    def open_data(self) -> sources.DatasetSplits:
        c = self.config
        return sources.open_dataset(c.data_dir, c.val_fraction, dataset=c.dataset,
                                    train_split=c.train_split, eval_split=c.eval_split)

    def build_model(self, num_classes: int):
        return build_model(self.config, num_classes)

    def describe(self, model: nn.Module) -> str:
        return describe(model)

    def train_transform(self, setup: RunSetup):
        return input_pipeline.TrainTransform(setup.prep, setup.crop)

    def eval_transform(self, prep: Preprocessing):
        return input_pipeline.EvalTransform(prep)

    def batch_spec(self, n: int, image_size: int, *, train: bool, sharding) -> dict:
        """The global batch the steps take: training batches carry `replaced` (the record an
        image stood in for), eval ones `mask`."""
        spec = {"image": ((n, image_size, image_size, 3), jnp.float32), "label": ((n,), jnp.int32)}
        spec.update({"replaced": ((n,), jnp.int32)} if train else {"mask": ((n,), jnp.bool_)})
        return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding) for k, (shape, dtype) in spec.items()}

    def loss_fn(self, model: nn.Module, prep: Preprocessing, num_classes: int):
        return functools.partial(steps.classification_loss, num_classes=num_classes,
                                 label_smoothing=self.config.label_smoothing)

    def eval_step(self, model: nn.Module, prep: Preprocessing, num_classes: int):
        return functools.partial(steps.eval_step, model=model, num_classes=num_classes)

    def evaluate(self, eval_fn, params, batch_stats, eval_data, mesh, num_classes: int) -> dict[str, float]:
        return evaluate(eval_fn, params, batch_stats, eval_data, mesh)

    def scalars(self, r: dict[str, float]) -> dict[str, float]:
        """The eval figures logged (and kept with the best step)."""
        return {"top1": r["top1"], "top5": r["top5"], "loss": r["loss"]}

    def best_entry(self, r: dict[str, float]) -> dict[str, float]:
        return {"top1": r["top1"], "top5": r["top5"]}

    def eval_message(self, group: str, r: dict[str, float]) -> str:
        return f"{group} top1 {r['top1']:.2%} top5 {r['top5']:.2%} loss {r['loss']:.3f}"


def task_for(config: config_lib.Config):
    """The task object of `config.task`."""
    if config.task == "detection":
        from flax_effnet.train.detection import DetectionTask

        return DetectionTask(config)
    return ClassificationTask(config)


def _finite_or_raise(metrics: dict[str, float], step: int, last_saved: int | None, ckpt_dir: Path) -> None:
    loss = metrics["loss"]
    if not (math.isfinite(loss) and metrics["finite"]):
        where = (f"the last good checkpoint is step {last_saved} in {ckpt_dir}" if last_saved is not None
                 else "no checkpoint was saved yet")
        raise NonFiniteLossError(
            f"non-finite {'loss' if not math.isfinite(loss) else 'parameters after the update'} at "
            f"step {step} (loss {loss}); stopping without saving ({where}). "
            "Lower --learning-rate, raise --warmup-epochs or set --grad-clip-norm."
        )


def train_and_evaluate(
    config: config_lib.Config,
    *,
    batch_callback: Callable[[int, dict[str, np.ndarray]], None] | None = None,
) -> dict[str, Any]:
    """Train (or resume) the run described by `config`; returns the summary dict.

    Args:
      config: the resolved config.
      batch_callback: called as `callback(step, local_batch)` with each training batch before
        its step (tests record the data order with it).

    Returns:
      The summary (also written to WORKDIR/summary.json): best/last eval accuracy, steps,
      wall time, checkpoint and export paths, `preempted`.
    """
    t_start = time.time()
    workdir = Path(config.workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    task = task_for(config)
    data = task.open_data()
    class_names = list(data.class_names)
    num_classes = len(class_names)
    setup = plan(config, len(data.train), num_classes, task)
    mesh = sharding.make_mesh()
    sharding.check_batch_size(config.batch_size, mesh)
    repl = sharding.replicated(mesh)
    model, prep = setup.model, setup.prep

    log(f"data: {data.description}")
    log(f"model: {task.describe(model)}, "
        f"{num_classes} classes, {prep.input_size} px, compute {jnp.dtype(model.dtype).name}; "
        f"{setup.pretrained_note}")
    log(f"schedule: {setup.total_steps} steps ({setup.steps_per_epoch}/epoch), global batch "
        f"{config.batch_size} on {mesh.devices.size} {jax.default_backend()} device(s) in "
        f"{jax.process_count()} process(es), {config.optimizer} peak LR {setup.peak_lr:g}, "
        f"warmup {setup.warmup_steps} steps, EMA {config.ema_decay or 'off'}")

    ckpt = Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints)
    latest = ckpt.latest_step()
    if latest is not None:
        _check_resume_config(workdir, config)
    if _is_main():
        config_lib.save_config(config, workdir / "config.json")
        (workdir / "class_names.json").write_text(json.dumps(class_names, indent=1) + "\n")

    schedule = optim.learning_rate_schedule(setup.peak_lr, setup.warmup_steps, setup.total_steps,
                                            config.end_lr_ratio)
    tx = optim.make_optimizer(
        config.optimizer, schedule, momentum=config.momentum, nesterov=config.nesterov,
        rmsprop_decay=config.rmsprop_decay, rmsprop_eps=config.rmsprop_eps, adam_b2=config.adam_b2,
        weight_decay=config.weight_decay, grad_clip_norm=config.grad_clip_norm,
        freeze_backbone=config.freeze_backbone,
    )
    use_ema = config.ema_decay > 0
    init_rng, train_rng = jax.random.split(jax.random.PRNGKey(config.seed))

    meta = {"class_names": class_names, "best": {}}
    unreadable = UnreadableImages()
    restored = None
    if latest is not None:
        abstract = state_lib.abstract_train_state(model, prep.input_size, tx, ema=use_ema, sharding=repl)
        restored = ckpt.restore_latest(abstract, log)
        if restored is None:
            latest = None
            log(f"WARNING: no checkpoint in {ckpt.directory} could be read; starting from scratch")
    if restored is not None:
        latest, state, saved_meta = restored
        if saved_meta.get("class_names") != class_names:
            raise ValueError(f"{workdir} was trained on classes {saved_meta.get('class_names')}, "
                             f"the data now has {class_names}: use another --workdir")
        meta["best"] = saved_meta.get("best", {})
        unreadable = UnreadableImages(saved_meta.get("unreadable_images"))
        log(f"resumed from {ckpt.step_path(latest)} (step {latest})")
    else:
        variables = state_lib.init_variables(model, prep.input_size, init_rng, repl)
        if setup.pretrained_variables is not None:
            merged, reinit = state_lib.merge_pretrained(variables, setup.pretrained_variables,
                                                        reinit_prefix=task.reinit_prefix)
            if reinit:
                log(f"re-initialised: {', '.join(reinit)}")
            variables = jax.device_put(merged, repl)
        state = state_lib.create_train_state(variables, tx, train_rng, ema=use_ema, sharding=repl)
    start_step = int(jax.device_get(state.step))
    train_iter = iter(input_pipeline.train_loader(
        data.train, global_batch_size=config.batch_size, transform=task.train_transform(setup),
        seed=config.seed, num_batches=setup.total_steps, start=start_step, num_workers=config.num_workers,
    ))

    data_sh = sharding.data_sharding(mesh)
    train_fn = jax.jit(
        functools.partial(steps.update_step, model=model, tx=tx, schedule=schedule, ema_decay=config.ema_decay,
                          loss_fn=task.loss_fn(model, prep, num_classes)),
        in_shardings=(repl, data_sh), out_shardings=(repl, repl), donate_argnums=0,
    )
    eval_fn = jax.jit(task.eval_step(model, prep, num_classes), in_shardings=(repl, repl, data_sh), out_shardings=repl)
    eval_data = None
    if data.val is not None:
        eval_data = input_pipeline.EvalData(
            data.val, global_batch_size=config.eval_batch_size or config.batch_size, prep=prep,
            num_workers=config.num_workers,
            on_unreadable=lambda key: unreadable.note("val", data.val.describe(key)),
            transform=task.eval_transform(prep),
        )
    train_keys = tuple(task.batch_spec(1, prep.input_size, train=True, sharding=data_sh))
    train_fn, compiled_eval = distributed.compile_steps(
        train_fn, eval_fn if eval_data is not None else None, state,
        train_batch=task.batch_spec(config.batch_size, prep.input_size, train=True, sharding=data_sh),
        eval_batch=task.batch_spec(config.eval_batch_size or config.batch_size, prep.input_size,
                                   train=False, sharding=data_sh))
    eval_fn = compiled_eval or eval_fn

    writer = MetricWriter(workdir)
    preempt = PreemptionFlag()
    last_eval: dict[str, float] = {}
    last_saved = latest
    preempted = False
    step = start_step

    def run_eval(step: int) -> None:
        nonlocal last_eval
        if eval_data is None:
            return
        results = {"eval": task.evaluate(eval_fn, state.params, state.batch_stats, eval_data, mesh, num_classes)}
        if use_ema:
            results["ema"] = task.evaluate(eval_fn, state.ema_params, state.ema_batch_stats, eval_data, mesh,
                                           num_classes)
        scalars = {}
        for group, r in results.items():
            scalars.update({f"{group}/{k}": v for k, v in task.scalars(r).items()})
            best = meta["best"].get(group)
            if best is None or r[task.primary] > best[task.primary]:
                meta["best"][group] = {**task.best_entry(r), "step": step}
        last_eval = {"step": step, **scalars}
        writer.write(step, scalars)
        log(f"step {step}: " + ", ".join(task.eval_message(g, r) for g, r in results.items()))

    def save(step: int) -> None:
        nonlocal last_saved
        if last_saved == step:
            return
        meta["unreadable_images"] = unreadable.to_dict()
        ckpt.save(step, state, meta)
        last_saved = step

    bar = tqdm(total=setup.total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True,
               disable=not (config.progress_bar and _is_main()))
    pending = None  # (step, device metrics) not yet fetched: fetched one step late, no stall
    window_keys = ("loss", *task.train_metrics)
    window: dict[str, list[float]] = {k: [] for k in window_keys}
    last_host: dict[str, float] = {}
    t_window, n_window = time.time(), 0

    def flush_pending() -> None:
        nonlocal pending, last_host
        if pending is None:
            return
        pstep, pmetrics = pending
        pending = None
        last_host = {k: float(v) for k, v in jax.device_get(pmetrics).items()}
        _finite_or_raise(last_host, pstep, last_saved, ckpt.directory)
        unreadable.replaced_examples += int(last_host["replaced"])
        unreadable.check(pstep + 1, config.batch_size, len(data.train), config.max_unreadable_fraction)
        for k in window_keys:
            window[k].append(last_host[k])

    try:
        for step in range(start_step, setup.total_steps):
            try:
                local = next(train_iter)
            except ImageLoadError as e:  # a long run of unreadable records: the data is broken
                raise UnreadableDataError(f"training images cannot be read: {e}") from None
            if batch_callback is not None:
                batch_callback(step, local)
            for key in local["replaced"][local["replaced"] >= 0]:
                unreadable.note("train", data.train.describe(int(key)))
            batch = sharding.global_batch({k: local[k] for k in train_keys}, mesh)
            state, metrics = train_fn(state, batch)
            flush_pending()  # the previous step's metrics, while this one runs
            pending = (step, metrics)
            n_window += 1
            bar.update(1)
            done = step + 1
            needs_eval = done % setup.eval_every == 0 or done == setup.total_steps
            needs_save = done % config.checkpoint_every_steps == 0 or done == setup.total_steps
            stop = preempt.should_stop(done)
            logged = done % config.log_every_steps == 0 or needs_eval or needs_save or stop
            if logged:
                flush_pending()  # never evaluate or save a state whose loss was not finite
                elapsed = time.time() - t_window
                scalars = {
                    **{f"train/{k}": float(np.mean(window[k])) for k in window_keys},
                    "train/learning_rate": last_host["learning_rate"],
                    "train/grad_norm": last_host["grad_norm"],
                    "train/images_per_sec": n_window * config.batch_size / max(elapsed, 1e-9),
                    "train/epoch": done / setup.steps_per_epoch,
                }
                writer.write(done, scalars)
                bar.set_postfix(loss=f"{scalars['train/loss']:.3f}", lr=f"{scalars['train/learning_rate']:.3g}",
                                img_s=f"{scalars['train/images_per_sec']:.0f}")
                window = {k: [] for k in window_keys}
            if needs_eval:
                run_eval(done)
            if needs_save or stop:
                save(done)
            if logged:  # time the next window from here, after eval and save
                t_window, n_window = time.time(), 0
            if stop:
                preempted = True
                log(f"SIGTERM: saved step {done} to {ckpt.step_path(done)}; rerun the same command to resume")
                break
        else:
            if not last_eval or last_eval["step"] != setup.total_steps:
                run_eval(setup.total_steps)
            save(setup.total_steps)
    finally:
        train_iter.close()  # stops the decoding workers
        local = batch = None  # the last batch lives in the workers' shared memory
        input_pipeline.release_shared_memory()
        bar.close()
        preempt.close()
        writer.close()
        ckpt.close()

    summary: dict[str, Any] = {
        "task": task.name,
        "workdir": str(workdir),
        "steps": int(jax.device_get(state.step)),
        "total_steps": setup.total_steps,
        "preempted": preempted,
        "wall_time_s": round(time.time() - t_start, 1),
        "best": meta["best"],
        "last": last_eval,
        "checkpoint": str(ckpt.step_path(last_saved)) if last_saved is not None else None,
        "unreadable_images": unreadable.to_dict(),
    }
    if not preempted:
        summary.update(_export(workdir / "export", model, prep, state, class_names, last_eval, use_ema, config, task))
    if _is_main():
        (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _export(out: Path, model, prep, state, class_names, last_eval, use_ema, config, task) -> dict:
    """Save the final weights for `load_pretrained`: EMA when enabled and at least as good."""
    use = "raw"
    key = task.primary
    if use_ema and last_eval.get(f"ema/{key}", -1.0) >= last_eval.get(f"eval/{key}", 0.0):
        use = "ema"
    params, batch_stats = ((state.ema_params, state.ema_batch_stats) if use == "ema"
                           else (state.params, state.batch_stats))
    variables = jax.device_get({"params": params, "batch_stats": batch_stats})
    if _is_main():
        save_pretrained(
            out, model.clone(dtype=jnp.float32), variables, prep, class_names=class_names, overwrite=True,
            source={"format": "flax_effnet.train", "weights": use, "step": int(jax.device_get(state.step)),
                    key: last_eval.get(f"{'ema' if use == 'ema' else 'eval'}/{key}"),
                    "data_dir": config.data_dir or task.default_data},
        )
    return {"export": str(out), "exported_weights": use}
