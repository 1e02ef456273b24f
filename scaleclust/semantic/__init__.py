"""Semantic spaces of nouns that clusters are named in: vocabularies (vocab) and the space (space)."""
from scaleclust.semantic.space import SemanticSpace, build_space, load_space

__all__ = ["SemanticSpace", "build_space", "load_space"]
