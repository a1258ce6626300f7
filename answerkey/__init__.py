"""answerkey: reinforcement learning from verifiable rewards (GRPO) on language models.

Core package: config (typed, validated), the chat format, the CLI, the one RL loop (`answerkey.loop`, run on
Ray actors by `answerkey.driver` and in one process by `answerkey.local`), the run directory, and
`answerkey.model` (presets and the lean Llama forward engine and learner share). The areas are subpackages:
`answerkey.envs` (what to learn), `answerkey.rollout` (how completions are sampled),
`answerkey.rewards` (how they are checked), `answerkey.learner` (how the policy is updated),
`answerkey.pretrain` (where the initial policy comes from). See README.md for the file map.
"""

__version__ = "0.1.0"
