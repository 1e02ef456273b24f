"""Write the WordNet nouns file that ships with the package (scaleclust/semantic/data/wordnet-nouns.tsv.gz)
from a WordNet 3.0 release folder (its data.noun, index.noun and cntlist.rev; Debian's wordnet-base
installs one). The format is in scaleclust/semantic/wordnet.py; WordNet's licence is beside the file.

    python tools/build_wordnet.py RELEASE_FOLDER [OUT]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scaleclust.config import StorageConfig
from scaleclust.semantic import wordnet


def build(folder: str) -> bytes:
    """The packaged file's bytes for the release in `folder`; raises when it holds no data.noun."""
    if not (Path(folder) / "data.noun").is_file():
        raise FileNotFoundError(f"{folder}: no data.noun here (give a WordNet 3.0 release folder)")
    return wordnet.encode(wordnet.load(folder, StorageConfig()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="WordNet 3.0 release folder (holding data.noun, index.noun, cntlist.rev)")
    parser.add_argument("out", nargs="?", default=str(wordnet.PACKAGED), help="file to write (default: the packaged one)")
    args = parser.parse_args(argv)
    try:
        data = build(args.folder)
    except (OSError, ValueError) as err:
        print(f"build_wordnet: {err}", file=sys.stderr)
        return 1
    with open(args.out, "wb") as out:
        out.write(data)
    synsets = wordnet.decode(data, args.out)
    print(f"build_wordnet: {len(synsets)} noun synsets, {len(data):,} bytes -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
