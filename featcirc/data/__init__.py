"""Prompt pairs: the feature-circuits JSONL format, built-in task generators, tokenization."""

from featcirc.data.load import load_pairs
from featcirc.data.pairs import (DataError, PairBatch, PairDataset, PromptPair, read_pairs, tokenize_pairs,
                                 write_pairs)
from featcirc.data.tasks import TASKS, make_task

__all__ = ["DataError", "PairBatch", "PairDataset", "PromptPair", "TASKS", "load_pairs", "make_task",
           "read_pairs", "tokenize_pairs", "write_pairs"]
