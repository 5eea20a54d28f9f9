"""Turning Hugging Face folders (safetensors weights, tokenizer files) into GGUF files llama.cpp loads."""
