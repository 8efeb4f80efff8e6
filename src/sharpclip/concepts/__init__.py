"""The concept vocabulary: conditions -> values -> prompt templates (data files), plus an optional
OpenAI-compatible LLM endpoint for conditions the vocabulary does not know.

Example::

    >>> from sharpclip.concepts import load_vocabulary
    >>> vocabulary = load_vocabulary()
    >>> vocabulary.resolve("fill")
    'texture'
    >>> len(vocabulary.prompts_for("colour+shape")) > len(vocabulary.prompts("colour"))
    True
"""

from sharpclip.concepts.endpoint import EndpointError, LLMEndpoint
from sharpclip.concepts.vocabulary import (
    Concept,
    Vocabulary,
    VocabularyError,
    builtin_concepts,
    load_vocabulary,
    normalise_name,
    parse_vocabulary,
    prompt_set_hash,
    read_vocabulary_file,
)

__all__ = [
    "Concept",
    "EndpointError",
    "LLMEndpoint",
    "Vocabulary",
    "VocabularyError",
    "builtin_concepts",
    "load_vocabulary",
    "normalise_name",
    "parse_vocabulary",
    "prompt_set_hash",
    "read_vocabulary_file",
]
