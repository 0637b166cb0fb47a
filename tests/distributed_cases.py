"""What each rank runs in the multi-process tests (tests/test_distributed.py).

``run_ranks(case, world_size, tmp_path, **kwargs)`` starts ``world_size`` fresh processes (spawn)
that join one gloo process group through a file rendezvous, run ``case(comm, **kwargs)`` and
save what it returns to ``tmp_path/rank<r>.pt``; an exception is saved as its type and message.
It returns (results by rank, exit codes) and kills the processes still running once the ranks
``wait_for`` (default: all) have finished or ``wall`` seconds have passed.
"""
import multiprocessing as mp
import os
import time
import traceback
import uuid

import torch


def _entry(case_name, rank, world_size, init_method, out_dir, timeout, kwargs):
    torch.set_num_threads(1)
    import dsch_ext.distributed as ddist

    result = {}
    try:
        comm = ddist.init(backend="gloo", init_method=init_method, rank=rank, world_size=world_size, timeout=timeout)
        result = globals()[case_name](comm, **kwargs)
    except BaseException as exc:  # the test inspects it
        result = {"error_type": type(exc).__name__, "error": str(exc), "traceback": traceback.format_exc()}
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    os._exit(0)  # no process-group teardown: a peer may be gone on purpose


def run_ranks(case_name, world_size, tmp_path, timeout=60.0, wall=240.0, wait_for=None, **kwargs):
    ctx = mp.get_context("spawn")
    init_method = f"file://{tmp_path}/rendezvous-{uuid.uuid4().hex}"
    procs = [ctx.Process(target=_entry, args=(case_name, r, world_size, init_method, str(tmp_path), timeout, kwargs))
             for r in range(world_size)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + wall
    for r in range(world_size) if wait_for is None else wait_for:
        procs[r].join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    results = []
    for r in range(world_size):
        path = os.path.join(tmp_path, f"rank{r}.pt")
        results.append(torch.load(path, weights_only=False) if os.path.exists(path) else None)
        if os.path.exists(path):
            os.remove(path)
    return results, [p.exitcode for p in procs]


def shard(x, comm, sizes):
    """Rank r's rows when x is split into consecutive blocks of ``sizes``."""
    start = sum(sizes[: comm.rank])
    return x[start : start + sizes[comm.rank]]


# ---------------------------------------------------------------------- cases


def fit_kmeans(comm, X, sizes, **params):
    from dsch_ext import KMeans

    km = KMeans(distributed=True, **params).fit(shard(X, comm, sizes))
    return {"centers": km.cluster_centers_, "labels": km.labels_, "inertia": km.inertia_, "n_iter": km.n_iter_}


def fit_gmm(comm, X, sizes, **params):
    from dsch_ext import GaussianMixture

    gmm = GaussianMixture(distributed=True, **params)
    labels = gmm.fit_predict(shard(X, comm, sizes))
    return {"weights": gmm.weights_, "means": gmm.means_, "covariances": gmm.covariances_,
            "bounds": gmm.lower_bounds_, "n_iter": gmm.n_iter_, "labels": labels}


def search_index(comm, db, db_sizes, queries, q_sizes, k, nbits, user_ids=False, method="flat"):
    from dsch_ext.distributed import ShardedBinaryIndex
    from dsch_ext.index import _mih

    _mih.MIN_CODES = 1  # test-sized shards take the multi-index route too
    index = ShardedBinaryIndex(nbits, method=method)
    mine = shard(db, comm, db_sizes)
    half = mine.shape[0] // 2
    # Two adds per rank (the second may be empty): positions must follow rank order anyway.
    if user_ids:
        start = sum(db_sizes[: comm.rank])
        ids = 1000 + torch.arange(start, start + mine.shape[0]) * 7
        index.add(mine[:half], ids[:half])
        index.add(mine[half:], ids[half:])
    else:
        index.add(mine[:half])
        index.add(mine[half:])
    dist, ids = index.search(shard(queries, comm, q_sizes), k)
    assert index.local.method == method
    lims, range_dist, range_ids = index.range_search(shard(queries, comm, q_sizes), radius=nbits // 4)
    return {"dist": dist, "ids": ids, "ntotal": index.ntotal(), "range": (lims, range_dist, range_ids)}


def bad_search(comm, nbits):
    from dsch_ext.distributed import ShardedBinaryIndex

    index = ShardedBinaryIndex(nbits)
    index.add(torch.randint(0, 2, (5, nbits)))
    # Only rank 1 passes queries of the wrong width: every rank must raise, none may hang.
    width = nbits + 3 if comm.rank == 1 else nbits
    try:
        index.search(torch.randint(0, 2, (2, width)), 3)
    except Exception as exc:
        return {"error_type": type(exc).__name__, "error": str(exc), "after": index.search(torch.zeros(1, nbits), 1)[0]}
    return {"error_type": None}


def bad_remove(comm, nbits):
    """Only rank 1 passes ids that are not ids: every rank raises at once, nothing is removed,
    and the index still answers (numpy integers for k too)."""
    import numpy as np

    from dsch_ext.distributed import ShardedBinaryIndex

    index = ShardedBinaryIndex(nbits)
    index.add(torch.randint(0, 2, (5, nbits)))
    start = time.monotonic()
    try:
        index.remove_ids([1.5] if comm.rank == 1 else [0])
    except Exception as exc:
        dist, ids = index.search(torch.zeros(1, nbits), np.int64(3))
        return {"error_type": type(exc).__name__, "error": str(exc), "seconds": time.monotonic() - start,
                "ntotal": index.ntotal(), "k": dist.shape[1]}
    return {"error_type": None}


def rank_dies(comm, how):
    """Rank 1 exits (how='dies') or stalls (how='hangs') before a collective; the others time it."""
    from dsch_ext import KMeans

    if comm.rank == 1:
        if how == "dies":
            os._exit(3)
        time.sleep(600)
    start = time.monotonic()
    try:
        KMeans(4, distributed=True, random_state=0).fit(torch.randn(50, 3))
    except Exception as exc:
        return {"error_type": type(exc).__name__, "error": str(exc), "seconds": time.monotonic() - start}
    return {"error_type": None, "seconds": time.monotonic() - start}


def train_dsch(comm, X, labels, config, checkpoint=None, resume=False, rounds_first=None):
    import dataclasses

    from dsch_ext.dsch.networks import HashNet, MLPBackbone
    from dsch_ext.dsch.trainer import DSCHConfig, DSCHTrainer

    torch.manual_seed(0)
    net = HashNet(MLPBackbone(X.shape[1], 32), 32, config["nbits"])
    cfg = DSCHConfig(**config)
    if rounds_first is not None:  # train part of the rounds, then resume (possibly on other ranks)
        cfg = dataclasses.replace(cfg, rounds=rounds_first)
    trainer = DSCHTrainer(net, cfg, checkpoint=checkpoint, verbose=0, distributed=comm.world_size > 1)
    history = trainer.fit(X, labels, resume=resume)
    return {"state": {k: v.clone() for k, v in net.state_dict().items()},
            "losses": [r.loss for r in history.rounds], "val": [r.val_map for r in history.rounds],
            "bn_types": sorted({type(m).__name__ for m in net.modules() if "BatchNorm" in type(m).__name__})}
