"""Training: nominal, adversarial-only, and co-training with an adapter.

Co-training (the paper's recipe; the loss weights are an assumption, see
params/defaults.yaml): adversarial examples are made by PGD through the
adversarial adapter (soup weight 1), then ONE forward pass carries the clean
half at weight 0 and the adversarial half at weight 1:

    L = w_clean * CE(f(x; clean adapter), y) + w_adv * CE(f(x + delta; adv adapter), y)

Resumable: the training state is saved atomically every ``checkpoint_every``
steps and at the end of every epoch; data order and attack noise derive from
(seed, epoch, step), so a resumed run computes what an uninterrupted one does.
"""
from __future__ import annotations

import csv
import io
import math
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F
from timm.scheduler import CosineLRScheduler

from . import checkpoint as ckpt
from .atomic import write_text
from .robust.attacks import pgd
from .robust.stream import Images, Measure, open_images
from .config import DataConfig, ModelConfig, RunConfig, TrainConfig, digest, to_yaml
from .data.loaders import to_device, train_batches
from .logs import progress, setup_logging
from .models import build_model
from .models.adapters import AdaptedModel
from .runlock import hold_run
from .runtime import Runtime, runtime_from_env
from . import scale


@dataclass
class TrainJob:
    run_id: str
    run: RunConfig
    seed: int
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    prepared: Path
    run_dir: Path
    history_file: Path

    def sub_config(self) -> Dict[str, Any]:
        d = asdict(self)
        for k in ("prepared", "run_dir", "history_file"):
            d[k] = str(d[k])
        return d


def _param_groups(model: AdaptedModel, weight_decay: float) -> List[Dict[str, Any]]:
    # No decay on norms, biases, tokens and position embeddings (timm/DeiT convention).
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or "token" in name or "pos_embed" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _step_generator(seed: int, epoch: int, step: int, device: torch.device, rank: int = 0) -> torch.Generator:
    # Each rank of a distributed run draws its own attack noise; rank 0 draws what a single process does.
    g = torch.Generator(device=device)
    key = (seed * 1_000_003 + epoch) * 1_000_003 + step
    g.manual_seed(key if rank == 0 else (key * 1_000_003 + rank) % 2**63)
    return g


def _loss(job: TrainJob, model: AdaptedModel, x: torch.Tensor, y: torch.Tensor,
          gen: torch.Generator) -> tuple[torch.Tensor, Dict[str, float]]:
    t = job.train
    training = job.run.training
    # MixUp/CutMix targets are soft (B, classes) and already smoothed; accuracy counts their largest class
    smoothing, hard = (0.0, y.argmax(1)) if y.ndim > 1 else (t.label_smoothing, y)
    if training == "nominal":
        logits = model(x, 0.0)
        loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
        return loss, {"loss": loss.item(), "clean_acc": (logits.argmax(1) == hard).float().mean().item()}
    x_adv = pgd(model, x, y, t.attack, w=1.0, generator=gen, model_mode=t.attack_model_mode)
    if training == "adversarial":
        logits = model(x_adv, 1.0)
        loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
        return loss, {"loss": loss.item(), "adv_acc": (logits.argmax(1) == hard).float().mean().item()}
    b = len(x)
    w = torch.cat([torch.zeros(b, device=x.device), torch.ones(b, device=x.device)])
    logits = model(torch.cat([x, x_adv]), w)
    lc = F.cross_entropy(logits[:b], y, label_smoothing=smoothing)
    la = F.cross_entropy(logits[b:], y, label_smoothing=smoothing)
    loss = t.clean_loss_weight * lc + t.adv_loss_weight * la
    return loss, {"loss": loss.item(), "clean_acc": (logits[:b].argmax(1) == hard).float().mean().item(),
                  "adv_acc": (logits[b:].argmax(1) == hard).float().mean().item()}


def _validation(model: AdaptedModel, val: Images, batch_size: int, device: torch.device) -> Dict[str, float]:
    """Clean accuracy on the held-out validation split in clean mode, and in robust mode with an adapter (a file
    dataset's split streamed batch by batch)."""
    model.eval()  # the training loop sets train mode again at the start of every epoch
    weights = (0.0,) if model.adapter == "none" else (0.0, 1.0)
    measure = Measure(model, None, device)
    return {f"val_acc_w{w:g}": round(measure.clean(val, "validation", w, batch_size), 5) for w in weights}


def _csv(rows: List[Dict[str, Any]]) -> str:
    fields = sorted({k for r in rows for k in r}, key=lambda k: (k != "epoch", k))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def train(job: TrainJob, rt: Optional[Runtime] = None, stop_after_steps: Optional[int] = None,
          restart: bool | str = False, restart_command: Optional[str] = None) -> Dict[str, Any]:
    """Train one run into job.run_dir; resumes from its training state if one matches.

    Holds the run folder's lock (one trainer per run). ``restart`` discards the training state first (see
    checkpoint.resume_state; a job passes a token made once at submission, so its requeues resume);
    ``restart_command`` is how a user does that, named when the state is damaged.
    ``stop_after_steps`` ends the call early (as a preemption would), for tests.
    """
    rt = rt or runtime_from_env(job.train.threads, preemptible=True)
    command = restart_command or f"advsoup train --config <experiment file> --run {job.run_id} --restart"
    token = uuid.uuid4().hex if restart is True else (restart or "")
    with hold_run(job.run_dir, rt):
        return _train(job, rt, stop_after_steps, token, command)


def _train(job: TrainJob, rt: Runtime, stop_after_steps: Optional[int], restart: str,
           restart_command: str) -> Dict[str, Any]:
    run_dir = job.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    log = setup_logging(run_dir / "train.log" if rt.is_main else None)
    write_text(run_dir / "config.yaml", to_yaml(job.sub_config()))
    t = job.train

    batches = train_batches(job.data, job.model.img_size, job.prepared, job.seed, t.batch_size, rt.rank,
                            rt.world_size)
    n, steps_per_epoch = batches.n, batches.steps_per_epoch
    total_steps = steps_per_epoch * t.epochs

    torch.manual_seed(job.seed)
    model = build_model(job.model, job.run.family, job.run.adapter).to(rt.device)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = scale.create_ema(model, t)
    saved = scale.state_module(model, ema)  # what the training state holds
    forward = torch.compile(model) if t.compile else model  # same parameters; the state saves the plain module
    mixup = scale.create_mixup(t, job.model.num_classes)
    opt = torch.optim.AdamW(_param_groups(model, t.weight_decay), lr=t.lr, betas=tuple(t.betas))
    sched = CosineLRScheduler(opt, t_initial=total_steps, lr_min=t.min_lr,
                              warmup_t=int(t.warmup_epochs * steps_per_epoch), warmup_lr_init=t.lr * 1e-3,
                              t_in_epochs=False)

    key = digest({k: v for k, v in job.sub_config().items() if k not in ("run_dir", "prepared", "history_file")})
    start_step, history, sums = 0, [], {}
    state = ckpt.resume_state(run_dir, restart, restart_command, discard=rt.is_main)
    if state is not None:
        progress_meta, model_sd, opt_sd, rng = state
        if progress_meta.get("config") != key:
            log.warning("training state in %s was made with another config: starting afresh", run_dir)
        else:
            saved.load_state_dict(model_sd)
            opt.load_state_dict(opt_sd)
            scale.set_rng_state(rng, rt.device)
            start_step, history = progress_meta["step"], progress_meta["history"]
            sums = progress_meta.get("epoch_sums", {})  # this epoch's statistics so far
            log.info("resuming %s at step %d/%d", job.run_id, start_step, total_steps)

    log.info("run %s: %s training, adapter %s, %s; %d images, %d steps of %d, %d domain-specific parameters",
             job.run_id, job.run.training, job.run.adapter, job.run.family, n, total_steps, t.batch_size,
             model.num_domain_parameters())

    def save(step: int) -> None:
        if rt.is_main:
            ckpt.save_state(run_dir, saved, opt, {"step": step, "config": key, "history": history,
                                                   "epoch_sums": sums, "restart": restart},
                            scale.rng_state(rt.device))

    val = open_images(job.data, job.model.img_size, job.prepared, "validation") if t.val_every and rt.is_main else None
    step = start_step
    while step < total_steps:
        epoch, first = divmod(step, steps_per_epoch)
        model.train()
        data = batches.epoch(epoch, first)
        t0, seen = time.time(), 0
        bar = progress(range(first, steps_per_epoch), desc=f"{job.run_id} epoch {epoch + 1}/{t.epochs}",
                       total=steps_per_epoch - first)
        if first == 0:
            sums = {}
        for i in bar:
            if rt.preempted():  # SIGUSR2 (requeue) or SIGTERM (stop) arrived: keep the steps done
                save(step)
                rt.hand_over()
            x, y = to_device(*next(data), rt.device, t.channels_last)
            x, y = scale.mix(mixup, x, y, job.seed, epoch, i)
            sched.step_update(step)
            gen = _step_generator(job.seed, epoch, i, rt.device, rt.rank)
            opt.zero_grad(set_to_none=True)
            stats = scale.accumulate(lambda xm, ym: _loss(job, forward, xm, ym, gen), x, y, t.accum_steps,
                                     lambda: scale.autocast(rt.device, t.amp))
            rt.sync_gradients(model)
            stats = rt.average(stats)  # the global batch's statistics, whatever the number of ranks
            if not math.isfinite(stats["loss"]):  # before the step: no weight takes a NaN update
                raise FloatingPointError(
                    f"run {job.run_id}: the loss is {stats['loss']} at step {step + 1} (epoch {epoch + 1}): training "
                    f"diverged; nothing after the last saved state was kept. Lower train.lr or raise "
                    f"train.warmup_epochs")
            scale.clip(model, t.clip_grad)
            opt.step()
            if ema is not None:
                ema.update(model, step=step)
            step += 1
            seen += len(x) * rt.world_size
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v
            sums["_n"] = sums.get("_n", 0) + 1
            if (i + 1) % t.log_every == 0:
                log.info("epoch %d step %d/%d loss %.4f lr %.2e", epoch + 1, i + 1, steps_per_epoch,
                         stats["loss"], opt.param_groups[0]["lr"])
            if stop_after_steps is not None and step - start_step >= stop_after_steps:
                save(step)
                return {"stopped_at": step}
            if t.checkpoint_every and step % t.checkpoint_every == 0 and i + 1 < steps_per_epoch:
                save(step)
        row = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"], "seconds": round(time.time() - t0, 2),
               "images_per_s": round(seen / max(time.time() - t0, 1e-9), 1)}
        row.update({f"train_{k}": round(v / sums["_n"], 5) for k, v in sums.items() if k != "_n"})
        if val is not None and (epoch + 1) % t.val_every == 0:
            row.update(_validation(model if ema is None else ema.module, val, t.batch_size, rt.device))
        history.append(row)
        log.info("epoch %d done: %s", epoch + 1, row)
        save(step)
        if rt.is_main:  # as training goes: a 300-epoch run shows its curve long before it ends
            write_text(job.history_file, _csv(history))

    if rt.is_main:
        write_text(job.history_file, _csv(history))  # again: a run resumed after its last epoch's save
        ckpt.save_model(run_dir, model if ema is None else ema.module, {
            "run_id": job.run_id, "family": job.run.family, "adapter": job.run.adapter,
            "training": job.run.training, "seed": job.seed, "model": asdict(job.model),
            "domain_parameters": model.num_domain_parameters(), "steps": total_steps,
            "epochs": t.epochs, "train_images": n, "config": key, "ema": ema is not None})
        log.info("wrote %s", run_dir / "model.safetensors")
    return {"history": history}

