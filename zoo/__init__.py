"""zoo: a JAX functional model zoo for Hugging Face Hub checkpoints."""
__version__ = "0.1.0"
