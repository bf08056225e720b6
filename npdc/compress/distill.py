"""Retraining a pruned student with its unpruned teacher (knowledge distillation).

Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network": soften both outputs
with a temperature tau and minimise KL(teacher || student), scaled by tau**2 so its gradients keep
their size as tau changes. As in the seed design, two alternatives compare the raw outputs
instead: half the mean squared difference (L2) and the cosine distance. The targets are the
logits or the `fc5` embedding; a hard-label cross-entropy term is optional, so unlabeled data
works too. Each loss returns (value, gradient with respect to the student's output).
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
    once, the student learns from soft_weight * KD + hard_weight * cross-entropy.

    on: "logits" or the name of a node whose output is matched (e.g. "fc5", the embedding).
    """

    def __init__(self, teacher, kind="kl", tau=4.0, soft_weight=1.0, hard_weight=0.0, on="logits"):
        if kind not in KD_LOSSES:
            raise UserError(f"unknown distillation loss {kind!r}; known: {', '.join(KD_LOSSES)}")
        if tau <= 0:
            raise UserError(f"the temperature must be positive, not {tau}")
        if on != "logits" and on not in teacher.layers:
            raise UserError(f"cannot distil on {on!r}: the model has no such layer")
        self.teacher, self.loss, self.tau = teacher, KD_LOSSES[kind], tau
        self.soft_weight, self.hard_weight, self.on = soft_weight, hard_weight, on

    def _targets(self, x):
        if self.on == "logits":
            return self.teacher.forward(x)
        return self.teacher.forward(x, keep=(self.on,))[1][self.on]

    def __call__(self, net, x, y):
        if y is None and self.hard_weight:
            raise UserError("hard-label weight needs labels; this data has none")
        target = self._targets(x)
        terms, extra = {}, None
        if self.on == "logits":
            logits = out = net.forward(x, train=True)
        else:
            logits, kept = net.forward(x, train=True, keep=(self.on,))
            out = kept[self.on]
        dlogits = np.zeros_like(logits)
        if self.soft_weight:
            kd, d_out = self.loss(out, target, self.tau)
            terms["kd"] = kd
            d_out = d_out * self.soft_weight
            if self.on == "logits":
                dlogits += d_out
            else:
                extra = {self.on: d_out.astype(out.dtype, copy=False)}
        if self.hard_weight:
            ce, dce = cross_entropy(logits, y)
            terms["ce"] = ce
            dlogits += self.hard_weight * dce
        net.backward(dlogits, extra=extra)
        terms["loss"] = self.soft_weight * terms.get("kd", 0.0) + self.hard_weight * terms.get("ce", 0.0)
        return logits, terms


def prune_and_retrain(teacher, x, y, masks=None, gradual=None, kd="kl", tau=4.0, hard_weight=0.0,
                      on="logits", epochs=2, progress=True, **hyper):
    """Prune a copy of `teacher` and retrain it with the teacher's guidance.

    masks: fixed keep-masks applied before retraining, or gradual: a function net ->
    GradualPruner that prunes during it. kd=None retrains on labels alone. hyper: fit's keyword
    arguments (batch_size, lr, seed, ...). Returns (student, masks, history).
    """
    student = clone_net(teacher)
    masks = dict(masks or {})
    apply_masks(student, masks)
    hook = gradual(student) if gradual else None
    objective = None
    if kd:
        objective = Distillation(teacher, kd, tau, soft_weight=1.0, hard_weight=hard_weight, on=on)
    elif y is None:
        raise UserError("retraining without distillation needs labels")
    history = fit(student, x, y, epochs, masks=masks, objective=objective, hook=hook,
                  progress=progress, **hyper) if epochs else []
    if hook is not None and epochs == 0:
        masks.update(hook.masks_at(hook.start + hook.n * hook.interval))
        apply_masks(student, masks)
    return student, masks, history
