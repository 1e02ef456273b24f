"""Vocabularies that clusters are named from: WordNet nouns, a plain file of nouns, or a classifier's
own label set (ImageNet classes are WordNet noun synsets). Never a benchmark's class names.
"""
from __future__ import annotations

from dataclasses import dataclass

from scaleclust.config import ConfigError, LabelConfig, StorageConfig
from scaleclust.storage import exists, read_bytes


@dataclass(frozen=True)
class Vocabulary:
    """Nouns and their ids (WordNet 'n' + 8-digit synset offset, e.g. n02123045, where known)."""

    names: list[str]
    ids: list[str]


def parse_wordnet_nouns(text: str, source: str = "data.noun", index: str = "") -> Vocabulary:
    """The first lemma of every noun synset of a WordNet data.noun file, underscores as spaces.

    Line format: `OFFSET LEX_FILENUM n W_CNT(hex) WORD LEX_ID ... | GLOSS`; the licence header lines start
    with a space. A name that heads several synsets (e.g. 'tabby': a tabby cat, and a female cat) is kept
    once: identical prompts would split every vote between copies of the same text. Its id is the
    synset listed first for that lemma in `index` (the text of index.noun, senses by frequency), else the
    first in file order.
    """
    names: list[str] = []
    ids: list[str] = []
    kept: dict[str, tuple[int, int]] = {}  # name -> (its place in names, rank of its synset among the senses)
    senses = _sense_order(index)
    for number, line in enumerate(text.splitlines(), 1):
        if not line or line[0] == " ":
            continue
        fields = line.split(" ", 5)
        if len(fields) < 5 or not fields[0].isdigit() or fields[2] != "n":
            raise ValueError(f"{source}:{number}: not a WordNet noun synset line: {line[:80]!r}")
        name = fields[4].replace("_", " ")
        order = senses.get(fields[4].lower(), [])
        position = order.index(fields[0]) if fields[0] in order else len(order)
        if name not in kept:
            kept[name] = (len(names), position)
            names.append(name)
            ids.append(f"n{fields[0]}")
        elif position < kept[name][1]:
            kept[name] = (kept[name][0], position)
            ids[kept[name][0]] = f"n{fields[0]}"
    if not names:
        raise ValueError(f"{source}: no noun synsets found")
    return Vocabulary(names, ids)


def _sense_order(index: str) -> dict[str, list[str]]:
    """lemma -> its synset offsets by sense number, from index.noun: `LEMMA n SYNSET_CNT P_CNT
    [PTR...] SENSE_CNT TAGSENSE_CNT OFFSET...`; the offsets are the last SYNSET_CNT fields."""
    order = {}
    for line in index.splitlines():
        if line and line[0] != " ":
            fields = line.split()
            order[fields[0]] = fields[len(fields) - int(fields[2]):]
    return order


def parse_noun_list(text: str, source: str) -> Vocabulary:
    """A plain vocabulary: one noun per line, or 'ID<TAB>NOUN'; blank lines and '#' comments are
    skipped; a noun without an id is its own id; repeated nouns are kept once."""
    names: list[str] = []
    ids: list[str] = []
    seen: set[str] = set()
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        ident, _, noun = line.rpartition("\t")
        noun = noun.strip()
        if noun and noun not in seen:
            seen.add(noun)
            names.append(noun)
            ids.append(ident.strip() or noun)
    if not names:
        raise ConfigError(f"label.vocabulary: {source} holds no nouns (one per line, or ID<TAB>NOUN)")
    return Vocabulary(names, ids)


def load_vocabulary(cfg: LabelConfig, storage: StorageConfig) -> Vocabulary:
    """The vocabulary the config names: WordNet nouns (label.wordnet_file) or a file of nouns."""
    if cfg.vocabulary == "wordnet":
        if not exists(cfg.wordnet_file, storage):
            raise ConfigError(f"label.wordnet_file: {cfg.wordnet_file} does not exist; install WordNet "
                              f"(Debian/Ubuntu: apt-get install wordnet-base) or set label.vocabulary to a "
                              f"file of nouns")
        index = cfg.wordnet_file.rsplit("/", 1)[0] + "/index.noun"
        senses = read_bytes(index, storage).decode() if exists(index, storage) else ""
        return parse_wordnet_nouns(read_bytes(cfg.wordnet_file, storage).decode(), cfg.wordnet_file, senses)
    if not exists(cfg.vocabulary, storage):
        raise ConfigError(f"label.vocabulary: {cfg.vocabulary} does not exist (give 'wordnet' or a file of nouns)")
    return parse_noun_list(read_bytes(cfg.vocabulary, storage).decode(), cfg.vocabulary)


def imagenet_classes(subset: str, classes: int) -> Vocabulary:
    """A timm classifier's label set (e.g. 'imagenet-1k'): names are each synset's first lemma, ids its
    WordNet id. Raises when the set does not have `classes` entries (the head would not line up)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo(subset)
    if info.num_classes() != classes:
        raise ValueError(f"classifier has {classes} outputs but label set {subset!r} has {info.num_classes()}")
    ids = [info.index_to_label_name(i) for i in range(classes)]
    names = [info.index_to_description(i).split(",")[0].strip() for i in range(classes)]
    return Vocabulary(names, ids)
