"""``dsch index build``, ``dsch search`` and ``dsch info``."""
import io
import json
import os
import sys

import torch

import dsch_ext

from .._atomic import atomic_write
from .common import write_file
from .errors import CliError, check_device
from .files import load_array, load_codes


def _index_width(codes, nbits, packed):
    """The index's code length for ``dsch index build``'s codes. uint8 input holding only 0
    and 1 could be one bit per column or packed bytes: then --nbits or --packed must say."""
    if nbits:
        return nbits
    if codes.dtype != torch.uint8:
        if packed:
            raise CliError(f"--packed needs uint8 packed codes, got dtype {codes.dtype}")
        return codes.shape[1]
    if packed or bool((codes > 1).any()):
        return codes.shape[1] * 8
    raise CliError(f"codes are uint8 {tuple(codes.shape)} holding only 0 and 1: pass --nbits {codes.shape[1]} for one "
                   f"bit per column or --packed for packed bytes ({codes.shape[1] * 8} bits)")


def index_build_command(args):
    codes = load_codes(args.codes, "codes")
    ids = load_array(args.ids, "ids") if args.ids else None
    try:
        if args.substrings is not None and args.method != "mih":
            raise CliError("--substrings is for --method mih")
        index = dsch_ext.BinaryIndex(_index_width(codes, args.nbits, args.packed), method=args.method,
                                     substrings=args.substrings)
        index.add(codes, ids)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    write_file("index file", args.out, index.save)
    method = "" if index.method == "flat" else " (method mih: tables built when searched)"
    print(f"wrote {args.out}: {len(index)} codes of {index.nbits} bits{method}")
    return 0


def _results_text(fmt: str, k: int, dist, ids) -> str:
    if fmt == "json":
        return json.dumps({"k": k, "distances": dist.cpu().tolist(), "ids": ids.cpu().tolist()}) + "\n"
    out = io.StringIO()
    out.write("query,rank,id,distance\n")
    for q, (drow, irow) in enumerate(zip(dist.cpu().tolist(), ids.cpu().tolist())):
        for r, (d, i) in enumerate(zip(drow, irow)):
            out.write(f"{q},{r},{i},{d}\n")
    return out.getvalue()


def search_command(args):
    device = check_device(args.device)
    if os.path.isdir(args.index):
        raise CliError(f"index file {args.index} is a directory")
    to_file = bool(args.out) and args.out != "-"
    if to_file and os.path.isdir(args.out):
        raise CliError(f"cannot write output file {args.out}: it is a directory")
    try:
        index = dsch_ext.BinaryIndex.load(args.index, device=device)
    except (OSError, ValueError) as exc:  # IndexFormatError is a ValueError
        raise CliError(str(exc)) from exc
    queries = load_codes(args.queries, "queries")
    try:
        dist, ids = index.search(queries, args.k)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    text = _results_text(args.format, args.k, dist, ids)
    if to_file:  # atomically: an interrupted search leaves an existing file as it was
        write_file("output file", args.out, lambda p: atomic_write(p, lambda f: f.write(text.encode())))
    else:  # in pieces: a reader that closes the pipe early (`| head`) is seen at the next piece
        for start in range(0, len(text), 1 << 13):
            sys.stdout.write(text[start : start + (1 << 13)])
            sys.stdout.flush()
    return 0


def info_command(args):
    info = dict(dsch_ext.build_info)
    info.update(version=dsch_ext.__version__, torch=torch.__version__, cuda_available=torch.cuda.is_available())
    print(json.dumps(info, indent=2))
    return 0
