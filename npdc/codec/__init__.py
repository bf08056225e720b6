"""The .npdc format. Entropy coding of compressed layers (bitio: bit fields, relindex: relative
sparse indices, huffman: canonical Huffman codes); payload and header: what a section holds;
container: the CRC-checked sections of a file, with upgrade for older versions; model: a
compressed model's sections (docs/format.md)."""
