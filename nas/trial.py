"""The evaluators' public names: `--evaluator nas.trial:evaluate` (the default) and the
hash evaluators used by tests and benchmarks.

Why a module of names only: runs store the evaluator string and hash it into the ids of
their stage-2 and proxy-check jobs (`nas.evaluate.budget.measurement_id`), so the string
must keep working for every stored run. The code lives in `nas.evaluate.trial`.
"""
from nas.evaluate.trial import evaluate, hash_accuracy, hash_evaluate, hash_evaluate_jitter

__all__ = ["evaluate", "hash_accuracy", "hash_evaluate", "hash_evaluate_jitter"]
