"""WordNet 3.0's noun synsets as naming uses them, read from a release folder or from the compact file
that ships inside the package (scaleclust/semantic/data/wordnet-nouns.tsv.gz, written by
tools/build_wordnet.py from a release folder; WordNet's licence is beside it), so that naming needs no
system package.

The packaged file is a gzip'd TSV, one line per noun synset in data.noun's order, after a header line:
`id  lemma  sense  count  hypernyms`. id is 'n' + the 8-digit synset offset; lemma the synset's first
lemma with underscores as spaces; sense the synset's rank among that lemma's noun senses in index.noun
(1 = most frequent; 0 where index.noun does not list it); count how often that sense of the lemma was
tagged in WordNet's semantic concordance (cntlist.rev; 0 where absent); hypernyms the ids of its
hypernyms and instance hypernyms, comma-separated (empty for the root).
"""
from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import sparse

from scaleclust.cluster.naming import Hierarchy
from scaleclust.config import ConfigError, StorageConfig
from scaleclust.storage import exists, join, read_bytes

PACKAGED = Path(__file__).parent / "data" / "wordnet-nouns.tsv.gz"
HEADER = "id\tlemma\tsense\tcount\thypernyms"
HYPERNYM_POINTERS = {"@", "@i"}
GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class Synset:
    """One noun synset: its id, first lemma, that lemma's sense rank and tag count, and its hypernyms."""

    id: str
    lemma: str
    sense: int
    count: int
    hypernyms: tuple[str, ...]


def parse_release(data_noun: str, index_noun: str = "", cntlist: str = "", source: str = "data.noun") -> list[Synset]:
    """Every synset of a release's data.noun text, with sense ranks from index.noun's text and tag counts
    from cntlist.rev's text (either may be empty: ranks, counts then 0).

    data.noun lines: `OFFSET LEX_FILENUM n W_CNT(hex) [WORD LEX_ID]... P_CNT [PTR OFFSET POS SRC/TGT]...
    | GLOSS`; the licence header lines start with a space.
    """
    senses = _sense_order(index_noun)
    counts = _tag_counts(cntlist)
    synsets = []
    for number, line in enumerate(data_noun.splitlines(), 1):
        if not line or line[0] == " ":
            continue
        fields = line.split(" | ", 1)[0].split()
        if len(fields) < 6 or not fields[0].isdigit() or fields[2] != "n":
            raise ValueError(f"{source}:{number}: not a WordNet noun synset line: {line[:80]!r}")
        offset, words = fields[0], int(fields[3], 16)
        pointers_at = 4 + 2 * words
        lemma = fields[4]
        order = senses.get(lemma.lower(), [])
        sense = order.index(offset) + 1 if offset in order else 0
        hypernyms = tuple(f"n{fields[at + 1]}" for at in range(pointers_at + 1, pointers_at + 1 +
                                                                 4 * int(fields[pointers_at]), 4)
                          if fields[at] in HYPERNYM_POINTERS)
        synsets.append(Synset(f"n{offset}", lemma.replace("_", " "), sense, counts.get((lemma.lower(), sense), 0),
                              hypernyms))
    if not synsets:
        raise ValueError(f"{source}: no noun synsets found")
    return synsets


def _sense_order(index_noun: str) -> dict[str, list[str]]:
    """lemma -> its synset offsets by sense number, from index.noun: `LEMMA n SYNSET_CNT P_CNT
    [PTR...] SENSE_CNT TAGSENSE_CNT OFFSET...`; the offsets are the last SYNSET_CNT fields."""
    order = {}
    for line in index_noun.splitlines():
        if line and line[0] != " ":
            fields = line.split()
            order[fields[0]] = fields[len(fields) - int(fields[2]):]
    return order


def _tag_counts(cntlist: str) -> dict[tuple[str, int], int]:
    """(lemma, noun sense number) -> tag count, from cntlist.rev: `LEMMA%SS_TYPE:... SENSE_NUMBER TAG_CNT`;
    noun sense keys have SS_TYPE 1."""
    counts = {}
    for line in cntlist.splitlines():
        key, number, count = line.split()
        lemma, _, rest = key.partition("%")
        if rest.startswith("1:"):
            counts[(lemma, int(number))] = int(count)
    return counts


def encode(synsets: list[Synset]) -> bytes:
    """The packaged file's bytes (gzip with no timestamp, so the same synsets give the same bytes)."""
    lines = [HEADER] + [f"{s.id}\t{s.lemma}\t{s.sense}\t{s.count}\t{','.join(s.hypernyms)}" for s in synsets]
    return gzip.compress(("\n".join(lines) + "\n").encode(), compresslevel=9, mtime=0)


def decode(data: bytes, source: str) -> list[Synset]:
    """The synsets of a file that encode() wrote; raises naming `source` when it is not one."""
    try:
        lines = gzip.decompress(data).decode().splitlines()
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise ValueError(f"{source}: not a WordNet nouns file ({type(err).__name__}: {err})") from None
    if not lines or lines[0] != HEADER:
        raise ValueError(f"{source}: not a WordNet nouns file (its first line should be {HEADER!r})")
    synsets = []
    for number, line in enumerate(lines[1:], 2):
        fields = line.split("\t")
        if len(fields) != 5:
            raise ValueError(f"{source}:{number}: expected 5 tab-separated fields, got {len(fields)}")
        ident, lemma, sense, count, hypernyms = fields
        synsets.append(Synset(ident, lemma, int(sense), int(count), tuple(hypernyms.split(",")) if hypernyms else ()))
    return synsets


def packaged() -> list[Synset]:
    """The synsets that ship with the package."""
    return decode(PACKAGED.read_bytes(), str(PACKAGED))


def load(url: str, storage: StorageConfig) -> list[Synset]:
    """The synsets of `url`: a WordNet release folder or its data.noun (index.noun and cntlist.rev are read
    from the same folder where they exist), or a file encode() wrote; the packaged ones when `url` is empty."""
    if not url:
        return packaged()
    if not exists(url, storage):
        raise ConfigError(f"label.wordnet_file: {url} does not exist (give a WordNet 3.0 release folder, "
                                f"its data.noun, or leave it empty for the nouns that ship with scaleclust)")
    data_noun = join(url, "data.noun") if exists(join(url, "data.noun"), storage) else url
    data = read_bytes(data_noun, storage)
    if data[:2] == GZIP_MAGIC:
        return decode(data, url)
    folder = data_noun.rsplit("/", 1)[0]

    def beside(name: str) -> str:
        path = join(folder, name)
        return read_bytes(path, storage).decode() if exists(path, storage) else ""

    return parse_release(data.decode(), beside("index.noun"), beside("cntlist.rev"), data_noun)


def hierarchy(synsets: list[Synset], names: list[str], ids: list[str]) -> Hierarchy:
    """The nouns (names, ids) of a space placed among `synsets`: a noun whose id is a synset sits at that
    synset, below all its hypernyms; a noun whose id is not (a plain noun list) is a node of its own,
    deeper than any synset, with nothing above it. A noun's node keeps the noun's name; a hypernym
    is named by its first lemma."""
    by_id = {s.id: s for s in synsets}
    parents = {s.id: [h for h in s.hypernyms if h in by_id] for s in synsets}  # a cut-down release lacks some
    node: dict[str, int] = {}
    node_names: list[str] = []
    for name, ident in zip(names, ids):
        if ident not in node:
            node[ident] = len(node_names)
            node_names.append(name)
    depth: dict[str, int] = {}
    above: dict[str, frozenset[str]] = {}

    def climb(ident: str) -> frozenset[str]:
        """ident and every synset above it; fills depth (the longest path from the root) on the way.
        Iterative: a parent is finished before its child."""
        stack = [ident]
        while stack:
            at = stack[-1]
            todo = [h for h in parents[at] if h not in above]
            if todo:
                stack.extend(todo)
                continue
            stack.pop()
            if at not in above:
                depth[at] = 1 + max((depth[h] for h in parents[at]), default=-1)
                above[at] = frozenset([at]).union(*(above[h] for h in parents[at]))
        return above[ident]

    rows, cols = [], []
    for v, ident in enumerate(ids):
        for a in (climb(ident) if ident in by_id else (ident,)):
            if a not in node:
                node[a] = len(node_names)
                node_names.append(by_id[a].lemma)
            rows.append(v)
            cols.append(node[a])
    deepest = max(depth.values(), default=0) + 1
    node_ids = list(node)
    ancestors = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(ids), len(node_ids)))
    return Hierarchy(ancestors, node_names, node_ids, np.array([depth.get(i, deepest) for i in node_ids], np.int64))
