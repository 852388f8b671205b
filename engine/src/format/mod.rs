//! Checkpoint readers: safetensors (single and sharded), GGUF, Hugging Face config files.
