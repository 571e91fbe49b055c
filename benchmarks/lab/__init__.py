"""The generative distillation lab: a self-trained arithmetic teacher whose every answer can be checked."""
