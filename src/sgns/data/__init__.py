"""From text to training steps: sources, tokenizers, the prepared corpus and its cache, sampling,
the steps of an epoch, and the LightningDataModule that ties them together."""

from sgns.data.corpus import EncodedCorpus, PreparedCorpus, Vocabulary
from sgns.data.datamodule import Word2VecDataModule
from sgns.data.prepare import prepare_corpus
from sgns.data.sources import Source

__all__ = ["EncodedCorpus", "PreparedCorpus", "Source", "Vocabulary", "Word2VecDataModule", "prepare_corpus"]
