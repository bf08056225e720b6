"""Squared quantization error of Lloyd's k-means against the exact 1-D optimum, per layer.

Run: python bench/quantizer_error.py [MODEL.h5] [--sparsity P] [--conv-bits B] [--fc-bits B]

The layers are cut by one global magnitude cut (conv1 dense), as `compress` does, and each
layer's surviving weights are quantized three ways: k-means with linear and with density
initialisation (Han, Mao & Dally 2016) and the dynamic-programming optimum (Wang & Song 2011).
The table gives each error relative to the optimum, which no quantizer can beat.
"""

import argparse
import time

from npdc.compress.prune import global_percentage_masks, prunable_layers
from npdc.compress.quantize import kmeans, optimal_kmeans, squared_error
from npdc.engine.layers import Linear
from npdc.io.modelfile import load_model


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", default="data/models/fmnist-resnet18.h5")
    p.add_argument("--sparsity", type=float, default=91.0)
    p.add_argument("--conv-bits", type=int, default=5)
    p.add_argument("--fc-bits", type=int, default=4)
    args = p.parse_args()
    net = load_model(args.model)
    masks = global_percentage_masks(net, args.sparsity, exclude=["conv1"])
    print(f"{args.model}, {args.sparsity:g} % global cut, conv {args.conv_bits} / fc {args.fc_bits} bits")
    print(f"{'layer':>10} {'weights':>8} {'k':>3} {'optimal SSE':>12} {'lloyd/lin':>10} "
          f"{'lloyd/dens':>10} {'dp s':>6}")
    totals = [0.0, 0.0, 0.0]
    for name in prunable_layers(net):
        W, mask = net.layers[name].params["W"], masks[f"{name}.W"]
        w = W[mask]
        bits = args.fc_bits if isinstance(net.layers[name], Linear) else args.conv_bits
        k = 2 ** bits - (0 if mask.all() else 1)
        start = time.perf_counter()
        best = squared_error(w, optimal_kmeans(w, k))
        seconds = time.perf_counter() - start
        lin = squared_error(w, kmeans(w, k, "linear"))
        dens = squared_error(w, kmeans(w, k, "density"))
        for i, e in enumerate((best, lin, dens)):
            totals[i] += e
        print(f"{name:>10} {w.size:>8} {k:>3} {best:>12.4e} {lin / best:>10.4f} {dens / best:>10.4f} "
              f"{seconds:>6.2f}")
    print(f"{'total':>10} {'':>8} {'':>3} {totals[0]:>12.4e} {totals[1] / totals[0]:>10.4f} "
          f"{totals[2] / totals[0]:>10.4f}")


if __name__ == "__main__":
    main()
