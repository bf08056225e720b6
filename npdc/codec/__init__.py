"""Entropy coding of compressed layers: bit fields, relative sparse indices, canonical Huffman
codes. The .npdc container builds on these."""
