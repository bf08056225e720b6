"""Inference straight from a .npdc file with little memory: plan.py (BN folding, fused tails,
liveness arena), weights.py (dense / stream / sparse weight stores), infer.py (the Runtime that
executes a plan) and measure.py (peak memory and latency of a run). May import every floor up to
codec; the figures of a whole file (accuracy, score) are in npdc.evaluate above.
"""
