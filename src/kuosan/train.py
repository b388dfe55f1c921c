"""The Trainer: one loop that reads top to bottom, on one CPU or many GPUs.

Scale-out is HF Accelerate's: the same code runs as a plain process, under ``accelerate launch``
or under ``torchrun`` (DistributedDataParallel; gloo on the CPU, NCCL on CUDA).

Determinism. Everything random in step ``k`` comes from generators seeded by ``(seed, k)``: the
examples of the global batch (an endless stream of per-epoch permutations, or weighted draws
with ``--balance``), the timesteps and the noise. Each rank draws the whole global batch and takes its own rows, so the run does not
depend on the number of processes, and resuming at step k needs no saved RNG state: N steps,
stop, and resume to 2N gives the same weights, bit for bit on the CPU, as 2N steps straight.

What a run is: :class:`kuosan.train_config.TrainConfig` (six frozen groups, saved in the
checkpoint's config.json). Starting from another checkpoint's weights: :mod:`kuosan.finetune`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import __version__
from .checkpoint import (
    CAPTIONS,
    load_config,
    load_state_dict_strict,
    load_training_state,
    load_weights,
    optimizer_from_tensors,
    optimizer_to_tensors,
    read_tensors,
    save_checkpoint,
    write_captions,
)
from .data import ArrayDataset, DataInfo, load_dataset
from .errors import KuosanError
from .finetune import (
    resolve_checkpoint,
    source_attention,
    source_text_encoder,
    start_from,
    warn_unknown_words,
)
from .guidance import cfg_model
from .images import save_grid, save_png, to_pil
from .models import (
    MLPConfig,
    build_model,
    config_to_dict,
    count_parameters,
    unet_preset,
)
from .models.conditional import TextConditionedUNet, drop_captions, make_text_encoder
from .objectives import training_loss
from .optim import (
    adamw,
    balance_weights,
    balanced_indices,
    batch_indices,
    ema_beta,
    ema_update,
    freeze,
    learning_rate,
    step_generator,
    with_high_noise,
)
from .precision import Autocast, prepare_module, resolve_precision
from .samplers import sample
from .train_config import (  # noqa: F401 (the groups: importable from here too)
    DataConfig,
    GridConfig,
    InitConfig,
    ModelConfig,
    OptimConfig,
    RuntimeConfig,
    TrainConfig,
)


@dataclass(frozen=True)
class TrainResult:
    """What a run reached."""

    step: int
    images_seen: int
    seconds: float
    last_loss: float
    stopped_by: str  # "steps", "minutes" or "interrupt"

# the TrainConfig fields a resumed run may change (`kuosan train --resume`); the rest come from
# the checkpoint
RESUMABLE = {"steps", "minutes", "sample_every", "save_every", "log_every", "device", "precision",
             "compile"}


# ---- pure helpers ------------------------------------------------------------------------------


def model_spec(config: ModelConfig, info: DataInfo, text_dim: int = 0) -> tuple[str, dict]:
    """(kind, config dict) of the network for this data (``text_dim``: width of the text
    encoder, which then feeds the pooled vector and cross-attention at H/2 and H/4)."""
    if info.kind == "vector":
        if config.preset not in ("auto", "mlp"):
            raise KuosanError(f"--preset {config.preset} is a UNet, but {info.name} holds vectors: "
                              "use mlp")
        if config.pos_embed or config.pooled_layout:
            raise KuosanError(f"--pos-embed and --pooled-layout are for UNets, but {info.name} "
                              "holds vectors")
        cfg = MLPConfig(dim=info.shape[0])
        if config.dropout is not None:
            cfg = dataclasses.replace(cfg, dropout=config.dropout)
        return "mlp", config_to_dict(cfg)
    if config.preset == "mlp":
        raise KuosanError(f"--preset mlp is for vector data, but {info.name} holds images")
    c, h, _ = info.shape
    name = config.preset
    if name == "auto":
        name = "xs" if h <= 8 else "s" if h <= 16 else "m"
    overrides: dict[str, Any] = {"in_channels": c, "out_channels": c, "image_size": h}
    if config.dropout is not None:
        overrides["dropout"] = config.dropout
    if config.pos_embed:
        overrides["pos_embed"] = True
    if config.pooled_layout:
        if not text_dim:
            raise KuosanError("--pooled-layout maps the caption to the canvas: it needs --text-encoder")
        overrides["pooled_layout"] = True
    if text_dim:
        overrides.update(cond_dim=text_dim, context_dim=text_dim,
                         cross_attn_resolutions=tuple(r for r in (h // 2, h // 4) if r >= 2))
    return "unet", config_to_dict(unet_preset(name, **overrides))


def points_image(points: Tensor, size: int = 256, extent: float = 3.5) -> Tensor:
    """A 2-D scatter as a grayscale image in [−1, 1] (dark points on white), for toy data."""
    p = points[:, :2].float().clamp(-extent, extent)
    ij = ((p + extent) / (2 * extent) * (size - 1)).round().long()
    counts = torch.zeros(size, size)
    counts.index_put_((size - 1 - ij[:, 1], ij[:, 0]), torch.ones(len(p)), accumulate=True)
    ink = (counts / counts.max().clamp(min=1)).sqrt()
    return (1 - 2 * ink)[None]


# ---- the trainer ----------------------------------------------------------------------------------


class Trainer:
    """Train a denoiser on a dataset; checkpoints in ``out`` follow :mod:`kuosan.checkpoint`."""

    def __init__(self, config: TrainConfig, out: str | Path, *, resume: bool = False,
                 progress: bool = True) -> None:
        from accelerate import Accelerator

        config.check()
        self.out = Path(out)
        self.progress = progress
        has_ckpt = (self.out / "config.json").exists()
        if resume and not (self.out / "training_state.json").exists():
            raise KuosanError(f"--resume: '{self.out}' holds no training state to resume from")
        if not resume and has_ckpt:
            raise KuosanError(f"'{self.out}' already holds a checkpoint: pass --resume to continue "
                              f"it, or choose another --out")
        self.config = config
        device = config.runtime.device
        use_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
        device_type = "cpu" if use_cpu else "cuda"
        self.precision = resolve_precision(config.runtime.precision, device_type)
        # autocast is kuosan.precision's (train_step), not Accelerate's mixed_precision: that is
        # process-wide state, fixed by the first Accelerator of a process
        self.accelerator = Accelerator(cpu=use_cpu)
        acc = self.accelerator
        if config.optim.batch_size % (acc.num_processes * config.optim.grad_accum):
            raise KuosanError(
                f"--batch {config.optim.batch_size} must be divisible by processes × --grad-accum "
                f"= {acc.num_processes} × {config.optim.grad_accum}")

        data = config.data
        self.dataset: ArrayDataset = load_dataset(data.name, size=data.size, channels=data.channels,
                                                  skip_bad=data.skip_bad, seed=config.optim.seed,
                                                  shapes_mix=data.shapes_mix)
        self.info = self.dataset.info
        self.weights = None  # item weights of --balance (None: epochs of permutations)
        if data.balance:
            if self.dataset.groups is None:
                raise KuosanError(f"--balance needs data whose items have concepts (emoji), not "
                                  f"'{data.name}'")
            self.weights = balance_weights(self.dataset.groups, data.balance)
        self.schedule = config.model.make_schedule()
        self.captions = self.dataset.captions if config.model.text_encoder else None
        if config.model.text_encoder and self.captions is None:
            raise KuosanError(f"--text-encoder needs captioned data, and '{config.data.name}' has no "
                              f"captions (use shapes, or a folder of images with captions)")
        init_from = None if resume else config.init.init_from
        source = resolve_checkpoint(init_from) if init_from else None
        stored_from = self.out if resume else source  # the checkpoint this run starts from, if any
        source_config = load_config(stored_from) if stored_from else {}
        with torch.random.fork_rng(devices=[]):  # the initial weights depend on the seed alone
            torch.manual_seed(config.optim.seed)
            encoder = (make_text_encoder(config.model.text_encoder, self.captions,
                                         word_skip=config.model.word_skip)
                       if self.captions else None)
            keep_stored = resume or (source is not None and not config.init.new_text_encoder)
            if encoder is not None and keep_stored:
                # the stored encoder (its vocabulary), not one fitted anew on these captions
                encoder = source_text_encoder(stored_from, source_config, encoder,
                                              word_skip=config.model.word_skip and not resume,
                                              fine_tuning=not resume)
                if not resume:
                    warn_unknown_words(encoder, self.captions, source)
            self.kind, self.model_config = model_spec(config.model, self.info, encoder.dim if encoder else 0)
            if self.kind == "unet" and stored_from:
                self.model_config = source_attention(self.model_config, source_config)
            model = build_model(self.kind, self.model_config)
            if encoder is not None:
                model = TextConditionedUNet(model, encoder)
        self.text_config = encoder.config() if encoder is not None else None
        if config.optim.freeze:
            freeze(model, config.optim.freeze)
        self.ema = copy.deepcopy(model).requires_grad_(False).eval()
        optimizer = adamw(model.parameters(), config.optim.lr, config.optim.weight_decay, acc.device)
        self.step, self.images_seen, self.elapsed_before = 0, 0, 0.0
        if resume:
            self._load(model, optimizer, source_config)
        elif source is not None:
            start_from(model, self.ema, source, source_config, config)
        prepare_module(model, self.precision, acc.device, compile=config.runtime.compile)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.ema.to(acc.device)
        self.dataset = self.dataset.to(acc.device)

    # -- checkpoints --

    def checkpoint_config(self) -> dict:
        return {
            "kuosan_version": __version__,
            "model": {"kind": self.kind, "config": self.model_config},
            "schedule": self.schedule.to_config(),
            "prediction": self.config.model.prediction,
            "data": self.info.to_dict(),
            "sampling": {"clip_x0": self.info.kind == "image"},
            "text_encoder": self.text_config,
            "train": self.config.to_dict(),
            **self._styles(),
        }

    def _styles(self) -> dict:
        """{"styles": the style words of the captions} for emoji data and scenes (the Emoji
        contract)."""
        if self.info.name not in ("emoji", "emojiworld") or not self.dataset.captions:
            return {}
        from .data.emoji import caption_styles

        return {"styles": caption_styles(self.dataset.captions)}

    def _load(self, model: nn.Module, optimizer: torch.optim.Optimizer, stored: dict) -> None:
        """Resume: the weights, optimizer and step of the run's own checkpoint (``stored``: its
        config.json)."""
        if stored["model"] != {"kind": self.kind, "config": self.model_config}:
            raise KuosanError(f"--resume: the model in '{self.out}/config.json' differs from the one "
                              f"these settings build; resume with the run's own settings")
        state, tensors = load_training_state(self.out)
        load_state_dict_strict(model, read_tensors(self.out / "model.safetensors")[0],
                               str(self.out / "model.safetensors"))
        load_state_dict_strict(self.ema, load_weights(self.out, "ema")[0], str(self.out / "ema.safetensors"))
        optimizer_from_tensors(optimizer, state["optimizer"], tensors)
        self.step, self.images_seen = state["step"], state["images_seen"]
        self.elapsed_before = state.get("elapsed_seconds", 0.0)

    def save(self, elapsed: float) -> None:
        acc = self.accelerator
        acc.wait_for_everyone()
        if acc.is_main_process:
            opt = getattr(self.optimizer, "optimizer", self.optimizer)  # unwrap Accelerate's wrapper
            meta, tensors = optimizer_to_tensors(opt)
            save_checkpoint(
                self.out, config=self.checkpoint_config(),
                model=acc.unwrap_model(self.model).state_dict(), ema=self.ema.state_dict(),
                state_json={"images_seen": self.images_seen, "optimizer": meta,
                            "elapsed_seconds": self.elapsed_before + elapsed,
                            "num_processes": acc.num_processes},
                state_tensors=tensors, step=self.step)
            if self.captions is not None and not (self.out / CAPTIONS).exists():
                write_captions(self.out, self.captions)  # what the model reads (kuosan.enhance)
        acc.wait_for_everyone()

    def sample_grid(self) -> Path | None:
        """Sample ``grid_size`` images (or 2,000 points) with the EMA weights into samples/step_N.png."""
        if not self.accelerator.is_main_process:
            return None
        cfg = self.config
        image = self.info.kind == "image"
        shape = (cfg.grid.size if image else 2000, *self.info.shape)
        model = self.ema
        if self.captions is not None:  # the grid: captions spread evenly over the data, guided
            n = len(self.captions)
            caps = [self.captions[i * n // shape[0]] for i in range(shape[0])]
            model = cfg_model(self.ema, self.ema.encode(caps), self.ema.encode([""]), cfg.grid.guidance)
        x = sample(model, shape, schedule=self.schedule, sampler=cfg.grid.sampler,
                   steps=min(cfg.grid.steps, self.schedule.T), prediction=cfg.model.prediction,
                   generator=torch.Generator().manual_seed(cfg.optim.seed),
                   device=self.accelerator.device,
                   clip_x0=image)
        path = self.out / "samples" / f"step_{self.step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        if image:
            save_grid(x.float().cpu(), path, upscale=max(1, 64 // self.info.shape[-1]))
        else:
            save_png(to_pil(points_image(x.float().cpu())), path)
        return path

    # -- the loop --

    def train_step(self) -> tuple[float, float]:
        """One optimizer step over the global batch; returns (loss, grad norm)."""
        o, acc = self.config.optim, self.accelerator
        world, rank = acc.num_processes, acc.process_index
        if self.weights is None:
            idx = batch_indices(o.seed, self.step, o.batch_size, len(self.dataset))
        else:
            idx = balanced_indices(self.weights, o.seed, self.step, o.batch_size)
        g = step_generator(o.seed, self.step, 1)
        t = torch.randint(0, self.schedule.T, (o.batch_size,), generator=g)
        noise = torch.randn((o.batch_size, *self.info.shape), generator=g)
        if o.high_noise > 0:  # drawn after the noise, so runs without it keep their draws
            t = with_high_noise(t, self.schedule.T, o.high_noise, g)
        captions = None
        if self.captions is not None:
            captions = drop_captions([self.captions[i] for i in idx.tolist()], o.cond_drop,
                                     step_generator(o.seed, self.step, 2))
        micro = o.batch_size // (world * o.grad_accum)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.config, self.step)
        total = 0.0
        with torch.random.fork_rng(devices=[]):  # dropout: seeded per step, global RNG restored after
            torch.manual_seed(o.seed * 1_000_003 + self.step)
            for m in range(o.grad_accum):
                rows = slice((m * world + rank) * micro, (m * world + rank + 1) * micro)
                x0 = self.dataset.batch(idx[rows].to(acc.device))
                sync = acc.no_sync(self.model) if m + 1 < o.grad_accum else contextlib.nullcontext()
                model = self.model
                if captions is not None:
                    model = functools.partial(self.model, captions=captions[rows])
                model = Autocast(model, self.precision, acc.device)  # fp32 out: the loss is fp32
                with sync:
                    loss = training_loss(model, x0, self.schedule, prediction=self.config.model.prediction,
                                         weighting=o.weighting, gamma=o.min_snr_gamma,
                                         t=t[rows].to(acc.device), noise=noise[rows].to(acc.device)).mean()
                    acc.backward(loss / o.grad_accum)
                total += loss.item() / o.grad_accum
        clip = o.grad_clip if o.grad_clip > 0 else math.inf
        grad_norm = float(acc.clip_grad_norm_(self.model.parameters(), clip))
        if not math.isfinite(grad_norm) or not math.isfinite(total):
            raise KuosanError(
                f"training diverged at step {self.step}: loss {total:.4g}, gradient norm {grad_norm:.4g}. "
                f"The last good checkpoint in '{self.out}' is kept; try a lower --lr (now {o.lr:g})")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.images_seen += o.batch_size
        beta = ema_beta(o.batch_size, self.images_seen, o.ema_half_life_images, o.ema_rampup_ratio)
        ema_update(self.ema, acc.unwrap_model(self.model), beta)
        return total, grad_norm

    def _time_is_up(self, start: float) -> bool:
        if self.config.runtime.minutes is None:
            return False
        up = torch.tensor(float(time.monotonic() - start >= self.config.runtime.minutes * 60))
        if self.accelerator.num_processes > 1:  # every rank stops at the same step
            up = self.accelerator.reduce(up.to(self.accelerator.device), "max").cpu()
        return bool(up.item())

    def fit(self) -> TrainResult:
        cfg, acc = self.config, self.accelerator
        main = acc.is_main_process
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            net = acc.unwrap_model(self.model)
            n_params = count_parameters(net)
            fixed = n_params - count_parameters(net, trainable_only=True)
            fixed_text = f", {fixed / 1e6:.2f} M of them fixed by --freeze" if fixed else ""
            print(f"kuosan: training {self.kind} ({n_params / 1e6:.2f} M parameters{fixed_text}) on {self.info.name} "
                  f"{self.info.num_items} × {tuple(self.info.shape)}, {acc.num_processes} process(es) on "
                  f"{acc.device}, batch {cfg.optim.batch_size}, {self.precision}, from step "
                  f"{self.step}", flush=True)
            if cfg.runtime.compile:
                print("kuosan: --compile: the first step compiles the UNet (minutes on a CPU); "
                      "steps/s counts it", flush=True)
        start = time.monotonic()
        stopped_by, loss, log_losses = "steps", float("nan"), []
        bar = tqdm(total=cfg.runtime.steps, initial=self.step, disable=not (main and self.progress),
                   unit="step", dynamic_ncols=True)
        interrupted: list[bool] = []
        old_handler = signal.getsignal(signal.SIGINT)
        if main:
            signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
        last_log = (time.monotonic(), self.step)
        try:
            while True:
                if cfg.runtime.steps is not None and self.step >= cfg.runtime.steps:
                    break
                if self._time_is_up(start):
                    stopped_by = "minutes"
                    break
                if interrupted:
                    stopped_by = "interrupt"
                    break
                self.model.train()
                loss, _ = self.train_step()
                log_losses.append(loss)
                bar.update(1)
                if cfg.runtime.minutes is not None:
                    left = cfg.runtime.minutes * 60 - (time.monotonic() - start)
                    bar.set_postfix(loss=f"{loss:.4f}", left=f"{max(left, 0) / 60:.1f}min", refresh=False)
                else:
                    bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                if main and self.step % cfg.runtime.log_every == 0:
                    now = time.monotonic()
                    rate = (self.step - last_log[1]) / max(now - last_log[0], 1e-9)
                    self._log({"step": self.step, "loss": sum(log_losses) / len(log_losses),
                               "lr": learning_rate(cfg, self.step - 1), "steps_per_s": rate,
                               "images_seen": self.images_seen,
                               "elapsed_s": self.elapsed_before + now - start})
                    log_losses, last_log = [], (now, self.step)
                if cfg.runtime.save_every and self.step % cfg.runtime.save_every == 0:
                    self.save(time.monotonic() - start)
                if cfg.grid.every and self.step % cfg.grid.every == 0:
                    self.sample_grid()
        finally:
            bar.close()
            if main:
                signal.signal(signal.SIGINT, old_handler)
        elapsed = time.monotonic() - start
        self.save(elapsed)
        try:
            grid = self.sample_grid()
        except KeyboardInterrupt:  # the checkpoint is saved: only the last grid is left out
            grid, stopped_by = None, "interrupt"
            if main:
                print("kuosan: interrupted while drawing the last sample grid; it is skipped",
                      flush=True)
        if main:
            total_s = self.elapsed_before + elapsed
            print(f"kuosan: stopped by {stopped_by} at step {self.step} after {elapsed / 60:.1f} min "
                  f"({self.step / max(total_s, 1e-9):.2f} steps/s overall); checkpoint in {self.out}"
                  + (f", samples in {grid}" if grid else ""), flush=True)
        return TrainResult(self.step, self.images_seen, elapsed, loss, stopped_by)

    def _log(self, record: dict) -> None:
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")


def train(config: TrainConfig, out: str | Path, *, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train (or resume) a model into the checkpoint folder ``out``."""
    trainer = Trainer(config, out, resume=resume, progress=progress)
    try:
        return trainer.fit()
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()  # no rank tears the group down while another still saves
            torch.distributed.destroy_process_group()
