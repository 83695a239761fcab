"""Trainer: Adam with two learning rates, early stopping, atomic checkpoints, resume, AMP, DDP."""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.distributed as dist
from torch.utils.tensorboard import SummaryWriter

from rsis.allocator import map_allocations_above
from rsis.bundle import export_bundle
from rsis.checkpoint import load_checkpoint, require_compatible, save_checkpoint
from rsis.cli import add_command, non_negative_int
from rsis.convergence import Convergence, last_epoch_under, patience_spent
from rsis.cpu import use_threads
from rsis.data.cache import SequenceDataset
from rsis.device import add_device_argument, resolve_device
from rsis.errors import UserError
from rsis.features import FeatureStore, cache_images
from rsis.inference import (
    autocast,
    make_loader,
    predict_batches,
    stored_features,
    to_device,
)
from rsis.io import (
    atomic_path,
    describe_differences,
    missing_folders,
    require_writable_folder,
    sha256_of,
    undo_on_failure,
)
from rsis.metrics import MetricAccumulator
from rsis.model import RRIS, ModelConfig, input_spec, soft_iou_loss
from rsis.model.frozen import calibrate_batch_norm, encoder_digest
from rsis.process import exclusive_folder, exit_with_parent
from rsis.progress import progress_bar
from rsis.runs import RunSpec, TrainSettings
from rsis.text import EmbeddingTable
from rsis.text.identity import text_identity
from rsis.text.pca import PcaSolution

log = logging.getLogger(__name__)

# Allocations at least this large get their own mapping when a ResNet trains on CPU: the
# paper-setting run peaked at 3,927 MB with 4 MiB, 3,678 MB with 64 KiB (1.23x and 1.38x the
# CPU time), 4,772 MB with glibc's dynamic threshold (BENCHMARKS.md).
MAPPED_ALLOCATION_BYTES = 1 << 20


class TrainingDiverged(UserError):
    """The loss became NaN or infinite (exit code 2: lower the learning rate, check inputs)."""


class OtherSettings(Exception):
    """``last.pt`` was trained with other settings: an error under ``--resume``, a fresh start
    under ``--resume auto``."""


class NonFiniteLoss(ArithmeticError):
    """A training step's loss is NaN or infinite (the weights were not updated)."""

    def __init__(self, loss: float, ref_ids: list[int]) -> None:
        super().__init__(f"loss is {loss} (ref_ids {ref_ids})")
        self.loss, self.ref_ids = loss, ref_ids


def train_step(
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, torch.Tensor],
    device: torch.device,
    features: FeatureStore | None = None,
) -> float:
    """One optimisation step on a collated batch: forward (bf16 autocast and channels_last
    images on CUDA), soft IoU loss, backward, update. Returns the batch's loss.
    ``features``: the frozen encoder's stored features, read instead of running it."""
    batch = to_device(batch, device)
    with autocast(device):
        stored = stored_features(features, batch, device)
        logits = net(batch["image"], batch["text"], batch["valid"], features=stored)
    loss = soft_iou_loss(logits.float(), batch["masks"], batch["valid"])
    if not torch.isfinite(loss):
        raise NonFiniteLoss(loss.item(), batch["ref_id"][batch["valid"]].tolist())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


@dataclass
class TrainConfig:
    """One training run: the files it reads and writes, its grid coordinates and settings."""

    train_cache: Path
    val_cache: Path
    text: Path
    out_dir: Path
    run: RunSpec
    settings: TrainSettings = field(default_factory=TrainSettings)
    pca: Path | None = None
    train_features: Path | None = None
    val_features: Path | None = None
    device: str = "auto"

    def input_digests(self) -> dict[str, str]:
        """SHA-256 of every file the run learns from (caches, text, PCA, stored features, a
        weights file): a checkpoint trained on other files is not resumed."""
        files = {
            "train_cache": self.train_cache,
            "val_cache": self.val_cache,
            "text": self.text,
            "pca": self.pca,
            "train_features": self.train_features,
            "val_features": self.val_features,
            "weights": self.settings.weights_file,
        }
        return {name: sha256_of(path) for name, path in files.items() if path is not None}

    def model_config(self, text_dim: int) -> ModelConfig:
        """The architecture this run trains."""
        return ModelConfig(
            backbone=self.settings.backbone,
            weights=self.settings.weights,
            hidden=self.settings.hidden,
            text_dim=text_dim,
            text_transform=self.run.transform,
            proj_dim=self.run.proj_dim,
            decoder=self.run.decoder,
        )


@dataclass
class _Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> _Distributed:
        """Read torchrun's environment; start the process group when there are several ranks."""
        if "RANK" not in os.environ:  # not started by torchrun: one process, no group
            return cls()
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        world_size = dist.get_world_size()
        log.info("process group %s: rank %d of %d", backend, dist.get_rank(), world_size)
        return cls(dist.get_rank(), world_size, int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rank_batch_size(self, batch_size: int) -> int:
        """Each rank's share of the run's ``batch_size``: one optimiser step sees the run's
        batch whatever the number of processes (Table 2's batch size is the paper's)."""
        if batch_size % self.world_size:
            raise UserError(
                f"batch size {batch_size} does not split evenly over {self.world_size} torchrun "
                "processes: use a number of GPUs (resources.train.gpu) or processes that divides "
                "every batch size of the grid"
            )
        return batch_size // self.world_size


def _optimizer(model: RRIS, cfg: TrainConfig) -> torch.optim.Adam:
    """Adam with the decoder group and, unless the encoder is frozen, the encoder group."""
    settings = cfg.settings
    groups = [{"params": list(model.decoder_parameters()), "lr": settings.lr, "name": "decoder"}]
    encoder = [p for p in model.encoder_parameters() if p.requires_grad]
    if encoder:
        groups.append({"params": encoder, "lr": settings.encoder_lr, "name": "encoder"})
    return torch.optim.Adam(groups, weight_decay=settings.weight_decay)


def validate(
    model: torch.nn.Module,
    dataset: SequenceDataset,
    device: torch.device,
    features: FeatureStore | None = None,
) -> dict:
    """Instance and overall IoU of ``model`` on ``dataset`` (first expression, logits > 0)."""
    accumulator = MetricAccumulator(resolution="network input")
    loader = make_loader(dataset, batch_size=8)
    for batch, logits in predict_batches(model, loader, device, "validate", features):
        valid = batch["valid"]
        accumulator.update(logits[valid] > 0, batch["masks"][valid], ids=batch["ref_id"][valid])
    return accumulator.summary()["metrics"]


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """Shuffling order depends only on (seed, epoch): resumed runs see the same batches."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def _train_sampler(
    dataset: SequenceDataset, cfg: TrainConfig, epoch: int, ddp: _Distributed
) -> torch.utils.data.Sampler:
    if ddp.world_size > 1:
        sampler = torch.utils.data.DistributedSampler(
            dataset, num_replicas=ddp.world_size, rank=ddp.rank, seed=cfg.settings.seed
        )
        sampler.set_epoch(epoch)
        return sampler
    generator = _epoch_generator(cfg.settings.seed, epoch)
    return torch.utils.data.RandomSampler(dataset, generator=generator)


def _over_ranks(
    values: list[float], device: torch.device, op: dist.ReduceOp.RedOpType
) -> list[float]:
    """``values`` combined element by element over every rank by ``op`` (float64 on the
    training ``device``: NCCL reduces CUDA tensors only)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=op)
    return tensor.tolist()


def _epoch_figures(
    epoch: int,
    losses: list[float],
    images: int,
    referents: int,
    wait: float,
    elapsed: float,
    device: torch.device,
) -> dict[str, float]:
    """An epoch's training figures from its batch losses, the images and referents trained,
    the seconds spent waiting for data and in all. Under torchrun, the whole job's: the mean
    loss of every rank's batches, all ranks' images and referents over the slowest rank's
    seconds, and the share of all ranks' seconds spent waiting."""
    loss, batches, seconds = sum(losses), len(losses), elapsed
    if dist.is_initialized():
        log.debug(
            "epoch %d, rank %d (its shard): loss %.9g over %d batches, %d images in %.9g s",
            epoch,
            dist.get_rank(),
            loss / batches,
            batches,
            images,
            elapsed,
        )
        loss, batches, images, referents, wait, seconds = _over_ranks(
            [loss, batches, images, referents, wait, elapsed], device, dist.ReduceOp.SUM
        )
        (elapsed,) = _over_ranks([elapsed], device, dist.ReduceOp.MAX)
    return {
        "train_loss": loss / batches,
        "images_per_s": images / elapsed,
        "referents_per_s": referents / elapsed,
        "data_wait_share": wait / seconds,
    }


class Trainer:
    """One training run; ``run()`` returns the per-epoch history."""

    def __init__(
        self, cfg: TrainConfig, resume: bool = False, restart_if_changed: bool = False
    ) -> None:
        """Args:
        resume: continue from ``last.pt`` when it exists.
        restart_if_changed: with ``resume``, start over (instead of refusing) when
            ``last.pt`` belongs to other settings: the workflow's mode, where a config
            change means the old state is stale.
        """
        self.cfg = cfg
        settings = cfg.settings
        self.ddp = _Distributed.from_env()
        self.batch_size = self.ddp.rank_batch_size(cfg.run.batch_size)
        self.device = resolve_device(cfg.device)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", self.ddp.local_rank)
            torch.cuda.set_device(self.device)
        text = EmbeddingTable.load(cfg.text)
        self.text_identity = text_identity(text)
        cfg.run.check_text(self.text_identity, cfg.text)
        self.train_set = SequenceDataset(
            cfg.train_cache,
            text,
            order=cfg.run.order,
            expression="random",
            max_referents=settings.max_referents,
            seed=settings.seed,
        )
        self.val_set = SequenceDataset(
            cfg.val_cache,
            text,
            order="dataset",
            expression="first",
            max_referents=settings.max_referents,
        )
        self.input_spec = input_spec(self.train_set.cache.attrs)
        torch.manual_seed(settings.seed)
        self.model_config = cfg.model_config(text.dim)
        self.model = RRIS.from_config(self.model_config, pca=self._pca_solution()).to(self.device)
        if settings.encoder_lr == 0:
            # Frozen ResNet: no gradients (no backward pass through it) and eval mode, so its
            # features depend on the image alone and may come from `rsis features`.
            self.model.freeze_encoder()
            if settings.weights == "none":  # random running statistics mean nothing
                images = (x.to(self.device) for x in cache_images(cfg.train_cache))
                calibrate_batch_norm(self.model.encoder, images)
        elif checkpoints_activations(settings.checkpoint_activations, self.device):
            self.model.checkpoint_activations()
            log.info("activation checkpointing: encoder blocks and decoder steps are recomputed")
            # Memory-bound CPU training: freed activations go back to the system at once
            # rather than fragmenting the heap (rsis.allocator).
            map_allocations_above(MAPPED_ALLOCATION_BYTES)
        # A frozen encoder that its weights file rebuilds stays out of the checkpoints.
        self.encoder_digest = (
            encoder_digest(self.model.encoder) if self.model.rebuilds_encoder() else None
        )
        self.train_features, self.val_features = self._feature_stores()
        self.input_digests = cfg.input_digests()
        if self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = _optimizer(self.model, cfg)
        self.start_epoch = 0
        self.best = -math.inf
        self.best_epoch = -1
        self.history: list[dict[str, Any]] = []
        self.saved_epoch: int | None = None  # epoch of the last.pt this run wrote or read
        self.stopped_early = False
        if resume:
            self._resume(restart_if_changed)
        self.net: torch.nn.Module = self.model
        if dist.is_initialized():  # torchrun, even with one process: DDP as on many GPUs
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)

    def _feature_stores(self) -> tuple[FeatureStore | None, FeatureStore | None]:
        """The stored encoder features of the train and val splits, when given."""
        given = (self.cfg.train_features, self.cfg.val_features)
        if given == (None, None):
            return None, None
        if self.cfg.settings.encoder_lr != 0 or None in given:
            raise UserError(
                "--train-features and --val-features go together and need --encoder-lr 0 "
                "(a frozen encoder); a trainable encoder runs on the images"
            )
        digest = self.encoder_digest or encoder_digest(self.model.encoder)
        log.info("stored encoder features %s and %s: the encoder is not run", *given)
        return (
            FeatureStore(given[0], self.cfg.train_cache, digest),
            FeatureStore(given[1], self.cfg.val_cache, digest),
        )

    def _pca_solution(self) -> PcaSolution | None:
        if self.cfg.run.transform != "linear_pca":
            return None
        if self.cfg.pca is None:
            raise UserError(
                f"run {self.cfg.run.id} needs --pca (the reduce output {self.cfg.run.pca_file})"
            )
        return PcaSolution.load(self.cfg.pca)

    @property
    def last_path(self) -> Path:
        return self.cfg.out_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.cfg.out_dir / "best.pt"

    @property
    def resume_best_path(self) -> Path:
        """A hard link of ``best.pt`` that the workflow does not declare, so a failed job's
        cleanup (which deletes declared outputs) cannot take the best epoch away."""
        return self.cfg.out_dir / "resume_best.pt"

    @property
    def bundle_path(self) -> Path:
        """Self-contained model for ``rsis predict``, written from the best checkpoint."""
        return self.cfg.out_dir / "bundle.pt"

    @property
    def convergence_path(self) -> Path:
        """How the run ended (``rsis.convergence``), written when it stops."""
        return self.cfg.out_dir / "convergence.json"

    def convergence(self) -> Convergence:
        """Best epoch and stopping reason, read from the validation history."""
        return Convergence.of_history(
            run=self.cfg.run.id,
            seed=self.cfg.settings.seed,
            val_ious=[row["val_instance_iou"] for row in self.history],
            epoch_cap=self.cfg.settings.epochs,
            patience=self.cfg.settings.patience,
            min_epochs=self.cfg.settings.min_epochs,
        )

    def _resume(self, restart_if_changed: bool) -> None:
        if not self.last_path.exists():
            log.info("no checkpoint at %s: starting from scratch", self.last_path)
            return
        try:
            payload = self._compatible_checkpoint()
        except (OtherSettings, UserError) as error:
            if restart_if_changed:
                log.warning("starting over (--resume auto): %s", error)
                return
            if isinstance(error, OtherSettings):
                raise UserError(f"{error}; use another --out-dir or drop --resume") from error
            raise
        self.model.load_trained_state(
            payload["model"], payload.get("encoder_digest"), self.last_path
        )
        self.optimizer.load_state_dict(payload["optimizer"])
        torch.set_rng_state(payload["rng"]["torch"])
        self.start_epoch = payload["epoch"] + 1
        self.best = payload["best"]
        self.best_epoch = payload["best_epoch"]
        self.history = payload["history"]
        self.saved_epoch = payload["epoch"]
        # The stopping rule as it stands now decides: a run that stopped early by it only
        # re-exports; one that a larger patience or min epochs lets go on trains further,
        # exactly as a run started with those settings would (training is deterministic).
        now = self.cfg.settings
        self.stopped_early = patience_spent(
            payload["epoch"], self.best_epoch, now.patience, now.min_epochs
        )
        if self.ddp.is_main:
            self._restore_best()
        log.info("resumed from %s at epoch %d", self.last_path, self.start_epoch)
        if self.stopped_early:
            log.info(
                "the run has stopped early at epoch %d (best epoch %d, patience %d, min epochs "
                "%d): exporting only; raise the patience or min epochs to train further",
                payload["epoch"],
                self.best_epoch,
                now.patience,
                now.min_epochs,
            )

    def _compatible_checkpoint(self) -> dict[str, Any]:
        """``last.pt``, refused (UserError) if another configuration wrote it."""
        payload = load_checkpoint(self.last_path)
        require_compatible(
            self.last_path,
            payload,
            self.model_config.to_dict(),
            self.text_identity,
        )
        resumable = TrainSettings.RESUMABLE
        differences = describe_differences(
            payload["run"] | {k: v for k, v in payload["settings"].items() if k not in resumable},
            self.cfg.run.to_dict()
            | {k: v for k, v in self.cfg.settings.to_dict().items() if k not in resumable},
        )
        if differences:
            raise OtherSettings(
                f"{self.last_path} was trained with other settings ({'; '.join(differences)})"
            )
        self._require_same_inputs(payload)
        self._require_stopping_rule_reaches(payload)
        return payload

    def _require_same_inputs(self, payload: dict[str, Any]) -> None:
        """Refuse (OtherSettings) a checkpoint trained on other files or another encoder."""
        if "inputs" not in payload:
            raise OtherSettings(
                f"{self.last_path} does not record the files it was trained on (an older rsis)"
            )
        names = sorted(set(payload["inputs"]) | set(self.input_digests))
        changed = [n for n in names if payload["inputs"].get(n) != self.input_digests.get(n)]
        if changed:
            raise OtherSettings(
                f"{self.last_path} was trained on other input files ({', '.join(changed)})"
            )
        if payload.get("encoder_digest") != self.encoder_digest:
            raise OtherSettings(
                f"{self.last_path} was trained on another encoder than {self.cfg.settings.weights}"
            )

    def _require_stopping_rule_reaches(self, payload: dict[str, Any]) -> None:
        """Refuse (OtherSettings) a checkpoint past the epoch where the current cap and stopping
        rule end a run: resuming it would keep epochs and a best epoch a fresh run never has."""
        now = self.cfg.settings
        scores = [row["val_instance_iou"] for row in payload["history"]]
        last = last_epoch_under(scores, now.epochs, now.patience, now.min_epochs)
        if last is not None and last < payload["epoch"]:
            raise OtherSettings(
                f"{self.last_path} ran to epoch {payload['epoch']}, past epoch {last}, where "
                f"--epochs {now.epochs}, --patience {now.patience} and --min-epochs "
                f"{now.min_epochs} end a run"
            )

    def _restore_best(self) -> None:
        """Bring back ``best.pt`` from its hard link when a failed job's cleanup deleted it."""
        if self.best_path.exists() or self.best_epoch < 0:
            return
        if not self.resume_best_path.exists():
            raise UserError(
                f"{self.best_path} and {self.resume_best_path} are missing, so the best epoch "
                f"({self.best_epoch}) is lost: delete {self.last_path} to train this run again"
            )
        os.link(self.resume_best_path, self.best_path)
        log.info("restored %s from %s", self.best_path, self.resume_best_path)

    def _save_best(self, payload: dict[str, Any]) -> None:
        """Write ``best.pt`` and point ``resume_best.pt`` at the same file (no extra disk)."""
        save_checkpoint(self.best_path, payload)
        with atomic_path(self.resume_best_path) as tmp:
            tmp.unlink(missing_ok=True)
            os.link(self.best_path, tmp)

    def _checkpoint(self, epoch: int) -> dict[str, Any]:
        return {
            "model": self.model.trained_state(),
            "encoder_digest": self.encoder_digest,
            "optimizer": self.optimizer.state_dict(),
            "epoch": epoch,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "history": self.history,
            "rng": {"torch": torch.get_rng_state()},
            "model_config": self.model_config.to_dict(),
            "text": self.text_identity,
            "run": self.cfg.run.to_dict(),
            "settings": self.cfg.settings.to_dict(),
            "input": self.input_spec,
            "inputs": self.input_digests,
        }

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        self.train_set.set_epoch(epoch)
        loader = make_loader(
            self.train_set,
            self.batch_size,
            workers=self.cfg.settings.workers,
            sampler=_train_sampler(self.train_set, self.cfg, epoch, self.ddp),
        )
        self.net.train()
        losses, images, referents, wait = [], 0, 0, 0.0
        steps = min(len(loader), self.cfg.settings.steps_per_epoch or len(loader))
        start = tick = time.perf_counter()
        bar = progress_bar(
            itertools.islice(loader, steps),
            desc=f"epoch {epoch}",
            total=steps,
            unit="batch",
            disable=not self.ddp.is_main,
        )
        for step, batch in enumerate(bar):
            wait += time.perf_counter() - tick
            try:
                losses.append(
                    train_step(self.net, self.optimizer, batch, self.device, self.train_features)
                )
            except NonFiniteLoss as error:
                saved = (
                    f"the last good checkpoint is {self.last_path} (epoch {self.saved_epoch})"
                    if self.saved_epoch is not None
                    else "no epoch finished, so no checkpoint was written"
                )
                raise TrainingDiverged(
                    f"loss is {error.loss} at epoch {epoch}, step {step} (ref_ids "
                    f"{error.ref_ids}); {saved}. Lower --lr (now {self.cfg.settings.lr:g}) "
                    f"or check {self.cfg.text} and the caches"
                ) from error
            images += len(batch["image"])
            referents += int(batch["valid"].sum())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            tick = time.perf_counter()
        elapsed = time.perf_counter() - start
        return _epoch_figures(epoch, losses, images, referents, wait, elapsed, self.device)

    def run(self) -> list[dict[str, Any]]:
        """Train until ``epochs`` or early stopping; rank 0 writes checkpoints and metrics."""
        writer = self._summary_writer() if self.ddp.is_main else None
        last_epoch = self.start_epoch if self.stopped_early else self.cfg.settings.epochs
        for epoch in range(self.start_epoch, last_epoch):
            row: dict[str, Any] = {"epoch": epoch, **self._train_epoch(epoch)}
            # Every rank validates on the whole split, so all agree on early stopping.
            val = validate(self.model, self.val_set, self.device, self.val_features)
            row.update(val_instance_iou=val["instance_iou"], val_overall_iou=val["overall_iou"])
            if row["val_instance_iou"] > self.best:
                self.best, self.best_epoch = row["val_instance_iou"], epoch
            self.history.append(row)
            if self.ddp.is_main:
                log.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in row.items()})
                for key, value in row.items():
                    writer.add_scalar(key, value, epoch)
                payload = self._checkpoint(epoch)
                if self.best_epoch == epoch:  # before last.pt, which names the best epoch
                    self._save_best(payload)
                save_checkpoint(self.last_path, payload)
                self.saved_epoch = epoch
                self._write_metrics()
            settings = self.cfg.settings
            if patience_spent(epoch, self.best_epoch, settings.patience, settings.min_epochs):
                log.info(
                    "early stop: no better validation instance IoU for %d epochs",
                    epoch - self.best_epoch,
                )
                break
        if writer is not None:
            writer.close()
            self._write_metrics()  # a resumed run rewrites it when the workflow deleted it
            export_bundle(self.best_path, self.cfg.text, self.bundle_path)
            self.convergence().write(self.convergence_path)
        if dist.is_initialized():
            dist.destroy_process_group()
        return self.history

    def _write_metrics(self) -> None:
        with atomic_path(self.cfg.out_dir / "metrics.csv") as tmp:
            pd.DataFrame(self.history).to_csv(tmp, index=False)

    def _summary_writer(self) -> SummaryWriter:
        """TensorBoard events of this run only: a fresh start clears the folder, a resumed
        run drops the events a killed attempt wrote after its last checkpoint."""
        folder = self.cfg.out_dir / "tensorboard"
        if self.saved_epoch is None:
            shutil.rmtree(folder, ignore_errors=True)
        return SummaryWriter(folder, purge_step=self.start_epoch)


def checkpoints_activations(setting: str, device: torch.device) -> bool:
    """Whether a model with a trainable encoder is trained with activation checkpointing:
    ``always``, ``never``, or ``auto``: on CPU, where the activations fill the machine's
    memory (ResNet-101 at 240x427, batch 16: 8.4 GB without it), and not on a GPU, where
    speed matters more (BENCHMARKS.md, "The paper's scale, rehearsed")."""
    return setting == "always" or (setting == "auto" and device.type == "cpu")


def compute_threads(cpus: int, processes: int, workers: int) -> int:
    """Torch threads of one process: its share of ``cpus``, less its DataLoader workers."""
    return max(1, cpus // processes - workers)


def _train_command(args: argparse.Namespace) -> None:
    """``rsis train``: build the run from its id and settings, then train it."""
    cfg = TrainConfig(
        train_cache=args.train_cache,
        val_cache=args.val_cache,
        text=args.text,
        out_dir=args.out_dir,
        run=RunSpec.from_id(args.run_id),
        settings=TrainSettings.from_args(args),
        pca=args.pca,
        train_features=args.train_features,
        val_features=args.val_features,
        device=args.device,
    )
    require_writable_folder(cfg.out_dir, f"--out-dir {cfg.out_dir}")
    # One writer per run folder: rank 0 (the only rank that writes) holds the lock and, should
    # the run fail, removes the folder it created when it holds nothing but the lock (and the
    # TensorBoard events of an epoch that never finished); a resumable last.pt keeps it.
    first_rank = os.environ.get("RANK", "0") == "0"
    created = missing_folders(cfg.out_dir) if first_rank else []
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    threads = 0  # torch's default
    if args.cpus:
        processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        threads = compute_threads(args.cpus, processes, cfg.settings.workers)
    use_threads(threads)
    exit_with_parent()
    lock = exclusive_folder(cfg.out_dir, "rsis train") if first_rank else contextlib.nullcontext()
    with lock, undo_on_failure(created, leftovers=(".lock", "tensorboard")):
        resume = args.resume is not None
        Trainer(cfg, resume=resume, restart_if_changed=args.resume == "auto").run()


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``rsis train``."""
    p = add_command(subparsers, "train")
    # Not --run: torchrun, which launches multi-GPU runs, would take it for its --run-path.
    p.add_argument(
        "--run-id",
        required=True,
        help="the grid configuration: <embedding>-<transform>-<dim>-<order>-bs<batch size>, "
        "e.g. mean-pca-64-random-bs32 (docs/training.md)",
    )
    p.add_argument("--train-cache", type=Path, required=True, help="train split cache (.h5)")
    p.add_argument("--val-cache", type=Path, required=True, help="validation split cache (.h5)")
    p.add_argument("--text", type=Path, required=True, help="the run's reduce output (.h5)")
    p.add_argument("--pca", type=Path, help="PCA reduce output, for a linear_pca run")
    p.add_argument("--train-features", type=Path, help="stored encoder features of the train split")
    p.add_argument("--val-features", type=Path, help="stored encoder features of the val split")
    p.add_argument("--out-dir", type=Path, required=True, help="run folder (checkpoints, csv)")
    TrainSettings.add_arguments(p)
    add_device_argument(p, note="with CUDA, each process uses the GPU of its torchrun local rank")
    p.add_argument(
        "--cpus",
        type=non_negative_int,
        default=0,
        help="CPU cores of the whole job (every torchrun process and its DataLoader workers); "
        "each process computes with its share less its workers (0: torch's default threads)",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const="strict",
        choices=("strict", "auto"),
        help="continue from <out-dir>/last.pt; refuse one of other settings (strict, the "
        "default) or start over (auto, the workflow's mode)",
    )
    p.set_defaults(func=_train_command)
