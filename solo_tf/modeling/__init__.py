"""Keras 3 layers and models: backbone, FPN, SOLO heads."""
