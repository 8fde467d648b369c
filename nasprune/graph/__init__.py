"""Search spaces derived from a model's graph: analyse, derive, convert.

``analyze_model`` traces a model and finds its channel groups, skippable blocks and frozen parts;
``space_from_analysis`` makes the search space of an analysis (``nasprune.derive_space`` does both from a
model); ``GraphSupernet`` converts the model in place into a supernet of that space; ``build_model``
makes a model from a space's ``model`` reference.
"""

from nasprune.graph.analyze import Analysis, Frozen, analyze_model
from nasprune.graph.models import build_model, load_weights
from nasprune.graph.supernet import GraphSupernet, fixed_groups, space_from_analysis, width_choices

__all__ = [
    "Analysis",
    "Frozen",
    "GraphSupernet",
    "analyze_model",
    "build_model",
    "fixed_groups",
    "load_weights",
    "space_from_analysis",
    "width_choices",
]
