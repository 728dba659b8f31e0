"""Model families: each a file holding its network, its loss and its closed-form row gradients.

- ``skipgram.SkipGram``: skip-gram with negative sampling (gensim ``sg=1``), the default;
- ``cbow.CBOW``: continuous bag of words with negative sampling (gensim ``sg=0``);
- ``fasttext.FastText``: skip-gram over a word and its character n-grams (gensim ``FastText``, sg=1).

A new family is one file here (a ``base.WordModel``: ``example``, ``loss``, ``row_gradients``)
and one config in ``conf/model/``; ``docs/design.md`` lists what it implements.
"""

from sgns.models.base import Batch, WordModel
from sgns.models.cbow import CBOW
from sgns.models.fasttext import FastText
from sgns.models.skipgram import SkipGram

FAMILIES = {family.__name__: family for family in (SkipGram, CBOW, FastText)}  # by the name checkpoints record

__all__ = ["Batch", "CBOW", "FAMILIES", "FastText", "SkipGram", "WordModel"]
