"""Retraining a pruned student with its unpruned teacher (knowledge distillation).

Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network": soften both outputs
with a temperature tau and minimise KL(teacher || student), scaled by tau**2 so its gradients keep
their size as tau changes. As in the seed design, two alternatives compare the raw outputs
instead: half the mean squared difference (L2) and the cosine distance. The targets are the
logits or the `fc5` embedding, or both at once (the logit KL beside an L2 or cosine term on fc5);
a hard-label cross-entropy term is optional, so unlabeled data works too. Each loss returns (value, gradient with respect to the student's output).
"""

import numpy as np

from npdc.compress.prune import apply_masks
from npdc.engine.losses import cross_entropy, log_softmax
from npdc.engine.resnet import clone_net
from npdc.engine.train import fit
from npdc.errors import UserError


def kl_loss(student, teacher, tau=4.0):
    """tau^2 * mean_n KL(softmax(teacher/tau) || softmax(student/tau)); inputs (N, K)."""
    log_p_t = log_softmax(teacher / tau)
    log_p_s = log_softmax(student / tau)
    p_t = np.exp(log_p_t)
    n = student.shape[0]
    loss = tau * tau * float(np.sum(p_t * (log_p_t - log_p_s))) / n
    grad = tau * (np.exp(log_p_s) - p_t) / n
    return loss, grad.astype(student.dtype, copy=False)


def l2_loss(student, teacher, tau=None):
    """0.5 * mean over the batch of ||student - teacher||^2."""
    diff = student - teacher
    n = student.shape[0]
    return 0.5 * float(np.sum(diff * diff)) / n, diff / n


def cosine_loss(student, teacher, tau=None, eps=1e-12):
    """mean over the batch of 1 - cos(student_n, teacher_n)."""
    s_norm = np.sqrt(np.sum(student * student, axis=1, keepdims=True)) + eps
    t_norm = np.sqrt(np.sum(teacher * teacher, axis=1, keepdims=True)) + eps
    cos = np.sum(student * teacher, axis=1, keepdims=True) / (s_norm * t_norm)
    n = student.shape[0]
    grad = -(teacher / (s_norm * t_norm) - cos * student / (s_norm * s_norm)) / n
    return float(np.sum(1.0 - cos)) / n, grad


KD_LOSSES = {"kl": kl_loss, "l2": l2_loss, "cosine": cosine_loss}


class Distillation:
    """A training objective for npdc.engine.train.fit: the teacher (eval mode) labels each batch
    once, the student learns from soft_weight * KD + hard_weight * cross-entropy
    (+ layer_weight * KD on a layer).

    on: "logits" or the name of a node whose output is matched (e.g. "fc5", the embedding).
    layer: a node matched beside `on` with its own loss `layer_kind` (l2 or cosine, as the seed
    design compared them on fc5) and weight: e.g. the logit KL and the fc5 cosine distance at once.
    """

    def __init__(self, teacher, kind="kl", tau=4.0, soft_weight=1.0, hard_weight=0.0, on="logits",
                 layer=None, layer_kind="cosine", layer_weight=1.0):
        for loss in (kind, layer_kind):
            if loss not in KD_LOSSES:
                raise UserError(f"unknown distillation loss {loss!r}; known: {', '.join(KD_LOSSES)}")
        if tau <= 0:
            raise UserError(f"the temperature must be positive, not {tau}")
        for node in (on, layer):
            if node not in ("logits", None) and node not in teacher.layers:
                raise UserError(f"cannot distil on {node!r}: the model has no such layer")
        if layer is not None and layer == on:
            raise UserError(f"{layer!r} is distilled on already; give the layer term another layer")
        self.teacher, self.tau, self.hard_weight = teacher, tau, hard_weight
        self.on = on  # (node, loss, weight, name of the term) for each soft target:
        self.soft = [(on, KD_LOSSES[kind], soft_weight, "kd")]
        if layer is not None:
            self.soft.append((layer, KD_LOSSES[layer_kind], layer_weight, "kd_layer"))
        self.keep = tuple(node for node, _, _, _ in self.soft if node != "logits")

    def _outputs(self, net, x, train):
        """{node: output} of the soft targets' nodes and the logits."""
        if not self.keep:
            logits = net.forward(x, train=train)
            return {"logits": logits}
        logits, kept = net.forward(x, train=train, keep=self.keep)
        return {"logits": logits, **kept}

    def outputs_of(self, x, batch_size=256):
        """The teacher's outputs on raw images x, {node: array aligned with x}: computed once
        for training without augmentation (fit's `targets`), instead of once per batch."""
        parts = [self._outputs(self.teacher, self.teacher.preprocess(x[i:i + batch_size]), False)
                 for i in range(0, len(x), batch_size)]
        return {node: np.concatenate([p[node] for p in parts]) for node in parts[0]} if parts else {}

    def __call__(self, net, x, y, targets=None):
        """One training step's forward and backward on normalised x; `targets`: the teacher's
        outputs on these images when computed beforehand (outputs_of), else computed here."""
        if y is None and self.hard_weight:
            raise UserError("hard-label weight needs labels; this data has none")
        target = self._outputs(self.teacher, x, False) if targets is None else targets
        out = self._outputs(net, x, True)
        logits, terms, extra = out["logits"], {}, {}
        dlogits = np.zeros_like(logits)
        total = 0.0
        for node, loss, weight, name in self.soft:
            if not weight:
                continue
            terms[name], d_out = loss(out[node], target[node], self.tau)
            total += weight * terms[name]
            d_out = (d_out * weight).astype(out[node].dtype, copy=False)
            if node == "logits":
                dlogits += d_out
            else:
                extra[node] = d_out
        if self.hard_weight:
            ce, dce = cross_entropy(logits, y)
            terms["ce"] = ce
            total += self.hard_weight * ce
            dlogits += self.hard_weight * dce
        net.backward(dlogits, extra=extra or None)
        terms["loss"] = total
        return logits, terms


def prune_and_retrain(teacher, x, y, masks=None, gradual=None, kd="kl", tau=4.0, hard_weight=0.0,
                      on="logits", epochs=2, progress=True, kd_layer=None, kd_layer_loss="cosine",
                      kd_layer_weight=1.0, augment=True, **hyper):
    """Prune a copy of `teacher` and retrain it with the teacher's guidance.

    masks: fixed keep-masks applied before retraining, or gradual: a function net ->
    GradualPruner that prunes during it. kd: the loss on `on`; None drops it, leaving the
    layer term (kd_layer, matched with kd_layer_loss and weighted kd_layer_weight; see
    Distillation) with hard_weight of labels, or labels alone without kd_layer. augment=False:
    the images as stored, the teacher's outputs on them computed once. hyper: fit's keyword
    arguments (batch_size, lr, seed, ...). Returns (student, masks, history).
    """
    student = clone_net(teacher)
    masks = dict(masks or {})
    apply_masks(student, masks)
    hook = gradual(student) if gradual else None
    objective = None
    if kd or kd_layer:
        objective = Distillation(teacher, kd or "kl", tau, soft_weight=1.0 if kd else 0.0,
                                 hard_weight=hard_weight, on=on, layer=kd_layer,
                                 layer_kind=kd_layer_loss, layer_weight=kd_layer_weight)
    elif y is None:
        raise UserError("retraining without distillation needs labels")
    if not augment:
        hyper["augment_pad"] = 0
        if objective is not None and epochs:
            hyper["targets"] = objective.outputs_of(x)
    history = fit(student, x, y, epochs, masks=masks, objective=objective, hook=hook,
                  progress=progress, **hyper) if epochs else []
    if hook is not None and epochs == 0:
        masks.update(hook.masks_at(hook.start + hook.n * hook.interval))
        apply_masks(student, masks)
    return student, masks, history
