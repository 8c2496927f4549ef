"""readtalk.speech"""
