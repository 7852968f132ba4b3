"""eval/: generation with a KV cache, answer checking, metrics (Acc, Fmt, Score, intervals, paired tests)."""
from eval.answers import detect_kind, extract, extract_answer, is_correct
from eval.evaluate import evaluate
from eval.generate import generate
from eval.metrics import format_ok, mean_ci, paired_difference, score, t_quantile

__all__ = ["evaluate", "generate", "extract", "extract_answer", "is_correct", "detect_kind",
           "format_ok", "mean_ci", "paired_difference", "score", "t_quantile"]
