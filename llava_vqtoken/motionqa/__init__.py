"""Synthetic motion-QA benchmark (issue 8): does a compressor keep what motion questions need?"""
