"""The core of training: τ and the MLP baseline, the one training loop, presets and shared I/O."""
