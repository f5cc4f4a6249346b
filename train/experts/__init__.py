"""Frozen experts behind one protocol (base.py): autoencoder, classifiers, text encoder, BigGAN."""
