"""The .npdc file: bit I/O, relative sparse indices, canonical Huffman codes, the checksummed
container of sections, and the whole-model layout over it (model.py). May import every floor up
to compress; docs/format.md is the specification it implements.
"""
