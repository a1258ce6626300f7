"""WHERE the initial policy comes from: BPE tokenizer and Llama model presets (data filtering,
pretraining and SFT loops arrive with the pretrain issue). Every output is a Hugging Face directory."""
