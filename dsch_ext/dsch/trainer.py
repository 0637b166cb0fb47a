"""The DSCH training loop: rounds of one E-step (semantic components of the current codes) and
one epoch of M-step (the hash network trained with L_ic + lambda (L_ccf + L_ccc)).

Defaults are the reference settings of docs/method.md: m1 = 1000 fine and m2 = 100 coarse components,
full-covariance GMM with k-means initialisation and max_iter = 100, lambda = 0.1, tau = 1,
batches of 15 images with two augmented views each, Adam (lr 5e-4, eps 1.0) with the learning
rate multiplied by 0.99 every 200 steps, 10 rounds of (E-step, one epoch). Small training sets
scale m1 and m2 down (``dsch_ext.dsch.components``). ``baseline=True`` is the contrastive baseline
(lambda = 0, S = I). Model selection uses a validation split carved from the training items
(never the query set): the round with the best validation mAP is kept. A checkpoint is written
atomically after every round and ``fit(resume=True)`` continues from it. The trainer runs on
torch's thread setting (``torch.set_num_threads``, ``OMP_NUM_THREADS``; ``dsch train --threads``).

Multi-process training (``distributed=True``, under torchrun; see dsch_ext.distributed): the
network is wrapped in DistributedDataParallel and its batch norms synchronised; the codes of
the training set are computed in parallel (each rank a contiguous slice) and gathered; the
fine GMM is fitted on the sharded codes; every batch is split across the ranks (each rank
makes the same augmented views from the shared seed and forwards its slice), the ranks' codes
are gathered so the loss is the one-process loss of the whole batch, and DDP averages the
gradients. The same configuration therefore trains the same model as one process, up to the
order of floating-point sums; rank 0 writes the checkpoints, which resume on any number of
ranks.
"""
import dataclasses
import json
import os
import time
from dataclasses import dataclass
from typing import Dict, Optional

import torch

from .._atomic import atomic_write
from .._fingerprint import fingerprint
from .._progress import progress_bar
from .._torch_file import read_torch_file
from ..distributed.batchnorm import convert_sync_batchnorm, gather_batch, revert_sync_batchnorm
from ..distributed.comm import get_communicator
from ..distributed.shard import shard_range
from ..evaluation import mean_average_precision
from .augment import TwoViewAugment
from .components import fit_components
from .config import DSCHConfig, History, RoundRecord
from .losses import dsch_loss


class _UnusedComponents:
    """What the M-step reads from the E-step when no loss term uses it (lambda = 0, S = I)."""

    m1 = m2 = gmm_iterations = 0
    gmm_lower_bound = None

    def __init__(self, nbits: int):
        self.mu1 = self.mu2 = torch.ones(1, nbits)
        self.log_pi1 = self.log_pi2 = torch.zeros(1)

    def table(self, codes, threshold=0.0):
        return self

    def rows(self, idx):
        zeros = torch.zeros(idx.numel(), 1)
        return zeros, zeros


@dataclass
class _FitState:
    """The state of one ``fit`` call that the checkpoint carries from round to round."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.StepLR
    generator: torch.Generator
    train_idx: torch.Tensor
    val_idx: Optional[torch.Tensor]
    start_round: int = 0
    best_map: float = -1.0
    best_state: Optional[Dict[str, torch.Tensor]] = None
    started: float = 0.0
    data: str = ""  # fingerprint of the images and labels the run trains on


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class DSCHTrainer:
    """Trains ``net`` (a :class:`dsch_ext.dsch.networks.HashNet`) with DSCH on ``images``.

    ``verbose``: 0 quiet; 1 a line per round with the time left (and an M-step bar on a
    terminal); 2 also the E-step mixture's own lines (its initialisations and EM iterations)."""

    def __init__(self, net: torch.nn.Module, config: Optional[DSCHConfig] = None, device="cpu",
                 augment: Optional[TwoViewAugment] = None, checkpoint: Optional[str] = None, verbose: int = 1,
                 distributed: bool = False, process_group=None):
        self.config = config or DSCHConfig()
        self.net = net.to(device)
        self.device = torch.device(device)
        self.augment = augment or TwoViewAugment(self.config.augment)
        self.checkpoint = checkpoint
        self.verbose = verbose
        self.history = History()
        self.train_seconds = 0.0  # of the last fit, a resumed run's earlier rounds included
        self.distributed = distributed
        self.process_group = process_group

    def _split(self, n: int, labels: Optional[torch.Tensor], generator: torch.Generator):
        order = torch.randperm(n, generator=generator)
        if labels is None or self.config.val_fraction <= 0:
            return order, None
        n_val = max(2, int(round(n * self.config.val_fraction)))
        return order[n_val:], order[:n_val]

    def _codes(self, images, idx, comm) -> torch.Tensor:
        """Continuous codes of ``images[idx]`` (eval mode); sharded: each rank a slice, gathered."""
        start, stop = shard_range(idx.numel(), comm)
        mine = self.net.codes(images[idx[start:stop]])
        return torch.cat(comm.all_gather_rows(mine)) if comm.distributed else mine

    def _validate(self, images, labels, val_idx, train_idx, comm) -> float:
        # Validation queries against the training items as the database: never the query set.
        codes = self._codes(images, torch.cat([val_idx, train_idx]), comm)
        nv = val_idx.numel()
        k = min(self.config.val_map_k, train_idx.numel())
        return mean_average_precision(codes[:nv], codes[nv:], labels[val_idx], labels[train_idx], k=k)

    def fit(self, images: torch.Tensor, labels: Optional[torch.Tensor] = None, resume: bool = False) -> History:
        """Train on ``images`` (uint8 or float ``[N, C, H, W]``, or features ``[N, D]``).
        ``labels`` (optional) are used only to pick the best round on the validation split."""
        cfg = self.config.effective()
        comm = get_communicator(self.distributed, self.process_group)
        model = self.net
        if comm.distributed:
            convert_sync_batchnorm(self.net, comm)
            model = torch.nn.parallel.DistributedDataParallel(
                self.net, device_ids=[self.device.index or 0] if self.device.type == "cuda" else None,
                broadcast_buffers=False, process_group=self.process_group)
        try:
            return self._fit(images, labels, resume, cfg, comm, model)
        finally:
            if comm.distributed:
                revert_sync_batchnorm(self.net)

    def _fit(self, images, labels, resume, cfg, comm, model) -> History:
        run = self._start(images.shape[0], labels, cfg)
        run.data = fingerprint(images, labels if labels is not None else torch.empty(0))
        if resume:
            if not self.checkpoint or not os.path.exists(self.checkpoint):
                raise FileNotFoundError(f"no training checkpoint to resume at {self.checkpoint!r}")
            self._restore(run, cfg)
        for rnd in range(run.start_round, cfg.rounds):
            t0 = time.perf_counter()
            comp, batch_state = self._estep(images, run.train_idx, cfg, rnd, comm)
            t1 = time.perf_counter()
            loss, parts = self._mstep(images, run, batch_state, cfg, rnd, comm, model)
            t2 = time.perf_counter()
            record = RoundRecord(rnd, loss, parts, t1 - t0, t2 - t1, comp.m1, comp.m2,
                                 gmm_iterations=comp.gmm_iterations, gmm_lower_bound=comp.gmm_lower_bound,
                                 mstep_threads=torch.get_num_threads())
            if run.val_idx is not None:
                self._select(record, run, images, labels, comm)
            record.seconds = time.perf_counter() - t0
            self.history.rounds.append(record)
            if self.verbose and comm.rank == 0:
                self._report(record, cfg, run, uses_components=not isinstance(comp, _UnusedComponents))
            if self.checkpoint and comm.rank == 0:
                self._save_checkpoint(run, rnd)
            comm.barrier()  # the checkpoint is complete before any rank goes on
        if run.best_state is not None:
            self.net.load_state_dict(run.best_state)
        earlier = sum(r.seconds for r in self.history.rounds if r.round < run.start_round)
        self.train_seconds = earlier + time.perf_counter() - run.started  # a resumed run counts its earlier rounds
        return self.history

    def _start(self, n: int, labels, cfg: DSCHConfig) -> "_FitState":
        generator = torch.Generator().manual_seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        train_idx, val_idx = self._split(n, labels, generator)
        optimizer = torch.optim.Adam(self.net.parameters(), lr=cfg.lr, eps=cfg.adam_eps)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_decay_every, gamma=cfg.lr_decay)
        return _FitState(optimizer, scheduler, generator, train_idx, val_idx, started=time.perf_counter())

    def _restore(self, run: "_FitState", cfg: DSCHConfig) -> None:
        """Continue from the checkpoint: weights, optimiser, schedule, random state, best round."""
        state = read_torch_file(self.checkpoint, "training checkpoint", map_location=self.device)
        needed = ("config", "net", "optimizer", "scheduler", "generator", "round", "best_map", "best_net", "history")
        if not isinstance(state, dict) or any(key not in state for key in needed):
            raise ValueError(f"{self.checkpoint} is not a dsch_ext training checkpoint (a model.pt? --resume reads "
                             "the checkpoint.pt that training writes)")
        if state["config"]["nbits"] != cfg.nbits:
            raise ValueError(f"checkpoint {self.checkpoint} is for {state['config']['nbits']}-bit codes, "
                             f"this run trains {cfg.nbits}-bit codes")
        if state.get("data") != run.data:
            raise ValueError(f"checkpoint {self.checkpoint} was trained on other training data (another data set, "
                             "split or training-set size): resume with the data it was trained on, or train a new "
                             "run in another directory")
        self.net.load_state_dict(state["net"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
        run.generator.set_state(state["generator"])
        run.start_round, run.best_map, run.best_state = state["round"] + 1, state["best_map"], state["best_net"]
        self.history = History([RoundRecord(**r) for r in state["history"]["rounds"]], state["history"]["best_round"])

    def _estep(self, images, train_idx, cfg: DSCHConfig, rnd: int, comm):
        """The round's components of the current codes, and what the M-step's batches read:
        P1 of the (fixed) codes as a table, the centres and log priors on the device."""
        codes = self._codes(images, train_idx, comm).double()
        start, stop = shard_range(train_idx.numel(), comm)
        if cfg.cooccurrence or (cfg.component_weight > 0 and (cfg.fine or cfg.coarse)):
            comp = fit_components(codes[start:stop], cfg.m1, cfg.m2, cfg.covariance_type, cfg.gmm_max_iter,
                                  normalize_p1=cfg.normalize_p1, resp_threshold=cfg.resp_threshold,
                                  random_state=cfg.seed + rnd, verbose=1 if self.verbose >= 2 else 0,
                                  distributed=comm.distributed, process_group=self.process_group)
        else:  # the contrastive baseline needs no E-step: stand-ins that the loss ignores
            comp = _UnusedComponents(codes.shape[1])
        on_device = [t.float().to(self.device) for t in (comp.mu1, comp.log_pi1, comp.mu2, comp.log_pi2)]
        return comp, (comp.table(codes, threshold=cfg.resp_threshold), *on_device)

    def _views(self, batch: torch.Tensor, generator: torch.Generator):
        """Two views of a batch: augmented images, or features with Gaussian noise."""
        if batch.dim() == 4:
            return self.augment(batch, generator)
        x = batch.float()
        v1 = x + 0.05 * torch.randn(x.shape, generator=generator).to(self.device)
        v2 = x + 0.05 * torch.randn(x.shape, generator=generator).to(self.device)
        return v1, v2

    def _mstep(self, images, run: "_FitState", batch_state, cfg: DSCHConfig, rnd: int, comm, model):
        """The round's M-step epochs; returns the mean loss and the mean of each part."""
        table, mu1, lp1, mu2, lp2 = batch_state
        self.net.train()
        sums, steps = {"total": 0.0, "ic": 0.0, "ccf": 0.0, "ccc": 0.0}, 0
        n_batches = cfg.epochs_per_round * ((run.train_idx.numel() + cfg.batch_size - 1) // cfg.batch_size)
        # A bar on a terminal only (progress_bar); the per-round line is the report elsewhere.
        progress = (progress_bar(n_batches, f"round {rnd + 1}/{cfg.rounds} M-step")
                    if self.verbose and comm.rank == 0 else None)
        for _ in range(cfg.epochs_per_round):
            perm = torch.randperm(run.train_idx.numel(), generator=run.generator)
            for s in range(0, perm.numel() - 1, cfg.batch_size):
                if progress is not None:
                    progress.update(1)
                local = perm[s : s + cfg.batch_size]
                if local.numel() < 2:
                    continue
                v1, v2 = self._views(images[run.train_idx[local]].to(self.device), run.generator)
                # Every rank made the same views; each forwards its slice of the batch.
                a, b = shard_range(local.numel(), comm)
                h = gather_batch(comm, model(torch.cat([v1[a:b], v2[a:b]])), b - a)
                p1, p2 = (p.float().to(self.device) for p in table.rows(local))
                loss, parts = dsch_loss(h, p1, p2, mu1, lp1, mu2, lp2, component_weight=cfg.component_weight, tau=cfg.tau,
                                        cooccurrence=cfg.cooccurrence, fine=cfg.fine, coarse=cfg.coarse)
                run.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                run.optimizer.step()
                run.scheduler.step()
                sums["total"] += float(loss.detach())
                for key in ("ic", "ccf", "ccc"):
                    sums[key] += float(parts[key].detach())
                steps += 1
        if progress is not None:
            progress.close()
        return sums["total"] / max(steps, 1), {k: sums[k] / max(steps, 1) for k in ("ic", "ccf", "ccc")}

    def _select(self, record: RoundRecord, run: "_FitState", images, labels, comm) -> None:
        """Validation mAP of the round; keep the weights of the best round so far."""
        record.val_map = self._validate(images, labels, run.val_idx, run.train_idx, comm)
        if record.val_map > run.best_map:
            run.best_map = record.val_map
            run.best_state = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
            self.history.best_round = record.round

    def _report(self, record: RoundRecord, cfg: DSCHConfig, run: "_FitState", uses_components: bool) -> None:
        estep_note = (f"m1={record.m1}, m2={record.m2}, {record.gmm_iterations} EM iterations" if uses_components
                      else "codes only: no loss term uses components")
        val = f", val mAP@{cfg.val_map_k} {record.val_map:.4f}" if record.val_map is not None else ""
        eta = self._time_left(run, cfg.rounds - record.round - 1)
        print(f"round {record.round + 1}/{cfg.rounds}: loss {record.loss:.4f} (ic {record.parts['ic']:.4f}, "
              f"ccf {record.parts['ccf']:.4f}, ccc {record.parts['ccc']:.4f}), E-step {record.estep_seconds:.1f} s "
              f"({estep_note}), M-step {record.mstep_seconds:.1f} s on {record.mstep_threads} thread(s){val}{eta}",
              flush=True)

    def _time_left(self, run: "_FitState", remaining: int) -> str:
        """", about 12 min left": the remaining rounds at the pace of this call's rounds after
        the first (the first round's E-step starts the mixture from k-means and runs many more
        EM iterations than the later ones, so from it alone the estimate is an upper bound)."""
        if remaining <= 0:
            return ""
        done = [r for r in self.history.rounds if r.round >= run.start_round]
        later = [r for r in done if r.round > 0] or done
        per_round = sum(r.seconds for r in later) / len(later)
        bound = "at most " if later is done and done[0].round == 0 else ""
        return f", {bound}about {_duration(per_round * remaining)} left"

    def _save_checkpoint(self, run: "_FitState", rnd: int) -> None:
        checkpoint = {
            "config": dataclasses.asdict(self.config), "round": rnd, "net": self.net.state_dict(),
            "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
            "generator": run.generator.get_state(), "best_map": run.best_map, "best_net": run.best_state,
            "data": run.data,
            "history": json.loads(self.history.to_json()),
        }
        atomic_write(self.checkpoint, lambda f: torch.save(checkpoint, f))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Packed binary codes of ``images`` with the trained (best-round) network."""
        return self.net.encode(images)
