"""The tiny arithmetic task and Llama model that let the whole pipeline run on a CPU."""
