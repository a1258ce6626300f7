"""HOW the policy is updated: GRPO math (`grpo`), batching by token budget (`batch`), and the
`Learner` (optimizer, schedule, reference model, SFT step). Plain classes; the driver adds Ray."""
