"""WHAT to learn: `Problem`, the `Env` protocol and built-in envs, loaded by dotted path (no registry).

Built-in: `synthetic:SyntheticEnv` (offline arithmetic and word problems, the demo and tests),
`synthetic:SyntheticRetryEnv` (its multi-turn form), `gsm8k:GSM8KEnv`, `math:MathEnv` (JSONL files),
`humaneval:HumanEvalEnv` and `code_jsonl:CodeJSONLEnv` (code run against unit tests in the sandbox).
"""

from answerkey.envs.base import (
    SPLITS,
    Env,
    GenerateFn,
    MultiTurnEnv,
    Problem,
    Split,
    Trajectory,
    TurnBuilder,
    load_env,
    load_object,
    score_batch,
)

__all__ = ["SPLITS", "Env", "GenerateFn", "MultiTurnEnv", "Problem", "Split", "Trajectory", "TurnBuilder",
           "load_env", "load_object", "score_batch"]
