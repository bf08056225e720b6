"""The ways to hold the weights of a plan's conv and linear steps (`--weights`):

- dense:  decoded once to float32, the folded batch-norm scale multiplied in;
- sparse: the non-zeros as compressed sparse rows of one-byte column steps and codebook
          indices with one value table per layer (EIE, Han et al. 2016; npdc.kernels.sparse),
          scale applied in the kernel tail;
- stream: the layer payloads stay Huffman-coded as in the file; each is decoded when the forward
          pass reaches it, into one set of sparse-row buffers sized for the largest layer and
          reused by every layer (the decode-on-demand of Deep Compression's storage format).
- auto:   both dense and sparse until the compiled walk (npdc.runtime.program) has measured
          each layer both ways; it keeps the faster.
`arrays()` lists what a store keeps, for the memory figures.
"""

import numpy as np

from npdc.codec.payload import decode_layer
from npdc.kernels.sparse import check_csr, csr_entries, csr_from_indices

MODES = ("dense", "stream", "sparse", "auto")  # auto: dense or sparse per layer, by measured time


def _rows(shape):
    return int(shape[0]), int(np.prod(shape[1:]))


def _index_dtype(table_size):
    return np.uint8 if table_size <= 256 else np.uint16


def _rows_of(indices, shape, vidx_dtype):
    """(rowptr, column steps, vidx) of flat value indices over a weight of `shape`."""
    rows, n_cols = _rows(shape)
    flat = np.ascontiguousarray(np.asarray(indices).reshape(-1))
    n = csr_entries(flat, rows)
    rowptr, cols, vidx = np.zeros(rows + 1, np.int32), np.zeros(n, np.uint8), np.zeros(n, vidx_dtype)
    csr_from_indices(flat, rows, rowptr, cols, vidx)
    return rowptr, cols, vidx


def _csr(indices, table, shape):
    """(rowptr, cols, vidx, table) of flat value indices over a weight of `shape`."""
    rowptr, cols, vidx = _rows_of(indices, shape, _index_dtype(table.size))
    check_csr(rowptr, cols, vidx, *_rows(shape), table.size)
    return rowptr, cols, vidx, table


def _table(codebook):
    """Value table of a codebook: index 0 stands for 0.0, i >= 1 for codebook[i - 1]."""
    return np.concatenate([np.zeros(1, np.float32), np.asarray(codebook, np.float32)])


def _float_csr(W):
    """A float weight as sparse rows: every non-zero gets its own table entry."""
    flat = W.reshape(-1)
    indices = np.zeros(flat.shape, np.int64)
    indices[flat != 0] = np.arange(1, np.count_nonzero(flat) + 1)
    return (*_rows_of(indices, W.shape, np.int32), _table(flat[flat != 0]))


class DenseWeights:
    mode = "dense"

    def __init__(self, steps, params):
        self.W = {s.name: np.ascontiguousarray(
                      params[f"{s.name}.W"].reshape(s.w_shape[0], -1) * s.scale[:, None], np.float32)
                  for s in steps}
        self.ones = {s.name: np.ones(s.w_shape[0], np.float32) for s in steps}

    def get(self, step):
        """(W2 (O, F), tail scale)."""
        return self.W[step.name], self.ones[step.name]

    def drop(self, step):
        """Forget a layer (the compiled walk holds its own copy, or runs it sparse)."""
        self.W.pop(step.name, None)
        self.ones.pop(step.name, None)

    def arrays(self):
        return list(self.W.values()) + list(self.ones.values())


class SparseWeights:
    mode = "sparse"

    def __init__(self, steps, params, codes):
        self.csr = {}
        for s in steps:
            path = f"{s.name}.W"
            if path in codes:
                q = codes[path]
                self.csr[s.name] = _csr(q.indices, _table(q.codebook), s.w_shape)
            else:
                self.csr[s.name] = _float_csr(params[path])

    def get(self, step):
        """(rowptr, cols, vidx, table)."""
        return self.csr[step.name]

    def drop(self, step):
        """Forget a layer (the compiled walk holds its own copy, or runs it dense)."""
        self.csr.pop(step.name, None)

    def arrays(self):
        return [a for parts in self.csr.values() for a in parts]


class StreamWeights:
    mode = "stream"

    def __init__(self, steps, params, codes, payloads):
        """payloads: {path: LAYR payload bytes} of the quantized layers (kept, still coded);
        layers without one are held as sparse rows for good."""
        self.payloads, self.shapes, self.fixed = {}, {}, {}
        most_rows = most_nnz = most_table = 1
        for s in steps:
            path = f"{s.name}.W"
            if path in payloads:
                self.payloads[s.name], self.shapes[s.name] = payloads[path], s.w_shape
                q = codes[path]
                rows, _ = _rows(s.w_shape)
                most_rows = max(most_rows, rows)
                most_nnz = max(most_nnz, csr_entries(np.ascontiguousarray(q.indices).reshape(-1), rows))
                most_table = max(most_table, int(q.codebook.size) + 1)
            else:
                self.fixed[s.name] = _float_csr(params[path])
        self.rowptr = np.zeros(most_rows + 1, np.int32)
        self.cols = np.zeros(most_nnz, np.uint8)
        self.vidx = np.zeros(most_nnz, _index_dtype(most_table))
        self.table = np.zeros(most_table, np.float32)

    def get(self, step):
        """Decode the layer into the shared buffers; (rowptr, cols, vidx, table) views."""
        if step.name in self.fixed:
            return self.fixed[step.name]
        shape = self.shapes[step.name]
        rows = shape[0]
        indices, codebook = decode_layer(self.payloads[step.name], int(np.prod(shape)))
        if codebook.size >= self.table.size:
            raise ValueError(f"{step.name}: codebook of {codebook.size} values outgrew its buffer")
        nnz = csr_from_indices(indices, rows, self.rowptr, self.cols, self.vidx)
        self.table[1:codebook.size + 1] = codebook
        return self.rowptr[:rows + 1], self.cols[:nnz], self.vidx[:nnz], self.table[:codebook.size + 1]

    def arrays(self):
        fixed = [a for parts in self.fixed.values() for a in parts]
        return fixed + [self.rowptr, self.cols, self.vidx, self.table]

    def payload_bytes(self):
        return sum(len(p) for p in self.payloads.values())
