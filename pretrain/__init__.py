"""WHERE the initial policy comes from: web-data filtering (`answerkey filter`), corpus shards, BPE tokenizer,
the pretraining and SFT loops (`answerkey pretrain`, `answerkey sft`), the tools to look at their output
(`tokenize`, `sample`, `chat`), and the demo's synthetic crawl and conversations (`synthetic_web.py`).
Every output is a Hugging Face directory. The models come from `answerkey.model` (Llama presets, the
next-token loss); the optimizer and checkpoints from the learner (`answerkey.learner.Learner`)."""
