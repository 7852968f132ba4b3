"""data/: raw reasoning datasets -> records -> rendered text -> tokens with roles -> batches."""
from .batches import BatchSampler, collate, pack_rows
from .records import DataError, Record
from .render import TAGS, render_prompt, render_response
from .roles import COT, KEY, NUM_ROLES, PAD, PROMPT, ROLE_NAMES
from .sources import load_records
from .tokenize import TokenizedDataset, build_dataset
from .tokenizer import Tok, load_tokenizer

__all__ = ["BatchSampler", "collate", "pack_rows", "DataError", "Record", "TAGS", "render_prompt",
           "render_response", "COT", "KEY", "NUM_ROLES", "PAD", "PROMPT", "ROLE_NAMES",
           "load_records", "TokenizedDataset", "build_dataset", "Tok", "load_tokenizer"]
