"""The WordNet nouns that ship with the package: naming works with no WordNet installed, the packaged file
is what tools/build_wordnet.py makes of a release, a release folder still overrides it, and a wheel
carries the file and its licence."""
from __future__ import annotations

import builtins
import io
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from scaleclust.cluster.naming import name_clusters, softmax_top, vote_matrix
from scaleclust.config import ConfigError, LabelConfig, StorageConfig
from scaleclust.semantic import wordnet
from scaleclust.semantic.space import SemanticSpace
from scaleclust.semantic.vocab import load_vocabulary, wordnet_nouns
from tools.build_wordnet import build

SYSTEM_WORDNET = "/usr/share/wordnet"
ROOT = Path(__file__).parent.parent


@pytest.fixture
def no_system_wordnet(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Opening anything under the system's WordNet folder fails (builtins.open, io.open, os.open and
    Path.open refuse it); the paths opened are listed."""
    opened: list[str] = []

    def check(path: Any) -> None:
        name = os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else ""
        opened.append(name)
        if os.path.abspath(name).startswith(SYSTEM_WORDNET):
            raise PermissionError(f"{name}: the test forbids reading the system's WordNet")

    def guarded(real: Callable[..., Any]) -> Callable[..., Any]:
        def opener(path: Any, *args: Any, **kwargs: Any) -> Any:
            check(path)
            return real(path, *args, **kwargs)
        return opener

    for module, name in ((builtins, "open"), (io, "open"), (os, "open"), (pathlib.Path, "open")):
        monkeypatch.setattr(module, name, guarded(getattr(module, name)))
    return opened


def test_a_planted_cluster_is_named_through_the_packaged_nouns(no_system_wordnet: list[str]) -> None:
    for read in (lambda: open(f"{SYSTEM_WORDNET}/data.noun"), Path(SYSTEM_WORDNET, "index.noun").read_text):
        with pytest.raises(PermissionError):  # the guard holds
            read()
    vocab = load_vocabulary(LabelConfig(), StorageConfig())  # the default config: no wordnet_file
    assert str(wordnet.PACKAGED) in no_system_wordnet
    assert len(vocab.names) == 67_893 and len(set(vocab.names)) == len(vocab.names)
    # Every noun a random direction; two clusters planted around 'tabby' and 'espresso', one of noise.
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(vocab.names), 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    space = SemanticSpace(vocab.names, vocab.ids, vectors, np.zeros(len(vectors), np.float32), 30.0)
    planted = [vectors[vocab.names.index(noun)] + rng.normal(size=(40, 64)) * 0.06 for noun in ("tabby", "espresso")]
    rows = np.concatenate(planted + [rng.normal(size=(40, 64))])
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    clusters = np.repeat(np.arange(3), 40)
    idx, probs = softmax_top(space.logits(rows), 5)
    named = name_clusters(vote_matrix(clusters, idx, probs, 3, len(vocab.names)), np.bincount(clusters),
                          space.names, 0.3)
    assert [n.name for n in named] == ["tabby", "espresso", "?"], named
    assert [vocab.ids[vocab.names.index(n.name)] for n in named[:2]] == ["n02123045", "n07920052"]


def test_names_climb_the_hierarchy_and_skip_nouns_every_cluster_shares() -> None:
    """Six planted clusters over the packaged nouns (each noun a random direction). Two split their votes
    over four cats or four dogs, with the leading breed under half: the leaf rule names the breed, the
    hierarchy the synset above all four. Four lean on 'letter opener' as much as on their own noun, as
    every cluster does: the leaf rule names all four 'letter opener (...)', distinctiveness each by its own."""
    synsets = wordnet.packaged()
    vocab = wordnet_nouns(synsets)
    tree = wordnet.hierarchy(synsets, vocab.names, vocab.ids)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(vocab.names), 128)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)

    def rows(counts: dict[str, int], generic: float) -> np.ndarray:
        """One row per count of each noun, all leaning on 'letter opener' by `generic`."""
        picks = [vectors[vocab.names.index(noun)] for noun, n in counts.items() for _ in range(n)]
        return np.stack(picks) + generic * vectors[vocab.names.index("letter opener")]

    own = ["espresso", "zebra", "pizza", "rocket"]
    x = np.concatenate([rows({"tabby": 16, "Persian cat": 8, "Siamese cat": 8, "Egyptian cat": 8}, 0.9),
                        rows({"beagle": 16, "dalmatian": 8, "pug": 8, "collie": 8}, 0.9),
                        *(rows({noun: 40}, 1.05) for noun in own)])
    x = x + rng.normal(size=x.shape) * 0.05
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    clusters = np.repeat(np.arange(6), 40)
    space = SemanticSpace(vocab.names, vocab.ids, vectors, np.zeros(len(vectors), np.float32), 30.0)
    votes = vote_matrix(clusters, *softmax_top(space.logits(x), 5), 6, len(vocab.names))
    leaf = name_clusters(votes, np.bincount(clusters), space.names, 0.1, ids=vocab.ids)
    assert [n.name for n in leaf] == ["tabby", "beagle"] + [f"letter opener ({n})" for n in own]
    named = name_clusters(votes, np.bincount(clusters), space.names, 0.1, ids=vocab.ids, tree=tree)
    assert [(n.name, n.name_id) for n in named[:2]] == [("domestic cat", "n02121808"), ("dog", "n02084071")]
    assert [n.name for n in named[2:]] == own
    assert all(0.1 <= n.score <= 1 for n in named) and named[0].score > leaf[0].score  # the cats' votes, summed
    assert [n.top_names[:2] for n in named] == [n.top_names[:2] for n in leaf]  # runners-up: still the leaves


def test_nouns_outside_wordnet_are_leaves_of_their_own() -> None:
    synsets = [wordnet.Synset("n1", "animal", 1, 0, ()), wordnet.Synset("n2", "cat", 1, 0, ("n1",)),
               wordnet.Synset("n3", "dog", 1, 0, ("n1",))]
    tree = wordnet.hierarchy(synsets, ["kitty", "dog", "gizmo"], ["n2", "n3", "gizmo"])
    assert tree.names == ["kitty", "dog", "gizmo", "animal"] and tree.ids == ["n2", "n3", "gizmo", "n1"]
    assert tree.depth.tolist() == [1, 1, 2, 0]
    assert tree.ancestors.toarray().tolist() == [[1, 0, 0, 1], [0, 1, 0, 1], [0, 0, 1, 0]]


def test_packaged_synsets_carry_senses_counts_and_hypernyms() -> None:
    synsets = {s.id: s for s in wordnet.packaged()}
    assert len(synsets) == 82_115 and wordnet.PACKAGED.stat().st_size < 2_000_000
    cat = synsets["n02121620"]
    assert (cat.lemma, cat.sense, cat.count, cat.hypernyms) == ("cat", 1, 18, ("n02120997",))  # feline
    assert synsets["n00001740"].hypernyms == ()  # entity, the one root
    roots = [s.id for s in synsets.values() if not s.hypernyms]
    assert roots == ["n00001740"]
    chain, at = [], "n02123045"  # tabby up to entity
    while synsets[at].hypernyms:
        at = synsets[at].hypernyms[0]
        chain.append(synsets[at].lemma)
    assert chain[:3] == ["domestic cat", "cat", "feline"] and chain[-1] == "entity"
    assert (wordnet.PACKAGED.parent / "LICENSE-WordNet.txt").read_text().count("Princeton University") >= 3


@pytest.mark.skipif(not Path(SYSTEM_WORDNET, "data.noun").exists(),
                    reason=f"no WordNet release at {SYSTEM_WORDNET} (Debian's wordnet-base) to rebuild the packaged "
                           "nouns from")
def test_the_packaged_file_is_what_the_script_makes_of_a_release(tmp_path: Path) -> None:
    assert wordnet.decode(build(SYSTEM_WORDNET), "built") == wordnet.packaged()
    # A release folder, or its data.noun, still overrides the packaged nouns: here a cut-down release.
    release = tmp_path / "wn"
    release.mkdir()
    lines = Path(SYSTEM_WORDNET, "data.noun").read_text().splitlines()
    (release / "data.noun").write_text("\n".join(line for line in lines if not line.startswith("0212")) + "\n")
    (release / "index.noun").write_text(Path(SYSTEM_WORDNET, "index.noun").read_text())
    for override in (str(release), str(release / "data.noun")):
        vocab = load_vocabulary(LabelConfig(wordnet_file=override), StorageConfig())
        ids = dict(zip(vocab.names, vocab.ids))
        # cat: its next sense that "cat" heads (the gossip; sense 2, guy, is headed by "guy"); tabby: gone
        assert ids["cat"] == "n09900153" and "tabby" not in ids


def test_a_missing_override_is_a_config_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"label.wordnet_file: .*nowhere does not exist"):
        load_vocabulary(LabelConfig(wordnet_file=str(tmp_path / "nowhere")), StorageConfig())
    (tmp_path / "bad.gz").write_bytes(wordnet.GZIP_MAGIC + b"x")
    with pytest.raises(ValueError, match=r"bad.gz: not a WordNet nouns file"):
        load_vocabulary(LabelConfig(wordnet_file=str(tmp_path / "bad.gz")), StorageConfig())


@pytest.mark.subprocess
def test_a_wheel_carries_the_nouns_and_their_licence(tmp_path: Path) -> None:
    pytest.importorskip("setuptools", reason="the wheel is built without isolation, with this environment's setuptools")
    source = tmp_path / "src"  # a copy: building in place would leave build/ and egg-info in the checkout
    shutil.copytree(ROOT / "scaleclust", source / "scaleclust", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(source)], check=True, cwd=tmp_path, timeout=120)
    [wheel] = tmp_path.glob("scaleclust-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"scaleclust/semantic/data/wordnet-nouns.tsv.gz", "scaleclust/semantic/data/LICENSE-WordNet.txt"} <= set(names)
