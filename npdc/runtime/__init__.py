"""Inference straight from a .npdc file with little memory: plan.py (fusion, liveness, arena),
weights.py (dense / stream / sparse weight stores), infer.py (the runtime and its memory and
speed figures), evaluate.py (what the evaluate and infer commands report and write)."""
