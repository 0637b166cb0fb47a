"""The ``dsch`` command line.

Subcommands:
  dsch demo          DSCH against ITQ, PCAH and LSH on the embedded Fashion-MNIST images (no
                     download): trains, evaluates and prints a table (a few minutes on a CPU).
  dsch train         train DSCH (or the contrastive baseline) on the retrieval protocol; writes
                     model.pt, checkpoint.pt and record.json (config, timings, metrics) to --out.
                     Under `torchrun --nproc-per-node N`, --distributed trains on N processes.
  dsch encode        binary codes of a data set with a trained model (.npy packed codes, or an
                     index file for `dsch search`).
  dsch eval          evaluate trained models and/or baselines on the protocol: JSON record,
                     Markdown table, and a PNG (mAP vs code length, precision-recall curves).
  dsch results       every run behind the results report (the reproduction bench).
  dsch components    what a trained model's semantic components tell the M-step.
  dsch search-demo   pack random binary codes with cluster structure, search them with
                     hamming_topk, check the answer against a brute-force ranking, print a summary.
  dsch index build   build a BinaryIndex file from codes (.npy, .npz or .pt: [n, nbits] values,
                     > 0 is bit 1, or uint8 [n, nbits/8] packed codes).
  dsch search        search an index file with query codes; JSON or CSV out.
  dsch info          what this copy of dsch_ext was built with.

This module parses the arguments; ``training.py``, ``evaluation.py`` and ``indexes.py`` do the work
through the library. Every
default a help text shows is read from where it is defined: the parser's own defaults, and the
training settings of :class:`~dsch_ext.dsch.DSCHConfig` (from scratch, or with ``--backbone``).
"""
import argparse
import os
import sys

import torch

from ..datasets import DataError
from ..dsch.backbones import BACKBONE_NAMES
from ..dsch.config import DSCHConfig
from ..index import IndexFormatError
from . import evaluation, indexes, training
from .errors import CliError, Interrupted
from .search_demo import search_demo

DESCRIPTION = "dsch: train DSCH hash networks, evaluate them against baselines, build and search binary indexes."
DATA_HELP = ("data set: 'embedded' (the 10,000 Fashion-MNIST test images shipped with dsch_ext), 'fashion-mnist' "
             "(all 70,000), a directory (Fashion-MNIST idx files or CIFAR-10 python batches) or a .npz file")
MAX_TRAIN_BITS = 1024  # the fine mixture's full covariances are m1 x bits x bits


def _config_default(name: str) -> str:
    """'default X' for a training setting left unset: DSCHConfig.from_scratch()'s value, and the
    reference value that --backbone uses when it differs."""
    def show(value):
        return f"{value:g}" if isinstance(value, float) else str(value)

    scratch, reference = getattr(DSCHConfig.from_scratch(), name), getattr(DSCHConfig(), name)
    return f"default {show(scratch)}" + ("" if scratch == reference else f"; {show(reference)} with --backbone")


def _int_type(low: int, high=None, what: str = ""):
    """An argparse type: an int in [low, high], else one clear error."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"must be {bound}{what}, got {value}")
        return value
    parse.__name__ = "int"
    return parse


def _float_type(low: float, high=None, low_open: bool = False):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if not (value > low if low_open else value >= low) or (high is not None and value > high) or value != value:
            bound = f"{'>' if low_open else '>='} {low:g}" + (f" and <= {high:g}" if high is not None else "")
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value
    parse.__name__ = "float"
    return parse


POSITIVE = _int_type(1)
TRAIN_BITS = _int_type(1, MAX_TRAIN_BITS, " (the fine mixture's covariances grow as bits^2)")


class _Formatter(argparse.HelpFormatter):
    """Help with each option's parser default appended, as '(default: X)'."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or "default" in text or default in (None, "", False, argparse.SUPPRESS)
                or not action.option_strings):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else "%(default)s"
        return f"{text} (default: {shown})"


def _training_options(p, default_data="embedded"):
    """DSCH's settings; unset ones take DSCHConfig.from_scratch()'s values (fine_tuning()'s with --backbone)."""
    p.add_argument("--data", default=default_data, help=DATA_HELP)
    p.add_argument("--baseline", action="store_true", help="train the contrastive baseline (lambda = 0, S = I)")
    p.add_argument("--rounds", type=POSITIVE,
                   help=f"EM rounds, each one E-step and the M-step epochs ({_config_default('rounds')})")
    p.add_argument("--epochs-per-round", type=POSITIVE, dest="epochs_per_round",
                   help=f"M-step epochs per round ({_config_default('epochs_per_round')})")
    p.add_argument("--m1", type=POSITIVE, help=f"fine GMM components ({_config_default('m1')}, capped at N/5)")
    p.add_argument("--m2", type=POSITIVE, help=f"coarse k-means components ({_config_default('m2')})")
    p.add_argument("--covariance-type", dest="covariance_type", choices=("full", "diag", "spherical", "tied"),
                   help=f"covariance of the fine GMM ({_config_default('covariance_type')}, as in the paper)")
    p.add_argument("--gmm-max-iter", type=POSITIVE, dest="gmm_max_iter",
                   help=f"EM iterations of the fine GMM ({_config_default('gmm_max_iter')})")
    p.add_argument("--component-weight", "--lam", type=_float_type(0.0), dest="component_weight",
                   help=f"lambda, the weight of the component losses ({_config_default('component_weight')})")
    p.add_argument("--tau", type=_float_type(0.0, low_open=True),
                   help=f"temperature of the losses ({_config_default('tau')})")
    p.add_argument("--batch-size", type=_int_type(2), dest="batch_size",
                   help=f"images per step, two views each ({_config_default('batch_size')})")
    p.add_argument("--lr", type=_float_type(0.0, low_open=True),
                   help=f"Adam learning rate ({_config_default('lr')})")
    p.add_argument("--adam-eps", type=_float_type(0.0, low_open=True), dest="adam_eps",
                   help=f"Adam epsilon ({_config_default('adam_eps')})")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--augment", choices=("natural", "digits", "none"), default="natural",
                   help="augmentation preset: natural (crops, flips, rotation, jitter, noise, erasing), "
                        "digits (no flips: a mirrored digit or letter is another one; gentler crops), none")
    p.add_argument("--flip-p", type=_float_type(0.0, 1.0), dest="flip_p",
                   help="horizontal flip probability (natural: 0.5)")
    p.add_argument("--crop-scale", type=_float_type(0.0, 1.0, low_open=True), nargs=2, dest="crop_scale",
                   metavar=("LOW", "HIGH"), help="area fraction of the random crop (natural: 0.6 1.0)")
    p.add_argument("--rotation", type=_float_type(0.0, 180.0), dest="max_rotation_deg",
                   help="largest rotation in degrees (natural: 10)")
    p.add_argument("--jitter", type=_float_type(0.0, 1.0), help="brightness and contrast jitter, 1 +- this (natural: 0.3)")
    p.add_argument("--erase-p", type=_float_type(0.0, 1.0), dest="erase_p",
                   help="random erasing probability (natural: 0.25)")


def _train_count(value: str):
    """--train-per-class: a positive count, or 'all' (None: the whole database)."""
    if value == "all":
        return None
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"must be a positive count or 'all', got {value!r}")
    return count


def _train_count_option(p, default=500):
    p.add_argument("--train-per-class", type=_train_count, default=default, dest="train_per_class",
                   help="training images per class, drawn from the database, or 'all': the whole database")


def _protocol_options(p):
    p.add_argument("--query-per-class", type=POSITIVE, default=100, dest="query_per_class", help="queries per class")
    _train_count_option(p)
    p.add_argument("--split-seed", type=int, default=0, dest="split_seed",
                   help="seed of the query/database/training split")


def _add_demo(sub):
    p = sub.add_parser("demo", help="DSCH against ITQ, PCAH and LSH on the embedded Fashion-MNIST images")
    _training_options(p)
    p.add_argument("--contrastive", action="store_true", help="also train the contrastive baseline (twice the time)")
    p.add_argument("--bits", type=TRAIN_BITS, default=32, help="code length")
    p.add_argument("--train-per-class", type=POSITIVE, default=200, dest="train_per_class",
                   help="training images per class")
    p.add_argument("--out", default="", help="directory for demo.json, demo.png and the models (default: none)")
    p.add_argument("--verbose", type=_int_type(0, 2), default=1,
                   help="0: quiet, 1: a line per round, 2: also the E-step's EM iterations")
    p.set_defaults(func=training.demo_command)


def _add_train(sub):
    p = sub.add_parser("train", help="train DSCH (or the contrastive baseline) on the retrieval protocol")
    _training_options(p)
    _protocol_options(p)
    p.add_argument("--bits", type=TRAIN_BITS, default=64, help="code length")
    p.add_argument("--out", required=True, help="run directory (model.pt, checkpoint.pt, record.json)")
    p.add_argument("--width", type=POSITIVE, default=32, help="width of the small CNN")
    p.add_argument("--backbone", choices=BACKBONE_NAMES,
                   help="a torchvision network instead of the small CNN (needs torchvision); the unset training "
                        "settings then take the reference fine-tuning values")
    p.add_argument("--weights", help="the backbone's weights: a local state-dict file (nothing is downloaded; "
                                     "default: random weights)")
    p.add_argument("--freeze", type=_int_type(-1),
                   help="backbone stages kept fixed: the first N, or -1 for all (VGG: 5 conv blocks, pooling, fc6, "
                        "fc7; ResNet: stem, 4 layers, pooling; default 0)")
    p.add_argument("--input-size", type=_int_type(32, 1024), default=224, dest="input_size",
                   help="side in pixels the images are resized to for the backbone")
    p.add_argument("--device", default="cpu",
                   help="cpu or cuda; with --distributed, cuda means GPU LOCAL_RANK for each rank (NCCL)")
    p.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt")
    p.add_argument("--no-eval", action="store_true", dest="no_eval", help="skip the final evaluation")
    p.add_argument("--distributed", action="store_true", help="one process per rank (launch with torchrun)")
    p.add_argument("--timeout", type=_float_type(0.0, low_open=True), default=600.0,
                   help="seconds before a silent rank is an error")
    p.set_defaults(func=training.train_command)


def _add_results(sub):
    p = sub.add_parser("results", help="every run the results report needs (long: DSCH, baselines, ablation, E-step)")
    _training_options(p, default_data="fashion-mnist")
    p.add_argument("--bits", type=TRAIN_BITS, nargs="+", default=[16, 32, 64], help="code lengths")
    _train_count_option(p)
    p.add_argument("--ablation-bits", type=int, default=32, dest="ablation_bits",
                   help="code length of the ablation runs (0: no ablation)")
    p.add_argument("--estep-iterations", type=int, default=3, dest="estep_iterations",
                   help="EM iterations of the E-step comparison with scikit-learn (0: no comparison)")
    p.add_argument("--seeds", type=int, nargs="+",
                   help="training seeds (default: --seed); with several, the tables give mean ± sd and DSCH's "
                        "paired differences; the ablation and the E-step comparison use the first")
    p.add_argument("--out", default="results", help="directory for the run directories, tables.md and results.png")
    p.set_defaults(func=training.results_command)


def _add_encode(sub):
    p = sub.add_parser("encode", help="binary codes of a data set with a trained model")
    p.add_argument("--model", required=True, help="a model.pt written by dsch train")
    p.add_argument("--data", default="embedded", help=DATA_HELP)
    p.add_argument("--out", required=True, help="a .npy file (packed uint8 codes) or an index file for dsch search")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.set_defaults(func=evaluation.encode_command)


def _add_eval(sub):
    p = sub.add_parser("eval", help="evaluate trained models and baselines on the retrieval protocol")
    p.add_argument("--model", action="append", help="a model.pt (repeatable)")
    p.add_argument("--baselines", nargs="*", default=[], choices=sorted(("itq", "pcah", "lsh")),
                   help="shallow baselines to fit and evaluate")
    p.add_argument("--bits", type=POSITIVE, nargs="*", default=[16, 32, 64], help="code lengths for the baselines")
    p.add_argument("--data", default="embedded", help=DATA_HELP)
    _protocol_options(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the baselines' projections")
    p.add_argument("--out", default="", help="directory for eval.json and eval.png (default: none)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.set_defaults(func=evaluation.eval_command)


def _add_components(sub):
    p = sub.add_parser("components", help="what a trained model's semantic components tell the M-step: images per "
                                          "component, purity, co-occurring pairs per batch")
    p.add_argument("--model", required=True, help="a model.pt written by dsch train")
    p.add_argument("--data", default="embedded", help=DATA_HELP)
    _protocol_options(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the mixture's k-means start")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=evaluation.components_command)


def _add_search_demo(sub):
    p = sub.add_parser("search-demo", help="pack and search random binary codes, check against brute force")
    p.add_argument("--database", type=POSITIVE, default=200_000, help="database size")
    p.add_argument("--queries", type=POSITIVE, default=500, help="number of queries")
    p.add_argument("--bits", type=_int_type(1, 65536), default=64, help="code length in bits")
    p.add_argument("-k", type=POSITIVE, default=100, help="neighbours per query")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--seed", type=int, default=0, help="seed of the random codes")
    p.set_defaults(func=search_demo)


def _add_index(sub, common):
    p = sub.add_parser("index", help="binary index files")
    index_sub = p.add_subparsers(dest="index_command", required=True, parser_class=_Parser)
    build = index_sub.add_parser("build", help="build an index file from codes", parents=[common],
                                 formatter_class=_Formatter)
    build.add_argument("--codes", required=True, help=".npy/.npz/.pt: [n, nbits] values or uint8 packed codes")
    build.add_argument("--out", required=True, help="index file to write (atomically)")
    build.add_argument("--nbits", type=POSITIVE,
                       help="code length (default: the codes' columns; x 8 for uint8 packed codes)")
    build.add_argument("--packed", action="store_true", help="the codes are uint8 packed bytes (pack_bits' layout)")
    build.add_argument("--ids", help="optional int64 ids [n] (.npy/.npz/.pt)")
    build.add_argument("--method", choices=("flat", "mih"), default="flat",
                       help="how searches of the file run: flat (scan every code, CPU or GPU) or mih (multi-index "
                            "tables, CPU; worth it from about 10^6 codes whose neighbours are near)")
    build.add_argument("--substrings", type=POSITIVE,
                       help="--method mih: substrings per code (default: about nbits / log2 n)")
    build.set_defaults(func=indexes.index_build_command)


def _add_search(sub):
    p = sub.add_parser("search", help="search an index file")
    p.add_argument("--index", required=True, help="an index file (dsch index build or dsch encode)")
    p.add_argument("--queries", required=True, help=".npy/.npz/.pt query codes (same length as the index)")
    p.add_argument("-k", type=POSITIVE, default=10, help="neighbours per query")
    p.add_argument("--format", choices=("json", "csv"), default="json", help="output format")
    p.add_argument("--out", default="-", help="output file (default: standard output)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.set_defaults(func=indexes.search_command)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``dsch <command>: error: ... (see --help)``, exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser():
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--threads", type=POSITIVE,
                        help="CPU threads for torch and the kernels (default: torch's setting, i.e. "
                             "OMP_NUM_THREADS or every core; on a busy machine, the cores left free)")
    parser = _Parser(prog="dsch", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    real_add = sub.add_parser

    def add_parser(name, **kwargs):  # every subcommand: the common options, defaults in its help
        return real_add(name, parents=[common] if name != "index" else [], formatter_class=_Formatter, **kwargs)

    sub.add_parser = add_parser
    for add in (_add_demo, _add_train, _add_results, _add_encode, _add_eval, _add_components, _add_search_demo,
                _add_search):
        add(sub)
    _add_index(sub, common)
    sub.add_parser("info", help="print how dsch_ext was built").set_defaults(func=indexes.info_command)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    try:
        code = args.func(args)
    except (CliError, DataError, IndexFormatError) as exc:
        print(f"dsch: error: {exc}", file=sys.stderr)
        code = 2
    except MemoryError as exc:
        print(f"dsch: error: out of memory: {exc or 'the data or result does not fit'}", file=sys.stderr)
        code = 2
    except Interrupted as exc:
        print(f"dsch: interrupted: {exc}", file=sys.stderr)
        code = 130
    except KeyboardInterrupt:
        print("dsch: interrupted (outputs are written whole or not at all)", file=sys.stderr)
        code = 130
    except BrokenPipeError:
        # The reader went away (`dsch search ... | head`): say so once, and keep Python from
        # reporting the broken pipe again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print("dsch: error: output closed before it was all written (broken pipe)", file=sys.stderr)
        code = 2
    except OSError as exc:  # a path that cannot be read or written: the user's to fix
        where = f" {exc.filename}" if exc.filename else ""
        print(f"dsch: error: {exc.strerror or exc}{':' if where else ''}{where}", file=sys.stderr)
        code = 2
    if getattr(args, "exit_now", False):
        # A distributed run: end the process without interpreter finalisation, during which
        # torch.distributed's gloo worker threads can still be releasing tensors of the last
        # collective and abort the process (dsch_ext.distributed.shutdown explains).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 1)
    return code


if __name__ == "__main__":
    sys.exit(main())
