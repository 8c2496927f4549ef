"""readtalk.vae"""
