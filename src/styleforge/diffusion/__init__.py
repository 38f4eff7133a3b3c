"""Shared diffusion machinery: prompt encoding, sampling steps, inversion, attention control, AdaIN, FreeU.

Methods build their loops from these pieces; nothing here knows about a particular method.
"""
