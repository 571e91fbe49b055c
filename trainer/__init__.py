"""Student training: SFT, distillation losses, evaluation and export."""
