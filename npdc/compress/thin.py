"""Filter pruning for real: remove pruned output channels from the dense model.

Mao et al. 2017 count a pruned filter as a removed channel. A conv's output channel can go when
its filter is all zero *and* its batch-norm entries are masked to zero (then the channel is
exactly 0 after BN and ReLU): the conv loses the filter, the BN its entries, and every
convolution reading the channel loses that input channel. A channel that reaches a residual add,
a zero-pad shortcut, a flatten or a pooling layer is tied to other layers' channels; such a conv
is skipped and reported, its zeros stay as masks.
"""

import numpy as np

from npdc.engine.layers import BatchNorm2d, Conv2d, PReLU, ReLU
from npdc.engine.resnet import build_net

ELEMENTWISE = (BatchNorm2d, ReLU, PReLU)


def _consumers(net):
    out = {}
    for name, _, inputs in net.nodes:
        for i in inputs:
            out.setdefault(i, []).append(name)
    return out


def channel_chain(net, conv):
    """(elementwise nodes after `conv`, convolutions reading its channels), or None when the
    channels reach anything else (a residual add, a shortcut, flatten, pooling, the output)."""
    consumers = _consumers(net)
    if conv not in consumers:
        return None
    chain, readers, frontier = [], [], [conv]
    while frontier:
        for c in consumers.get(frontier.pop(), []):
            layer = net.layers[c]
            if isinstance(layer, ELEMENTWISE):
                if c not in consumers:
                    return None
                chain.append(c)
                frontier.append(c)
            elif isinstance(layer, Conv2d) and layer.groups == 1:
                readers.append(c)
            else:
                return None
    return chain, readers


def filter_bn_masks(net, masks):
    """Masks for the BN gamma/beta (and PReLU slope) of every channel whose filter is all zero, so
    the masked model already computes exactly what the thinned one will."""
    extra = {}
    for path, keep in masks.items():
        name = path[:-2]
        if not isinstance(net.layers.get(name), Conv2d):
            continue
        alive = keep.reshape(keep.shape[0], -1).any(axis=1)
        if alive.all():
            continue
        found = channel_chain(net, name)
        chain = found[0] if found else _direct_chain(net, name)
        for node in chain:
            for key in net.layers[node].params:
                extra[f"{node}.{key}"] = alive.copy()
    return extra


def _direct_chain(net, conv):
    """The BN/activation nodes straight after `conv`, even when its channels are tied later."""
    consumers, chain, node = _consumers(net), [], conv
    while len(consumers.get(node, [])) == 1 and isinstance(net.layers[consumers[node][0]], ELEMENTWISE):
        node = consumers[node][0]
        chain.append(node)
    return chain


def thin_filters(net):
    """A new, smaller net without the all-zero filters of untied convs; returns (net, report)
    where report maps each conv to (kept, original channels) or to the reason it was skipped."""
    state = net.state_dict()
    channels, report = dict(net.spec.get("channels", {})), {}
    for name, layer, _ in net.nodes:
        if not isinstance(layer, Conv2d):
            continue
        W = state[f"{name}.W"]
        alive = W.reshape(W.shape[0], -1).any(axis=1)
        if alive.all():
            continue
        found = channel_chain(net, name)
        if found is None:
            report[name] = "skipped: its channels are tied by a residual add or feed a non-conv layer"
            continue
        chain, readers = found
        if not alive.any():
            alive[np.argmax(np.abs(W).reshape(W.shape[0], -1).sum(axis=1))] = True  # keep one channel
        for key in [k for k in state if k.startswith(f"{name}.")]:
            state[key] = state[key][alive]
        for node in chain:
            for key in [k for k in state if k.startswith(f"{node}.")]:
                state[key] = state[key][alive]
        for reader in readers:
            state[f"{reader}.W"] = state[f"{reader}.W"][:, alive]
        channels[name] = int(alive.sum())
        report[name] = (int(alive.sum()), int(alive.size))
    spec = {**net.spec, "channels": channels} if channels else dict(net.spec)
    thinned = build_net(spec)
    thinned.load_state_dict(state)
    return thinned, report
