"""The embedded generation server: OpenAI `/v1/completions` over transformers, CPU or CUDA.

It speaks vLLM's weight-transfer control API (disk backend) so that the trainer's `vllm`
weight-sync adapter drives it unchanged.
"""
