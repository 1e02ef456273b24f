"""Vocabularies that clusters are named from: WordNet nouns, a plain file of nouns, or a classifier's
own label set (ImageNet classes are WordNet noun synsets). Never a benchmark's class names.
"""
from __future__ import annotations

from dataclasses import dataclass

from scaleclust.config import ConfigError, LabelConfig, StorageConfig
from scaleclust.semantic import wordnet
from scaleclust.semantic.wordnet import Synset
from scaleclust.storage import exists, read_bytes


@dataclass(frozen=True)
class Vocabulary:
    """Nouns and their ids (WordNet 'n' + 8-digit synset offset, e.g. n02123045, where known)."""

    names: list[str]
    ids: list[str]


def wordnet_nouns(synsets: list[Synset]) -> Vocabulary:
    """The first lemma of every noun synset, each name once: identical prompts would split every vote
    between copies of the same text. A name that heads several synsets (e.g. 'tabby': a tabby cat, and a
    female cat) takes the id of its most frequent sense (the lowest sense rank; synsets that index.noun
    does not rank come last), and of the first in file order between equals."""
    names: list[str] = []
    ids: list[str] = []
    kept: dict[str, tuple[int, float]] = {}  # name -> (its place in names, sense rank of its synset)
    for synset in synsets:
        rank = synset.sense or float("inf")
        if synset.lemma not in kept:
            kept[synset.lemma] = (len(names), rank)
            names.append(synset.lemma)
            ids.append(synset.id)
        elif rank < kept[synset.lemma][1]:
            kept[synset.lemma] = (kept[synset.lemma][0], rank)
            ids[kept[synset.lemma][0]] = synset.id
    return Vocabulary(names, ids)


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
    """The vocabulary the config names: WordNet nouns (those that ship with the package, or
    label.wordnet_file) or a file of nouns."""
    if cfg.vocabulary == "wordnet":
        return wordnet_nouns(wordnet.load(cfg.wordnet_file, storage))
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
