"""Synthetic motion-QA benchmark: does a compressor keep what motion questions need?"""
