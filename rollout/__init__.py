"""HOW completions are sampled: the engine protocol, the torch engine, the sampling distribution and
weight transfer with checksums. vLLM lives behind the same protocol (optional extra, imported lazily).
The torch engine's lean Llama forward is `answerkey.model` (shared with the learner and pretraining)."""

from answerkey.rollout.engine import Completion, RolloutEngine, SamplingParams

__all__ = ["Completion", "RolloutEngine", "SamplingParams"]
