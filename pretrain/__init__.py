"""WHERE the initial policy comes from: corpus shards, BPE tokenizer, Llama presets, the pretraining and SFT
loops (`answerkey pretrain`, `answerkey sft`) and the tools to look at their output (`tokenize`, `sample`,
`chat`). Every output is a Hugging Face directory. Web-data filtering is not built."""
