"""readtalk.train"""
